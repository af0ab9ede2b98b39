"""The viewer page: follow mode, browse mode and the comparison of two runs.

:class:`ViewerApp` builds one page (one per browser tab on the server, or one in a
Jupyter cell). Reads from Tiled run on the page's worker thread
(:class:`~txm_live.viewer._worker.PageWorker`), which posts what it read back to the
document, so the page updates without reloading and the web server never waits on Tiled.

When to read: the page subscribes to Tiled's websocket streaming
(:class:`~txm_live.viewer._watch.TiledWatch`); a new run, a new table row or a stop
document wakes the worker at once, which reads only what changed. Between notifications
a heartbeat every :data:`HEARTBEAT_S` asks Tiled for the newest run (one small request;
it also notices a server that went away). Where the watch cannot be had (a server without
streaming, a lost subscription) the page polls everything every ``poll_interval_s`` and
tries the watch again every :data:`WATCH_RETRY_S`.

A served page changes its document only once the browser has it
(``pn.state.onload``): Panel drops changes made between the browser's first pull of the
document and its "document ready", so results that arrive before then wait and are
applied, in order, once the page is ready.

What a page costs before its first paint (issue 12: ≤ 1 s): the first document holds only
the follow-mode header, status and maps (159 Bokeh models; the whole page was 788). The
raw frame, aligned stack, curves and export links are added once the browser has the page
(:meth:`RunPanel.show_rest`), the browse tab's views when it is first opened. The maps of
the newest run, as the last page read them, come with the first document
(:mod:`~txm_live.viewer._first_view`), so they are drawn without waiting for Tiled.
Panel's and Bokeh's JavaScript still take ~0.8 s, so a served page also carries that
whiteline map as a PNG in its HTML (:mod:`~txm_live.viewer._preview`, from
:attr:`ViewerApp.first_view`), shown until the interactive map is drawn.
"""
from __future__ import annotations

import collections
import html
import logging
import threading
import time

import pandas as pd
import panel as pn

from ._first_view import FIRST_VIEWS
from ._run_panel import MapsPanel, RunPanel
from ._runs import (TiledRefused, TiledSource, TiledUnavailable, UnknownRun, ViewerDataError,
                    open_run)
from ._views import ColourControl
from ._watch import CONTAINER, TiledWatch
from ._worker import PageWorker

logger = logging.getLogger(__name__)

__all__ = ["ViewerApp", "POLL_INTERVAL_S", "HEARTBEAT_S"]

#: Seconds between two polls of Tiled when no websocket watch is available.
POLL_INTERVAL_S = 0.5
#: Seconds between two "newest run?" requests while the watch reports changes.
HEARTBEAT_S = 2.0
#: Seconds after which every watched run is read again in full (guards against a missed
#: notification; costs one poll).
RESYNC_S = 30.0
#: Seconds between two attempts to (re)build the websocket watch.
WATCH_RETRY_S = 10.0
#: Most runs listed in browse mode.
LIST_LIMIT = 100
#: The run list is refreshed every this many polls when polling.
LIST_EVERY_POLLS = 4
TABLE_COLUMNS = ["scan", "started", "scan type", "sample", "plan", "raw", "analysis", "uid"]


def _summary_frame(rows) -> pd.DataFrame:
    return pd.DataFrame([{"scan": r.scan_id, "started": r.started, "scan type": r.scan_type, "sample": r.sample,
                          "plan": r.plan_name, "raw": r.status, "analysis": r.analysis_status, "uid": r.uid}
                         for r in rows], columns=TABLE_COLUMNS)


