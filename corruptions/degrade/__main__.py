import sys

from corruptions.degrade.cli import main

sys.exit(main())
