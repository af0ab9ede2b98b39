"""Pure numerical analysis for TXM data: flat/dark correction, registration,
per-pixel XANES fitting, linear combination fitting, and the staged 2D XANES pipeline
(:class:`Xanes2DPipeline`) that live analysis, replay and batch files share.

No bluesky, ophyd, event-model, tiled or h5py here: a user with arrays from
any source (an FXI HDF5 file, a replayed run) calls these directly.
"""

from ._flatdark import FlatDarkWarning, flat_dark_correct, remove_zingers, transmission_to_absorbance
from ._lcf import LcfResult, fit_lcf, xanes_mask
from ._partial import XanesMaps, partial_xanes_maps, passed_peak_ev, peak_whiteline_map, sample_mask
from ._pipeline import (
    FRAME_TYPES,
    NO_ENERGY_INDEX,
    EnergyCompleted,
    FrameAligned,
    FrameLabel,
    Xanes2DPipeline,
    XanesScanLayout,
)
from ._registration import AlignmentResult, StackAligner, align_stack, apply_shifts, estimate_shift
from ._validate import XanesInputWarning
from ._xanes import STATUS_CODES, XanesResult, find_e0, fit_xanes, normalization_parameters

__all__ = [
    "FRAME_TYPES",
    "NO_ENERGY_INDEX",
    "AlignmentResult",
    "EnergyCompleted",
    "FrameAligned",
    "FrameLabel",
    "FlatDarkWarning",
    "LcfResult",
    "STATUS_CODES",
    "StackAligner",
    "XanesInputWarning",
    "Xanes2DPipeline",
    "XanesMaps",
    "XanesResult",
    "XanesScanLayout",
    "align_stack",
    "apply_shifts",
    "estimate_shift",
    "find_e0",
    "fit_lcf",
    "fit_xanes",
    "flat_dark_correct",
    "normalization_parameters",
    "partial_xanes_maps",
    "passed_peak_ev",
    "peak_whiteline_map",
    "remove_zingers",
    "sample_mask",
    "transmission_to_absorbance",
    "xanes_mask",
]
