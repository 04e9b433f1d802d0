"""The DiffLoss criterion: the `DiffLoss` module (`diffloss.criterion.loss`), its functional core
(`functional`), input checks (`checks`), timestep weightings (`timestep_weights`) and fp16 gradient scaling
(`grad_scaling`)."""
from diffloss.criterion.loss import *  # noqa: F401,F403
from diffloss.criterion.loss import __all__  # noqa: F401
