"""Process plumbing: how a command runs, not what it computes.

The warm start (``warm``: a command run in a fork of a server that imported torch,
transformers and peft once), job logs with one header per attempt (``joblog``), and the
process's start-up timings (``timings``).

Imports: ``core`` only. A warm server is told which modules to import and which function to
run by its caller (the CLI), so nothing here imports a stage.
"""
