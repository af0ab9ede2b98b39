"""Bluesky plans of the TXM. Plans talk to device protocols only; they never know whether
the devices are simulated."""
from .operando import CyclingStep, OperandoResume, PotentiostatFault, operando, potentiostat_suspender
from .tomo import tomo_fly, tomo_step
from .xanes import xanes_2d
from .xanes3d import xanes_3d

__all__ = ["CyclingStep", "OperandoResume", "PotentiostatFault", "operando", "potentiostat_suspender",
           "tomo_fly", "tomo_step", "xanes_2d", "xanes_3d"]
