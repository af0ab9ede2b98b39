"""Live analysis across the runs of an operando session: per-particle SOC, written to Tiled.

:class:`OperandoSessionCallback` is a ``(name, doc)`` callable fed two document streams:

* the raw runs (subscribe it to the RunEngine, ahead of the live analysis: see
  :func:`subscribe_operando_session`): it notes the start document of every run
  carrying an ``operando_uid`` (:func:`txm_live.plans.operando`);
* the live 2D XANES analysis runs (give it to :class:`~txm_live.callbacks.LiveAnalysis`
  as a sink): each measurement's final ``maps`` (edge jump, whiteline, edge, mask) and its
  ``status`` row (was the raw run complete, did the analysis succeed).

A measurement whose raw run succeeded and whose analysis produced final maps is added to
the session's :class:`txm_live.analysis.OperandoSession` (segmentation, tracking,
per-particle statistics: the numbers come from there); anything else is recorded as a
measurement that could not be used, with the reason. After each measurement one session
analysis run (``analysis='operando_session'``, ``operando_uid`` in its start) grows by:

``measurements``
    one row per measurement: its raw and analysis uids, cell readings, number of particles,
    drift, session mean energies and SOC, heterogeneity index, inactive fraction so far,
    and ``problem`` ('' when it was used);
``particles``
    one row per particle of the measurement: track id, whiteline/edge mean and spread,
    SOC and its spread (NaN without a calibration), weight, area, centroid, and the
    cell's time, counted SOC, voltage and charge — per-particle SOC vs charge or voltage
    is this table grouped by ``track_id``;
``tracks``
    after each measurement, every track's verdict so far (``activity``, ``inactive``,
    times seen, parent for fragments); the rows with the highest ``operando_index`` are
    the current verdict;
``particle_map``
    the map of track ids (0 = background) of the measurement, for outlines in a viewer.

The work runs on this callback's own worker thread, in arrival order; memory stays
bounded: the session keeps per-particle numbers (``OperandoSession``), and the maps of a
measurement are dropped once added. The run is stopped when the plan's closing run
(``operando_complete``) arrives or on :meth:`OperandoSessionCallback.close`; replaying the
session's runs from Tiled through a new callback gives the same rows
(:func:`txm_live.operando_replay.replay_session`).
"""
from __future__ import annotations

import logging
import math
import queue
import threading
import time
from dataclasses import dataclass, field

import event_model
import numpy as np

from txm_live.analysis import OperandoSession, SocCalibration

from ._emit import AnalysisRun, array_key, scalar_key
from .xanes2d import ANALYSIS_NAME as XANES_ANALYSIS_NAME

logger = logging.getLogger(__name__)

__all__ = ["OPERANDO_ANALYSIS_NAME", "OperandoSessionCallback", "subscribe_operando_session"]

OPERANDO_ANALYSIS_NAME = "operando_session"
OPERANDO_ANALYSIS_VERSION = 1
#: Cell readings a measurement run's start document carries (txm_live.plans.operando).
_CELL_KEYS = ("cell_time_s", "voltage_v", "current_a", "capacity_mah", "counted_soc")

