"""File formats: FXI HDF5 files in and out (2D XANES, fly scans, 3D XANES), map export.

Readers return frozen dataclasses in the project's units (eV, radians, nm) that say
which FXI layout the file was read as and why; writers produce FXI's exact export
layout. See :mod:`txm_live.io.fxi` and :mod:`txm_live.io._fxi_detect`.
"""

from ._fxi_detect import (
    AUTO,
    FLY_SCAN,
    LAYOUTS,
    XANES2D,
    XANES2D_RAW,
    FxiLayoutError,
    FxiLayoutWarning,
    LayoutDecision,
    SignalSummary,
    summarize_signal,
)
from ._fxi_fields import FXI_OBJECTIVE_MAGNIFICATION, parse_pixel_size_nm
from ._fxi_write import (
    fxi_fly_scan_from_frames,
    fxi_xanes_from_frames,
    nearest_flat_rows,
    write_fxi,
    write_fxi_fly_scan,
    write_fxi_xanes,
)
from ._maps import write_maps_h5
from .fxi import (
    FxiFlyScan,
    FxiXanes2D,
    FxiXanes3D,
    open_fxi_xanes3d,
    read_fxi,
    read_fxi_fly_scan,
    read_fxi_xanes,
)

__all__ = [
    "AUTO",
    "FLY_SCAN",
    "FXI_OBJECTIVE_MAGNIFICATION",
    "FxiFlyScan",
    "FxiLayoutError",
    "FxiLayoutWarning",
    "FxiXanes2D",
    "FxiXanes3D",
    "LAYOUTS",
    "LayoutDecision",
    "SignalSummary",
    "XANES2D",
    "XANES2D_RAW",
    "fxi_fly_scan_from_frames",
    "fxi_xanes_from_frames",
    "nearest_flat_rows",
    "open_fxi_xanes3d",
    "parse_pixel_size_nm",
    "read_fxi",
    "read_fxi_fly_scan",
    "read_fxi_xanes",
    "summarize_signal",
    "write_fxi",
    "write_fxi_fly_scan",
    "write_fxi_xanes",
    "write_maps_h5",
]
