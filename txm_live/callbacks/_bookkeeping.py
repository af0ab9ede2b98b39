"""Which frame is which: join ``stream_datum`` rows to their events' labels.

Every event of a frame stream carries the frame's label (:mod:`txm_live.devices.label`)
and its frame is one row of a file, named by the ``stream_datum`` with the event's
``seq_num``. :class:`LabelledFrames` joins the two, whatever order they come in:

* live, each event's ``stream_datum`` (one row) comes just before the event;
* replayed from Tiled, all events come first and then one ``stream_datum`` per stream
  covering every row (:func:`txm_live.replay.replay` splits it where a stream holds
  re-taken frames, so each row keeps its own ``seq_num``).

A ``seq_num`` seen twice is a frame re-taken after a pause (the RunEngine re-uses the
number when it rewinds): each row is announced with its label, in row order, and the
analysis keeps the later one. Runs recorded before frames carried labels get labels
from their ``seq_num`` and the start document's layout (noted in :attr:`notes`).
"""
from __future__ import annotations

from dataclasses import dataclass

from txm_live.analysis import NO_ENERGY_INDEX, FrameLabel, XanesScanLayout

__all__ = ["DEFAULT_LABEL_KEYS", "FrameRef", "LabelledFrames"]

#: Label field -> event data key, as :func:`txm_live.devices.label.make_frame_label`
#: names them; a start document's ``frame_label_keys`` overrides it.
DEFAULT_LABEL_KEYS = {
    "frame_type": "frame_type",
    "energy_index": "frame_energy_index",
    "repeat": "frame_repeat",
    "energy_ev": "frame_energy_ev",
}
#: Stream name -> frame type, for runs without labels.
_LEGACY_STREAMS = {"dark": "dark", "flat": "flat", "primary": "sample"}


@dataclass(frozen=True)
class FrameRef:
    """One labelled frame: row ``row`` of ``dataset`` in the file at ``uri``."""

    label: FrameLabel
    energy_ev: float
    stream: str
    uri: str
    dataset: str
    row: int


class LabelledFrames:
    """Document bookkeeping: descriptors, resources, datums and events -> :class:`FrameRef`.

    Parameters
    ----------
    start : dict
        The raw run's start document (``frame_label_keys``; the layout for old runs).
    layout : XanesScanLayout, optional
        Used only for runs whose events carry no labels.
    """

    def __init__(self, start: dict, layout: XanesScanLayout | None = None):
        self.keys = dict(DEFAULT_LABEL_KEYS)
        self.keys.update(start.get("frame_label_keys") or {})
        self.layout = layout
        self.notes: list[str] = []
        self._streams: dict[str, tuple[str, str]] = {}   # descriptor uid -> (stream name, image key)
        self._resources: dict[str, dict] = {}
        self._labels: dict[tuple[str, int], tuple[FrameLabel, float]] = {}  # (descriptor, seq_num) ->
        self._rows: dict[tuple[str, int], FrameRef] = {}  # datum rows waiting for their event

    def descriptor(self, doc) -> None:
        for key, data_key in doc["data_keys"].items():
            if data_key.get("external") == "STREAM:":
                self._streams[doc["uid"]] = (doc["name"], key)
                return

    def stream_resource(self, doc) -> None:
        self._resources[doc["uid"]] = doc

    def event(self, doc) -> list[FrameRef]:
        """Record the event's label; returns the frame whose row was waiting for it."""
        if doc["descriptor"] not in self._streams:
            return []
        stream, _ = self._streams[doc["descriptor"]]
        label = self._label(stream, doc["seq_num"], doc["data"])
        if label is None:
            return []
        key = (doc["descriptor"], doc["seq_num"])
        self._labels[key] = label
        ref = self._rows.pop(key, None)
        return [] if ref is None else [self._labelled(ref, *label)]

    def stream_datum(self, doc) -> list[FrameRef]:
        """Rows the datum names, labelled where their event is known (the rest wait)."""
        descriptor = doc["descriptor"]
        if descriptor not in self._streams:
            return []
        stream, _ = self._streams[descriptor]
        resource = self._resources[doc["stream_resource"]]
        start, stop = int(doc["indices"]["start"]), int(doc["indices"]["stop"])
        seq_start = int(doc["seq_nums"]["start"])
        seq_nums = range(seq_start, seq_start + (stop - start)) if seq_start else [None] * (stop - start)
        ready = []
        for row, seq_num in zip(range(start, stop), seq_nums):
            ref = FrameRef(None, float("nan"), stream, resource["uri"], resource["parameters"]["dataset"], row)
            if seq_num is None:
                raise ValueError(f"stream_datum {doc['uid']} has no seq_nums: its frames cannot be matched "
                                 "to their events")
            key = (descriptor, seq_num)
            if key in self._labels:
                ready.append(self._labelled(ref, *self._labels[key]))
            else:
                self._rows[key] = ref  # a later row with the same seq_num replaces it
        return ready

    @property
    def waiting(self) -> int:
        """Rows whose event has not come (yet)."""
        return len(self._rows)

    @staticmethod
    def _labelled(ref: FrameRef, label: FrameLabel, energy_ev: float) -> FrameRef:
        return FrameRef(label, energy_ev, ref.stream, ref.uri, ref.dataset, ref.row)

    def _label(self, stream: str, seq_num: int, data: dict):
        keys = self.keys
        if keys["frame_type"] in data:
            label = FrameLabel(str(data[keys["frame_type"]]), int(data[keys["energy_index"]]),
                               int(data[keys["repeat"]]))
            return label, float(data.get(keys["energy_ev"], float("nan")))
        return self._legacy_label(stream, seq_num)

    def _legacy_label(self, stream: str, seq_num: int):
        """Label of a frame in a run recorded without labels: from its position."""
        frame_type = _LEGACY_STREAMS.get(stream)
        if frame_type is None or self.layout is None:
            return None
        if not self.notes:
            self.notes.append("the run's events carry no frame labels: frames matched by sequence number "
                              "(a re-taken frame would be mis-assigned)")
        k = seq_num - 1
        layout = self.layout
        if frame_type == "dark":
            return FrameLabel("dark", NO_ENERGY_INDEX, k), float("nan")
        if frame_type == "sample":
            energy_index, repeat = divmod(k, layout.frames_per_energy)
        else:
            position, repeat = divmod(k, layout.flats_per_energy)
            if position >= len(layout.flat_energy_indices):
                return None
            energy_index = layout.flat_energy_indices[position]
        if energy_index >= layout.n_energies:
            return None
        return FrameLabel(frame_type, energy_index, repeat), float(layout.energies_ev[energy_index])
