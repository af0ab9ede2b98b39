"""Live 3D XANES: the energy runs of one ``xanes_3d`` scan gathered into one analysis run.

:func:`txm_live.plans.xanes_3d` measures one tomography run per energy, tied by the
group uid ``xanes3d_uid`` in their start documents. The live analysis
(:class:`~txm_live.callbacks.LiveAnalysis`, replay) builds one :class:`Xanes3DAnalysis`
per raw run (``PLAN_ANALYSES['xanes_3d']``); it only does the run's document bookkeeping
— the frames joined to their labels, each projection's angle from its event — and at the
run's stop document hands the energy's raw darks, flats and projections to the run's
:class:`Xanes3DGroup`, shared by the runs of the scan through :class:`Xanes3DGroups`
(one per live session). The numbers come from
:class:`txm_live.pipelines.Xanes3DPipeline`:

* each energy: ``add_scan`` (normalize, register to the reference energy in the
  projections, reconstruct slab by slab into the zarr store on disk), then ``preview``
  (per-voxel whiteline on three slices from the energies so far, once they span the
  edge) — a row of the ``energies`` stream and, when there is one, of ``preview``;
* the group's last energy: ``fit`` (every voxel, chunk by chunk) and the result volumes
  as the ``volumes`` stream (external HDF5 beside the store, as
  :func:`txm_live.pipelines.xanes3d_tiled.write_xanes3d_run` writes them), then a
  ``status`` row and the stop document.

A group cut short (a run aborted or failed, a new group begun, or :meth:`Xanes3DGroups.close`)
ends with what could be done — the energies reconstructed and registered, the last
preview — and says what could not: the volume fit needs every energy. An exception in
the analysis is recorded in the analysis run and never reaches the RunEngine.

The store goes to ``<xanes3d_dir>/xanes3d_<group uid>[_replay_<analysis uid>].zarr``;
by default ``xanes3d_dir`` is the folder of the raw detector files (a folder the Tiled
server may already read, which the ``volumes`` stream needs).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._bookkeeping import FrameRef, LabelledFrames
from ._emit import AnalysisRun, array_key, scalar_key
from ._frames import FrameReader, path_from_uri
from ._guarded import GuardedFrameAnalysis

logger = logging.getLogger(__name__)

__all__ = ["Xanes3DAnalysis", "Xanes3DGroup", "Xanes3DGroups", "XANES3D_ANALYSIS_NAME"]

XANES3D_ANALYSIS_NAME = "xanes3d_live"
XANES3D_ANALYSIS_VERSION = 1
#: Event key of the projection angle when the start document names none.
DEFAULT_THETA_KEY = "theta_rad"

_ENERGY_KEYS = {"energy_index": scalar_key("integer"), "energy_ev": scalar_key(), "raw_uid": scalar_key("string"),
                "used": scalar_key("boolean"), "shift_y_px": scalar_key(), "shift_x_px": scalar_key(),
                "spread_y_px": scalar_key(), "spread_x_px": scalar_key(), "center_px": scalar_key(),
                "n_projections": scalar_key("integer"), "seconds": scalar_key(), "problem": scalar_key("string")}
_STATUS_KEYS = {"n_energies_planned": scalar_key("integer"), "n_energies_measured": scalar_key("integer"),
                "n_energies_used": scalar_key("integer"), "fitted": scalar_key("boolean"),
                "partial": scalar_key("boolean"), "failed": scalar_key("boolean"),
                "errors": scalar_key("string"), "notes": scalar_key("string"), "store": scalar_key("string")}


@dataclass(frozen=True)
class EnergyScan:
    """One energy's raw tomography, as :meth:`Xanes3DPipeline.add_scan` takes it."""

    projections: np.ndarray  #: (n_angles, ny, nx) raw counts, projection order
    flats: np.ndarray  #: (n_flats, ny, nx)
    darks: np.ndarray  #: (n_darks, ny, nx)
    theta_rad: np.ndarray  #: (n_angles,)
    energy_ev: float


class Xanes3DGroups:
    """The open and finished 3D XANES groups of one live session, by group uid.

    One live session (:class:`~txm_live.callbacks.LiveAnalysis`, a replay) holds one and
    hands it to every :class:`Xanes3DAnalysis` it builds, so the runs of a scan find
    their group. At most one group is open: a run of a new group ends the open one as
    cut short.
    """

    def __init__(self):
        self.groups: dict[str, Xanes3DGroup] = {}

    def join(self, start: dict, emit, **options) -> "Xanes3DGroup":
        """The group of the run ``start`` (a new one at its first run)."""
        gid = start.get("xanes3d_uid")
        if not gid:
            raise ValueError(f"run {start.get('uid')} has no 'xanes3d_uid' in its start document: not a run of "
                             f"txm_live.plans.xanes_3d")
        group = self.groups.get(gid)
        if group is not None and not group.finished:
            return group
        for other in self.groups.values():
            if not other.finished:
                other.end(f"a new 3D XANES scan ({gid[:8]}) began before its last energy")
        if group is None or group.finished:  # a finished group seen again (a repeated replay): a new run
            group = Xanes3DGroup(start, emit, **options)
            self.groups[gid] = group
        return group

    def close(self, reason: str = "the live analysis was closed") -> None:
        """End every open group (what it could do is written; the rest is named)."""
        for group in self.groups.values():
            if not group.finished:
                group.end(reason)


