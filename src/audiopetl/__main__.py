from audiopetl.cli.main import entry

entry()
