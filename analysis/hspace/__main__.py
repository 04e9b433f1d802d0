"""``python -m analysis.hspace``: see `analysis.hspace.cli`."""
from .cli import main

raise SystemExit(main())