class Xanes3DGroup:
    """The analysis of one 3D XANES scan (a group of energy runs), and its analysis run.

    Parameters
    ----------
    start : dict
        The start document of the group's first run seen (its ``xanes3d_*`` keys).
    emit : callable ``(name, doc)``
    replay : bool
    xanes3d_dir : path, optional
        Folder of the zarr store; default the folder of the raw detector files.
    preview : PngPreview, optional
        Gets the whiteline slices as energies accumulate.
    """

    def __init__(self, start: dict, emit, *, replay: bool = False, xanes3d_dir=None, preview=None):
        from txm_live.pipelines import RECONSTRUCTION_DEFAULTS

        self.group_uid = start["xanes3d_uid"]
        self.energies_ev = np.asarray(start["xanes3d_energies_ev"], float)
        self.n_planned = int(start.get("xanes3d_n_energies", self.energies_ev.size))
        self.replay = bool(replay)
        self.xanes3d_dir = None if xanes3d_dir is None else Path(xanes3d_dir)
        self.preview_png = preview
        if preview is not None and hasattr(preview, "render"):
            preview.render = render_xanes3d_preview
            preview.name = f"{self.group_uid[:8]}_xanes3d"  # one PNG per scan, named by its group
        self.pipeline = None
        self.finished = False
        self.failed = False
        self.errors: list[str] = []
        self.raw_uids: dict[int, str] = {}
        self.used: list[int] = []
        self.last_preview = None
        self.fit = None
        params = {"version": XANES3D_ANALYSIS_VERSION, "registration": "projections",
                  "reconstruction": dict(RECONSTRUCTION_DEFAULTS)}
        self.run = AnalysisRun(emit, {
            "parent_uid": start["uid"], "parent_plan_name": start.get("plan_name"),
            "analysis": XANES3D_ANALYSIS_NAME, "analysis_parameters": params, "scan_type": "xanes3d",
            "parent_xanes3d_uid": self.group_uid, "energies_ev": self.energies_ev.tolist(),
            "n_energies": self.n_planned, "element": start.get("element"), "edge": start.get("edge"),
            "pixel_size_nm": start.get("pixel_size_nm"), "replay": self.replay})
        self.uid = self.run.uid

    # ---- per energy ---------------------------------------------------------------
    def _store_path(self, frames_dir: Path | None) -> Path:
        folder = self.xanes3d_dir or frames_dir
        if folder is None:
            raise ValueError("no folder for the 3D XANES store: give xanes3d_dir (the raw run has no frame files)")
        suffix = f"_replay_{self.uid[:8]}" if self.replay else ""
        return Path(folder) / f"xanes3d_{self.group_uid[:8]}{suffix}.zarr"

    def _pipeline(self, scan: EnergyScan, frames_dir):
        from txm_live.pipelines import Xanes3DPipeline

        if self.pipeline is None:
            self.pipeline = Xanes3DPipeline.create(self._store_path(frames_dir), self.energies_ev,
                                                   scan.projections.shape[1:], overwrite=True,
                                                   attrs={"xanes3d_uid": self.group_uid})
        return self.pipeline

    def energy_done(self, start: dict, scan: EnergyScan | None, raw_stop: dict, *, problem: str = "",
                    frames_dir=None) -> None:
        """One energy run stopped: add its scan (when complete), preview, and end the group
        after its last energy or when the run did not succeed."""
        index = int(start["xanes3d_index"])
        self.raw_uids[index] = start["uid"]
        raw_status = raw_stop.get("exit_status", "success")
        if raw_status != "success":  # an incomplete rotation is no tomography: the energy is not used
            why = f" ({raw_stop['reason']})" if raw_stop.get("reason") else ""
            problem = f"raw run {raw_status}{why}" + (f"; {problem}" if problem else "")
        report = None
        if scan is not None and not problem:
            try:
                report = self._pipeline(scan, frames_dir).add_scan(index, scan)
                self.used.append(index)
            except Exception as exc:  # the energy is lost, not the group
                problem = f"{type(exc).__name__}: {exc}"
                self.errors.append(f"energy {index}: {problem}")
                logger.exception("3D XANES group %s: energy %d", self.group_uid[:8], index)
        self._emit_energy(index, start, report, scan, problem)
        if report is not None:
            self._emit_preview(final=False)
        if raw_status != "success":
            self.end(f"raw run of energy {index} ended '{raw_status}'", raw_status=raw_status)
        elif index == self.n_planned - 1:
            self.end("")

    def _emit_energy(self, index, start, report, scan, problem) -> None:
        self.run.describe("energies", _ENERGY_KEYS)
        nan = math.nan
        shift = report.shift_px if report else (nan, nan)
        spread = report.spread_px if report else (nan, nan)
        self.run.event("energies", {
            "energy_index": index, "energy_ev": float(start.get("energy_ev", self.energies_ev[index])),
            "raw_uid": start["uid"], "used": report is not None,
            "shift_y_px": float(shift[0]), "shift_x_px": float(shift[1]),
            "spread_y_px": float(spread[0]), "spread_x_px": float(spread[1]),
            "center_px": float(report.center_px) if report else nan,
            "n_projections": 0 if scan is None else int(scan.theta_rad.size),
            "seconds": float(report.seconds) if report else nan, "problem": problem})

    def _emit_preview(self, *, final: bool) -> None:
        try:
            preview = self.pipeline.preview()
        except Exception as exc:  # a preview never ends the group
            self.errors.append(f"preview: {type(exc).__name__}: {exc}")
            return
        if preview.whiteline is None:
            return
        self.last_preview = preview
        rows, (ny, nx) = preview.rows, preview.whiteline.shape[1:]
        self.run.describe("preview", {
            "whiteline": array_key((len(rows), ny, nx), dims=("slice", "y", "x")),
            "rows": array_key((len(rows),), "<i8", dims=("slice",)),
            "n_energies": scalar_key("integer"), "final": scalar_key("boolean")})
        wl = np.where(preview.mask, preview.whiteline, np.nan).astype(np.float32)
        self.run.event("preview", {"whiteline": wl, "rows": np.asarray(rows, np.int64),
                                   "n_energies": int(preview.n_energies), "final": bool(final)})
        if self.preview_png is not None:
            try:
                self.preview_png.update({"title": f"3D XANES {self.group_uid[:8]}: {preview.n_energies}/"
                                                  f"{self.n_planned} energies", "whiteline": wl,
                                         "rows": rows, "final": final}, final=final)
            except Exception as exc:
                logger.warning("preview failed: %r", exc)

    # ---- the end ------------------------------------------------------------------
    def end(self, cut_short: str, *, raw_status: str = "success") -> None:
        """Fit (when every energy is in) and close the analysis run; ``cut_short`` says
        why the group ended early ('' when it is complete)."""
        if self.finished:
            return
        self.finished = True
        notes = []
        missing = [i for i in range(self.n_planned) if i not in self.used]
        if not missing:
            try:
                self.fit = self.pipeline.fit()
                self.run.emit_composed(self._volume_documents)
                notes.append(f"fitted every voxel of {self.n_planned} energies: {self.fit.status_counts}")
            except Exception as exc:
                self.failed = True
                self.errors.append(f"fit: {type(exc).__name__}: {exc}")
                logger.exception("3D XANES group %s: fit", self.group_uid[:8])
        else:
            self.failed = self.failed or any(e.startswith("energy ") for e in self.errors)
            done = f"reconstructed and registered energies {self.used}" if self.used else "no energy reconstructed"
            preview = (f"; the last whiteline preview used {self.last_preview.n_energies} energies"
                       if self.last_preview is not None else "; no whiteline preview (energies did not span the edge)")
            notes.append(f"{cut_short}. Could: {done}{preview}. Could not: the per-voxel fit of the volume, which "
                         f"needs every energy (missing {missing})")
        self._emit_status(notes, raw_status, partial=bool(missing))

    def _volume_documents(self, bundle):
        from txm_live.pipelines.xanes3d_tiled import volume_documents

        return volume_documents(bundle, self.pipeline.store, None)

    def _emit_status(self, notes, raw_status, *, partial) -> None:
        fitted = self.fit is not None and not self.failed
        store = "" if self.pipeline is None else str(self.pipeline.store_path)
        self.run.describe("status", _STATUS_KEYS)
        self.run.event("status", {"n_energies_planned": self.n_planned, "n_energies_measured": len(self.raw_uids),
                                  "n_energies_used": len(self.used), "fitted": fitted, "partial": partial,
                                  "failed": self.failed, "errors": "\n".join(self.errors),
                                  "notes": "\n".join(notes), "store": store})
        exit_status = "fail" if self.failed else (raw_status if raw_status != "success" else
                                                  ("abort" if partial else "success"))
        parts = [f"{len(self.used)}/{self.n_planned} energies", "volume fitted" if fitted else "PARTIAL result",
                 *notes] + ([f"analysis errors: {'; '.join(self.errors)}"] if self.errors else [])
        reason = "; ".join(parts)
        self.run.stop(exit_status, reason)


