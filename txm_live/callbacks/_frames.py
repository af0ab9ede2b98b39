"""Frames referenced by ``stream_resource`` / ``stream_datum`` documents, read from HDF5.

Live, a ``stream_datum`` names one frame that the detector has just written (SWMR,
flushed per frame); on replay from Tiled one ``stream_datum`` may cover a whole stream.
Files are opened read-only with ``swmr=True`` (always: Tiled's embedded server opens the
same files in this process with ``swmr=True`` and HDF5 refuses mismatched flags) and kept
open for the run; the dataset is refreshed until the requested frames are there.
"""
from __future__ import annotations

import time
from urllib.parse import unquote, urlparse

import numpy as np

__all__ = ["FrameReader", "path_from_uri"]


def path_from_uri(uri: str) -> str:
    """Local path of a ``file://`` URI (``file:///abs/path.h5`` or ``file://localhost/...``)."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("file", ""):
        raise ValueError(f"only file:// URIs can be read directly; got {uri!r}")
    return unquote(parsed.path)


class FrameReader:
    """Read frame ranges ``[start, stop)`` of HDF5 datasets named by stream resources.

    Parameters
    ----------
    wait_s : float
        How long to wait for frames a live detector has announced but not yet flushed.
    """

    def __init__(self, *, wait_s: float = 10.0):
        self.wait_s = float(wait_s)
        self._files: dict[str, object] = {}

    def _file(self, path: str):
        import h5py

        f = self._files.get(path)
        if f is None:
            f = h5py.File(path, "r", libver="latest", swmr=True)
            self._files[path] = f
        return f

    def read(self, uri: str, dataset: str, start: int, stop: int) -> np.ndarray:
        """Frames ``start:stop`` of ``dataset`` in the file at ``uri``; shape (n, ny, nx)."""
        ds = self._file(path_from_uri(uri))[dataset]
        deadline = time.monotonic() + self.wait_s
        while True:
            ds.refresh()
            if ds.shape[0] >= stop:
                return ds[start:stop]
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{uri}:{dataset} holds {ds.shape[0]} frames after {self.wait_s} s; "
                    f"frames {start}:{stop} were announced"
                )
            time.sleep(0.005)

    def close(self) -> None:
        for f in self._files.values():
            try:
                f.close()
            except Exception:  # closing a handle must never raise into the caller
                pass
        self._files.clear()
