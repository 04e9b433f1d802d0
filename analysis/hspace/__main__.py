"""``python -m analysis.hspace``: see `analysis.hspace.cli`."""
from analysis.hspace.cli import main

raise SystemExit(main())
