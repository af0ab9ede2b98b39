"""Live 2D XANES analysis of one raw run, emitting an analysis run (event-model).

:class:`Xanes2DAnalysis` is an ``event_model.DocumentRouter`` built per raw run (by the
``RunRouter`` in :class:`txm_live.callbacks.LiveAnalysis`) and fed documents on the
analysis worker thread, never on the RunEngine's. It does document bookkeeping and
emission only; the numbers come from :class:`txm_live.analysis.Xanes2DPipeline`:

* :class:`~txm_live.callbacks._bookkeeping.LabelledFrames` joins each frame's file row
  (``stream_datum``) to its event's label (frame type, energy index, repeat), live or
  replayed;
* the frame is read from its HDF5 file and handed to the pipeline with its label; the
  pipeline decides everything from labels (dark/flat choice, registration order,
  re-taken frames: the later replaces the earlier), so live, replay and batch agree;
* the pipeline's steps become rows of the analysis run: ``drift`` (one per frame),
  ``spectrum`` (one per energy), ``maps`` (partial, then final) and ``status``.

A result the analysis cannot stand behind (saturated flats or frames, a registration
beyond its search range: :attr:`txm_live.analysis.Xanes2DPipeline.quality_warnings`) is
said three times: the ``status`` row's ``quality`` (``'ok'`` or ``'suspect'``) and
``quality_warnings``, the analysis stop document's ``reason`` (``SUSPECT: ...``), and a
log warning.
"""
from __future__ import annotations

import logging

import numpy as np

from txm_live.analysis import (
    QUALITY_SUSPECT,
    EnergyCompleted,
    FrameAligned,
    Xanes2DPipeline,
    XanesMaps,
    XanesScanLayout,
)

from ._bookkeeping import FrameRef, LabelledFrames
from ._emit import AnalysisRun, maps_data_keys, scalar_key
from ._frames import FrameReader
from ._guarded import GuardedFrameAnalysis

logger = logging.getLogger(__name__)

__all__ = ["Xanes2DAnalysis", "ANALYSIS_NAME"]

ANALYSIS_NAME = "xanes2d_live"
ANALYSIS_VERSION = 2
MAP_FIELDS = ("whiteline", "edge", "edge_jump")
#: A frame's labelled energy may differ from the start document's by at most this (eV).
ENERGY_LABEL_TOL_EV = 1e-3

_DRIFT_KEYS = {"frame_index": scalar_key("integer"), "energy_index": scalar_key("integer"),
               "repeat": scalar_key("integer"), "energy_ev": scalar_key(), "shift_y_px": scalar_key(),
               "shift_x_px": scalar_key(), "drift_y_px": scalar_key(), "drift_x_px": scalar_key()}
_SPECTRUM_KEYS = {"energy_index": scalar_key("integer"), "energy_ev": scalar_key(),
                  "mean_absorbance": scalar_key()}
_STATUS_KEYS = {"raw_exit_status": scalar_key("string"), "raw_reason": scalar_key("string"),
                "partial": scalar_key("boolean"), "failed": scalar_key("boolean"),
                "errors": scalar_key("string"), "notes": scalar_key("string"),
                "n_frames": scalar_key("integer"), "n_frames_planned": scalar_key("integer"),
                "n_retaken": scalar_key("integer"), "n_energies": scalar_key("integer"),
                "quality": scalar_key("string"), "quality_warnings": scalar_key("string")}


def layout_from_start(start: dict) -> XanesScanLayout:
    """The scan layout a ``xanes_2d`` start document records (ValueError if it cannot)."""
    energies = start.get("energies_ev")
    if not energies:
        raise ValueError(f"the raw run's start document needs 'energies_ev' in scan order; got {energies!r}")
    return XanesScanLayout(
        energies_ev=energies, frames_per_energy=int(start.get("frames_per_energy", 1)),
        n_darks=int(start.get("n_darks", 0)), flats_per_energy=int(start.get("flats_per_energy", 1)),
        flat_energy_indices=start.get("flat_energy_indices"),
    )


