from uld.cli import main

raise SystemExit(main())
