"""Bokeh figures and Panel controls the viewer's pages are made of.

No Tiled here: views take :class:`~txm_live.viewer._images.ImageTile` objects and arrays
and show them. Every model that a test or a user script may want to find carries a
``name`` (``Bokeh.documents[0].get_model_by_name(name)`` in the browser).
"""
from __future__ import annotations

import numpy as np
import panel as pn
from bokeh.models import ColorBar, ColumnDataSource, Grid, HoverTool, LinearColorMapper, Range1d, Span
from bokeh.plotting import figure

from ._images import ImageTile, robust_limits

__all__ = ["ImageView", "ColourControl", "line_figure"]

#: Toolbar of every image: pan, zoom, reset and the PNG export ("save"). No box zoom:
#: each one costs the page four more models, and the wheel zooms as well.
IMAGE_TOOLS = "pan,wheel_zoom,tap,reset,save"
#: Where toolbars go: below the plot, so that they never cover its title (above, a long
#: map title ran under the toolbar).
TOOLBAR_LOCATION = "below"
#: Colour maps offered by the contrast controls (Bokeh palette names).
PALETTES = {"grey": "Greys256", "viridis": "Viridis256", "inferno": "Inferno256", "cividis": "Cividis256"}
TRANSPARENT = "rgba(0, 0, 0, 0)"


def _empty_image() -> dict:
    return {"image": [np.full((1, 1), np.nan, np.float32)], "x": [0], "y": [0], "dw": [1], "dh": [1]}


class ImageView:
    """One image figure: a strided tile of a full-resolution image, zoomable.

    Data coordinates are full-resolution pixels: column ``x``, row ``y`` (row 0 at the
    top), so a click at ``(x, y)`` is pixel ``(floor(y), floor(x))`` whatever the stride.

    Parameters
    ----------
    name : str
        Prefix of the Bokeh model names (``<name>-source``, ``<name>-figure``).
    title : str
    mapper : LinearColorMapper
        Colour mapping; share one between views to share their colour scale.
    x_range, y_range : Range1d, optional
        Share them between views of the same geometry to zoom them together.
    size_px : int
        Frame width in screen pixels.
    """

    def __init__(self, name: str, title: str, mapper: LinearColorMapper, *, x_range=None, y_range=None,
                 size_px: int = 360, unit: str = ""):
        self.name = name
        self.mapper = mapper
        self.source = ColumnDataSource(_empty_image(), name=f"{name}-source")
        self.marker = ColumnDataSource({"x": [], "y": []}, name=f"{name}-marker")
        self.x_range = x_range or Range1d(0, 1, name=f"{name}-x")
        self.y_range = y_range or Range1d(1, 0, name=f"{name}-y")  # flipped: row 0 on top
        fig = figure(title=title, name=f"{name}-figure", tools=IMAGE_TOOLS, active_scroll="wheel_zoom",
                     x_range=self.x_range, y_range=self.y_range, frame_width=size_px, frame_height=size_px,
                     toolbar_location=TOOLBAR_LOCATION)
        fig.center = [m for m in fig.center if not isinstance(m, Grid)]  # grid lines would hide pixels
        fig.image(image="image", x="x", y="y", dw="dw", dh="dh", source=self.source, color_mapper=mapper)
        fig.scatter("x", "y", source=self.marker, marker="circle_cross", size=14, fill_alpha=0,
                    line_color="red", line_width=2)
        fig.add_layout(ColorBar(color_mapper=mapper, title=unit, width=10), "right")
        fig.add_tools(HoverTool(tooltips=[("row, col", "$y{0}, $x{0}"), ("value", "@image{0.000}")]))
        fig.xaxis.axis_label = "column (px)"
        fig.yaxis.axis_label = "row (px)"
        self.figure = fig
        self.size_px = size_px
        self.full_shape: tuple = ()
        self.tile: ImageTile | None = None

    def reset_geometry(self, full_shape) -> None:
        """Show the whole of an image of ``full_shape`` (a new run)."""
        ny, nx = (int(n) for n in full_shape[-2:])
        self.full_shape = (ny, nx)
        self.x_range.update(start=0, end=nx, reset_start=0, reset_end=nx)
        self.y_range.update(start=ny, end=0, reset_start=ny, reset_end=0)
        self.figure.frame_height = max(80, int(round(self.size_px * ny / nx)))

    def show(self, tile: ImageTile | None, title: str | None = None) -> None:
        """Display ``tile`` (None clears the view)."""
        if title is not None:
            self.figure.title.text = title
        if tile is None:
            self.source.data = _empty_image()
            self.tile = None
            return
        if tuple(tile.full_shape) != self.full_shape:
            self.reset_geometry(tile.full_shape)
        self.tile = tile
        self.source.data = {"image": [tile.data], "x": [tile.region.x0], "y": [tile.region.y0],
                            "dw": [tile.dw], "dh": [tile.dh]}

    def mark(self, row: float | None, col: float | None) -> None:
        """Circle the picked pixel (None removes the circle)."""
        self.marker.data = {"x": [] if col is None else [col + 0.5], "y": [] if row is None else [row + 0.5]}

    def view_ranges(self):
        """The shown data ranges ``(x_start, x_end, y_start, y_end)``."""
        return self.x_range.start, self.x_range.end, self.y_range.start, self.y_range.end


