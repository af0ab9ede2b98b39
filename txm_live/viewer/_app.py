"""The viewer page: follow mode, browse mode and the comparison of two runs.

:class:`ViewerApp` builds one page (one per browser tab on the server, or one in a
Jupyter cell). A periodic callback asks the page's worker to poll Tiled every
:data:`POLL_INTERVAL_S`; the worker reads only what changed and posts it back to the
document, so the page updates without reloading and the web server never waits on Tiled.
"""
from __future__ import annotations

import html
import logging
import time

import pandas as pd
import panel as pn

from ._run_panel import MapsPanel, RunPanel
from ._runs import (TiledRefused, TiledSource, TiledUnavailable, UnknownRun, ViewerDataError,
                    open_run)
from ._views import ColourControl
from ._worker import PageWorker

logger = logging.getLogger(__name__)

__all__ = ["ViewerApp", "POLL_INTERVAL_S"]

#: How often the page asks Tiled what changed (s); updates show within about twice this.
POLL_INTERVAL_S = 0.5
#: The run list is refreshed every this many polls.
LIST_EVERY_POLLS = 4
#: Most runs listed in browse mode.
LIST_LIMIT = 100
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
        Seconds between two polls of Tiled.

    Examples
    --------
    In a notebook (``pn.extension()`` first)::

        from txm_live.viewer import ViewerApp
        ViewerApp("http://127.0.0.1:8000/api/v1?api_key=...")   # shows the page in the cell
    """

    def __init__(self, tiled, *, api_key: str | None = None, run: str | None = None,
                 poll_interval_s: float = POLL_INTERVAL_S):
        if not poll_interval_s > 0:
            raise ValueError(f"poll_interval_s must be > 0; got {poll_interval_s!r}")
        self.source = tiled if isinstance(tiled, TiledSource) else TiledSource(tiled, api_key=api_key)
        self.poll_interval_s = float(poll_interval_s)
        self._doc = pn.state.curdoc
        self.worker = PageWorker(self._post, self._job_failed)
        self._n_polls = 0
        self._offline_since: float | None = None
        self._rows = []
        self._rows_read = False
        self._build()
        self._callback = None
        self._open_at_start = run
        self._resend = False
        if self._served():  # once the browser has the page, send everything again: it misses nothing
            pn.state.onload(lambda: setattr(self, "_resend", True))
        self._start()

    # ---------------------------------------------------------------- layout
    def _build(self) -> None:
        self.banner = pn.pane.Alert("", alert_type="danger", visible=False, css_classes=["tiled-banner"],
                                    sizing_mode="stretch_width")
        self.follow = RunPanel("follow", self.worker)
        self.follow_on = pn.widgets.Checkbox(name="follow the newest scan", value=True)
        self.browse = RunPanel("browse", self.worker)
        self.search = pn.widgets.TextInput(name="search", placeholder="uid, sample, scan type, status …",
                                           width=300)
        self.table = pn.widgets.Tabulator(_summary_frame([]), selectable="checkbox", disabled=True,
                                          show_index=False, pagination="local", page_size=12,
                                          sizing_mode="stretch_width", css_classes=["run-table"])
        self.uid_input = pn.widgets.TextInput(name="open run by uid", placeholder="uid", width=320)
        self.open_button = pn.widgets.Button(name="open", button_type="primary", width=80)
        self.compare_button = pn.widgets.Button(name="compare the two ticked runs", width=220)
        self.browse_message = pn.pane.Alert("", alert_type="warning", visible=False, css_classes=["browse-message"])
        self.compare_colours = {"energy": ColourControl("compare-energy", "whiteline & edge (eV)"),
                                "jump": ColourControl("compare-jump", "edge jump")}
        self.compare_area = pn.Column(visible=False, css_classes=["compare"])
        self.search.param.watch(lambda e: self._show_rows(), "value_input")
        self.table.on_click(self._on_row_click)
        self.open_button.on_click(lambda e: self.open(self.uid_input.value))
        self.compare_button.on_click(lambda e: self._compare())

        follow_tab = pn.Column(self.follow_on, self.follow.panel(), name="follow")
        browse_tab = pn.Column(pn.Row(self.search, self.uid_input, self.open_button, self.compare_button),
                               self.table, self.browse_message, self.compare_area, self.browse.panel(),
                               name="browse")
        self.tabs = pn.Tabs(("follow", follow_tab), ("browse", browse_tab), dynamic=False,
                            sizing_mode="stretch_width")
        title = pn.pane.Markdown(f"## txm-live viewer — Tiled at {html.escape(self.source.display_uri)}")
        self.layout = pn.Column(title, self.banner, self.tabs, sizing_mode="stretch_width")

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
        self._callback = pn.state.add_periodic_callback(self._tick, period=int(self.poll_interval_s * 1000))
        self._tick()
        if self._served():
            self._doc.on_session_destroyed(lambda ctx: self.close())

    def close(self) -> None:
        """Stop polling (the page closed)."""
        if self._callback is not None:
            self._callback.stop()
            self._callback = None
        self.worker.close()

    def _post(self, fn) -> None:
        if self._served():
            self._doc.add_next_tick_callback(fn)
        else:  # a notebook: Panel sends model changes from here
            fn()

    def _tick(self) -> None:
        if not self.worker.pending("poll"):
            self.worker.submit("poll", self._poll)

    # ---------------------------------------------------------------- polling (worker thread)
    def _poll(self):
        self._n_polls += 1
        apply = []
        reconnected = self._offline_since is not None or self._resend
        self._resend = False
        if self.follow_on.value:
            newest = self.source.newest_raw_uid()
            current = self.follow.run.uid if self.follow.run is not None else None
            if newest is not None and newest != current:
                run = open_run(self.source, newest)
                self.follow.adopt(run)  # poll it now; set_run on the page resets the views first
                apply.append(lambda: self.follow.set_run(run))
        apply.append(self._poll_panel(self.follow, force=reconnected))
        apply.append(self._poll_panel(self.browse, force=reconnected))
        browsing = self.tabs.active == 1
        if (browsing and (reconnected or self._n_polls % LIST_EVERY_POLLS == 1)) or not self._rows_read:
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
        self.tabs.active = 1

        def job():
            try:
                run = open_run(self.source, uid)
            except UnknownRun as exc:
                text = str(exc)
                return lambda: self.browse_message.param.update(object=html.escape(text), visible=True)

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
                tiles = {f.name: run.map_tile(f.name) for f in run.MAP_FIELDS}
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

