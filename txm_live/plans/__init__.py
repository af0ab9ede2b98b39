"""Bluesky plans of the TXM. Plans talk to device protocols only; they never know whether
the devices are simulated."""
from .tomo import tomo_fly, tomo_step
from .xanes import xanes_2d

__all__ = ["tomo_fly", "tomo_step", "xanes_2d"]
