"""Live tomography analysis of one raw run, emitting an analysis run (event-model).

:class:`TomoAnalysis` is an ``event_model.DocumentRouter`` built per raw run (by the
``RunRouter`` in :class:`txm_live.callbacks.LiveAnalysis`, for the plans ``tomo_fly`` and
``tomo_step`` and any run with ``scan_type='tomo'``) and fed documents on the analysis
worker thread. It does document bookkeeping and emission only; the numbers come from
:class:`txm_live.analysis.TomoPipeline`:

* :class:`~txm_live.callbacks._bookkeeping.LabelledFrames` joins each frame's file row to
  its event's label, live or replayed; the projection's angle is the event's
  ``theta_rad`` (the start document's ``theta_key``);
* every few percent of the scan the pipeline reconstructs the centre slice from the
  projections so far; it goes out at once as a row of the ``slice`` stream, so it is in
  Tiled while the scan still runs;
* at the raw run's stop document the pipeline finds the centre and reconstructs the
  volume (on the worker thread), emitted as the ``volume`` stream in slabs of
  ``VOLUME_SLAB_ROWS`` detector rows (field ``attenuation``, ``(VOLUME_SLAB_ROWS, nx,
  nx)``, the last slab NaN-padded; ``row_start``, ``n_rows``): Tiled stores it chunked,
  one HTTP write per slab, and :func:`read_volume` gives back the ``(ny, nx, nx)``
  volume; the ``reconstruction`` stream holds the centre, the angles and the
  parameters, and ``status`` what happened.

Replaying the raw run from Tiled gives the same volume: the pipeline decides everything
from labels (projection index, dark/flat numbers), never from arrival order.
"""
from __future__ import annotations

import logging
import math

import numpy as np

from txm_live.analysis import TomoPipeline, TomoSlice, TomoVolume

from ._bookkeeping import FrameRef, LabelledFrames
from ._emit import AnalysisRun, array_key, scalar_key
from ._frames import FrameReader
from ._guarded import GuardedFrameAnalysis

logger = logging.getLogger(__name__)

__all__ = ["TomoAnalysis", "TOMO_ANALYSIS_NAME", "VOLUME_SLAB_ROWS", "read_volume"]

TOMO_ANALYSIS_NAME = "tomo_live"
TOMO_ANALYSIS_VERSION = 1
#: Detector rows (volume slices) per event of the ``volume`` stream (each Tiled write is
#: an HTTP round trip; 16 slices of 1024² are 64 MB).
VOLUME_SLAB_ROWS = 16
#: Event key of the projection angle when the start document names none.
DEFAULT_THETA_KEY = "theta_rad"
#: Axes of a slice (``reconstruct``'s geometry: z against the beam at θ = 0, x along columns).
SLICE_DIMS = ("z", "x")
#: Axes of a volume slab: detector rows (y), then a slice's.
SLAB_DIMS = ("y", "z", "x")

_STATUS_KEYS = {"raw_exit_status": scalar_key("string"), "raw_reason": scalar_key("string"),
                "partial": scalar_key("boolean"), "failed": scalar_key("boolean"),
                "errors": scalar_key("string"), "notes": scalar_key("string"),
                "n_projections": scalar_key("integer"), "n_projections_planned": scalar_key("integer"),
                "n_retaken": scalar_key("integer")}


def _slice_keys(nx: int) -> dict:
    return {"image": array_key((nx, nx), dims=SLICE_DIMS), "row": scalar_key("integer"),
            "center_px": scalar_key(), "center_method": scalar_key("string"),
            "n_projections": scalar_key("integer"), "final": scalar_key("boolean"),
            "flat_source": scalar_key("string")}