class ViewerApp:
    """A live viewer page reading runs from Tiled.

    Parameters
    ----------
    tiled : str, path, tiled client or :class:`TiledSource`
        Where the runs are (see :class:`TiledSource`).
    api_key : str, optional
        Tiled API key (else the URI's, else ``TILED_API_KEY``).
    run : str, optional
        Open this run in browse mode at start.
    poll_interval_s : float
        Seconds between two page ticks (polls of Tiled when there is no websocket watch).
    watch : bool
        Use Tiled's websocket streaming to learn of changes (else always poll).

    Examples
    --------
    In a notebook (``pn.extension()`` first)::

        from txm_live.viewer import ViewerApp
        ViewerApp("http://127.0.0.1:8000/api/v1?api_key=...")   # shows the page in the cell
    """

    def __init__(self, tiled, *, api_key: str | None = None, run: str | None = None,
                 poll_interval_s: float = POLL_INTERVAL_S, watch: bool = True):
        if not poll_interval_s > 0:
            raise ValueError(f"poll_interval_s must be > 0; got {poll_interval_s!r}")
        self.source = tiled if isinstance(tiled, TiledSource) else TiledSource(tiled, api_key=api_key)
        self.poll_interval_s = float(poll_interval_s)
        self._use_watch = bool(watch)
        self._doc = pn.state.curdoc
        self.worker = PageWorker(self._post, self._job_failed)
        self._n_polls = 0
        self._offline_since: float | None = None
        self._rows = []
        self._rows_read = False
        self._build()
        self._callback = None
        self._open_at_start = run
        #: what this page showed before reading Tiled (a FirstView, or None)
        self.first_view = None
        # worker-thread state of the watch
        self._watch: TiledWatch | None = None
        self._watch_retry_at = 0.0
        self._updates: collections.deque = collections.deque()
        self._last_heartbeat = self._last_resync = 0.0
        # document-thread state of the page's lifecycle
        self._ready_lock = threading.Lock()
        self._ready = not self._served()
        self._waiting: list = []  # results that arrived before the browser had the page
        if self._served():
            pn.state.onload(self._on_ready)
        self._start()

    # ---------------------------------------------------------------- layout
    def _build(self) -> None:
        self.banner = pn.pane.Alert("", alert_type="danger", visible=False, css_classes=["tiled-banner"],
                                    sizing_mode="stretch_width")
        key = self.source.cache_key
        self.follow = RunPanel("follow", self.worker, remember=lambda view: FIRST_VIEWS.put(key, view))
        self.follow_on = pn.widgets.Checkbox(name="follow the newest scan", value=True)
        self.browse: RunPanel | None = None  # built when the browse tab is first needed
        self.browse_message = pn.pane.Alert("", alert_type="warning", visible=False, css_classes=["browse-message"])
        follow_tab = pn.Column(self.follow_on, self.follow.panel(defer=self._served()), name="follow")
        self._browse_tab = pn.Column(pn.pane.Markdown("loading the run list …"), self.browse_message, name="browse")
        self.tabs = pn.Tabs(("follow", follow_tab), ("browse", self._browse_tab), dynamic=False,
                            sizing_mode="stretch_width")
        self.tabs.param.watch(lambda e: self._build_browse() if e.new == 1 else None, "active")
        title = pn.pane.Markdown(f"## txm-live viewer — Tiled at {html.escape(self.source.display_uri)}")
        self.layout = pn.Column(title, self.banner, self.tabs, sizing_mode="stretch_width")
        if not self._served():  # a notebook cell: built now (its JavaScript loads with the cell)
            self._build_browse()

    def _build_browse(self) -> None:
        """Build the browse tab (document thread, once): the run list, search, open, compare
        and a second set of run views. Deferred so that a page's first view (follow mode)
        costs the server and the browser half the models."""
        if self.browse is not None:
            return
        browse = RunPanel("browse", self.worker)
        self.search = pn.widgets.TextInput(name="search", placeholder="uid, sample, scan type, status …",
                                           width=300)
        self.table = pn.widgets.Tabulator(_summary_frame(self._rows), selectable="checkbox", disabled=True,
                                          show_index=False, pagination="local", page_size=12,
                                          sizing_mode="stretch_width", css_classes=["run-table"])
        self.uid_input = pn.widgets.TextInput(name="open run by uid", placeholder="uid", width=320)
        self.open_button = pn.widgets.Button(name="open", button_type="primary", width=80)
        self.compare_button = pn.widgets.Button(name="compare the two ticked runs", width=220)
        self.compare_colours = {"energy": ColourControl("compare-energy", "whiteline & edge (eV)"),
                                "jump": ColourControl("compare-jump", "edge jump")}
        self.compare_area = pn.Column(visible=False, css_classes=["compare"])
        self.search.param.watch(lambda e: self._show_rows(), "value_input")
        self.table.on_click(self._on_row_click)
        self.open_button.on_click(lambda e: self.open(self.uid_input.value))
        self.compare_button.on_click(lambda e: self._compare())
        self._browse_tab.objects = [pn.Row(self.search, self.uid_input, self.open_button, self.compare_button),
                                    self.table, self.browse_message, self.compare_area, browse.panel()]
        self.browse = browse  # last: the worker polls it from now on
        self._rows_read = False
        self._wake()  # the run list, now that there is a table to show it

    def __panel__(self):
        return self.layout

    def servable(self, title: str = "txm-live viewer"):
        return self.layout.servable(title=title)

    def _repr_mimebundle_(self, include=None, exclude=None):  # Jupyter
        return self.layout._repr_mimebundle_(include, exclude)

    # ---------------------------------------------------------------- lifecycle
    def _served(self) -> bool:
        return self._doc is not None and getattr(self._doc, "session_context", None) is not None

    def _start(self) -> None:
        if self._open_at_start:
            self.open(self._open_at_start)
        view = FIRST_VIEWS.get(self.source.cache_key)  # read with this page's own credentials
        self.first_view = view
        if view is not None:  # what an earlier page read: drawn with the page, corrected by the first poll
            self.follow.show_first_view(view.run(self.source), view)
        self._wake()  # the first read starts now, while the browser loads the page
        self._callback = pn.state.add_periodic_callback(self._tick, period=int(self.poll_interval_s * 1000))
        if self._served():
            self._doc.on_session_destroyed(lambda ctx: self.close())

    def close(self) -> None:
        """Stop polling and watching (the page closed)."""
        if self._callback is not None:
            self._callback.stop()
            self._callback = None
        self.worker.close()
        watch, self._watch = self._watch, None
        if watch is not None:  # closing sockets may wait on the server: not on the page's thread
            threading.Thread(target=watch.close, name="txm-viewer-watch-close", daemon=True).start()

    def _on_ready(self) -> None:
        """The browser has the page: apply what waited for it, in order."""
        self.follow.show_rest()  # the views the first view could do without
        with self._ready_lock:
            self._ready = True
            waiting, self._waiting = self._waiting, []
        logger.debug("page ready; applying %d waiting results", len(waiting))
        for fn in waiting:
            self._doc.add_next_tick_callback(fn)

    def _post(self, fn) -> None:
        if not self._served():  # a notebook: Panel sends model changes from here
            fn()
            return
        with self._ready_lock:
            if not self._ready:
                self._waiting.append(fn)
                return
        self._doc.add_next_tick_callback(fn)

    def _wake(self) -> None:
        """Have the worker look at Tiled now (any thread)."""
        if not self.worker.pending("poll"):
            self.worker.submit("poll", self._poll)

    def _tick(self) -> None:
        if not self._ready:
            return
        watching = self._watch is not None and self._watch.healthy
        if not watching or time.monotonic() - self._last_heartbeat >= HEARTBEAT_S:
            self._wake()

    # ---------------------------------------------------------------- the watch (worker thread)
    def _on_update(self, update) -> None:  # a websocket thread
        self._updates.append(update)
        if self._ready:
            self._wake()

    def _on_lost(self, path: str, reason: str) -> None:  # a websocket thread
        self._wake()

    def _ensure_watch(self) -> TiledWatch | None:
        """The healthy watch, building one when none is (and a retry is due)."""
        watch = self._watch
        if watch is not None and watch.healthy:
            return watch
        if watch is not None:
            watch.close()
            self._watch = None
            self._attach_runs(None)
        if not self._use_watch or time.monotonic() < self._watch_retry_at:
            return None
        self._watch_retry_at = time.monotonic() + WATCH_RETRY_S
        watch = TiledWatch(self.source.client(), self._on_update, self._on_lost)
        watch.subscribe("", CONTAINER)  # the catalog: new runs, stop documents
        self._watch = watch
        self._attach_runs(watch)
        return watch

    def _panels(self) -> list:
        return [p for p in (self.follow, self.browse) if p is not None]

    def _attach_runs(self, watch) -> None:
        for panel in self._panels():
            if panel.run is not None:
                panel.run.attach(watch)

    def _drop_watch(self) -> None:
        """Tiled went away: its subscriptions are no use; the next poll after it returns
        builds a new watch (sequence numbers restart with a new server)."""
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.close()
            self._attach_runs(None)
        self._watch_retry_at = 0.0

    def _apply_updates(self) -> bool:
        """Fold the watch's updates into the runs; True if the catalog changed."""
        catalog = False
        while self._updates:
            update = self._updates.popleft()
            catalog = catalog or update.path == ""
            for panel in self._panels():
                if panel.run is not None:
                    panel.run.apply(update)
        return catalog

    # ---------------------------------------------------------------- polling (worker thread)
    def _poll(self):
        try:
            return self._look()
        except TiledUnavailable:
            self._drop_watch()
            raise

    def _look(self):
        self._n_polls += 1
        now = time.monotonic()
        reconnected = self._offline_since is not None
        watch = self._ensure_watch()
        catalog_changed = self._apply_updates()
        if watch is not None and now - self._last_resync >= RESYNC_S:
            self._last_resync = now
            self._attach_runs(watch)  # everything read once more, subscriptions kept
        apply = []
        heartbeat = watch is None or catalog_changed or now - self._last_heartbeat >= HEARTBEAT_S
        if heartbeat:
            self._last_heartbeat = now
            newest = self.source.newest_raw_uid()  # also tells whether Tiled still answers
            current = self.follow.run.uid if self.follow.run is not None else None
            if self.follow_on.value and newest is not None and newest != current:
                run = open_run(self.source, newest)
                run.attach(watch)
                self.follow.adopt(run)  # poll it now; set_run on the page resets the views first
                apply.append(lambda: self.follow.set_run(run))
        if watch is not None:
            watch.retain({u for p in self._panels() if p.run is not None for u in p.run.watched_uids})
        apply.append(self._poll_panel(self.follow, force=reconnected))
        if self.browse is not None:
            apply.append(self._poll_panel(self.browse, force=reconnected))
        browsing = self.browse is not None and self.tabs.active == 1
        list_due = catalog_changed if watch is not None else self._n_polls % LIST_EVERY_POLLS == 1
        if self.browse is not None and ((browsing and (reconnected or list_due)) or not self._rows_read):
            rows = self.source.recent(LIST_LIMIT)
            self._rows_read = True
            apply.append(lambda: self._set_rows(rows))
        apply = [a for a in apply if a is not None]

        def show():
            if self._offline_since is not None:
                self._offline_since = None
                self.banner.visible = False
            for a in apply:
                a()
        return show

    def _poll_panel(self, panel: RunPanel, *, force: bool):
        try:
            return panel.poll(force=force)
        except (TiledUnavailable, TiledRefused):
            raise
        except ViewerDataError as exc:
            text = str(exc)
            return lambda: panel.say(text)

    def _job_failed(self, key: str, exc: BaseException):
        """What the page shows when a read fails (worker thread)."""
        if isinstance(exc, (TiledUnavailable, TiledRefused)):
            text = str(exc)

            def show():
                if self._offline_since is None:
                    self._offline_since = time.time()
                since = time.strftime("%H:%M:%S", time.localtime(self._offline_since))
                what = "refused" if isinstance(exc, TiledRefused) else "unreachable"
                self.banner.param.update(
                    object=html.escape(f"{text}. Retrying every {self.poll_interval_s:g} s; the page shows what "
                                       f"was read before ({what} since {since})."),
                    visible=True)
            return show
        text = str(exc) if isinstance(exc, ViewerDataError) else f"internal error: {type(exc).__name__}: {exc}"
        panel = self.browse if key.startswith("browse") else self.follow
        return lambda: panel.say(text, "danger")

    # ---------------------------------------------------------------- browse mode (document thread)
    def _set_rows(self, rows) -> None:
        self._rows = rows
        self._show_rows()

    def _show_rows(self) -> None:
        if self.browse is None:
            return
        ticked = {self.table.value.iloc[i]["uid"] for i in self.table.selection if i < len(self.table.value)}
        words = (self.search.value_input or self.search.value or "").lower().split()
        frame = _summary_frame(self._rows)
        if words:
            text = frame.astype(str).agg(" ".join, axis=1).str.lower()
            keep = pd.Series(True, index=frame.index)
            for w in words:
                keep &= text.str.contains(w, regex=False)
            frame = frame[keep].reset_index(drop=True)
        if not frame.equals(self.table.value):
            self.table.value = frame
            self.table.selection = [i for i, uid in enumerate(frame["uid"]) if uid in ticked]

    def _on_row_click(self, event) -> None:
        if event.row is not None and event.row < len(self.table.value):
            self.open(self.table.value.iloc[event.row]["uid"])

    def open(self, uid: str) -> None:
        """Open run ``uid`` in browse mode (says so on the page if there is no such run)."""
        uid = (uid or "").strip()
        self._build_browse()
        self.tabs.active = 1

        def job():
            try:
                run = open_run(self.source, uid)
            except UnknownRun as exc:
                text = str(exc)
                return lambda: self.browse_message.param.update(object=html.escape(text), visible=True)
            watch = self._watch
            run.attach(watch if watch is not None and watch.healthy else None)
            self.browse.adopt(run)  # polled from now on; set_run on the page resets the views first

            def show():
                self.browse_message.visible = False
                self.browse.set_run(run)
                self.worker.submit("browse-poll", lambda: self.browse.poll(force=True))
            return show
        self.worker.submit("browse-open", job)

    def _compare(self) -> None:
        uids = [self.table.value.iloc[i]["uid"] for i in self.table.selection if i < len(self.table.value)]
        if len(uids) != 2:
            self.browse_message.param.update(object=f"tick exactly two runs to compare ({len(uids)} ticked)",
                                             visible=True)
            return
        self.worker.submit("compare", lambda: self._read_compare(uids))

    def _read_compare(self, uids):
        columns = []
        for uid in uids:
            run = open_run(self.source, uid)
            state = run.state()
            tiles = {}
            if state.n_maps:
                tiles = run.map_tiles(index=state.n_maps - 1)
            columns.append((run, state, tiles))

        def show():
            self.browse_message.visible = False
            rows = []
            for k, (run, state, tiles) in enumerate(columns):
                maps = MapsPanel(f"compare-{k}", run.MAP_FIELDS, self.compare_colours, size_px=240)
                for f in run.MAP_FIELDS:
                    if f.name in tiles:
                        maps.views[f.name].show(tiles[f.name])
                note = "" if tiles else " — no maps"
                rows.append(pn.Column(pn.pane.Markdown(f"#### {html.escape(run.title())}{note}"), maps.panel()))
            for group, control in self.compare_colours.items():
                control.autoscale(*[tiles[f.name].data for run, _, tiles in columns for f in run.MAP_FIELDS
                                    if f.group == group and f.name in tiles])
            controls = pn.Row(*[c.panel() for c in self.compare_colours.values()])
            self.compare_area.objects = [pn.pane.Markdown("### comparison (shared colour scales)"),
                                         pn.Row(*rows), controls]
            self.compare_area.visible = True
        return show