_MEASUREMENT_KEYS = {
    "operando_index": scalar_key("integer"), "raw_uid": scalar_key("string"),
    "xanes_analysis_uid": scalar_key("string"), "cycle": scalar_key("integer"),
    "step_index": scalar_key("integer"), "step_mode": scalar_key("string"),
    **{k: scalar_key() for k in _CELL_KEYS},
    "used": scalar_key("boolean"), "n_particles": scalar_key("integer"), "drift_y_px": scalar_key(),
    "drift_x_px": scalar_key(), "mean_whiteline_ev": scalar_key(), "mean_edge_ev": scalar_key(),
    "mean_soc": scalar_key(), "heterogeneity_index": scalar_key(), "heterogeneity_ev": scalar_key(),
    "inactive_fraction": scalar_key(), "n_tracks": scalar_key("integer"), "problem": scalar_key("string"),
}
_PARTICLE_FIELDS = ("whiteline_ev", "whiteline_std_ev", "edge_ev", "edge_std_ev", "soc", "soc_std", "weight")
_PARTICLE_KEYS = {
    "operando_index": scalar_key("integer"), "track_id": scalar_key("integer"),
    **{k: scalar_key() for k in _PARTICLE_FIELDS},
    "area_px": scalar_key(), "centroid_y_px": scalar_key(), "centroid_x_px": scalar_key(),
    **{k: scalar_key() for k in _CELL_KEYS},
}
_TRACK_KEYS = {"operando_index": scalar_key("integer"), "track_id": scalar_key("integer"),
               "activity": scalar_key(), "inactive": scalar_key("boolean"), "n_seen": scalar_key("integer"),
               "parent_track": scalar_key("integer")}
#: ``parent_track`` of a track that is no fragment.
NO_PARENT = -1


@dataclass
class _Pending:
    """A measurement's XANES analysis run, until its status row says whether to use it."""

    raw_start: dict
    analysis_uid: str
    maps_descriptor: str | None = None
    status_descriptor: str | None = None
    maps: dict | None = None


@dataclass
class _SessionState:
    """One session: the analysis, and its analysis run (open until the session completes)."""

    uid: str
    analysis: OperandoSession
    run: AnalysisRun
    raw_uids: list = field(default_factory=list)


