"""Headless previews: matplotlib (Agg) PNG snapshots written from the analysis worker.

The worker thread never touches a GUI: figures are built with the object-oriented API on
an Agg canvas (``matplotlib.figure.Figure``, no ``pyplot``), so nothing here needs the
main thread or Qt. Snapshots are rate-limited (``min_interval_s``) and always written at
the stop document.

Live figures in IPython (Qt)
----------------------------
Qt widgets must be touched on the main thread only. Two ways to watch the analysis in a
Qt session:

* poll: ``handle.latest(raw_uid)`` returns the newest state (aligned frame, mean spectrum,
  drift, partial maps); a ``QTimer`` on the main thread (or ``plt.pause`` in a loop) can
  redraw from it — :func:`watch` does this with pyplot
  (``watch(handle.previews[raw_uid])``);
* or subscribe bluesky's ``QtAwareCallback`` subclass to the *analysis* documents
  (``subscribe_live_analysis(..., sinks=[qt_callback])``): it re-posts each document to
  the Qt main thread before plotting.
"""
from __future__ import annotations

import logging
import threading
import time
import warnings
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["PngPreview", "watch"]


def _render(state: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 8), dpi=80)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2)
    ax = axes[0, 0]
    if state.get("frame") is not None:
        im = ax.imshow(state["frame"], cmap="gray")
        fig.colorbar(im, ax=ax, shrink=0.8)
    ax.set_title(f"aligned absorbance, {state.get('energy_ev', float('nan')):.1f} eV")
    ax = axes[0, 1]
    if len(state.get("spectrum_e", ())):
        order = np.argsort(state["spectrum_e"])
        ax.plot(np.asarray(state["spectrum_e"])[order], np.asarray(state["spectrum"])[order], ".-")
    ax.set_xlabel("energy (eV)")
    ax.set_ylabel("mean absorbance (sample)")
    ax.set_title("mean spectrum")
    ax = axes[1, 0]
    wl = state.get("whiteline")
    if wl is not None:
        finite = wl[np.isfinite(wl)]
        lims = np.percentile(finite, [2, 98]) if finite.size else (None, None)
        im = ax.imshow(wl, cmap="viridis", vmin=lims[0], vmax=lims[1])
        fig.colorbar(im, ax=ax, shrink=0.8, label="eV")
    ax.set_title("whiteline map" + ("" if state.get("final") else " (partial)" if wl is not None else " (not yet)"))
    ax = axes[1, 1]
    drift = np.asarray(state.get("drift", np.zeros((0, 2)))).reshape(-1, 2)
    if len(drift):
        ax.plot(drift[:, 0], label="dy")
        ax.plot(drift[:, 1], label="dx")
        ax.legend()
    ax.set_xlabel("frame")
    ax.set_ylabel("drift (px)")
    ax.set_title("drift relative to the first frame")
    fig.suptitle(state.get("title", ""))
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    tmp.replace(path)  # readers never see a half-written PNG


class PngPreview:
    """Write ``<directory>/<name>.png`` at most every ``min_interval_s`` (always when final).

    ``update(state, final=...)`` is called on the analysis worker thread with a state
    dict (:meth:`txm_live.callbacks.xanes2d.Xanes2DAnalysis.preview_state`: ``title``,
    ``frame``, ``energy_ev``, ``spectrum_e``, ``spectrum``, ``drift``, ``whiteline``,
    ``final``). The latest state (:attr:`state`) is what a GUI polls.

    A preview never fails the analysis: a folder that cannot be created or written is
    reported once (a warning, and :attr:`error`) and previews stay in memory only.

    Parameters
    ----------
    directory : path, optional
        Folder for the PNGs; None keeps the state in memory only.
    name : str
        File name without suffix, e.g. ``'<raw uid[:8]>_xanes2d'``.
    min_interval_s : float
        Least time between two PNGs of a scan in progress.

    Attributes
    ----------
    render : callable ``(state, path)``
        Draws a state into a PNG; the 2D XANES figure by default (an analysis with other
        state keys sets its own, e.g. :func:`txm_live.callbacks.tomo.render_tomo_preview`).
    """

    def __init__(self, directory=None, *, name: str = "xanes2d", min_interval_s: float = 2.0):
        self.directory = Path(directory) if directory is not None else None
        self.error: str | None = None
        if self.directory is not None:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                self._disable(exc)
        self.name = name
        self.min_interval_s = float(min_interval_s)
        self._last = -np.inf
        self.state: dict = {}
        self.paths: list[Path] = []
        self._lock = threading.Lock()
        self.render = _render

    def _disable(self, exc: OSError) -> None:
        self.error = f"previews cannot be written to {self.directory}: {exc}; they are kept in memory only"
        logger.warning(self.error)
        warnings.warn(self.error, RuntimeWarning, stacklevel=3)
        self.directory = None

    def update(self, state: dict, *, final: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            self.state = state
        if self.directory is None or (not final and now - self._last < self.min_interval_s):
            return
        self._last = now
        path = self.directory / f"{self.name}.png"
        try:
            self.render(state, path)
        except OSError as exc:
            self._disable(exc)
            return
        if path not in self.paths:
            self.paths.append(path)


def watch(preview: PngPreview, *, interval_s: float = 1.0, until=None) -> None:  # pragma: no cover - GUI
    """Redraw ``preview.state`` with pyplot on the calling (main) thread until ``until()``.

    For an IPython session with a Qt backend: ``watch(handle.previews[raw_uid],
    until=lambda: done)`` in the main thread (or call it between scans), where ``handle``
    is the :class:`~txm_live.callbacks.LiveAnalysis`; the worker only ever updates the state.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 8))
    while until is None or not until():
        state = dict(preview.state)
        for ax in axes.flat:
            ax.clear()
        if state.get("frame") is not None:
            axes[0, 0].imshow(state["frame"], cmap="gray")
        if len(state.get("spectrum_e", ())):
            axes[0, 1].plot(state["spectrum_e"], state["spectrum"], ".")
        if state.get("whiteline") is not None:
            axes[1, 0].imshow(state["whiteline"])
        drift = np.asarray(state.get("drift", np.zeros((0, 2)))).reshape(-1, 2)
        if len(drift):
            axes[1, 1].plot(drift)
        fig.suptitle(state.get("title", ""))
        plt.pause(interval_s)