class ColourControl:
    """Colour range (automatic 1–99 % or set by hand) and colour map for image views.

    Views given the same control share :attr:`mapper`, so they share their colour scale.
    Moving the slider (a user action: ``value_throttled``) switches automatic off.
    """

    def __init__(self, name: str, label: str, *, palette: str = "viridis"):
        self.mapper = LinearColorMapper(palette=PALETTES[palette], low=0.0, high=1.0, nan_color=TRANSPARENT,
                                        name=f"{name}-mapper")
        self.auto = pn.widgets.Checkbox(name="auto (1–99 %)", value=True, width=110)
        self.range = pn.widgets.RangeSlider(name=label, start=0.0, end=1.0, value=(0.0, 1.0), step=0.01,
                                            width=250, format="0[.]000")
        self.palette = pn.widgets.Select(name="colour map", options=list(PALETTES), value=palette, width=100)
        self._last = None
        self.range.param.watch(self._on_user_range, "value_throttled")
        self.palette.param.watch(lambda e: self.mapper.update(palette=PALETTES[e.new]), "value")
        self.auto.param.watch(self._on_auto, "value")

    def _on_user_range(self, event) -> None:
        lo, hi = event.new
        if hi > lo:
            self.auto.value = False  # the user set a range: keep it
            self.mapper.update(low=float(lo), high=float(hi))

    def _on_auto(self, event) -> None:
        if event.new and self._last is not None:
            self.autoscale(self._last)

    def autoscale(self, *images) -> None:
        """Set the range from the finite values of ``images`` when automatic is on."""
        arrays = [np.asarray(a, dtype=float).ravel() for a in images if a is not None and np.size(a)]
        if not arrays:
            return
        data = np.concatenate(arrays)
        self._last = data
        if not self.auto.value:
            return
        lo, hi = robust_limits(data)
        finite = data[np.isfinite(data)]
        start, end = (float(finite.min()), float(finite.max())) if finite.size else (lo, hi)
        start, end = min(start, lo), max(end, hi)
        self.range.param.update(start=start, end=end, step=(end - start) / 500 or 1e-6, value=(lo, hi))
        self.mapper.update(low=lo, high=hi)

    def panel(self):
        return pn.Row(self.range, self.auto, self.palette)


def line_figure(name: str, title: str, x_label: str, y_label: str, *, width: int = 420, height: int = 260):
    """An empty line plot with pan/zoom/save."""
    fig = figure(title=title, name=f"{name}-figure", width=width, height=height,
                 tools="pan,wheel_zoom,box_zoom,reset,save", toolbar_location=TOOLBAR_LOCATION)
    fig.xaxis.axis_label = x_label
    fig.yaxis.axis_label = y_label
    return fig


def energy_marker(fig, name: str) -> Span:
    """A vertical line on ``fig`` at the energy the stack slider shows."""
    span = Span(location=np.nan, dimension="height", line_color="grey", line_dash="dashed", name=f"{name}-span")
    fig.add_layout(span)
    return span
