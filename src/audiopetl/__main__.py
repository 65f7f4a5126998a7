from audiopetl.cli import entry

entry()