class Xanes2DAnalysis(GuardedFrameAnalysis):
    """Flat/dark, registration and XANES maps of one ``scan_type='xanes2d'`` run.

    Parameters
    ----------
    start : dict
        The raw run's start document.
    emit : callable ``(name, doc)``
        Receives the analysis run's documents (e.g. a Tiled writer).
    preview : object, optional
        Has ``update(state, *, final)`` taking the dict of :meth:`preview_state`
        (e.g. :class:`txm_live.callbacks.preview.PngPreview`).
    registration_mode : str
        :class:`~txm_live.analysis.StackAligner` mode. Default ``'running_mean'``.
    fit_params : dict, optional
        Keyword arguments for :func:`~txm_live.analysis.fit_xanes` (recorded).
    partial_every, min_partial_energies : int
        Partial maps every ``partial_every`` energies from ``min_partial_energies`` on.
    replay : bool
        Recorded in the analysis start document.
    frame_wait_s : float
        How long to wait for an announced frame to appear in its file.
    page_interval_s : float
        Drift and spectrum rows are sent as event pages at most this often (s).
    zinger_sigma : float or None
        :func:`~txm_live.analysis.remove_zingers` threshold (darks and flats cleaned once,
        each frame as it comes); None: off.
    """

    analysis_label = "live XANES analysis"

    def __init__(self, start, emit, *, preview=None, registration_mode: str = "running_mean",
                 fit_params: dict | None = None, partial_every: int = 10,
                 min_partial_energies: int = 20, replay: bool = False, frame_wait_s: float = 10.0,
                 page_interval_s: float = 1.0, zinger_sigma: float | None = 10.0):
        super().__init__()
        self.raw_start = start
        self.preview = preview
        self._preview_problem: str | None = None
        self.errors: list[str] = []
        self.failed = False
        self.finished = False
        self.parameters = {
            "registration_mode": registration_mode, "zinger_sigma": zinger_sigma,
            "fit_xanes": dict(fit_params or {}),
            "flat_dark": {"dark": "median of all darks", "flat": "median of the flats at the nearest flat energy"},
            "frames": "identified by their labels; a re-taken frame replaces the earlier one",
            "version": ANALYSIS_VERSION,
        }
        self.pipeline = None
        self._reader = FrameReader(wait_s=frame_wait_s)
        self.run = AnalysisRun(emit, self._metadata(start, replay), page_interval_s=page_interval_s)
        self.uid = self.run.uid
        self.run.describe("drift", _DRIFT_KEYS)
        self.run.describe("spectrum", _SPECTRUM_KEYS)
        try:
            self.layout = layout_from_start(start)
            self.pipeline = Xanes2DPipeline(
                self.layout, registration_mode=registration_mode, zinger_sigma=zinger_sigma,
                fit_params=fit_params, partial_every=partial_every, min_partial_energies=min_partial_energies)
        except (TypeError, ValueError) as exc:
            self.layout = None
            self._fail("start document", exc)
        self.frames = LabelledFrames(start, self.layout)

    def _metadata(self, start: dict, replay: bool) -> dict:
        return {
            "parent_uid": start["uid"], "parent_plan_name": start.get("plan_name"),
            "analysis": ANALYSIS_NAME, "analysis_parameters": self.parameters,
            "scan_type": start.get("scan_type"), "element": start.get("element"), "edge": start.get("edge"),
            "energies_ev": list(start.get("energies_ev") or []), "pixel_size_nm": start.get("pixel_size_nm"),
            "replay": bool(replay),
        }

    def stop(self, doc):
        if not self.failed:
            try:
                self._handle(self.pipeline.finish())
            except Exception as exc:
                self._fail("frames left at the stop document", exc)
        self._finish(doc)

    def _add(self, refs: list[FrameRef]) -> None:
        """Read the frames (contiguous rows in one read) and hand them to the pipeline."""
        for ref, image in self._reader.read_refs(refs):
            self._check_energy(ref)
            self._handle(self.pipeline.add_frame(ref.label, image, source=(ref.stream, ref.row)))

    def _check_energy(self, ref: FrameRef) -> None:
        label = ref.label
        if label.frame_type == "dark":
            return
        if not 0 <= label.energy_index < self.layout.n_energies:
            raise ValueError(f"{label} names energy index {label.energy_index}, but the start document lists "
                             f"{self.layout.n_energies} energies")
        listed = float(self.layout.energies_ev[label.energy_index])
        if np.isfinite(ref.energy_ev) and abs(ref.energy_ev - listed) > ENERGY_LABEL_TOL_EV:
            raise ValueError(f"{label} was taken at {ref.energy_ev} eV, but the start document lists "
                             f"{listed} eV at energy index {label.energy_index}")

    # ---- pipeline steps: emission ---------------------------------------------------
    def _handle(self, steps) -> None:
        for step in steps:
            if isinstance(step, FrameAligned):
                dy, dx = step.shift_px
                self.run.event("drift", {"frame_index": step.frame_index, "energy_index": step.label.energy_index,
                                         "repeat": step.label.repeat, "energy_ev": step.energy_ev,
                                         "shift_y_px": dy, "shift_x_px": dx, "drift_y_px": -dy,
                                         "drift_x_px": -dx}, buffered=True)
            elif isinstance(step, EnergyCompleted):
                self.run.event("spectrum", {"energy_index": step.energy_index, "energy_ev": step.energy_ev,
                                            "mean_absorbance": step.mean_absorbance}, buffered=True)
                self._preview(final=False)
            elif isinstance(step, XanesMaps):
                self._emit_maps(step)

    def _emit_maps(self, maps: XanesMaps) -> None:
        self.run.describe("maps", maps_data_keys(maps.whiteline.shape))
        data = {f: np.asarray(getattr(maps, f), dtype=np.float32) for f in MAP_FIELDS}
        data.update(mask=np.asarray(maps.mask, dtype=np.uint8), n_energies=maps.n_energies,
                    final=bool(maps.final), e0_ev=float(maps.e0_ev), method=maps.method)
        self.run.event("maps", data)

    # ---- previews -----------------------------------------------------------------------
    @property
    def stack(self) -> np.ndarray:
        """Aligned absorbance so far (n, ny, nx) float32 (:attr:`pipeline`'s)."""
        return self.pipeline.stack if self.pipeline is not None else np.empty((0, 0, 0), np.float32)

    @property
    def result(self):
        """The final :class:`~txm_live.analysis.XanesResult` (None until the stop document)."""
        return None if self.pipeline is None else self.pipeline.result

    def preview_state(self, *, final: bool = False) -> dict:
        """What a preview shows now: aligned frame, mean spectrum, drift, whiteline map."""
        pipe = self.pipeline
        n = len(pipe.stack)
        maps = pipe.final if final else pipe.partial
        return {
            "title": f"run {self.raw_start['uid'][:8]}: {n}/{self.layout.n_energies} energies",
            "frame": pipe.stack[-1].copy() if n else None,
            "energy_ev": float(pipe.energies_done_ev[-1]) if n else float("nan"),
            "spectrum_e": pipe.energies_done_ev.copy(),
            "spectrum": list(pipe.mean_spectrum),
            "drift": -np.asarray(pipe.shifts, dtype=float).reshape(-1, 2),
            "whiteline": None if maps is None else maps.whiteline,
            "final": final,
        }

    def _preview(self, *, final: bool) -> None:
        if self.preview is None:
            return
        try:
            self.preview.update(self.preview_state(final=final), final=final)
        except Exception as exc:  # a preview never fails the analysis
            logger.warning("preview failed: %r", exc)
            if self.preview_problem is None:
                self.preview_problem = f"previews not written: {type(exc).__name__}: {exc}"

    @property
    def preview_problem(self) -> str | None:
        """Why previews are not written (reported in the status notes); None when they are."""
        return self._preview_problem or getattr(self.preview, "error", None)

    @preview_problem.setter
    def preview_problem(self, value: str | None) -> None:
        self._preview_problem = value

    # ---- the end ------------------------------------------------------------------------
    def _final_maps(self, complete: bool) -> None:
        try:
            self._emit_maps(self.pipeline.fit_final())
        except Exception as exc:
            if complete:
                self._fail("final maps", exc)
            else:  # an interrupted scan (stopped, aborted, halted) may lack the pre-edge: a partial
                # result, not a failure; RE.stop() closes the raw run 'success' all the same
                self.errors.append(f"final maps unavailable from the partial data: {type(exc).__name__}: {exc}")
                logger.warning("run %s: %s", self.raw_start.get("uid"), self.errors[-1])

    def _finish(self, raw_stop) -> None:
        if self.finished:
            return
        self.finished = True
        if not self.failed:
            self._final_maps(complete=not self._partial(raw_stop))
        if not self.failed:
            self._preview(final=True)
        self._reader.close()
        self._emit_status(raw_stop)

    def _counts(self) -> tuple[int, int]:
        """Sample frames analysed and planned."""
        n_frames = len(self.pipeline.shifts) if self.pipeline is not None else 0
        return n_frames, self.layout.n_sample_frames if self.layout is not None else 0

    def _partial(self, raw_stop) -> bool:
        """The raw run did not succeed, or not every planned frame was analysed (a stopped scan)."""
        n_frames, planned = self._counts()
        return not (raw_stop.get("exit_status", "success") == "success" and n_frames == planned)

    def _emit_status(self, raw_stop) -> None:
        raw_status = raw_stop.get("exit_status", "success")
        pipe = self.pipeline
        n_frames, planned = self._counts()
        n_energies = len(pipe.stack) if pipe is not None else 0
        notes = (pipe.notes if pipe is not None else []) + self.frames.notes + (
            [self.preview_problem] if self.preview_problem else [])
        quality_warnings = pipe.quality_warnings if pipe is not None else []
        quality = pipe.quality if pipe is not None else QUALITY_SUSPECT
        for warning in quality_warnings:
            logger.warning("analysis of run %s is suspect: %s", self.raw_start.get("uid"), warning)
        partial = self._partial(raw_stop)
        self.run.flush()
        self.run.describe("status", _STATUS_KEYS)
        self.run.event("status", {
            "raw_exit_status": raw_status, "raw_reason": raw_stop.get("reason", ""), "partial": partial,
            "failed": self.failed, "errors": "\n".join(self.errors), "notes": "\n".join(notes),
            "n_frames": n_frames, "n_frames_planned": planned,
            "n_retaken": pipe.n_retaken if pipe is not None else 0, "n_energies": n_energies,
            "quality": quality, "quality_warnings": "\n".join(quality_warnings)})
        exit_status = "fail" if self.failed else raw_status if raw_status != "success" else "success"
        reason = (f"raw run {raw_status}" + (f" ({raw_stop.get('reason')})" if raw_stop.get("reason") else "")
                  + f"; analysed {n_frames}/{planned} frames, {n_energies} energies"
                  + ("; PARTIAL result" if partial else "")
                  + (f"; SUSPECT: {'; '.join(quality_warnings)}" if quality_warnings else "")
                  + (f"; analysis failed: {'; '.join(self.errors)}" if self.failed else ""))
        self.run.stop(exit_status, reason)

    def release(self) -> None:
        """Drop the stack and frames (the analysis run is written; maps and drift stay)."""
        if self.pipeline is not None:
            self.pipeline.release()
