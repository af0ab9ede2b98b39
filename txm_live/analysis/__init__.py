"""Pure numerical analysis for TXM data: flat/dark correction, registration,
per-pixel XANES fitting, linear combination fitting, and particles in chemical maps
(segmentation, tracking, per-particle state of charge, operando sessions).

No bluesky, ophyd, event-model, tiled or h5py here: a user with arrays from
any source (an FXI HDF5 file, a replayed run) calls these directly.
"""

from ._flatdark import FlatDarkWarning, flat_dark_correct, remove_zingers
from ._lcf import LcfResult, fit_lcf, xanes_mask
from ._particle_session import MeasurementSummary, OperandoSession, SessionStatistics
from ._particles import ParticleLabels, ParticleStatistics, SocCalibration, particle_statistics, segment_particles
from ._registration import AlignmentResult, StackAligner, align_stack, apply_shifts, estimate_shift
from ._tracking import ParticleTracker, TrackingStep
from ._validate import XanesInputWarning
from ._xanes import STATUS_CODES, XanesResult, find_e0, fit_xanes, normalization_parameters

__all__ = [
    "AlignmentResult",
    "FlatDarkWarning",
    "LcfResult",
    "MeasurementSummary",
    "OperandoSession",
    "ParticleLabels",
    "ParticleStatistics",
    "ParticleTracker",
    "SessionStatistics",
    "SocCalibration",
    "STATUS_CODES",
    "StackAligner",
    "TrackingStep",
    "XanesInputWarning",
    "XanesResult",
    "align_stack",
    "apply_shifts",
    "estimate_shift",
    "find_e0",
    "fit_lcf",
    "fit_xanes",
    "flat_dark_correct",
    "normalization_parameters",
    "particle_statistics",
    "remove_zingers",
    "segment_particles",
    "xanes_mask",
]
