"""The views of one run: raw frame, aligned stack, maps, spectra, drift, status, export.

Used three times on a page: in follow mode, for a run opened in browse mode, and (maps
only) twice side by side in the comparison. Reads go through the page's worker
(:class:`~txm_live.viewer._worker.PageWorker`); what a read returns is applied on the
document. What to read, and from where, is the adapter's business
(:mod:`txm_live.viewer._runs`).
"""
from __future__ import annotations

import dataclasses
import html
import logging
import time

import numpy as np
import panel as pn
from bokeh.events import RangesUpdate, Tap
from bokeh.models import ColumnDataSource, Range1d

from ._first_view import FirstView, maps_suffix
from ._images import Region
from ._runs import RawRun, RunState, ViewerDataError, map_fields
from ._views import ColourControl, ImageView, energy_marker, line_figure

logger = logging.getLogger(__name__)

__all__ = ["RunPanel", "MapsPanel"]

_EMPTY_STATE = RunState(uid="", scan_type="", title="", raw_status="")
_STATUS_ALERT = {"failed": "danger", "abort": "warning", "running": "info", "none": "secondary",
                 "success": "success"}


class MapsPanel:
    """The map images of a run, with colour controls shared by map group (e.g. eV maps)."""

    def __init__(self, name: str, fields, colours: dict, *, size_px: int = 300, on_tap=None, on_zoom=None,
                 x_range=None, y_range=None):
        self.fields = tuple(fields)
        self.x_range = x_range or Range1d(0, 1, name=f"{name}-maps-x")
        self.y_range = y_range or Range1d(1, 0, name=f"{name}-maps-y")
        self.views = {f.name: ImageView(f"{name}-map-{f.name}", f"{f.title} ({f.unit})", colours[f.group].mapper,
                                        x_range=self.x_range, y_range=self.y_range, size_px=size_px, unit=f.unit)
                      for f in self.fields}
        self.colours = colours
        for view in self.views.values():
            if on_tap is not None:
                view.figure.on_event(Tap, on_tap)
            if on_zoom is not None:
                view.figure.on_event(RangesUpdate, on_zoom)

    def show(self, tiles: dict, suffix: str = "") -> None:
        for f in self.fields:
            self.views[f.name].show(tiles.get(f.name), title=f"{f.title} ({f.unit}){suffix}")
        for group, control in self.colours.items():
            control.autoscale(*[tiles[f.name].data for f in self.fields if f.group == group and f.name in tiles])

    def clear(self) -> None:
        for view in self.views.values():
            view.show(None)
            view.mark(None, None)

    def region(self, shape) -> Region:
        any_view = next(iter(self.views.values()))
        if not any_view.full_shape or tuple(any_view.full_shape) != tuple(shape):
            return Region.full(shape)
        return Region.from_view(*any_view.view_ranges(), shape)

    def panel(self):
        return pn.Row(*[pn.pane.Bokeh(v.figure) for v in self.views.values()])


