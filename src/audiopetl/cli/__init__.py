"""cli"""

from audiopetl.cli.main import entry, finish, main, status

__all__ = ["entry", "finish", "main", "status"]
