from classifiers.finetune.cli import main

raise SystemExit(main())
