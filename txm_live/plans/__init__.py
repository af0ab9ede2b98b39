"""Bluesky plans of the TXM. Plans talk to device protocols only; they never know whether
the devices are simulated."""
from .xanes import xanes_2d

__all__ = ["xanes_2d"]
