from diffloss.prior.train.cli import main

raise SystemExit(main())
