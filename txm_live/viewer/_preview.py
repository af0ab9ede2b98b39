"""The static preview: the newest run's whiteline map in the page's HTML (issue 12).

Panel's and Bokeh's JavaScript alone take ~0.8 s to load and run before any figure is
drawn, so an interactive map cannot be the first thing a page shows within 1 s. A page
whose server holds a :class:`~txm_live.viewer._first_view.FirstView` therefore carries
the same map as a PNG in its HTML: the same strided data the interactive view gets, in
the same colours (Bokeh's ``Viridis256``, limits as the page's automatic colour scale sets
them, i.e. 1–99 % of the whiteline and edge maps together). It sits above the page and
is hidden, by a few lines of JavaScript, once the interactive whiteline map has been
drawn: it covers the page (which builds under it) until then, so the page replaces it
without first showing below it. Panel/Bokeh's scripts then load *after* it in the page, so the browser shows it
before it compiles them.

Only the page whose own Tiled credentials read the view gets it: :class:`ViewerApp`
takes the view from :data:`FIRST_VIEWS` by its source's ``cache_key`` (server and API
key), and :func:`add_preview` is given that page's view only.
"""
from __future__ import annotations

import base64
import io

import jinja2
import matplotlib.image
import numpy as np
from matplotlib.colors import ListedColormap
from bokeh.palettes import Viridis256

from ._first_view import FirstView
from ._images import robust_limits

__all__ = ["PREVIEW_FIELD", "PREVIEW_ID", "preview_limits", "preview_png", "add_preview"]

#: The map shown as the preview, and the maps sharing its colour scale.
PREVIEW_FIELD = "whiteline"
PREVIEW_SCALE_FIELDS = ("whiteline", "edge")
#: zlib level of the PNG: 1 encodes a 512² map in 25 ms (level 6, the default: 110 ms)
#: and is as small on noisy maps (526 vs 516 kB)
PNG_COMPRESS_LEVEL = 1
_VIRIDIS = ListedColormap(Viridis256)
#: The HTML element ids (the benchmark and the tests look for them).
PREVIEW_ID = "txm-preview"
#: Screen width of the preview (px): the interactive maps' frame width.
PREVIEW_WIDTH_PX = 300
#: Hide the preview this long (ms) after the Bokeh document exists even if the
#: interactive map never got data (e.g. the run changed meanwhile).
FALLBACK_HIDE_MS = 5000

# Panel's page, with the preview first in <body> and the page's scripts and styles after
# it (in <head> they would keep the browser from showing anything until they have run).
_TEMPLATE = jinja2.Template("""{% extends base %}
{% block resources %}{% endblock %}
{% block inner_body %}
<div id="{{ txm_preview.id }}" style="position: absolute; top: 0; left: 0; right: 0; min-height: 100%; z-index: 10;
     background: white; font-family: sans-serif; padding: 8px 16px; box-sizing: border-box;">
  <div style="font-size: 1.1em; margin-bottom: 4px;">txm-live viewer — {{ txm_preview.run | e }}</div>
  <img id="{{ txm_preview.id }}-img" src="{{ txm_preview.src }}" alt="{{ txm_preview.alt | e }}"
       title="{{ txm_preview.alt | e }}" elementtiming="{{ txm_preview.id }}" width="{{ txm_preview.width }}"
       style="image-rendering: pixelated; display: block;">
  <div style="color: #666;">{{ txm_preview.caption | e }} — loading interactive view…</div>
</div>
<script>
(function () {
  var box = document.getElementById("{{ txm_preview.id }}"), since = null;
  function check() {
    try {
      if (typeof Bokeh !== "undefined" && Bokeh.documents.length) {
        var doc = Bokeh.documents[0];
        var fig = doc.get_model_by_name("follow-map-{{ txm_preview.field }}-figure");
        var src = doc.get_model_by_name("follow-map-{{ txm_preview.field }}-source");
        var view = fig ? Bokeh.index.find_one(fig) : null;
        if (since === null) since = performance.now();
        if ((view && view.has_finished() && src.data.image[0].length > 1) ||
            performance.now() - since > {{ txm_preview.fallback_ms }}) {
          box.style.display = "none"; return; }
      }
    } catch (e) {}
    requestAnimationFrame(check);
  }
  requestAnimationFrame(check);
})();
</script>
<style>html, body { display: flow-root; box-sizing: border-box; height: 100%; margin: 0; padding: 0; }</style>
{{ bokeh_css if bokeh_css }}
{{ bokeh_js if bokeh_js }}
{{ super() }}
{% endblock %}
""")


def preview_limits(view: FirstView) -> tuple[float, float]:
    """The colour limits a new page's automatic scale gives the preview's map group."""
    maps = [view.maps[name].data for name in PREVIEW_SCALE_FIELDS if name in view.maps]
    return robust_limits(np.concatenate([np.asarray(m, dtype=float).ravel() for m in maps]))


_LAST_PNG: tuple = (None, None)  # (view, its PNG): replaced as a whole (thread-safe)


def preview_png(view: FirstView) -> bytes | None:
    """The whiteline map of ``view`` as a PNG (RGBA, ``(h, w)`` of the strided tile, row 0
    on top, NaN transparent), or None when the view has no whiteline map.

    Colours follow Bokeh's ``LinearColorMapper``: index ``floor((v - lo) / (hi - lo) * 256)``
    into ``Viridis256``, clipped to the ends.
    """
    global _LAST_PNG
    last = _LAST_PNG
    if last[0] is view:  # pages served from one cached view share its PNG
        return last[1]
    tile = view.maps.get(PREVIEW_FIELD)
    if tile is None:
        return None
    lo, hi = preview_limits(view)
    buf = io.BytesIO()
    matplotlib.image.imsave(buf, np.asarray(tile.data), cmap=_VIRIDIS, vmin=lo, vmax=hi, format="png",
                            pil_kwargs={"compress_level": PNG_COMPRESS_LEVEL})
    png = buf.getvalue()
    _LAST_PNG = (view, png)
    return png


def add_preview(doc, view: FirstView | None) -> bool:
    """Give the page of ``doc`` the static preview of ``view`` (None: nothing is added).

    ``view`` must be the one this page itself shows (read with its own credentials).
    Returns whether a preview was added.
    """
    png = preview_png(view) if view is not None else None
    if png is None:
        return False
    uid = str(view.start.get("uid", ""))
    run = view.run(None).title() if view.start else uid
    doc.template = _TEMPLATE
    doc.template_variables["txm_preview"] = {
        "id": PREVIEW_ID, "field": PREVIEW_FIELD, "width": PREVIEW_WIDTH_PX, "fallback_ms": FALLBACK_HIDE_MS,
        "src": "data:image/png;base64," + base64.b64encode(png).decode("ascii"),
        "run": run, "alt": f"whiteline map of run {uid}{view.suffix}",
        "caption": f"whiteline (eV){view.suffix}"}
    return True
