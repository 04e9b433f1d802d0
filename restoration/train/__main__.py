from restoration.train.cli import main

raise SystemExit(main())