class Xanes3DAnalysis(GuardedFrameAnalysis):
    """The bookkeeping of one energy run of a ``xanes_3d`` scan; the group does the rest.

    Parameters
    ----------
    start : dict
        The raw run's start document (``xanes3d_uid``, ``xanes3d_index`` ...).
    emit : callable ``(name, doc)``
        Receives the group's analysis run documents.
    groups : Xanes3DGroups, optional
        The session's groups (the live analysis passes its own); default a new one (a
        lone run then makes a group of its own).
    preview, replay
        As for the other live analyses.
    xanes3d_dir : path, optional
        Folder of the group's zarr store (module docstring).
    frame_wait_s : float
        How long to wait for an announced frame to appear in its file.
    """

    analysis_label = "live 3D XANES analysis"

    def __init__(self, start, emit, *, groups: Xanes3DGroups | None = None, preview=None, replay: bool = False,
                 xanes3d_dir=None, frame_wait_s: float = 10.0):
        super().__init__()
        self.raw_start = start
        self.errors: list[str] = []
        self.failed = False
        self.finished = False
        self.frames = LabelledFrames(start)
        self.theta_key = start.get("theta_key", DEFAULT_THETA_KEY)
        self._reader = FrameReader(wait_s=frame_wait_s)
        self._theta: dict[int, float] = {}
        self._images: dict[str, dict[int, np.ndarray]] = {"dark": {}, "flat": {}, "sample": {}}
        self._frames_dir: Path | None = None
        self.groups = groups if groups is not None else Xanes3DGroups()
        self.group = self.groups.join(start, emit, replay=replay, xanes3d_dir=xanes3d_dir, preview=preview)
        self.uid = self.group.uid

    def event(self, doc):
        data = doc["data"]
        if data.get(self.frames.keys["frame_type"]) == "sample" and self.theta_key in data:
            self._theta[int(data[self.frames.keys["repeat"]])] = float(data[self.theta_key])
        self._add(self.frames.event(doc))

    def _add(self, refs: list[FrameRef]) -> None:
        for ref, image in self._reader.read_refs(refs):
            if self._frames_dir is None:
                self._frames_dir = Path(path_from_uri(ref.uri)).parent
            # a frame re-taken after a pause carries the same label: the later one wins
            self._images[ref.label.frame_type][ref.label.repeat] = np.array(image)

    def stop(self, doc):
        self._finish(doc)

    def _scan(self) -> tuple[EnergyScan | None, str]:
        """The energy's scan from the frames gathered, or None and why not."""
        proj, darks, flats = self._images["sample"], self._images["dark"], self._images["flat"]
        lacking = [name for name, frames in (("projections", proj), ("darks", darks), ("flats", flats)) if not frames]
        if lacking:
            return None, f"no {', '.join(lacking)} in the run"
        order = sorted(proj)
        missing = [i for i in order if i not in self._theta]
        if missing:
            return None, f"projections {missing[:5]} have no {self.theta_key!r} in their events"
        return EnergyScan(projections=np.stack([proj[i] for i in order]),
                          flats=np.stack([flats[i] for i in sorted(flats)]),
                          darks=np.stack([darks[i] for i in sorted(darks)]),
                          theta_rad=np.array([self._theta[i] for i in order]),
                          energy_ev=float(self.raw_start.get("energy_ev", math.nan))), ""

    def _finish(self, raw_stop) -> None:
        if self.finished:
            return
        self.finished = True
        self._reader.close()
        scan, problem = (None, "; ".join(self.errors)) if self.failed else self._scan()
        self.release()
        self.group.energy_done(self.raw_start, scan, raw_stop, problem=problem, frames_dir=self._frames_dir)

    def release(self) -> None:
        """Drop the raw frames (handed to the group's pipeline)."""
        self._images = {"dark": {}, "flat": {}, "sample": {}}


def render_xanes3d_preview(state: dict, path) -> None:
    """PNG of the whiteline preview slices (eV)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    wl = state.get("whiteline")
    n = 1 if wl is None else len(wl)
    fig = Figure(figsize=(4 * n, 4), dpi=80)
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(1, n))
    if wl is not None:
        finite = wl[np.isfinite(wl)]
        lims = np.percentile(finite, [2, 98]) if finite.size else (None, None)
        for ax, image, row in zip(axes, wl, state.get("rows", ())):
            im = ax.imshow(image, cmap="viridis", vmin=lims[0], vmax=lims[1])
            ax.set_title(f"whiteline, slice {row}" + ("" if state.get("final") else " (partial)"), fontsize=9)
        fig.colorbar(im, ax=list(axes), shrink=0.8, label="eV")
    fig.suptitle(state.get("title", ""))
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    tmp.replace(path)
