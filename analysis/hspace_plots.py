"""Moved to `analysis.hspace.plots`; importable from here as before."""
from .hspace.plots import *  # noqa: F401,F403
from .hspace.plots import __all__  # noqa: F401
