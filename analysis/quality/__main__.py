from analysis.quality.cli import main

raise SystemExit(main())