class RunPanel:
    """Every view of one run, kept up to date by :meth:`poll` (called from the page's poll job).

    Parameters
    ----------
    name : str
        Prefix of model names on the page (``follow``, ``browse``).
    worker : PageWorker
    size_px : int
        Frame width of the images (screen pixels).
    remember : callable ``(FirstView)``, optional
        Called (worker thread) with every whole-map read, to be shown first by later pages.
    """

    def __init__(self, name: str, worker, *, size_px: int = 300, remember=None):
        self.name = name
        self.worker = worker
        self._remember = remember
        self.run: RawRun | None = None
        self._seen = _EMPTY_STATE       # last state read (worker thread)
        self.state = _EMPTY_STATE       # last state shown (document thread)
        self.pick: tuple[float, float] | None = None
        self._build(size_px)

    # ---------------------------------------------------------------- layout
    def _build(self, size_px: int) -> None:
        n = self.name
        self.header = pn.pane.Markdown("### no run yet", name=f"{n}-header", css_classes=[f"{n}-header"])
        self.status = pn.pane.Alert("", alert_type="secondary", css_classes=[f"{n}-status"], visible=False)
        self.message = pn.pane.Alert("", alert_type="warning", css_classes=[f"{n}-message"], visible=False)

        self.raw_colour = ColourControl(f"{n}-raw", "contrast (counts)", palette="grey")
        self.raw_view = ImageView(f"{n}-raw", "raw frame", self.raw_colour.mapper, size_px=size_px, unit="counts")
        self.frame_slider = pn.widgets.IntSlider(name="frame", start=0, end=1, value=0, width=250, disabled=True)
        self.follow_frame = pn.widgets.Checkbox(name="latest frame", value=True, width=110)
        self.raw_view.figure.on_event(RangesUpdate, lambda e: self.worker.submit(f"{n}-raw", self._read_raw))
        self.frame_slider.param.watch(self._on_frame_slider, "value_throttled")

        self.map_x = Range1d(0, 1, name=f"{n}-maps-x")
        self.map_y = Range1d(1, 0, name=f"{n}-maps-y")
        self.aligned_colour = ColourControl(f"{n}-aligned", "absorbance", palette="grey")
        self.aligned_view = ImageView(f"{n}-aligned", "aligned absorbance", self.aligned_colour.mapper,
                                      x_range=self.map_x, y_range=self.map_y, size_px=size_px)
        self.energy_slider = pn.widgets.IntSlider(name="energy #", start=0, end=1, value=0, width=250,
                                                  disabled=True)
        self.follow_energy = pn.widgets.Checkbox(name="latest energy", value=True, width=110)
        self.energy_slider.param.watch(self._on_energy_slider, "value_throttled")
        self.aligned_view.figure.on_event(Tap, self._on_tap)
        self.aligned_view.figure.on_event(RangesUpdate, self._on_map_zoom)

        self.map_colours = {"energy": ColourControl(f"{n}-energy", "whiteline & edge (eV)"),
                            "jump": ColourControl(f"{n}-jump", "edge jump")}
        # built now, not when the first run with maps comes: models added to a page that is
        # already shown and changed a moment later did not always reach the browser
        self.maps = MapsPanel(n, map_fields(), self.map_colours, on_tap=self._on_tap, on_zoom=self._on_map_zoom,
                              x_range=self.map_x, y_range=self.map_y)
        self.maps_area = pn.Column(self.maps.panel(), pn.Row(*[c.panel() for c in self.map_colours.values()]),
                                   visible=False)

        self.spectrum_fig = line_figure(f"{n}-spectrum", "spectrum", "energy (eV)", "absorbance")
        self.mean_source = ColumnDataSource({"x": [], "y": []}, name=f"{n}-mean-spectrum")
        self.pixel_source = ColumnDataSource({"x": [], "y": []}, name=f"{n}-pixel-spectrum")
        self.spectrum_fig.line("x", "y", source=self.mean_source, legend_label="sample mean", line_width=2)
        self.spectrum_fig.scatter("x", "y", source=self.pixel_source, legend_label="picked pixel", color="red",
                                  size=5)
        self.spectrum_fig.line("x", "y", source=self.pixel_source, color="red", alpha=0.5)
        _legend_below(self.spectrum_fig)
        self.energy_span = energy_marker(self.spectrum_fig, f"{n}-energy")
        self.pick_text = pn.pane.Markdown("Click a map to see that pixel's spectrum.", css_classes=[f"{n}-pick"])

        self.drift_fig = line_figure(f"{n}-drift", "drift (relative to the first frame)", "frame", "drift (px)")
        self.drift_source = ColumnDataSource({"frame": [], "dy": [], "dx": []}, name=f"{n}-drift")
        self.drift_fig.line("frame", "dy", source=self.drift_source, legend_label="dy (rows)", line_width=2)
        self.drift_fig.line("frame", "dx", source=self.drift_source, legend_label="dx (columns)", color="orange",
                            line_width=2)
        _legend_below(self.drift_fig)

        self.export = pn.pane.HTML("", css_classes=[f"{n}-export"], sizing_mode="stretch_width")

    def _rest_views(self) -> list:
        raw = pn.Column(pn.pane.Bokeh(self.raw_view.figure), self.raw_colour.panel(),
                        pn.Row(self.frame_slider, self.follow_frame))
        aligned = pn.Column(pn.pane.Bokeh(self.aligned_view.figure), self.aligned_colour.panel(),
                            pn.Row(self.energy_slider, self.follow_energy))
        curves = pn.Column(pn.pane.Bokeh(self.spectrum_fig), self.pick_text, pn.pane.Bokeh(self.drift_fig))
        return [raw, aligned, curves]

    def _export_card(self):
        return pn.Card(self.export, title="export", collapsed=True, sizing_mode="stretch_width")

    def panel(self, *, defer: bool = False):
        """The layout of the panel (call once).

        ``defer``: only what the first view needs (header, status, maps and their colour
        scales): half the models, so the page reaches the browser sooner; :meth:`show_rest`
        adds the raw frame, the aligned stack, the curves and the export links.
        """
        self._rest_row = pn.Row(*([] if defer else self._rest_views()))
        self._export_area = pn.Column(*([] if defer else [self._export_card()]), sizing_mode="stretch_width")
        return pn.Column(self.header, self.status, self.message, self._rest_row, self.maps_area, self._export_area,
                         sizing_mode="stretch_width")

    def show_rest(self) -> None:
        """Add the views a deferred :meth:`panel` left out (document thread; once the
        browser has the page)."""
        if not self._rest_row.objects:
            self._rest_row.objects = self._rest_views()
            self._export_area.objects = [self._export_card()]

    # ---------------------------------------------------------------- document thread
    def say(self, text: str, kind: str = "warning") -> None:
        self.message.param.update(object=html.escape(text), alert_type=kind, visible=bool(text))

    def adopt(self, run: RawRun | None) -> None:
        """Make ``run`` the one polled (worker thread); :meth:`set_run` then resets the views."""
        self.run = run
        self._seen = _EMPTY_STATE

    def set_run(self, run: RawRun | None) -> None:
        """Show ``run`` from scratch (None: nothing)."""
        if self.run is not run:
            self.adopt(run)
        self.state = _EMPTY_STATE
        self.pick = None
        self.raw_view.show(None)
        self.aligned_view.show(None)
        for source in (self.mean_source, self.pixel_source):
            source.data = {"x": [], "y": []}
        self.drift_source.data = {"frame": [], "dy": [], "dx": []}
        self.pick_text.object = "Click a map to see that pixel's spectrum."
        self.say("")
        self.maps.clear()
        self.maps_area.visible = bool(run is not None and run.MAP_FIELDS)
        self.header.object = "### no run yet" if run is None else f"### {html.escape(run.title())}"
        self.export.object = ""
        self.status.visible = False

    def show_first_view(self, run: RawRun, view: FirstView) -> None:
        """Show what an earlier page read of ``run`` (its state and maps) before reading
        anything; the next :meth:`poll` re-reads the rest, and the maps if they changed."""
        self.set_run(run)
        self._show_state(view.state)
        self.maps.show(view.maps, view.suffix)
        self._seen = dataclasses.replace(_EMPTY_STATE, uid=view.state.uid, n_maps=view.state.n_maps,
                                         maps_final=view.state.maps_final)

    def _show_state(self, state: RunState) -> None:
        self.state = state
        lines = [f"raw run **{state.raw_status}**, {state.n_frames}"
                 + (f"/{state.n_frames_planned}" if state.n_frames_planned else "") + " frames"]
        if self.run is not None and self.run.has_analysis:
            if state.analysis_uid is None:
                lines.append("analysis: **none yet**")
            else:
                lines.append(f"analysis {state.analysis_uid[:8]} **{state.analysis_status}**, {state.n_drift} frames "
                             f"aligned, maps from {state.maps_n_energies} energies"
                             + (" (final)" if state.maps_final else " (partial)" if state.n_maps else ""))
        if state.raw_reason and state.raw_status != "success":
            lines.append(f"raw run: {state.raw_reason}")
        if state.analysis_status not in ("success", "running", "none") and state.analysis_reason:
            lines.append(f"analysis: {state.analysis_reason}")
        if state.analysis_errors:
            lines.append("errors: " + state.analysis_errors.replace("\n", "; "))
        kind = _STATUS_ALERT.get(state.analysis_status if state.analysis_uid else state.raw_status, "warning")
        if state.raw_status not in ("running", "success"):
            kind = "warning" if kind != "danger" else kind
        self.status.param.update(object="<br>".join(html.escape(x).replace("**", "") for x in lines),
                                 alert_type=kind, visible=True)
        if state.n_frames:
            self.frame_slider.param.update(end=max(1, state.n_frames - 1), disabled=state.n_frames < 2)
        n_energies = self._n_aligned_energies(state)
        if n_energies:
            self.energy_slider.param.update(end=max(1, n_energies - 1), disabled=n_energies < 2)
        if self.run is not None:
            self.export.object = self._export_html()

    def _export_html(self) -> str:
        try:
            links = self.run.export_links()
        except Exception as exc:  # a link list must not break the page
            logger.debug("no export links: %r", exc)
            return ""
        items = "".join(f'<li><a href="{html.escape(url)}" target="_blank">{html.escape(label)}</a></li>'
                        for label, url in links)
        return ("<p>PNG of any view: the save tool of its toolbar. Data from Tiled (your Tiled "
                f"credentials apply):</p><ul>{items}</ul>")

    def _n_aligned_energies(self, state: RunState) -> int:
        fpe = getattr(self.run, "fpe", 1)
        return state.n_drift // fpe if state.n_drift else 0

    # ---------------------------------------------------------------- events (document thread)
    def _on_frame_slider(self, event) -> None:
        self.follow_frame.value = False
        self.worker.submit(f"{self.name}-raw", self._read_raw)

    def _on_energy_slider(self, event) -> None:
        self.follow_energy.value = False
        self.worker.submit(f"{self.name}-aligned", self._read_aligned)

    def _on_map_zoom(self, event) -> None:
        self.worker.submit(f"{self.name}-maps", self._read_maps)
        self.worker.submit(f"{self.name}-aligned", self._read_aligned)

    def _on_tap(self, event) -> None:
        if event.x is None or event.y is None:
            return
        self.pick = (float(np.floor(event.y)), float(np.floor(event.x)))
        self.worker.submit(f"{self.name}-pixel", self._read_pixel)

    # ---------------------------------------------------------------- reads (worker thread)
    def poll(self, *, force: bool = False):
        """Read what changed since the last poll; return the callable that shows the state.

        The state and the curves (kept by the run) come back at once; each image that
        changed is read by its own job on the worker, maps first, and shown when read.
        """
        run = self.run
        if run is None:
            return None
        state = run.state()
        seen, self._seen = self._seen, state
        apply = [lambda: self._show_state(state)] if (force or state != seen) else []
        n, submit = self.name, self.worker.submit
        if run.has_analysis and state.n_maps and (
                force or (state.n_maps, state.maps_final) != (seen.n_maps, seen.maps_final)):
            submit(f"{n}-maps", lambda: self._read_maps(run=run, state=state))
        if force or state.n_frames != seen.n_frames:
            submit(f"{n}-raw", lambda: self._read_raw(run=run, state=state))
        if run.has_analysis:
            if force or (state.n_drift, state.n_spectrum) != (seen.n_drift, seen.n_spectrum):
                apply.append(self._read_curves(run))
            if force or state.n_drift != seen.n_drift:
                if self.follow_energy.value or force:
                    submit(f"{n}-aligned", lambda: self._read_aligned(run=run, state=state))
                if self.pick is not None:
                    submit(f"{n}-pixel", lambda: self._read_pixel(run=run))
        apply = [a for a in apply if a is not None]
        if not apply:
            return None

        def show():
            if self.run is run:
                for a in apply:
                    a()
        return show

    def _guard(self, run, fn):
        def show():
            if self.run is run:
                fn()
        return show

    def _read_raw(self, run=None, state=None):
        run = run or self.run
        state = state or self._seen
        if run is None or not state.n_frames:
            return None
        index = state.n_frames - 1 if self.follow_frame.value else min(self.frame_slider.value, state.n_frames - 1)
        view = self.raw_view
        shape = state.image_shape
        region = Region.full(shape) if tuple(view.full_shape) != tuple(shape) else Region.from_view(
            *view.view_ranges(), shape)
        tile = run.raw_frame(index, region)
        energy = run.frame_energy_ev(index)
        title = f"raw frame {index}" + (f" at {energy:.1f} eV" if energy is not None else "") + _stride_note(tile)

        def show():
            view.show(tile, title=title)
            self.raw_colour.autoscale(tile.data)
            if self.follow_frame.value:
                self.frame_slider.param.update(value=index)
        return self._guard(run, show)

    def _read_aligned(self, run=None, state=None):
        run = run or self.run
        state = state or self._seen
        n_energies = self._n_aligned_energies(state) if run is not None else 0
        if run is None or not n_energies or not hasattr(run, "aligned_tile"):
            return None
        index = n_energies - 1 if self.follow_energy.value else min(self.energy_slider.value, n_energies - 1)
        shape = state.image_shape
        view = self.aligned_view
        region = Region.full(shape) if tuple(view.full_shape) != tuple(shape) else Region.from_view(
            *view.view_ranges(), shape)
        tile = run.aligned_tile(index, region)
        energy = float(run.energies_ev[index])
        title = f"aligned absorbance, energy {index} = {energy:.1f} eV" + _stride_note(tile)

        def show():
            view.show(tile, title=title)
            self.aligned_colour.autoscale(tile.data)
            self.energy_span.location = energy
            if self.follow_energy.value:
                self.energy_slider.param.update(value=index)
        return self._guard(run, show)

    def _read_maps(self, run=None, state=None):
        run = run or self.run
        state = state or self._seen
        if run is None or not state.n_maps or not run.MAP_FIELDS:
            return None
        region = self.maps.region(state.map_shape)
        # the maps of the newest row of the maps table (its arrays are written before it)
        tiles = run.map_tiles(region, index=state.n_maps - 1)
        suffix = maps_suffix(state, next(iter(tiles.values())))
        if self._remember is not None and region == Region.full(state.map_shape):
            self._remember(FirstView(run.start, state, tiles, suffix, time.monotonic()))

        def show():
            self.maps.show(tiles, suffix)
        return self._guard(run, show)

    def _read_curves(self, run):
        drift = run.drift()
        energy, mean = run.mean_spectrum()

        def show():
            if drift:
                self.drift_source.data = {"frame": drift["frame_index"], "dy": drift["drift_y_px"],
                                          "dx": drift["drift_x_px"]}
            self.mean_source.data = {"x": energy, "y": mean}
        return self._guard(run, show)

    def _read_pixel(self, run=None):
        run = run or self.run
        pick = self.pick
        if run is None or pick is None or not hasattr(run, "pixel_spectrum"):
            return None
        row, col = pick
        try:
            energy, values = run.pixel_spectrum(row, col)
        except ViewerDataError as exc:
            text = str(exc)
            return self._guard(run, lambda: setattr(self.pick_text, "object", html.escape(text)))
        value_at = {}
        if self._seen.n_maps:
            tiles = run.map_tiles(Region(int(row), int(row) + 1, int(col), int(col) + 1), index=self._seen.n_maps - 1,
                                  max_px=1)
            value_at = {f.title: float(tiles[f.name].data[0, 0]) for f in run.MAP_FIELDS}
        text = (f"**picked pixel** row {int(row)}, column {int(col)}: "
                + ", ".join(f"{k} {v:.2f}" for k, v in value_at.items() if np.isfinite(v)))

        def show():
            self.pixel_source.data = {"x": energy, "y": values}
            self.pick_text.object = text
            for view in [self.aligned_view, *self.maps.views.values()]:
                view.mark(row, col)
        return self._guard(run, show)


def _stride_note(tile) -> str:
    return "" if tile.stride == 1 else f" (1:{tile.stride})"


def _legend_below(fig) -> None:
    """Move the legend under the plot: inside it hid the first frames of the drift trace
    (drift starts at 0, where a top-left legend sits)."""
    legend = fig.legend[0]
    fig.center.remove(legend)
    legend.orientation = "horizontal"
    fig.add_layout(legend, "below")
