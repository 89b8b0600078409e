from plotting.cli import main

raise SystemExit(main())
