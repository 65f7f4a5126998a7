"""The edge: the one command-line entry point every rule, DVC stage and person calls.

``main`` (the entry, exit statuses, the warm start), the options every subcommand shares and
how the configuration resolves (``common``), the data commands (``data``), the training,
evaluation, report and plan commands (``train``), and ``doctor`` (what is installed, the traps
that would break the study).

Imports: anything below it. Nothing imports the CLI but ``audiopetl.__main__``.
"""

from audiopetl.cli.main import entry, finish, main, status

__all__ = ["entry", "finish", "main", "status"]
