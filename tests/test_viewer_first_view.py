"""The viewer's first-view cache (what a new page shows before it has read Tiled).

Pure Python, no server: the cache keeps one view per Tiled server + credentials, drops
the least recently used, never shows a view older than its age limit, and never lets an
older read replace a newer one (two pages' workers may finish out of order).
The browser tests show the cached maps drawn on a page (``test_viewer.py``).
"""
from __future__ import annotations

import time

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
