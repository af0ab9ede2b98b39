"""An analysis run's documents: start, descriptors, events (paged), stop.

:class:`AnalysisRun` wraps ``event_model.compose_run`` for the live analyses: rows that
arrive often (drift, spectrum) are sent as one ``event_page`` per stream at most every
``page_interval_s`` (each Tiled write is an HTTP round trip, ~0.1 s); maps and status
go out at once.
"""
from __future__ import annotations

import time

import event_model
import numpy as np

__all__ = ["AnalysisRun", "array_key", "scalar_key"]


def array_key(shape, dtype_numpy: str = "<f4", dims=("y", "x")) -> dict:
    """Data key of an array field (``dims`` name its axes, e.g. ``('y', 'x')``)."""
    return {"source": "txm-live", "dtype": "array", "shape": list(shape), "dtype_numpy": dtype_numpy,
            "dims": list(dims)}


def scalar_key(dtype: str = "number") -> dict:
    """Data key of a scalar field (``'number'``, ``'integer'``, ``'boolean'``, ``'string'``)."""
    return {"source": "txm-live", "dtype": dtype, "shape": []}


class AnalysisRun:
    """Compose and emit one analysis run.

    Parameters
    ----------
    emit : callable ``(name, doc)``
    metadata : dict
        Start-document metadata (None values are left out).
    page_interval_s : float
        Least time between two pages of buffered rows.
    """

    def __init__(self, emit, metadata: dict, *, page_interval_s: float = 1.0):
        self._emit = emit
        self.page_interval_s = float(page_interval_s)
        self._bundle = event_model.compose_run(metadata={k: v for k, v in metadata.items() if v is not None})
        self.uid = self._bundle.start_doc["uid"]
        self._descriptors: dict[str, object] = {}
        self._buffer: dict[str, list] = {}
        self._last_page = time.monotonic()
        self._emit("start", self._bundle.start_doc)

    def describe(self, name: str, data_keys: dict) -> None:
        """Emit the descriptor of stream ``name`` (once)."""
        if name in self._descriptors:
            return
        bundle = self._bundle.compose_descriptor(name=name, data_keys=data_keys)
        self._descriptors[name] = bundle
        self._emit("descriptor", bundle.descriptor_doc)

    def described(self, name: str) -> bool:
        return name in self._descriptors

    def event(self, name: str, data: dict, *, buffered: bool = False) -> None:
        """Emit one row of stream ``name``; ``buffered`` rows go out as pages."""
        now = time.time()
        ev = self._descriptors[name].compose_event(data=data, timestamps={k: now for k in data})
        if not buffered:
            self.flush()
            self._emit("event", ev)
            return
        self._buffer.setdefault(name, []).append(ev)
        if time.monotonic() - self._last_page >= self.page_interval_s:
            self.flush()

    def flush(self) -> None:
        """Send the buffered rows now."""
        self._last_page = time.monotonic()
        for name in list(self._buffer):
            events = self._buffer.pop(name)
            if events:
                self._emit("event_page", event_model.pack_event_page(*events))

    def emit_composed(self, compose) -> None:
        """Emit the ``(name, doc)`` documents ``compose(bundle)`` makes from this run's
        ``event_model.compose_run`` bundle (streams of external arrays, e.g. the 3D XANES
        result volumes: :func:`txm_live.pipelines.xanes3d_tiled.volume_documents`)."""
        self.flush()
        for name, doc in compose(self._bundle):
            if name == "descriptor":
                self._descriptors[doc["name"]] = None  # described: no second descriptor of it
            self._emit(name, doc)

    def stop(self, exit_status: str, reason: str) -> None:
        self.flush()
        self._emit("stop", self._bundle.compose_stop(exit_status=exit_status, reason=reason))


def maps_data_keys(shape) -> dict:
    """Data keys of the ``maps`` stream (whiteline, edge, edge jump, mask and scalars)."""
    keys = {f: array_key(shape) for f in ("whiteline", "edge", "edge_jump")}
    keys.update(mask=array_key(shape, np.dtype(np.uint8).str), n_energies=scalar_key("integer"),
                final=scalar_key("boolean"), e0_ev=scalar_key(), method=scalar_key("string"))
    return keys
