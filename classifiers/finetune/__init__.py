# Fine-tune a classifier on clean CUB: ``python -m classifiers.finetune``. The package's docstring is the command's.
from classifiers.finetune.cli import __doc__  # noqa: F401 - the command's description, with its examples
from classifiers.finetune.cli import *  # noqa: F401,F403
from classifiers.finetune.cli import __all__  # noqa: F401
