"""``python -m analysis.hprobe``: see `analysis.hprobe`."""
from analysis.hprobe.cli import main

raise SystemExit(main())
