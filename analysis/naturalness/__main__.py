"""``python -m analysis.naturalness``: see `analysis.naturalness.cli`."""
from analysis.naturalness.cli import main

raise SystemExit(main())
