from audiopetl.cli import main

raise SystemExit(main())
