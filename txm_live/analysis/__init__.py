"""Pure numerical analysis for TXM data: flat/dark correction, registration,
per-pixel XANES fitting, linear combination fitting and tomography.

No bluesky, ophyd, event-model, tiled or h5py here: a user with arrays from
any source (an FXI HDF5 file, a replayed run) calls these directly.
"""

from ._flatdark import FlatDarkWarning, flat_dark_correct, remove_zingers
from ._lcf import LcfResult, fit_lcf, xanes_mask
from ._registration import AlignmentResult, StackAligner, align_stack, apply_shifts, estimate_shift
from ._tomo import (
    MIN_ANGLES,
    TomoInputWarning,
    angle_weights,
    fov_radius_px,
    reconstruct,
    reconstruction_backends,
)
from ._tomo_center import CenterSweep, center_sweep, find_center, slice_entropy
from ._tomo_prep import (
    correct_jitter,
    estimate_jitter,
    normalize_projections,
    remove_outliers,
    remove_stripes,
)
from ._validate import XanesInputWarning
from ._xanes import STATUS_CODES, XanesResult, find_e0, fit_xanes, normalization_parameters
from ._xanes3d_register import (
    ProjectionDrift,
    estimate_projection_drift,
    register_volumes,
    shift_rows,
)
from ._xanes_sampled import XanesSampler, fit_xanes_sampled, prepare_xanes_sampled

__all__ = [
    "AlignmentResult",
    "CenterSweep",
    "FlatDarkWarning",
    "LcfResult",
    "MIN_ANGLES",
    "ProjectionDrift",
    "STATUS_CODES",
    "StackAligner",
    "TomoInputWarning",
    "XanesInputWarning",
    "XanesResult",
    "XanesSampler",
    "align_stack",
    "angle_weights",
    "apply_shifts",
    "center_sweep",
    "correct_jitter",
    "estimate_jitter",
    "estimate_projection_drift",
    "estimate_shift",
    "find_center",
    "find_e0",
    "fit_lcf",
    "fit_xanes",
    "fit_xanes_sampled",
    "flat_dark_correct",
    "fov_radius_px",
    "normalization_parameters",
    "normalize_projections",
    "prepare_xanes_sampled",
    "reconstruct",
    "reconstruction_backends",
    "register_volumes",
    "remove_outliers",
    "remove_stripes",
    "remove_zingers",
    "shift_rows",
    "slice_entropy",
    "xanes_mask",
]