class TomoAnalysis(GuardedFrameAnalysis):
    """Preview slices during the scan and the volume after it, for one tomography run.

    Parameters
    ----------
    start : dict
        The raw run's start document (``n_projections``, ``n_darks``, ``theta_key``).
    emit : callable ``(name, doc)``
        Receives the analysis run's documents (e.g. a Tiled writer).
    preview : object, optional
        Has ``update(state, *, final)`` (:class:`~txm_live.callbacks.preview.PngPreview`;
        its figure is switched to the sinogram and slices).
    replay : bool
        Recorded in the analysis start document.
    center_px, algorithm, algorithm_options, zinger_sigma, outlier_sigma, stripe_method, preview_every
        Passed to :class:`~txm_live.analysis.TomoPipeline` (recorded).
    frame_wait_s : float
        How long to wait for an announced frame to appear in its file.
    page_interval_s : float
        Least time between two pages of buffered rows.
    """

    analysis_label = "live tomography analysis"

    def __init__(self, start, emit, *, preview=None, replay: bool = False, center_px: float | None = None,
                 algorithm: str = "nufft", algorithm_options: dict | None = None,
                 zinger_sigma: float | None = 10.0, outlier_sigma: float | None = None,
                 stripe_method: str | None = None, preview_every: int | None = None,
                 frame_wait_s: float = 10.0, page_interval_s: float = 1.0):
        super().__init__()
        self.raw_start = start
        self.preview = preview
        if preview is not None and hasattr(preview, "render"):
            preview.render = render_tomo_preview
        self.errors: list[str] = []
        self.failed = False
        self.finished = False
        self.theta_key = start.get("theta_key", DEFAULT_THETA_KEY)
        self.n_planned = start.get("n_projections")
        self.pipeline = None
        self._theta: dict[int, float] = {}
        self._reader = FrameReader(wait_s=frame_wait_s)
        self.frames = LabelledFrames(start)
        options = dict(center_px=center_px, algorithm=algorithm, algorithm_options=algorithm_options,
                       zinger_sigma=zinger_sigma, outlier_sigma=outlier_sigma, stripe_method=stripe_method,
                       preview_every=preview_every)
        try:
            self.pipeline = TomoPipeline(n_projections=self.n_planned, n_darks=start.get("n_darks"), **options)
            parameters = self.pipeline.parameters()
        except (TypeError, ValueError) as exc:
            parameters = {k: v for k, v in options.items() if v is not None}
            self._fail("options", exc)
        parameters["version"] = TOMO_ANALYSIS_VERSION
        self.run = AnalysisRun(emit, self._metadata(start, replay, parameters), page_interval_s=page_interval_s)
        self.uid = self.run.uid
        self.last_slice: TomoSlice | None = None

    def _metadata(self, start: dict, replay: bool, parameters: dict) -> dict:
        return {"parent_uid": start["uid"], "parent_plan_name": start.get("plan_name"),
                "analysis": TOMO_ANALYSIS_NAME, "analysis_parameters": parameters,
                "scan_type": start.get("scan_type"), "energy_ev": start.get("energy_ev"),
                "pixel_size_nm": start.get("pixel_size_nm"), "replay": bool(replay)}

    def event(self, doc):
        data = doc["data"]
        if data.get(self.frames.keys["frame_type"]) == "sample" and self.theta_key in data:
            self._theta[int(data[self.frames.keys["repeat"]])] = float(data[self.theta_key])
        self._add(self.frames.event(doc))

    def stop(self, doc):
        self._finish(doc)

    def _add(self, refs: list[FrameRef]) -> None:
        """Read the frames (contiguous rows in one read) and hand them to the pipeline."""
        for ref, image in self._reader.read_refs(refs):
            self._add_frame(ref, image)

    def _add_frame(self, ref: FrameRef, image) -> None:
        label = ref.label
        theta = None
        if label.frame_type == "sample":
            theta = self._theta.get(label.repeat)
            if theta is None:
                raise ValueError(f"projection {label.repeat} has no {self.theta_key!r} in its event: the angle of "
                                 f"every projection must be recorded (the start document's theta_key)")
        for step in self.pipeline.add_frame(label, image, theta_rad=theta):
            self._emit_slice(step)

    # ---- emission -----------------------------------------------------------------------
    def _emit_slice(self, step: TomoSlice) -> None:
        self.last_slice = step
        self.run.describe("slice", _slice_keys(step.image.shape[-1]))
        self.run.event("slice", {"image": np.asarray(step.image, np.float32), "row": step.row,
                                 "center_px": step.center_px, "center_method": step.center_method,
                                 "n_projections": step.n_projections, "final": step.final,
                                 "flat_source": step.flat_source})
        self._preview(final=step.final)

    def _emit_volume(self, result: TomoVolume) -> None:
        ny, nx, _ = result.volume.shape
        self.run.describe("reconstruction", {
            "center_px": scalar_key(), "center_method": scalar_key("string"),
            "n_projections": scalar_key("integer"),
            "theta_rad": array_key((result.theta_rad.size,), "<f8", dims=("angle",)),
            "notes": scalar_key("string")})
        self.run.event("reconstruction", {"center_px": result.center_px, "center_method": result.center_method,
                                          "n_projections": int(result.theta_rad.size),
                                          "theta_rad": result.theta_rad, "notes": "\n".join(result.notes)})
        self.run.describe("volume", {"attenuation": array_key((VOLUME_SLAB_ROWS, nx, nx), dims=SLAB_DIMS),
                                     "row_start": scalar_key("integer"), "n_rows": scalar_key("integer"),
                                     "ny": scalar_key("integer")})
        for r0 in range(0, ny, VOLUME_SLAB_ROWS):
            slab = np.full((VOLUME_SLAB_ROWS, nx, nx), np.nan, np.float32)
            n_rows = min(ny, r0 + VOLUME_SLAB_ROWS) - r0
            slab[:n_rows] = result.volume[r0 : r0 + n_rows]
            self.run.event("volume", {"attenuation": slab, "row_start": r0, "n_rows": n_rows, "ny": ny})

    # ---- previews -----------------------------------------------------------------------
    def preview_state(self, *, final: bool = False) -> dict:
        """What a preview shows now: the sinogram of the preview row, the latest slice."""
        pipe, last = self.pipeline, self.last_slice
        try:
            sinogram = pipe.sinogram() if pipe.n_projections else None
        except ValueError:  # no dark yet
            sinogram = None
        volume = pipe.volume.volume if (final and pipe.volume is not None) else None
        n_planned = self.n_planned if self.n_planned is not None else "?"
        return {"title": f"run {self.raw_start['uid'][:8]}: {pipe.n_projections}/{n_planned} projections",
                "sinogram": sinogram, "slice": None if last is None else last.image,
                "center_px": float("nan") if last is None else last.center_px,
                "center_method": "" if last is None else last.center_method,
                "orthogonal": None if volume is None else (volume[:, volume.shape[1] // 2],
                                                           volume[:, :, volume.shape[2] // 2]),
                "final": final}

    def _preview(self, *, final: bool) -> None:
        if self.preview is None:
            return
        try:
            self.preview.update(self.preview_state(final=final), final=final)
        except Exception as exc:  # a preview never fails the analysis
            logger.warning("preview failed: %r", exc)

    # ---- the end ------------------------------------------------------------------------
    def _volume(self, raw_status: str) -> None:
        try:
            result = self.pipeline.reconstruct_volume()
        except Exception as exc:
            if raw_status == "success":
                self._fail("volume", exc)
            else:  # an interrupted scan may not cover a half turn: a partial result, not a failure
                self.errors.append(f"volume unavailable from the partial data: {type(exc).__name__}: {exc}")
                logger.warning("run %s: %s", self.raw_start.get("uid"), self.errors[-1])
            return
        self._emit_volume(result)
        self._emit_slice(self.pipeline.final_slice())

    def _finish(self, raw_stop) -> None:
        if self.finished:
            return
        self.finished = True
        raw_status = raw_stop.get("exit_status", "success")
        if not self.failed:
            self._volume(raw_status)
        self._reader.close()
        self._emit_status(raw_stop)
        if self.pipeline is not None:
            self.pipeline.release()  # the raw frames; the volume stays for inspection

    def _emit_status(self, raw_stop) -> None:
        raw_status = raw_stop.get("exit_status", "success")
        pipe = self.pipeline
        n = pipe.n_projections if pipe is not None else 0
        planned = int(self.n_planned) if self.n_planned is not None else n
        have_volume = pipe is not None and pipe.volume is not None
        notes = (list(pipe.volume.notes) if have_volume else list(pipe.notes if pipe else [])) + self.frames.notes
        partial = not (raw_status == "success" and n == planned and have_volume)
        self.run.flush()
        self.run.describe("status", _STATUS_KEYS)
        self.run.event("status", {
            "raw_exit_status": raw_status, "raw_reason": raw_stop.get("reason", ""), "partial": partial,
            "failed": self.failed, "errors": "\n".join(self.errors), "notes": "\n".join(notes),
            "n_projections": n, "n_projections_planned": planned,
            "n_retaken": pipe.n_retaken if pipe is not None else 0})
        exit_status = "fail" if self.failed else raw_status if raw_status != "success" else "success"
        centre = f", centre {pipe.volume.center_px:.2f} px ({pipe.volume.center_method})" if have_volume else ""
        reason = (f"raw run {raw_status}" + (f" ({raw_stop.get('reason')})" if raw_stop.get("reason") else "")
                  + f"; reconstructed {n}/{planned} projections{centre}"
                  + ("; PARTIAL result" if partial else "")
                  + (f"; analysis failed: {'; '.join(self.errors)}" if self.failed else ""))
        self.run.stop(exit_status, reason)

    def release(self) -> None:
        """Drop the frames and the volume (the analysis run is written)."""
        if self.pipeline is not None:
            self.pipeline.release()
            self.pipeline.volume = None


def read_volume(run) -> np.ndarray:
    """The ``(ny, nx, nx)`` float32 volume of a stored tomography analysis run.

    ``run`` is the analysis run (a Tiled ``BlueskyRun`` client); its ``volume`` stream's
    slabs are put back in row order and the padding dropped.
    """
    stream = run["volume"]
    slabs = np.asarray(stream["attenuation"].read(), np.float32)
    starts = np.asarray(stream["row_start"].read(), int)
    n_rows = np.asarray(stream["n_rows"].read(), int)
    ny = int(np.asarray(stream["ny"].read())[0])
    volume = np.empty((ny, *slabs.shape[-2:]), np.float32)
    for slab, r0, n in zip(slabs, starts, n_rows):
        volume[r0 : r0 + n] = slab[:n]
    return volume


def render_tomo_preview(state: dict, path) -> None:
    """PNG of a tomography preview state: sinogram, latest slice, orthogonal cuts."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4), dpi=80)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    panels = [("sinogram (preview row)", state.get("sinogram"), "auto"),
              (f"slice, centre {state.get('center_px', math.nan):.2f} px ({state.get('center_method', '')})"
               + ("" if state.get("final") else " (preview)"), state.get("slice"), "equal")]
    ortho = state.get("orthogonal")
    panels.append(("orthogonal cut (y, x)" if ortho is not None else "volume after the scan",
                   None if ortho is None else ortho[0], "auto"))
    for ax, (title, image, aspect) in zip(axes, panels):
        if image is not None:
            finite = np.asarray(image)[np.isfinite(image)]
            lims = np.percentile(finite, [1, 99]) if finite.size else (None, None)
            ax.imshow(image, cmap="gray", vmin=lims[0], vmax=lims[1], aspect=aspect)
        ax.set_title(title, fontsize=9)
    fig.suptitle(state.get("title", ""))
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    tmp.replace(path)
