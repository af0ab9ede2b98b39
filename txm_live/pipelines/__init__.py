"""Pipelines that compose :mod:`txm_live.analysis` functions with I/O, used alike live,
in replay and in batch (``txm-live analyze3d``)."""

from .xanes3d import (
    RECONSTRUCTION_DEFAULTS,
    EnergyReport,
    WhitelinePreview,
    Xanes3DFit,
    Xanes3DPipeline,
    fit_store,
    process_energy,
    process_reference,
    run_xanes3d,
)
from .xanes3d_store import RESULT_MAPS, Xanes3DStore

__all__ = ["EnergyReport", "RECONSTRUCTION_DEFAULTS", "RESULT_MAPS", "WhitelinePreview", "Xanes3DFit", "Xanes3DPipeline",
           "Xanes3DStore", "fit_store", "process_energy", "process_reference", "run_xanes3d"]
