"""The HDF5 file an areaDetector NDFileHDF5 plugin writes in Stream mode.

Layout (the plugin's default, without an XML layout file)::

    /entry/data/data                          (n, ny, nx) frames, chunked one per frame
    /entry/instrument/NDAttributes/<name>     (n,) one value per frame and attribute

The simulated camera attaches as NDAttributes the positions and settings every frame was
taken with and the simulator's ground truth (see :func:`simulators.ioc.camera.frame_attributes`).
With SWMR on, the file is flushed after every frame so readers (a live analysis, a Tiled
server) can follow it while it grows; every dataset exists before SWMR starts.
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

__all__ = ["NDHDF5File", "DATA_PATH", "ATTRIBUTES_GROUP"]

DATA_PATH = "/entry/data/data"
ATTRIBUTES_GROUP = "/entry/instrument/NDAttributes"


class NDHDF5File:
    """One capture: an HDF5 file frames are appended to.

    Parameters
    ----------
    path : Path
        File to create (an existing file is overwritten, as the plugin does).
    frame_shape : tuple of int
        ``(ny, nx)``.
    dtype : numpy dtype
        Frame dtype.
    attribute_names : sequence of str
        Per-frame NDAttributes (float64), created up front.
    swmr : bool
        Single-writer/multiple-reader mode, flushed per frame.
    """

    def __init__(self, path, frame_shape, dtype, attribute_names, *, swmr: bool):
        self.path = Path(path)
        self.frame_shape = tuple(int(n) for n in frame_shape)
        self._file = h5py.File(self.path, "w", libver="latest")
        try:
            self._data = self._file.create_dataset(
                DATA_PATH, shape=(0, *self.frame_shape), maxshape=(None, *self.frame_shape),
                chunks=(1, *self.frame_shape), dtype=dtype,
            )
            group = self._file.require_group(ATTRIBUTES_GROUP)
            self._attributes = {
                name: group.create_dataset(name, shape=(0,), maxshape=(None,), dtype="f8")
                for name in attribute_names
            }
            if swmr:
                self._file.swmr_mode = True
        except Exception:
            self._file.close()
            raise
        self.swmr = bool(swmr)

    @property
    def n_frames(self) -> int:
        return int(self._data.shape[0])

    def append(self, frame: np.ndarray, attributes: dict) -> int:
        """Append one frame and its attributes; return the frame's index in the file."""
        if frame.shape != self.frame_shape:
            raise ValueError(f"frame shape {frame.shape} differs from the file's {self.frame_shape}")
        index = self.n_frames
        for name, ds in self._attributes.items():
            ds.resize(index + 1, axis=0)
            ds[index] = float(attributes.get(name, np.nan))
            ds.flush()
        self._data.resize(index + 1, axis=0)
        self._data[index] = frame
        self._data.flush()  # the frame last: a reader that sees it also sees its attributes
        return index

    def close(self) -> None:
        if self._file.id.valid:
            self._file.close()
