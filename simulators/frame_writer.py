"""HDF5 frame files for the simulated area detector, referenced from the document stream.

The file layout mirrors what an areaDetector HDF5 plugin writes: one file per run (opened
at ``stage``, closed at ``unstage``), frames appended along the first axis. Each kind of
frame the plan asks for (``dark``, ``flat``, ``sample``) goes to its own dataset
``/entry/data/<frame_type>`` so that every Bluesky stream (``dark``, ``flat``,
``primary``) references one contiguous dataset through its own ``stream_resource``.

The file is written in HDF5 single-writer/multiple-reader (SWMR) mode and flushed after
every frame, so a live analysis process or the Tiled server can read frames while the
scan is still running.
"""
from __future__ import annotations

import uuid
from collections import deque
from pathlib import Path

import h5py
import numpy as np
from event_model import StreamRange, compose_stream_resource

FRAME_TYPES = ("dark", "flat", "sample")
HDF5_MIMETYPE = "application/x-hdf5"


class HDF5FrameFile:
    """One SWMR HDF5 file holding the frames of one run, by frame type.

    Parameters
    ----------
    directory : Path
        Folder the file is created in (one file per run, named by a fresh uuid).
    data_key : str
        The data key the frames appear under in the document stream.
    frame_shape : tuple of int
        ``(ny, nx)`` of every frame.
    dtype : numpy dtype
        Frame dtype (``uint16`` for the camera).
    extra_datasets : dict[str, tuple]
        Per-frame side datasets (name → per-frame shape) created before SWMR starts, e.g.
        the simulator's ground truth; appended with :meth:`append_extra`.
    """

    def __init__(self, directory, data_key: str, frame_shape, dtype=np.uint16, extra_datasets=None):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / f"{uuid.uuid4()}.h5"
        self.data_key = data_key
        self.frame_shape = tuple(int(n) for n in frame_shape)
        self._file = h5py.File(self.path, "w", libver="latest")
        self._datasets = {}
        for frame_type in FRAME_TYPES:
            self._datasets[frame_type] = self._file.create_dataset(
                self.dataset_path(frame_type),
                shape=(0, *self.frame_shape),
                maxshape=(None, *self.frame_shape),
                chunks=(1, *self.frame_shape),
                dtype=dtype,
            )
        self._extra = {}
        for name, shape in (extra_datasets or {}).items():
            self._extra[name] = self._file.create_dataset(
                f"/entry/extra/{name}", shape=(0, *shape), maxshape=(None, *shape), dtype="f8"
            )
        # SWMR must start after every dataset exists: no new objects can be created later.
        self._file.swmr_mode = True
        self._stream_docs = {}  # frame_type -> (stream_resource doc, compose_stream_datum)
        self._last_datum = {}   # frame_type -> the last stream_datum composed
        self._pending = deque()

    @staticmethod
    def dataset_path(frame_type: str) -> str:
        return f"/entry/data/{frame_type}"

    def append(self, frame_type: str, frame: np.ndarray, *, replace_last: bool = False) -> int:
        """Write one frame, flush it for readers, queue its asset documents; return its row.

        With ``replace_last`` the frame overwrites the last row of its type instead (a frame
        re-taken after a pause whose first take never reached an event: see
        :meth:`last_dropped`), and that row's documents are queued again if they were
        handed out and lost.
        """
        if frame_type not in self._datasets:
            raise ValueError(f"frame_type must be one of {FRAME_TYPES}, got {frame_type!r}")
        if frame.shape != self.frame_shape:
            raise ValueError(f"frame shape {frame.shape} differs from the file's {self.frame_shape}")
        ds = self._datasets[frame_type]
        if replace_last and frame_type in self._last_datum:
            datum = self._last_datum[frame_type]
            index = datum["indices"]["start"]
            ds[index] = frame
            ds.flush()
            self._requeue(frame_type, datum)
            return index
        index = ds.shape[0]
        ds.resize(index + 1, axis=0)
        ds[index] = frame
        ds.flush()
        if frame_type not in self._stream_docs:
            bundle = compose_stream_resource(
                mimetype=HDF5_MIMETYPE,
                uri=self.path.resolve().as_uri(),
                data_key=self.data_key,
                parameters={
                    "dataset": self.dataset_path(frame_type),
                    "chunk_shape": [1, *self.frame_shape],
                    "swmr": True,
                },
            )
            self._stream_docs[frame_type] = bundle
            self._pending.append(("stream_resource", bundle.stream_resource_doc))
        compose_datum = self._stream_docs[frame_type].compose_stream_datum
        datum = compose_datum(indices=StreamRange(start=index, stop=index + 1))
        self._last_datum[frame_type] = datum
        self._pending.append(("stream_datum", datum))
        return index

    def last_dropped(self, frame_type: str) -> bool:
        """True when the last frame of ``frame_type`` never reached an emitted event.

        Its ``stream_datum`` is still queued here, or was handed out and never stamped
        with a descriptor uid — which the RunEngine does when it emits the event, and
        skips when a pause drops the event being bundled.
        """
        datum = self._last_datum.get(frame_type)
        return datum is not None and not datum.get("descriptor")

    def _requeue(self, frame_type: str, datum) -> None:
        queued = {id(doc) for _, doc in self._pending}
        resource = self._stream_docs[frame_type].stream_resource_doc
        if not resource.get("run_start") and id(resource) not in queued:
            self._pending.append(("stream_resource", resource))  # it went out with the lost event
        if id(datum) not in queued:
            self._pending.append(("stream_datum", datum))

    def append_extra(self, name: str, values) -> None:
        ds = self._extra[name]
        n = ds.shape[0]
        ds.resize(n + 1, axis=0)
        ds[n] = values
        ds.flush()

    def collect_asset_docs(self):
        """Yield (and forget) the stream_resource / stream_datum documents queued so far."""
        while self._pending:
            yield self._pending.popleft()

    def close(self) -> None:
        if self._file.id.valid:
            self._file.close()
