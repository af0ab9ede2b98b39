"""The browser viewer: follow the current scan, browse runs, compare maps — from Tiled only.

``txm-live view --tiled URI_OR_DIR`` serves it on http://127.0.0.1:5006/ (Panel on Bokeh);
in a notebook, ``ViewerApp(uri)`` shows the same page in a cell (after
``panel.extension()``). Everything that knows how runs look in Tiled is in
:mod:`txm_live.viewer._runs` (the adapter); the rest only shows what it returns.
"""
from ._app import ViewerApp
from ._images import MAX_DISPLAY_PX, ImageTile, Region
from ._runs import (RUN_CLASSES, RawRun, RunState, RunSummary, TiledRefused, TiledSource, TiledUnavailable,
                    UnknownRun, ViewerDataError, Xanes2DRun, open_run)
from ._serve import DEFAULT_PORT, add_view_arguments, run_view, serve_viewer

__all__ = ["DEFAULT_PORT", "ImageTile", "MAX_DISPLAY_PX", "RUN_CLASSES", "RawRun", "Region", "RunState",
           "RunSummary", "TiledRefused", "TiledSource", "TiledUnavailable", "UnknownRun", "ViewerApp",
           "ViewerDataError", "Xanes2DRun", "add_view_arguments", "open_run", "run_view", "serve_viewer"]
