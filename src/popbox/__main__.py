from popbox.cli.main import main

raise SystemExit(main())
