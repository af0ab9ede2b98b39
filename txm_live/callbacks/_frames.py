"""Frames referenced by ``stream_resource`` / ``stream_datum`` documents, read from HDF5.

Live, a ``stream_datum`` names one frame that the detector has just written (SWMR,
flushed per frame); on replay from Tiled one ``stream_datum`` may cover a whole stream.
Files are opened read-only with ``swmr=True`` (always: Tiled's embedded server opens the
same files in this process with ``swmr=True`` and HDF5 refuses mismatched flags) and kept
open for the run; the dataset is refreshed until the requested frames are there.

``swmr=True`` skips HDF5's end-of-file check: frames of a truncated file (a copy cut
short, a full disk) read back as zeros without any error. Before frames are read, the
byte range of each of their chunks is checked against the file's size on disk
(:func:`check_frames_in_file`), and a frame that lies beyond the end raises
:class:`TruncatedFrameFile` naming the file.
"""
from __future__ import annotations

import itertools
import os
import time
from urllib.parse import unquote, urlparse

import numpy as np

__all__ = ["FrameReader", "path_from_uri", "check_frames_in_file", "TruncatedFrameFile"]


class TruncatedFrameFile(OSError):
    """Frames a file's metadata announces lie beyond the end of the file on disk."""


def _chunk_starts(ds, index: int):
    """Coordinates of the chunks holding frame ``index`` of a chunked dataset."""
    chunks = ds.chunks
    first = (index // chunks[0]) * chunks[0]
    ranges = [range(0, n, c) for n, c in zip(ds.shape[1:], chunks[1:])]
    return [(first, *rest) for rest in itertools.product(*ranges)]


def check_frames_in_file(path, ds, start: int, stop: int) -> None:
    """Raise :class:`TruncatedFrameFile` unless frames ``start:stop`` of ``ds`` are on disk.

    Compares each chunk's end (``byte_offset + size``, from the chunk index) — or a
    contiguous dataset's end — with the size of the file at ``path``.
    """
    size = os.path.getsize(path)
    where = f"{path}:{ds.name}"
    if ds.chunks is None:
        offset = ds.id.get_offset()
        end = (offset or 0) + ds.id.get_storage_size()
        if offset is None or end > size:
            raise TruncatedFrameFile(f"{where}: the dataset needs bytes up to {end} but the file has {size}: "
                                     "the file is truncated (frames would read as zeros)")
        return
    for index in range(start, stop):
        for coord in _chunk_starts(ds, index):
            info = ds.id.get_chunk_info_by_coord(coord)
            if info.byte_offset is None:
                raise TruncatedFrameFile(f"{where}: frame {index} is announced but was never written to the file "
                                         "(it would read as zeros)")
            end = info.byte_offset + info.size
            if end > size:
                raise TruncatedFrameFile(
                    f"{where}: frame {index} needs bytes up to {end} but the file has {size}: the file is "
                    "truncated (a copy cut short or a full disk?); frames would read as zeros")


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
            try:
                f = h5py.File(path, "r", libver="latest", swmr=True)
            except OSError as exc:  # h5py's message does not name the file
                raise OSError(f"cannot open the detector file {path}: {exc}") from exc
            self._files[path] = f
        return f

    def read(self, uri: str, dataset: str, start: int, stop: int) -> np.ndarray:
        """Frames ``start:stop`` of ``dataset`` in the file at ``uri``; shape (n, ny, nx)."""
        f = self._file(path_from_uri(uri))
        if dataset not in f:
            raise KeyError(f"{path_from_uri(uri)} has no dataset {dataset!r}")
        ds = f[dataset]
        deadline = time.monotonic() + self.wait_s
        while True:
            ds.refresh()
            if ds.shape[0] >= stop:
                check_frames_in_file(path_from_uri(uri), ds, start, stop)
                return ds[start:stop]
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{uri}:{dataset} holds {ds.shape[0]} frames after {self.wait_s} s; "
                    f"frames {start}:{stop} were announced"
                )
            time.sleep(0.005)

    def read_refs(self, refs):
        """Yield ``(ref, image)`` for labelled frames (:class:`~txm_live.callbacks._bookkeeping.FrameRef`),
        reading each run of consecutive rows of one dataset in one call."""
        i = 0
        while i < len(refs):
            j = i + 1
            while (j < len(refs) and refs[j].uri == refs[i].uri and refs[j].dataset == refs[i].dataset
                   and refs[j].row == refs[j - 1].row + 1):
                j += 1
            images = self.read(refs[i].uri, refs[i].dataset, refs[i].row, refs[j - 1].row + 1)
            yield from zip(refs[i:j], images)
            i = j

    def close(self) -> None:
        for f in self._files.values():
            try:
                f.close()
            except Exception:  # closing a handle must never raise into the caller
                pass
        self._files.clear()
