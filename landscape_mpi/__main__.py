from landscape_mpi.cli import main

raise SystemExit(main())
