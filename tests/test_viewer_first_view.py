"""The viewer's first-view cache (what a new page shows before it has read Tiled).

Pure Python, no server: the cache keeps one view per Tiled server + credentials, drops
the least recently used, never shows a view older than its age limit, and never lets an
older read replace a newer one (two pages' workers may finish out of order).
The browser tests show the cached maps drawn on a page (``test_viewer.py``).
"""
from __future__ import annotations

import time
from dataclasses import replace as dataclasses_replace

import numpy as np
import pytest

from txm_live.viewer._first_view import FirstView, FirstViewCache, maps_suffix
from txm_live.viewer._images import ImageTile, Region
from txm_live.viewer._runs import RunState, TiledSource, Xanes2DRun


def _view(uid: str, n_maps: int, read_at: float) -> FirstView:
    state = RunState(uid=uid, scan_type="xanes2d", title=uid, raw_status="running", n_maps=n_maps,
                     maps_n_energies=10 + n_maps, map_shape=(64, 64))
    tile = ImageTile(np.full((16, 16), float(n_maps), np.float32), Region.full((64, 64)), 4, (64, 64))
    return FirstView({"uid": uid, "scan_type": "xanes2d", "energies_ev": [8330.0, 8340.0]}, state,
                     {"whiteline": tile}, maps_suffix(state, tile), read_at)


def test_one_view_per_server_least_recently_used_dropped():
    cache = FirstViewCache(max_sources=2)
    now = time.monotonic()
    cache.put("a", _view("run-a", 1, now))
    cache.put("b", _view("run-b", 1, now))
    assert cache.get("a").start["uid"] == "run-a"  # "a" used last: "b" goes next
    cache.put("c", _view("run-c", 1, now))
    assert cache.get("b") is None
    assert cache.get("a").start["uid"] == "run-a" and cache.get("c").start["uid"] == "run-c"


def test_a_newer_read_replaces_an_older_never_the_reverse():
    cache = FirstViewCache()
    now = time.monotonic()
    cache.put("a", _view("run-a", 2, now))
    cache.put("a", _view("run-a", 1, now - 1.0))  # a slower page's older read comes in late
    assert cache.get("a").state.n_maps == 2
    cache.put("a", _view("run-a", 3, now + 1.0))
    assert cache.get("a").state.n_maps == 3
    cache.put("a", _view("run-b", 1, now - 5.0))  # an older read of another run neither
    assert cache.get("a").start["uid"] == "run-a"
    cache.put("a", _view("run-b", 1, now + 2.0))  # the next run, read later, replaces the last one's maps
    assert cache.get("a").start["uid"] == "run-b"


def test_a_view_older_than_the_age_limit_is_not_shown():
    cache = FirstViewCache(max_age_s=60.0)
    cache.put("a", _view("run-a", 1, time.monotonic() - 61.0))
    assert cache.get("a") is None
    cache.put("a", _view("run-a", 1, time.monotonic() - 59.0))
    assert cache.get("a") is not None


def test_the_view_rebuilds_its_run_without_a_request_and_titles_say_what_the_maps_are():
    view = _view("run-a", 1, time.monotonic())
    run = view.run(TiledSource("http://127.0.0.1:9/api/v1"))  # nothing listens on port 9: no request made
    assert isinstance(run, Xanes2DRun) and run.uid == "run-a"
    np.testing.assert_array_equal(run.energies_ev, [8330.0, 8340.0])
    assert view.suffix == " — partial, 11 energies (1:4)"


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="max_sources must be >= 1; got 0"):
        FirstViewCache(max_sources=0)


def test_the_preview_png_is_the_whiteline_map_in_the_pages_colours():
    """The static preview (``_preview``): each pixel is the ``Viridis256`` colour Bokeh's
    LinearColorMapper gives the map's value under the automatic limits (1–99 % of whiteline
    and edge together), NaN transparent; no view, or no whiteline map: no preview."""
    import io

    import matplotlib.image
    from bokeh.document import Document
    from bokeh.palettes import Viridis256

    from txm_live.viewer._images import robust_limits
    from txm_live.viewer._preview import add_preview, preview_limits, preview_png

    rng = np.random.default_rng(1)
    whiteline = (8340 + 3 * rng.standard_normal((24, 32))).astype(np.float32)
    whiteline[3, 5] = np.nan
    edge = whiteline - 4
    tiles = {k: ImageTile(v, Region.full(v.shape), 1, v.shape) for k, v in (("whiteline", whiteline), ("edge", edge))}
    view = dataclasses_replace(_view("run-a", 1, time.monotonic()), maps=tiles)
    lo, hi = preview_limits(view)
    assert (lo, hi) == robust_limits(np.r_[whiteline.ravel(), edge.ravel()].astype(float))
    rgba = np.round(matplotlib.image.imread(io.BytesIO(preview_png(view)), format="png") * 255).astype(int)
    assert rgba.shape == (24, 32, 4)
    index = np.clip(np.floor((whiteline.astype(float) - lo) / (hi - lo) * 256), 0, 255)
    lut = np.array([[int(c[i:i + 2], 16) for i in (1, 3, 5)] for c in Viridis256])
    finite = np.isfinite(whiteline)
    np.testing.assert_array_equal(rgba[finite][:, :3], lut[index[finite].astype(int)])
    assert rgba[3, 5, 3] == 0 and np.all(rgba[finite][:, 3] == 255)
    # negative control: the transposed-order mapping (another map) does not match
    assert not np.array_equal(rgba[finite][:, :3], lut[index[::-1][finite[::-1]].astype(int)])

    doc = Document()
    template = doc.template
    assert add_preview(doc, None) is False and doc.template is template
    no_whiteline = dataclasses_replace(view, maps={"edge": tiles["edge"]})
    assert add_preview(doc, no_whiteline) is False and "txm_preview" not in doc.template_variables
    assert add_preview(doc, view) is True
    shown = doc.template_variables["txm_preview"]
    assert "run-a" in shown["alt"] and shown["src"].startswith("data:image/png;base64,")
