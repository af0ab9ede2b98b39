"""File formats: FXI-style HDF5 in and out, map export."""

from .fxi import FxiXanes, read_fxi_xanes, write_fxi_xanes, write_maps_h5

__all__ = ["FxiXanes", "read_fxi_xanes", "write_fxi_xanes", "write_maps_h5"]
