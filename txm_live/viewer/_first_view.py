"""What a page shows first, kept in the server process across the pages it serves.

A new page would otherwise wait for several Tiled round trips (the newest run, its state,
three map reads) before it could draw anything. Every page that reads the whole maps of
its follow-mode run leaves a :class:`FirstView` here — keyed by the Tiled server and
credentials, holding the run's start document, its state and the strided maps, i.e. a
run uid and a data version (maps count, final or not). The next page of the same server
puts it into its document before the browser receives it, so the maps are drawn as soon
as the page is, and then polls Tiled as usual: anything newer (a later maps event, the
next run) replaces it within one poll.

:func:`warm_first_view` fills it when the server starts, so the first visitor gains too.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass

from ._images import ImageTile
from ._runs import RUN_CLASSES, RawRun, RunState, TiledSource, ViewerDataError, open_run

logger = logging.getLogger(__name__)

__all__ = ["FirstView", "FirstViewCache", "FIRST_VIEWS", "warm_first_view", "maps_suffix"]

#: Tiled servers (or credentials) whose first view is kept; the least recently used goes.
MAX_SOURCES = 8
#: A first view older than this (s) is not shown: the page waits for Tiled instead.
MAX_AGE_S = 600.0


@dataclass(frozen=True)
class FirstView:
    """The follow-mode run as a page last read it.

    Attributes
    ----------
    start : dict
        The raw run's start document (rebuilds the run object without a request).
    state : RunState
        Its state when the maps were read.
    maps : dict of str to ImageTile
        The whole maps, strided for display (``(h, w)`` float32 each).
    suffix : str
        What the map titles say about them (partial/final, stride).
    read_at : float
        ``time.monotonic()`` of the read.
    """

    start: dict
    state: RunState
    maps: dict
    suffix: str
    read_at: float

    def run(self, source: TiledSource) -> RawRun:
        """The run object again, from its start document (no request)."""
        return RUN_CLASSES.get(self.start.get("scan_type"), RawRun)(source, self.start)


class FirstViewCache:
    """A small thread-safe LRU of :class:`FirstView`, one per Tiled server + credentials."""

    def __init__(self, *, max_sources: int = MAX_SOURCES, max_age_s: float = MAX_AGE_S):
        if max_sources < 1:
            raise ValueError(f"max_sources must be >= 1; got {max_sources}")
        self.max_sources = int(max_sources)
        self.max_age_s = float(max_age_s)
        self._views: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()

    def put(self, key, view: FirstView) -> None:
        """Keep ``view`` for ``key`` unless a newer read is kept already (two pages' reads
        may finish out of order)."""
        with self._lock:
            old = self._views.get(key)
            if old is not None and old.read_at > view.read_at:
                return
            self._views[key] = view
            self._views.move_to_end(key)
            while len(self._views) > self.max_sources:
                self._views.popitem(last=False)

    def get(self, key) -> FirstView | None:
        """The view kept for ``key`` if it is younger than ``max_age_s``."""
        with self._lock:
            view = self._views.get(key)
            if view is None or time.monotonic() - view.read_at > self.max_age_s:
                return None
            self._views.move_to_end(key)
            return view

    def clear(self) -> None:
        with self._lock:
            self._views.clear()


#: The server process's cache (each served page reads and fills it).
FIRST_VIEWS = FirstViewCache()


def maps_suffix(state: RunState, tile: ImageTile) -> str:
    """Map title suffix: partial (how many energies) or final, and the stride."""
    suffix = " — final" if state.maps_final else f" — partial, {state.maps_n_energies} energies"
    return suffix + ("" if tile.stride == 1 else f" (1:{tile.stride})")


def read_first_view(source: TiledSource) -> FirstView | None:
    """Read the newest raw run's first view from Tiled (None: no run, or no maps yet)."""
    uid = source.newest_raw_uid()
    if uid is None:
        return None
    run = open_run(source, uid)
    state = run.state()
    if not run.MAP_FIELDS or not state.n_maps:
        return None
    tiles = run.map_tiles(index=state.n_maps - 1)
    return FirstView(run.start, state, tiles, maps_suffix(state, next(iter(tiles.values()))), time.monotonic())


def warm_first_view(source: TiledSource, key) -> threading.Thread:
    """Fill :data:`FIRST_VIEWS` for ``key`` from Tiled on a background thread."""
    def work():
        try:
            view = read_first_view(source)
        except ViewerDataError as exc:  # the first page will say so
            logger.info("no first view read at start: %s", exc)
            return
        if view is not None:
            FIRST_VIEWS.put(key, view)

    thread = threading.Thread(target=work, name="txm-viewer-warm", daemon=True)
    thread.start()
    return thread
