# Train a restoration network with L2, optionally plus DiffLoss: ``python -m restoration.train``. The package's docstring is the command's.
from restoration.train.cli import __doc__  # noqa: F401 - the command's description, with its examples
from restoration.train.cli import *  # noqa: F401,F403
from restoration.train.cli import __all__  # noqa: F401
