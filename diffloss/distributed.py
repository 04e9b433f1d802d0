"""Moved to `cubdata.distributed` (shared with classifiers); importable from here as before."""
from cubdata.distributed import *  # noqa: F401,F403
from cubdata.distributed import __all__  # noqa: F401
