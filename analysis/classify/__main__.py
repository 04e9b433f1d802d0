"""``python -m analysis.classify``: see `analysis.classify.cli`."""
import sys

from .cli import main

sys.exit(main())
