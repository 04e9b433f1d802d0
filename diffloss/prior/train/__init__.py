# Train a guided-diffusion prior on clean images: ``python -m diffloss.prior.train``. The package's docstring is the command's.
from diffloss.prior.train.cli import __doc__  # noqa: F401 - the command's description, with its examples
from diffloss.prior.train.cli import *  # noqa: F401,F403
from diffloss.prior.train.cli import __all__  # noqa: F401
