"""``python -m analysis.classify``: see `analysis.classify.cli`."""
import sys

from analysis.classify.cli import main

sys.exit(main())