class OperandoSessionCallback:
    """Per-particle analysis of operando sessions, across their measurement runs.

    Parameters
    ----------
    emit : callable ``(name, doc)``, optional
        Receives the session analysis run's documents (e.g. a
        :class:`~txm_live.store.SafeTiledWriter`; pass the raw runs' writer).
    calibration : SocCalibration, optional
        Energy → SOC (e.g. from reference end-member spectra,
        :meth:`SocCalibration.from_references`); without it SOC columns are NaN and the
        energies, activity and inactive verdicts are still given.
    segmentation : dict, optional
        Options of :func:`~txm_live.analysis.segment_particles`.
    tracker_options : dict, optional
        Options of :class:`~txm_live.analysis.ParticleTracker` (a fresh tracker per session).
    weight_by_edge_jump : bool
        See :class:`~txm_live.analysis.OperandoSession`.
    replay : bool
        Recorded in the session analysis run's start document.
    """

    def __init__(self, emit=None, *, calibration: SocCalibration | None = None, segmentation: dict | None = None,
                 tracker_options: dict | None = None, weight_by_edge_jump: bool = True, replay: bool = False):
        if calibration is not None and not isinstance(calibration, SocCalibration):
            raise TypeError(f"calibration must be a SocCalibration, got {type(calibration).__name__}")
        self._options = {"calibration": calibration, "segmentation": dict(segmentation or {}),
                         "tracker_options": dict(tracker_options or {}),
                         "weight_by_edge_jump": bool(weight_by_edge_jump)}
        self._new_session_analysis()  # check the options now, before any run
        self.emit = emit
        self.replay = bool(replay)
        #: operando_uid -> the session (its analysis and analysis run), while it is open
        self.sessions: dict[str, _SessionState] = {}
        #: operando_uid -> session analysis run uid(s), kept for the whole life of the callback
        self.analysis_uids: dict[str, list[str]] = {}
        self.failures: list[str] = []
        self._raw_starts: dict[str, dict] = {}     # raw uid -> start, until its analysis is matched
        self._pending: dict[str, _Pending] = {}    # xanes analysis uid -> pending measurement
        self._descriptors: dict[str, str] = {}     # descriptor uid -> xanes analysis uid
        self._completed: set[str] = set()          # sessions whose closing run arrived
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="txm-live-operando", daemon=True)
        self._thread.start()

    def _new_session_analysis(self) -> OperandoSession:
        from txm_live.analysis import ParticleTracker

        o = self._options
        return OperandoSession(calibration=o["calibration"], segmentation=o["segmentation"],
                               tracker=ParticleTracker(**o["tracker_options"]),
                               weight_by_edge_jump=o["weight_by_edge_jump"])

    # ---- any thread: queue and return --------------------------------------------------
    def __call__(self, name, doc):
        # Not copied: bluesky and the analyses never change a document once emitted (and a
        # deep copy of a replayed map document costs more than its analysis).
        self._queue.put((name, doc))

    def wait(self, timeout: float | None = 60.0) -> bool:
        """Block until the queued documents are handled; False on timeout (s)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def close(self, reason: str = "closed") -> None:
        """Stop the analysis runs of sessions still open (after the queued documents)."""
        self._queue.put(("__close__", {"reason": reason}))

    # ---- worker ----------------------------------------------------------------------
    def _work(self):
        while True:
            name, doc = self._queue.get()
            try:
                self._route(name, doc)
            except Exception as exc:  # never lose the worker; the scan goes on
                message = f"operando session analysis failed on {name!r} document: {exc!r}"
                self.failures.append(message)
                logger.exception(message)
            finally:
                self._queue.task_done()

    def _route(self, name, doc):
        if name == "__close__":
            for uid in list(self.sessions):
                self._stop_session(uid, "success", doc["reason"])
        elif name == "start":
            self._start(doc)
        elif name == "descriptor" and doc.get("run_start") in self._pending:
            self._descriptor(doc)
        elif name == "event" and doc.get("descriptor") in self._descriptors:
            self._event(doc)
        elif name == "event_page" and doc.get("descriptor") in self._descriptors:
            for event in event_model.unpack_event_page(doc):
                self._event(event)

    def _start(self, doc):
        if doc.get("operando_uid") is not None and doc.get("analysis") is None:  # a raw run of a session
            if doc.get("operando_complete"):
                self._completed.add(doc["operando_uid"])
                self._stop_if_complete(doc["operando_uid"])
            elif doc.get("scan_type") == "xanes2d":
                self._raw_starts[doc["uid"]] = doc
        elif doc.get("analysis") == XANES_ANALYSIS_NAME and doc.get("parent_uid") in self._raw_starts:
            self._pending[doc["uid"]] = _Pending(self._raw_starts.pop(doc["parent_uid"]), doc["uid"])

    def _stop_if_complete(self, operando_uid: str) -> None:
        """Stop the session's analysis run once it completed and every measurement is analysed.

        The plan's closing run reaches this callback straight from the RunEngine, before
        the 2D XANES analysis of the last measurement (queued behind it) has finished.
        """
        if operando_uid not in self._completed:
            return
        waiting = [s for s in self._raw_starts.values() if s["operando_uid"] == operando_uid]
        waiting += [p for p in self._pending.values() if p.raw_start["operando_uid"] == operando_uid]
        if not waiting:
            self._completed.discard(operando_uid)
            self._stop_session(operando_uid, "success", "the operando session completed")

    def _descriptor(self, doc):
        pending = self._pending[doc["run_start"]]
        if doc["name"] == "maps":
            pending.maps_descriptor = doc["uid"]
        elif doc["name"] == "status":
            pending.status_descriptor = doc["uid"]
        else:
            return
        self._descriptors[doc["uid"]] = doc["run_start"]

    def _event(self, doc):
        pending = self._pending[self._descriptors[doc["descriptor"]]]
        data = doc["data"]
        if doc["descriptor"] == pending.maps_descriptor:
            if data.get("final"):
                pending.maps = {k: data[k] for k in ("edge_jump", "whiteline", "edge", "mask")}
            return
        # the status row comes last: the measurement is complete, use it or say why not
        del self._pending[pending.analysis_uid]
        self._descriptors = {k: v for k, v in self._descriptors.items() if v != pending.analysis_uid}
        problem = _problem(data, pending.maps)
        self._add_measurement(pending, None if problem else pending.maps, problem)
        self._stop_if_complete(pending.raw_start["operando_uid"])

    # ---- the session -------------------------------------------------------------------
    def _session(self, raw_start: dict) -> _SessionState:
        uid = raw_start["operando_uid"]
        state = self.sessions.get(uid)
        if state is None:
            run = AnalysisRun(self.emit or (lambda name, doc: None), self._metadata(raw_start))
            run.describe("measurements", _MEASUREMENT_KEYS)
            run.describe("particles", _PARTICLE_KEYS)
            run.describe("tracks", _TRACK_KEYS)
            state = self.sessions[uid] = _SessionState(uid, self._new_session_analysis(), run)
            self.analysis_uids.setdefault(uid, []).append(run.uid)
        return state

    def _metadata(self, raw_start: dict) -> dict:
        cal = self._options["calibration"]
        parameters = {k: v for k, v in self._options.items() if k != "calibration"}
        parameters["calibration"] = None if cal is None else {
            "method": cal.method, "quantity": cal.quantity, "energy_soc0_ev": cal.energy_soc0_ev,
            "energy_soc1_ev": cal.energy_soc1_ev}
        parameters["version"] = OPERANDO_ANALYSIS_VERSION
        return {"analysis": OPERANDO_ANALYSIS_NAME, "operando_uid": raw_start["operando_uid"],
                "analysis_parameters": parameters, "scan_type": "operando_session",
                "element": raw_start.get("element"), "edge": raw_start.get("edge"),
                "pixel_size_nm": raw_start.get("pixel_size_nm"), "sample": raw_start.get("sample"),
                "operando_protocol": raw_start.get("operando_protocol"),
                "nominal_capacity_mah": raw_start.get("nominal_capacity_mah"), "replay": self.replay}

    def _add_measurement(self, pending: _Pending, maps: dict | None, problem: str) -> None:
        raw = pending.raw_start
        state = self._session(raw)
        state.raw_uids.append(raw["uid"])
        cell = {k: float(raw.get(k, math.nan)) for k in _CELL_KEYS}
        summary = None
        if maps is not None:
            summary = state.analysis.add(
                np.asarray(maps["edge_jump"], np.float32), np.asarray(maps["whiteline"], np.float32),
                edge_ev=np.asarray(maps["edge"], np.float32), valid=np.asarray(maps["mask"]).astype(bool),
                time_s=cell["cell_time_s"], cell_soc=cell["counted_soc"], voltage_v=cell["voltage_v"])
            problem = summary.problem
        stats = state.analysis.statistics()
        self._emit_measurement(state, pending, raw, cell, summary, stats, problem)
        if summary is not None:
            self._emit_particles(state, raw, cell, stats, summary.index)
            self._emit_map(state, raw, summary.index)
        self._emit_tracks(state, raw, stats)

    def _emit_measurement(self, state, pending, raw, cell, summary, stats, problem) -> None:
        k = None if summary is None else summary.index
        pick = (lambda values: float(values[k])) if k is not None else (lambda values: math.nan)
        drift = summary.drift_px if summary is not None else (math.nan, math.nan)
        state.run.event("measurements", {
            "operando_index": int(raw.get("operando_index", -1)), "raw_uid": raw["uid"],
            "xanes_analysis_uid": pending.analysis_uid, "cycle": int(raw.get("cycle", -1)),
            "step_index": int(raw.get("step_index", -1)), "step_mode": str(raw.get("step_mode", "")),
            **cell, "used": summary is not None and not problem,
            "n_particles": summary.n_particles if summary is not None else 0,
            "drift_y_px": float(drift[0]), "drift_x_px": float(drift[1]),
            "mean_whiteline_ev": summary.mean_whiteline_ev if summary is not None else math.nan,
            "mean_edge_ev": summary.mean_edge_ev if summary is not None else math.nan,
            "mean_soc": pick(stats.mean_soc), "heterogeneity_index": pick(stats.heterogeneity_index),
            "heterogeneity_ev": pick(stats.heterogeneity_ev), "inactive_fraction": float(stats.inactive_fraction),
            "n_tracks": int(stats.track_ids.size), "problem": problem})

    def _emit_particles(self, state, raw, cell, stats, k: int) -> None:
        tracks = state.analysis.track_ids_of(k)
        if tracks.size == 0:
            return
        cols = np.searchsorted(stats.track_ids, tracks)
        rows = state.analysis.particle_rows(k)
        index = int(raw.get("operando_index", -1))
        for j, track in enumerate(tracks.tolist()):
            data = {"operando_index": index, "track_id": int(track)}
            data.update({f: float(getattr(stats, f)[k, cols[j]]) for f in _PARTICLE_FIELDS})
            data.update({f: float(rows[f][j]) for f in ("area_px", "centroid_y_px", "centroid_x_px")})
            data.update(cell)
            state.run.event("particles", data, buffered=True)
        state.run.flush()

    def _emit_tracks(self, state, raw, stats) -> None:
        index = int(raw.get("operando_index", -1))
        seen = np.isfinite(stats.whiteline_ev).sum(axis=0)
        for j, track in enumerate(stats.track_ids.tolist()):
            state.run.event("tracks", {
                "operando_index": index, "track_id": int(track), "activity": float(stats.activity[j]),
                "inactive": bool(stats.inactive[j]), "n_seen": int(seen[j]),
                "parent_track": int(stats.parents.get(track, NO_PARENT))}, buffered=True)
        state.run.flush()

    def _emit_map(self, state, raw, k: int) -> None:
        labels = state.analysis.latest_labels
        if labels is None:
            return
        lut = np.concatenate([[0], state.analysis.track_ids_of(k)]).astype(np.int32)
        track_map = lut[labels.labels]
        state.run.describe("particle_map", {"track_map": array_key(track_map.shape, np.dtype(np.int32).str),
                                            "operando_index": scalar_key("integer")})
        state.run.event("particle_map", {"track_map": track_map,
                                         "operando_index": int(raw.get("operando_index", -1))})

    def _stop_session(self, uid: str, exit_status: str, reason: str) -> None:
        state = self.sessions.pop(uid, None)
        if state is None:
            return
        n = len(state.analysis.measurements)
        state.run.stop(exit_status, f"{reason}; {n} of {len(state.raw_uids)} measurements analysed")


def _problem(status: dict, maps: dict | None) -> str:
    """Why a measurement's XANES analysis cannot be used ('' if it can)."""
    if status.get("failed"):
        return f"the 2D XANES analysis failed: {status.get('errors', '')}"
    if status.get("raw_exit_status", "success") != "success" or status.get("partial"):
        return (f"incomplete measurement (raw run {status.get('raw_exit_status')}, "
                f"{status.get('n_frames')}/{status.get('n_frames_planned')} frames)")
    if maps is None:
        return "the 2D XANES analysis gave no final maps"
    return ""


def subscribe_operando_session(RE, live, *, emit=None, **options) -> OperandoSessionCallback:
    """Subscribe an :class:`OperandoSessionCallback` to ``RE`` (raw runs) and ``live`` (maps).

    ``live`` is the :class:`~txm_live.callbacks.LiveAnalysis` analysing the measurements;
    ``emit`` defaults to its writer, so one writer stores raw, XANES and session runs.

    The callback must hear each raw start document before the analysis documents made
    from it (it only follows analysis runs of runs it knows): it is subscribed ahead of
    ``live``, which is re-subscribed after it when ``live`` was subscribed with
    :func:`~txm_live.callbacks.subscribe_live_analysis`. Subscribing both by hand, put
    the session callback first.
    """
    callback = OperandoSessionCallback(emit if emit is not None else live.writer, **options)
    if getattr(live, "token", None) is not None:
        RE.unsubscribe(live.token)
        callback.token = RE.subscribe(callback)
        live.token = RE.subscribe(live)
    else:
        callback.token = RE.subscribe(callback)
    live.sinks.append(callback)
    return callback
