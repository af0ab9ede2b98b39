"""Pure numerical analysis for TXM data: flat/dark correction, registration,
per-pixel XANES fitting, linear combination fitting, the staged 2D XANES pipeline
(:class:`Xanes2DPipeline`) that live analysis, replay and batch files share, tomography,
and particles in chemical maps (segmentation, tracking, per-particle state of charge,
operando sessions).

No bluesky, ophyd, event-model, tiled or h5py here: a user with arrays from
any source (an FXI HDF5 file, a replayed run) calls these directly.
"""

from ._flatdark import (
    FlatDarkWarning,
    SaturationWarning,
    flat_dark_correct,
    full_scale_counts,
    remove_zingers,
    transmission_to_absorbance,
)
from ._lcf import LcfResult, fit_lcf, xanes_mask
from ._partial import XanesMaps, partial_xanes_maps, passed_peak_ev, peak_whiteline_map, sample_mask
from ._pipeline import (
    FRAME_TYPES,
    NO_ENERGY_INDEX,
    QUALITY_OK,
    QUALITY_SUSPECT,
    EnergyCompleted,
    FrameAligned,
    FrameLabel,
    Xanes2DPipeline,
    XanesScanLayout,
)
from ._particle_session import MeasurementSummary, OperandoSession, SessionStatistics
from ._particles import ParticleLabels, ParticleStatistics, SocCalibration, particle_statistics, segment_particles
from ._registration import (
    MAX_SHIFT_FRACTION,
    MIN_PEAK_RATIO,
    AlignmentResult,
    StackAligner,
    align_stack,
    apply_shifts,
    estimate_shift,
)
from ._tomo import (
    MIN_ANGLES,
    TomoInputWarning,
    angle_weights,
    fov_radius_px,
    reconstruct,
    reconstruction_backends,
)
from ._tomo_center import CenterSweep, center_sweep, find_center, slice_entropy
from ._tomo_pipeline import ProjectionAbsorbance, TomoPipeline, TomoSlice, TomoVolume
from ._tomo_prep import (
    correct_jitter,
    estimate_jitter,
    normalize_projections,
    remove_outliers,
    remove_stripes,
)
from ._tracking import ParticleTracker, TrackingStep
from ._validate import XanesInputWarning
from ._xanes_plan import MIN_ENERGIES
from ._xanes import STATUS_CODES, XanesResult, find_e0, fit_xanes, normalization_parameters
from ._xanes3d_register import (
    ProjectionDrift,
    estimate_projection_drift,
    register_volumes,
    shift_rows,
)
from ._xanes_sampled import XanesSampler, fit_xanes_sampled, prepare_xanes_sampled

__all__ = [
    "align_stack",
    "AlignmentResult",
    "angle_weights",
    "apply_shifts",
    "center_sweep",
    "CenterSweep",
    "correct_jitter",
    "EnergyCompleted",
    "estimate_jitter",
    "estimate_projection_drift",
    "estimate_shift",
    "find_center",
    "find_e0",
    "fit_lcf",
    "fit_xanes",
    "fit_xanes_sampled",
    "flat_dark_correct",
    "FlatDarkWarning",
    "fov_radius_px",
    "FRAME_TYPES",
    "FrameAligned",
    "FrameLabel",
    "full_scale_counts",
    "LcfResult",
    "MAX_SHIFT_FRACTION",
    "MeasurementSummary",
    "MIN_ANGLES",
    "MIN_ENERGIES",
    "MIN_PEAK_RATIO",
    "NO_ENERGY_INDEX",
    "normalization_parameters",
    "normalize_projections",
    "OperandoSession",
    "partial_xanes_maps",
    "particle_statistics",
    "ParticleLabels",
    "ParticleStatistics",
    "ParticleTracker",
    "passed_peak_ev",
    "peak_whiteline_map",
    "prepare_xanes_sampled",
    "ProjectionAbsorbance",
    "ProjectionDrift",
    "QUALITY_OK",
    "QUALITY_SUSPECT",
    "reconstruct",
    "reconstruction_backends",
    "register_volumes",
    "remove_outliers",
    "remove_stripes",
    "remove_zingers",
    "sample_mask",
    "SaturationWarning",
    "segment_particles",
    "SessionStatistics",
    "shift_rows",
    "slice_entropy",
    "SocCalibration",
    "StackAligner",
    "STATUS_CODES",
    "TomoInputWarning",
    "TomoPipeline",
    "TomoSlice",
    "TomoVolume",
    "TrackingStep",
    "transmission_to_absorbance",
    "Xanes2DPipeline",
    "xanes_mask",
    "XanesInputWarning",
    "XanesMaps",
    "XanesResult",
    "XanesSampler",
    "XanesScanLayout",
]
