"""The viewer's adapter to Tiled: everything that knows how runs and streams look.

The rest of the viewer asks this module for *what to show* (run summaries, a run's state,
image tiles, curves) and never looks at document or stream names itself. A schema change
in the analysis, or a new scan type, is a change here only.

Schema assumed (txm-live's raw runs and live analysis runs as written by
``bluesky_tiled_plugins.TiledWriter``):

* raw run: ``start`` has ``scan_type``, ``scan_id``, ``time``, ``plan_name``, ``sample``
  (optional), and for ``xanes2d`` ``energies_ev`` (scan order), ``frames_per_energy``,
  ``flats_per_energy``, ``flat_energy_indices``; streams ``primary`` / ``flat`` / ``dark``
  each with one image field (the data key marked ``external``, or the only 2-D one),
  sample frame ``k`` at energy index ``k // frames_per_energy``; no ``stop`` while running.
* analysis run: ``start.parent_uid`` = raw uid, ``start.analysis``; streams ``drift``
  (``frame_index``, ``shift_y_px``, ``shift_x_px``, ``drift_y_px``, ``drift_x_px``),
  ``spectrum`` (``energy_ev``, ``mean_absorbance``), ``maps`` (``whiteline``, ``edge``,
  ``edge_jump`` float maps, ``mask``, ``n_energies``, ``final``), ``status`` (``failed``,
  ``partial``, ``errors``, ``n_frames``, ``n_frames_planned``); ``stop.exit_status`` and
  ``stop.reason``. The newest analysis run of a raw run is shown.

Arrays are read with ``ArrayClient`` slicing (numpy, positional axes), never through
xarray, so dimension names (``dim_int_1`` …) do not matter; scalar columns are read from
the stream's ``internal`` table when there is one, else field by field.

Live runs: a page with a :class:`~txm_live.viewer._watch.TiledWatch` lets each run
subscribe to its container, the containers of the streams it follows and their
``internal`` tables (:meth:`RawRun.attach`); the rows the tables send are kept, merged by
``seq_num``, and a notification marks only its part of the run stale
(:meth:`RawRun.apply`), so :meth:`RawRun.state` reads over HTTP just that. Without a watch,
``state`` re-reads everything on each call (polling).

Scan types register a run class in :data:`RUN_CLASSES`; tomography (sinogram, slices) and
operando (chemical map, per-particle SOC) add theirs next to :class:`Xanes2DRun`.
"""
from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._align import absorbance, pixel_values, shifted_mean
from ._images import ImageTile, Region, stride_for
from ._watch import CONTAINER, TABLE

logger = logging.getLogger(__name__)

__all__ = ["TiledSource", "RunSummary", "RunState", "MapField", "RawRun", "Xanes2DRun", "RUN_CLASSES",
           "ViewerDataError", "TiledUnavailable", "TiledRefused", "UnknownRun", "open_run"]

#: How many of the newest catalog entries are looked at to find the newest raw run.
NEWEST_WINDOW = 12
#: Most entries Tiled returns for one listing request.
MAX_PAGE = 300
#: Largest detector window read for one pixel's spectrum (drift beyond this is clipped).
MAX_PIXEL_WINDOW_PX = 96
#: Seconds an HTTP request to Tiled may take before the viewer calls the server unreachable.
TILED_TIMEOUT_S = 5.0
#: Media types of the export links the viewer offers, by label.
EXPORT_FORMATS = {"TIFF": "image/tiff", "CSV": "text/csv", "NumPy bytes": "application/octet-stream"}
URI_FILE = "tiled-uri.txt"
#: TiledWriter keeps a stream's scalar columns in this table, one row per event ...
TABLE_KEY = "internal"
#: ... numbered by this column (duplicates of a row seen twice are dropped by it)
ROW_ID = "seq_num"


# ---------------------------------------------------------------------- errors
class ViewerDataError(Exception):
    """Something the page says in one line (no traceback)."""


class TiledUnavailable(ViewerDataError):
    """The Tiled server does not answer (gone, restarting, wrong address)."""


class TiledRefused(ViewerDataError):
    """The Tiled server answered but refused (missing or wrong API key)."""


class UnknownRun(ViewerDataError):
    """No run with that uid."""


def _explain(exc: BaseException, where: str) -> ViewerDataError:
    """Translate a Tiled/httpx exception into a one-line :class:`ViewerDataError`."""
    import httpx

    if isinstance(exc, ViewerDataError):
        return exc
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, (httpx.TransportError, ConnectionError, OSError)):
        return TiledUnavailable(f"Tiled at {where} is not answering ({type(exc).__name__}: {text})")
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status in (401, 403) or "API key" in text or "authenticat" in text.lower():
        return TiledRefused(f"Tiled at {where} refused access (needs a valid API key: give --api-key, set "
                            f"TILED_API_KEY, or put ?api_key=... in the URI): {text}")
    return ViewerDataError(f"reading from Tiled at {where} failed: {type(exc).__name__}: {text}")


# ---------------------------------------------------------------------- connection
class TiledSource:
    """Where runs come from: a Tiled URI, an embedded server's folder, or a client.

    Parameters
    ----------
    tiled : str, path or tiled client
        ``http(s)://…`` URI (may carry ``?api_key=``), or the folder of a server started
        by ``txm-live serve`` / :class:`txm_live.store.EmbeddedTiled` (its URI file is
        re-read on every reconnect, so a restarted server is found again), or a client.
    api_key : str, optional
        Tiled API key; else the URI's, else ``TILED_API_KEY`` (Tiled's own rule).

    Notes
    -----
    The client is made on first use and dropped when the server stops answering; the next
    call reconnects. Errors come out as :class:`TiledUnavailable` / :class:`TiledRefused`
    / :class:`UnknownRun` with a one-line message.
    """

    def __init__(self, tiled, *, api_key: str | None = None):
        self._given_client = None if isinstance(tiled, (str, Path)) else tiled
        self._target = None if self._given_client is not None else str(tiled)
        self._api_key = api_key
        self._client = self._given_client
        self._lock = threading.Lock()

    @property
    def display_uri(self) -> str:
        """The server's address without any API key (safe to show on a page)."""
        if self._target is None:
            uri = str(self._given_client.uri).split("?")[0]
            return uri.split("/api/v1")[0] + "/api/v1" if "/api/v1" in uri else uri
        target = self._target
        if target.startswith(("http://", "https://")):
            return target.split("?")[0]
        return target

    @property
    def cache_key(self) -> tuple:
        """Which server, with which credentials: pages of one key may share what they read."""
        return (self._target if self._target is not None else id(self._given_client), self._api_key)

    def _resolve_uri(self) -> str:
        target = self._target
        if target.startswith(("http://", "https://")):
            return target
        uri_file = Path(target) / URI_FILE
        if not uri_file.exists():
            raise TiledUnavailable(f"Tiled at {target} is not answering (no server is running for it: "
                                   f"{uri_file} is missing)")
        return uri_file.read_text().strip()

    def client(self):
        """The connected tiled client (connects if needed)."""
        with self._lock:
            if self._client is None:
                from tiled.client import from_uri

                uri = self._resolve_uri()
                try:
                    self._client = from_uri(uri, api_key=self._api_key, timeout=TILED_TIMEOUT_S)
                except Exception as exc:
                    raise _explain(exc, uri.split("?")[0]) from None
            return self._client

    def call(self, fn, *args):
        """``fn(client, *args)`` with Tiled errors turned into one-line viewer errors."""
        client = self.client()
        try:
            return fn(client, *args)
        except KeyError as exc:
            raise UnknownRun(f"no entry {exc.args[0]!r} in Tiled at {self.display_uri}") from None
        except Exception as exc:
            err = _explain(exc, self.display_uri)
            if isinstance(err, TiledUnavailable) and self._given_client is None:
                with self._lock:
                    self._client = None  # reconnect next time (the server may come back elsewhere)
            raise err from None

    def export_url(self, path: str, media_type: str, *, slice_: str | None = None) -> str:
        """Tiled's export link for the array at ``path`` (no API key in it)."""
        from urllib.parse import quote

        base = self.display_uri.rstrip("/")
        if not base.endswith("/api/v1"):
            base = base.split("/api/v1")[0] + "/api/v1"
        url = f"{base}/array/full/{path}?format={quote(media_type, safe='')}"
        return url + (f"&slice={slice_}" if slice_ else "")

    # -- runs --------------------------------------------------------------------------
    def recent(self, limit: int = 100) -> list["RunSummary"]:
        """Raw runs, newest first, with the status of their newest analysis run."""
        return self.call(_recent_runs, int(limit))

    def newest_raw_uid(self) -> str | None:
        """uid of the newest raw run (not an analysis run), or None in an empty catalog.

        Asks first, with one request and no retries, whether the server answers at all:
        the Tiled client retries a refused connection for up to ~45 s, and the page would
        say nothing meanwhile (nor reconnect, after a restart, until its retries end).
        """
        self.check_answering()
        return self.call(_newest_raw_uid)

    def check_answering(self) -> None:
        """Raise :class:`TiledUnavailable` at once if nothing answers at the server's
        address (one GET of the API root, no retries)."""
        import httpx

        if self._given_client is not None:
            uri = str(self._given_client.uri)
        else:
            uri = self._resolve_uri()
        root = uri.split("?")[0]
        root = (root.split("/api/v1")[0] if "/api/v1" in root else root.rstrip("/")) + "/api/v1/"
        try:
            with httpx.Client(trust_env=False, timeout=TILED_TIMEOUT_S) as http:
                http.get(root)
        except httpx.TransportError as exc:
            with self._lock:
                if self._given_client is None:
                    self._client = None  # reconnect once it answers (maybe at another address)
            raise _explain(exc, self.display_uri) from None


def _is_analysis(start) -> bool:
    return "parent_uid" in start


def _raw_status(md) -> str:
    stop = md.get("stop") or {}
    return stop.get("exit_status", "running") if stop else "running"


def _newest_raw_uid(client) -> str | None:
    for run in client.values()[-1:-NEWEST_WINDOW - 1:-1]:
        start = run.metadata.get("start") or {}
        if not _is_analysis(start):
            return start.get("uid")
    for run in client.values()[-NEWEST_WINDOW - 1:-NEWEST_WINDOW * 10 - 1:-1]:  # a long analysis burst
        start = run.metadata.get("start") or {}
        if not _is_analysis(start):
            return start.get("uid")
    return None


@dataclass(frozen=True)
class RunSummary:
    """One row of the run list."""

    uid: str
    scan_id: int | None
    scan_type: str
    sample: str
    plan_name: str
    time_s: float
    status: str
    analysis_uid: str | None = None
    analysis_status: str = "none"

    @property
    def started(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.time_s)) if self.time_s else ""


def _recent_runs(client, limit: int) -> list[RunSummary]:
    from tiled.queries import In

    raws, analyses = [], {}
    for run in client.values()[-1:-min(2 * limit, MAX_PAGE) - 1:-1]:
        md = run.metadata
        start = md.get("start") or {}
        if _is_analysis(start):
            analyses.setdefault(start["parent_uid"], (start["uid"], _analysis_status(md)))
        elif len(raws) < limit:
            raws.append(md)
    missing = [md["start"]["uid"] for md in raws if md["start"]["uid"] not in analyses]
    if missing:
        found = client.search(In("start.parent_uid", missing))
        for run in found.values()[-1::-1]:  # newest first: setdefault keeps the newest
            md = run.metadata
            analyses.setdefault(md["start"]["parent_uid"], (md["start"]["uid"], _analysis_status(md)))
    rows = []
    for md in raws:
        start = md["start"]
        a_uid, a_status = analyses.get(start["uid"], (None, "none"))
        rows.append(RunSummary(uid=start["uid"], scan_id=start.get("scan_id"),
                               scan_type=str(start.get("scan_type", "")), sample=str(start.get("sample", "")),
                               plan_name=str(start.get("plan_name", "")), time_s=float(start.get("time", 0.0)),
                               status=_raw_status(md), analysis_uid=a_uid, analysis_status=a_status))
    return rows


def _analysis_status(md) -> str:
    stop = md.get("stop") or {}
    if not stop:
        return "running"
    return {"fail": "failed"}.get(stop.get("exit_status"), stop.get("exit_status", "?"))


# ---------------------------------------------------------------------- one run
@dataclass(frozen=True)
class MapField:
    """A map stream field the page shows: name, title, unit, colour group."""

    name: str
    title: str
    unit: str
    group: str


@dataclass(frozen=True)
class RunState:
    """What a run looks like now; the page compares two states to know what to re-read.

    Counts are of stored rows; ``version`` changes whenever anything shown changes.
    """

    uid: str
    scan_type: str
    title: str
    raw_status: str
    raw_reason: str = ""
    n_frames: int = 0
    n_frames_planned: int = 0
    image_shape: tuple = ()
    analysis_uid: str | None = None
    analysis_status: str = "none"
    analysis_reason: str = ""
    analysis_errors: str = ""
    n_drift: int = 0
    n_spectrum: int = 0
    n_maps: int = 0
    maps_final: bool = False
    maps_n_energies: int = 0
    map_shape: tuple = ()
    energies_ev: tuple = ()
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def failed(self) -> bool:
        return self.analysis_status == "failed"


class RawRun:
    """Any raw run: its frames (``primary``) and status. Scan types extend it.

    What is known about the run is cached here and refreshed by :meth:`state`: all of it
    on every call when the run is polled, only what a :class:`~._watch.TiledWatch` said
    changed when one feeds the run (:meth:`attach`, :meth:`apply`).
    """

    #: streams of the raw run holding images
    FRAME_STREAMS = ("primary", "flat", "dark")
    #: map fields the page shows (none for a run type without maps)
    MAP_FIELDS: tuple = ()
    has_analysis = False
    #: what :meth:`state` may have to re-read: the run's metadata, the frame count, and
    #: (when watched) which of its nodes exist, to subscribe to them
    PARTS = ("md", "frames", "discover")

    def __init__(self, source: TiledSource, start: dict):
        self.source = source
        self.start = start
        self.uid = start["uid"]
        self.scan_type = str(start.get("scan_type", "unknown"))
        self._image_keys: dict[str, str | None] = {}
        self.watch = None
        self._stale: set[str] = set(self.PARTS)
        self._md: dict = {}
        self._n_frames = 0
        self._image_shape: tuple = ()

    # -- helpers ----------------------------------------------------------------------
    def _image_key(self, client, stream: str) -> str | None:
        if stream not in self._image_keys:
            key = None
            try:
                data_keys = client[f"{self.uid}/{stream}"].metadata.get("data_keys", {})
            except KeyError:
                data_keys = {}
            for name, dk in data_keys.items():
                if dk.get("external") or len(dk.get("shape") or ()) == 2:
                    key = name
                    break
            if key is not None or self._has_stop(client):
                self._image_keys[stream] = key  # only remember "none" once the run is over
            return key
        return self._image_keys[stream]

    def _has_stop(self, client) -> bool:
        return bool(client[self.uid].metadata.get("stop"))

    def _frames(self, client, stream: str):
        key = self._image_key(client, stream)
        return None if key is None else client[f"{self.uid}/{stream}/{key}"]

    def title(self) -> str:
        s = self.start
        sample = f" · {s['sample']}" if s.get("sample") else ""
        return f"scan {s.get('scan_id', '?')} · {self.scan_type}{sample} · {self.uid[:8]}"

    # -- being watched ------------------------------------------------------------------
    @property
    def live(self) -> bool:
        """True while a healthy watch feeds this run (else :meth:`state` polls)."""
        return self.watch is not None and self.watch.healthy

    def attach(self, watch) -> None:
        """Let ``watch`` (a :class:`~._watch.TiledWatch`, or None to poll) feed this run.

        Everything is read again at the next :meth:`state`, after subscribing.
        """
        self.watch = watch
        self._stale = set(self.PARTS)

    def _watched_streams(self) -> dict[str, dict[str, str]]:
        """``{run uid: {stream: part}}``: whose table rows mark which part stale."""
        return {self.uid: {"primary": "frames"}}

    @property
    def watched_uids(self) -> tuple[str, ...]:
        """The runs (this one, its analysis) whose nodes a watch holds for this run."""
        return tuple(self._watched_streams())

    def apply(self, update) -> bool:
        """Fold a :class:`~._watch.WatchUpdate` into what is known.

        Returns True when the page should look at :meth:`state` again. Runs on the
        page's worker thread, like every other method here.
        """
        if update.path == "":  # the catalog root: a run's metadata changed (its stop document)
            if update.kind == "metadata" and update.key == self.uid:
                self._stale.add("md")
                return True
            return False
        for run_uid, parts in self._watched_streams().items():
            if update.path == run_uid or update.path.startswith(run_uid + "/"):
                return self._apply_to_run(run_uid, parts, update)
        return False

    def _apply_to_run(self, run_uid: str, parts: dict, update) -> bool:
        stream = update.path[len(run_uid) + 1:].split("/")[0] if update.path != run_uid else None
        if stream is None:  # the run's container: a stream was created
            if (update.kind == "child" and update.key in parts and self.live
                    and not self.watch.watching(f"{run_uid}/{update.key}/{TABLE_KEY}")):
                self.watch.subscribe(f"{run_uid}/{update.key}", CONTAINER)  # it announces its table
            return False
        part = parts.get(stream)
        if part is None:
            return False
        if update.path == f"{run_uid}/{stream}":  # the stream's container: its table was created
            if update.kind == "child" and update.key == TABLE_KEY:
                self._watch_table(run_uid, stream)
                self._stale.add(part)  # read once what was written before the subscription
                return True
            return False
        if update.kind == "rows":
            self._merge_rows(part, update.rows)
            return True
        return False

    def _watch_table(self, run_uid: str, stream: str) -> None:
        if self.live:
            self.watch.subscribe(f"{run_uid}/{stream}/{TABLE_KEY}", TABLE)
            self.watch.unsubscribe(f"{run_uid}/{stream}")  # only needed to learn of the table

    def _table_node(self, client, run_uid: str, stream: str):
        """The stream's table node, subscribed to first when watched; None if it does not
        exist yet (then its stream's container, if that exists, announces it)."""
        try:
            node = client[f"{run_uid}/{stream}/{TABLE_KEY}"]
        except KeyError:
            if self.live:
                try:
                    client[f"{run_uid}/{stream}"]
                except KeyError:
                    pass  # not even the stream yet: the run's container announces it
                else:
                    self.watch.subscribe(f"{run_uid}/{stream}", CONTAINER)
            return None
        self._watch_table(run_uid, stream)
        return node

    def _discover(self, client, run_uid: str) -> None:
        """Subscribe to the run's container (it announces streams created later) and to the
        frame table of the raw run."""
        if not self.live:
            return
        self.watch.subscribe(run_uid, CONTAINER)
        if run_uid == self.uid:
            self._table_node(client, run_uid, "primary")

    def _merge_rows(self, part: str, rows) -> None:
        """Raw runs do not keep rows: new ones mean more frames (re-read the count)."""
        self._stale.add(part)

    # -- what the page asks -------------------------------------------------------------
    def state(self) -> RunState:
        return self.source.call(self._state)

    def _take_stale(self) -> set[str]:
        """The parts to read now (all of them when polled); cleared before reading."""
        if not self.live:
            self._stale |= set(self.PARTS) - {"discover"}
        stale, self._stale = self._stale, set()
        return stale

    def _refresh(self, client, stale: set[str]) -> None:
        if "discover" in stale:
            self._discover(client, self.uid)
        if "md" in stale:
            self._md = dict(client[self.uid].metadata)
        if "frames" in stale:
            frames = self._frames(client, "primary")
            shape = tuple(frames.shape) if frames is not None else ()
            self._n_frames, self._image_shape = (shape[0], shape[1:]) if shape else (0, ())

    def _state(self, client) -> RunState:
        self._refresh(client, self._take_stale())
        return self._raw_state()

    def _raw_state(self) -> RunState:
        stop = self._md.get("stop") or {}
        return RunState(uid=self.uid, scan_type=self.scan_type, title=self.title(), raw_status=_raw_status(self._md),
                        raw_reason=str(stop.get("reason", "")), n_frames=self._n_frames,
                        n_frames_planned=int(self.start.get("num_points") or 0), image_shape=self._image_shape)

    def raw_frame(self, index: int, region: Region | None = None, *, max_px: int | None = None) -> ImageTile:
        """Sample frame ``index`` (negative: from the end), counts."""
        return self.source.call(self._raw_frame, index, region, max_px)

    def _raw_frame(self, client, index, region, max_px) -> ImageTile:
        frames = self._frames(client, "primary")
        if frames is None or frames.shape[0] == 0:
            raise ViewerDataError(f"run {self.uid[:8]} has no frames yet")
        return _tile(frames, int(index), region, max_px)

    def frame_energy_ev(self, index: int) -> float | None:
        return None


def _tile(array_client, index: int, region: Region | None, max_px: int | None) -> ImageTile:
    shape = tuple(array_client.shape[-2:])
    region = region or Region.full(shape)
    stride = stride_for(region) if max_px is None else stride_for(region, max_px=max_px)
    rows, cols = region.slices(stride)
    data = np.asarray(array_client[index, rows, cols], dtype=np.float32)
    return ImageTile(data=data, region=region, stride=stride, full_shape=shape)


def _union_rows(old, new):
    """Rows of ``old`` and ``new`` (DataFrames), one per ``seq_num``, in event order."""
    import pandas as pd

    if old is None or not len(old):
        table = new
    elif new is None or not len(new):
        table = old
    else:
        table = pd.concat([old, new], ignore_index=True)
    if table is None or ROW_ID not in table:
        return table
    return table.drop_duplicates(subset=ROW_ID, keep="last").sort_values(ROW_ID).reset_index(drop=True)


class Xanes2DRun(RawRun):
    """A ``scan_type='xanes2d'`` raw run and its newest live-analysis run."""

    MAP_FIELDS = (MapField("whiteline", "whiteline", "eV", "energy"),
                  MapField("edge", "edge", "eV", "energy"),
                  MapField("edge_jump", "edge jump", "absorbance", "jump"))
    has_analysis = True
    #: the analysis run's streams, each read as a table (its scalar columns)
    ANALYSIS_STREAMS = ("drift", "spectrum", "maps", "status")
    PARTS = RawRun.PARTS + ("find", "analysis_md", "discover_analysis") + ANALYSIS_STREAMS

    def __init__(self, source, start):
        super().__init__(source, start)
        self.energies_ev = np.asarray(start.get("energies_ev", []), dtype=float)
        self.fpe = max(1, int(start.get("frames_per_energy", 1)))
        self.flats_per_energy = max(1, int(start.get("flats_per_energy", 1)))
        self.flat_energy_indices = list(start.get("flat_energy_indices", range(len(self.energies_ev))))
        self.analysis_uid: str | None = None
        self._analysis_md: dict = {}
        self._tables: dict[str, object] = {}
        self._map_shape: tuple = ()
        self._final_read = False

    def frame_energy_ev(self, index: int) -> float | None:
        i = index // self.fpe
        return float(self.energies_ev[i]) if 0 <= i < len(self.energies_ev) else None

    # -- the analysis run ---------------------------------------------------------------
    def _watched_streams(self) -> dict[str, dict[str, str]]:
        streams = super()._watched_streams()
        if self.analysis_uid is not None:
            streams[self.analysis_uid] = {s: s for s in self.ANALYSIS_STREAMS}
        return streams

    def apply(self, update) -> bool:
        if update.path == "":
            start = (update.metadata or {}).get("start") or {}
            if update.kind == "child" and start.get("parent_uid") == self.uid and update.key != self.analysis_uid:
                self._use_analysis(update.key)  # a new analysis of this run (a replay adds another)
                return True
            if update.kind == "metadata" and update.key == self.analysis_uid and self.analysis_uid is not None:
                self._stale |= {"analysis_md", "status"}
                return True
        return super().apply(update)

    def _use_analysis(self, uid: str) -> None:
        if self.analysis_uid is not None and self.live:
            self.watch.unsubscribe_under(self.analysis_uid)
        self.analysis_uid = uid
        self._analysis_md, self._tables, self._map_shape, self._final_read = {}, {}, (), False
        self._stale |= {"analysis_md", "discover_analysis", *self.ANALYSIS_STREAMS}

    def _find_analysis(self, client):
        from tiled.queries import Key

        found = client.search(Key("start.parent_uid") == self.uid)
        uids = list(found)
        if uids and uids[-1] != self.analysis_uid:
            self._use_analysis(uids[-1])  # the newest (a replay adds another)
        return self.analysis_uid

    def _merge_rows(self, part: str, rows) -> None:
        if part in self.ANALYSIS_STREAMS:
            self._tables[part] = _union_rows(self._tables.get(part), rows)
        else:
            super()._merge_rows(part, rows)

    def _fetch_table(self, client, stream: str):
        """All rows of an analysis stream's table as stored now, or None before it exists."""
        node = self._table_node(client, self.analysis_uid, stream)
        if node is not None:
            return node.read()
        # watched: the stream's container announces the table; polled: try the fields
        return None if self.live else self._table_field_by_field(client, stream)

    def _table_field_by_field(self, client, stream: str):
        """A storage layout without an ``internal`` table: read the 1-D fields one by one."""
        import pandas as pd

        try:
            node = client[f"{self.analysis_uid}/{stream}"]
        except KeyError:
            return None
        # A composite stream lists its table's columns among its keys: read column by
        # column while the writer appends, they disagree in length (the server answers
        # 500). Its parts instead: the table, if it appeared since the look above, whole.
        parts = getattr(node, "base", node)
        if TABLE_KEY in parts:
            return parts[TABLE_KEY].read()
        columns = {}
        for key in parts:
            arr = parts[key]
            if len(getattr(arr, "shape", ())) == 1:
                columns[key] = np.asarray(arr[:])
        return pd.DataFrame(columns) if columns else None

    def _take_stale(self) -> set[str]:
        if not self.live:
            # polled: look for the analysis until found; re-read its tables until they were
            # read once after it stopped (then nothing changes any more)
            self._stale |= {"md", "frames", "analysis_md"}
            if self.analysis_uid is None:
                self._stale.add("find")
            elif not self._final_read:
                self._stale |= set(self.ANALYSIS_STREAMS)
        # watched: "find" is stale once (attach); a later analysis arrives as a catalog update
        stale, self._stale = self._stale, set()
        return stale

    def _refresh(self, client, stale: set[str]) -> None:
        super()._refresh(client, stale)
        if "find" in stale:
            self._find_analysis(client)
            stale |= self._stale  # a new analysis marks its parts stale
            self._stale = set()
        if self.analysis_uid is None:
            return
        if "discover_analysis" in stale:
            self._discover(client, self.analysis_uid)
        if "analysis_md" in stale:
            self._analysis_md = dict(client[self.analysis_uid].metadata)
        stopped = bool(self._analysis_md.get("stop"))
        due = [s for s in self.ANALYSIS_STREAMS if s in stale and (s != "status" or stopped or self.live)]
        if len(due) > 1:  # the tables side by side: each read is a round trip, mostly waiting
            with concurrent.futures.ThreadPoolExecutor(max_workers=len(due)) as pool:
                read = {s: pool.submit(self._fetch_table, client, s) for s in due}
                fetched = {s: future.result() for s, future in read.items()}
        else:
            fetched = {s: self._fetch_table(client, s) for s in due}
        for stream, table in fetched.items():
            if table is not None:
                self._tables[stream] = _union_rows(self._tables.get(stream), table)
        maps = self._tables.get("maps")
        if maps is not None and len(maps) and not self._map_shape:
            self._map_shape = tuple(client[f"{self.analysis_uid}/maps/whiteline"].shape[1:])
        if stopped and not self.live and set(self.ANALYSIS_STREAMS) <= stale:
            self._final_read = True

    def _state(self, client) -> RunState:
        self._refresh(client, self._take_stale())
        base = self._raw_state()
        planned = len(self.energies_ev) * self.fpe
        values = dict(n_frames_planned=planned, energies_ev=tuple(self.energies_ev.tolist()))
        if self.analysis_uid is not None:
            values.update(self._analysis_state())
        return RunState(**{**base.__dict__, **values})

    def _analysis_state(self) -> dict:
        md = self._analysis_md
        stop = md.get("stop") or {}
        drift, spectrum, maps, status = (self._tables.get(s) for s in self.ANALYSIS_STREAMS)
        n_maps = 0 if maps is None else len(maps)
        values = dict(analysis_uid=self.analysis_uid, analysis_status=_analysis_status(md),
                      analysis_reason=str(stop.get("reason", "")), n_maps=n_maps,
                      n_drift=0 if drift is None else len(drift),
                      n_spectrum=0 if spectrum is None else len(spectrum))
        if n_maps:
            values.update(maps_final=bool(maps["final"].iloc[-1]), maps_n_energies=int(maps["n_energies"].iloc[-1]),
                          map_shape=self._map_shape)
        if stop and status is not None and len(status):
            values["analysis_errors"] = str(status["errors"].iloc[-1] or "")
        return values

    # -- curves ---------------------------------------------------------------------
    def drift(self) -> dict:
        """``{"frame_index", "energy_ev", "drift_y_px", "drift_x_px", "shift_y_px", "shift_x_px"}`` arrays."""
        return self.source.call(self._drift)

    def _drift(self, client) -> dict:
        if self.analysis_uid is None:
            return {}
        table = self._tables.get("drift")
        if table is None or not len(table):
            return {}
        return {k: np.asarray(table[k], dtype=float) for k in
                ("frame_index", "energy_ev", "drift_y_px", "drift_x_px", "shift_y_px", "shift_x_px")}

    def mean_spectrum(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean absorbance of the sample vs energy (eV), sorted by energy."""
        return self.source.call(self._mean_spectrum)

    def _mean_spectrum(self, client):
        empty = (np.zeros(0), np.zeros(0))
        if self.analysis_uid is None:
            return empty
        table = self._tables.get("spectrum")
        if table is None or not len(table):
            return empty
        e, a = np.asarray(table["energy_ev"], float), np.asarray(table["mean_absorbance"], float)
        order = np.argsort(e)
        return e[order], a[order]

    # -- images ---------------------------------------------------------------------
    def map_tiles(self, region: Region | None = None, *, index: int = -1, names=None,
                  max_px: int | None = None) -> dict[str, ImageTile]:
        """Maps ``names`` (default: all :attr:`MAP_FIELDS`) of maps event ``index``, NaN outside
        the sample mask (read once for all of them)."""
        known = [f.name for f in self.MAP_FIELDS]
        names = known if names is None else list(names)
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"unknown map(s) {unknown}; expected some of {known}")
        return self.source.call(self._map_tiles, names, region, int(index), max_px)

    def map_tile(self, name: str, region: Region | None = None, *, index: int = -1,
                 max_px: int | None = None) -> ImageTile:
        """Map ``name`` (one of :attr:`MAP_FIELDS`) from maps event ``index``, masked."""
        return self.map_tiles(region, index=index, names=[name], max_px=max_px)[name]

    def _map_tiles(self, client, names, region, index, max_px):
        if self.analysis_uid is None:
            raise ViewerDataError(f"run {self.uid[:8]} has no analysis run yet")

        def read(name):
            try:
                array = client[f"{self.analysis_uid}/maps/{name}"]
            except KeyError:
                raise ViewerDataError(f"analysis {self.analysis_uid[:8]} has no {name} map yet") from None
            return _tile(array, index, region, max_px)
        # one request per map, side by side: a strided read of a large map waits mostly on
        # the server decompressing its chunk
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(names) + 1) as pool:
            futures = {name: pool.submit(read, name) for name in [*names, "mask"]}
            tiles = {name: future.result() for name, future in futures.items()}
        inside = tiles.pop("mask").data > 0
        return {name: ImageTile(data=np.where(inside, t.data, np.nan).astype(np.float32), region=t.region,
                                stride=t.stride, full_shape=t.full_shape) for name, t in tiles.items()}

    def aligned_tile(self, energy_index: int, region: Region | None = None, *,
                     max_px: int | None = None) -> ImageTile:
        """Absorbance at ``energy_index`` (scan order), frames moved by the analysis' shifts."""
        return self.source.call(self._aligned_tile, int(energy_index), region, max_px)

    def _flat_position(self, energy_index: int, n_flats: int) -> int:
        complete = [p for p in range(len(self.flat_energy_indices)) if (p + 1) * self.flats_per_energy <= n_flats]
        if not complete:
            raise ViewerDataError(f"run {self.uid[:8]} has no complete set of flats yet")
        return min(complete, key=lambda p: (abs(self.flat_energy_indices[p] - energy_index), p))

    def _shifts(self, client, frame_indices) -> np.ndarray | None:
        drift = self._drift(client)
        if not drift:
            return None
        by_frame = {int(k): (sy, sx) for k, sy, sx in zip(drift["frame_index"], drift["shift_y_px"],
                                                          drift["shift_x_px"])}
        if not all(int(k) in by_frame for k in frame_indices):
            return None
        return np.array([by_frame[int(k)] for k in frame_indices], dtype=float)

    def _aligned_tile(self, client, energy_index, region, max_px) -> ImageTile:
        frames, flats, darks = (self._frames(client, s) for s in self.FRAME_STREAMS)
        if frames is None or flats is None or darks is None or darks.shape[0] == 0:
            raise ViewerDataError(f"run {self.uid[:8]} has no frames, flats and darks yet")
        shape = tuple(frames.shape[-2:])
        ks = [k for k in range(energy_index * self.fpe, (energy_index + 1) * self.fpe) if k < frames.shape[0]]
        if not ks:
            raise ViewerDataError(f"energy {energy_index} of run {self.uid[:8]} is not measured yet")
        shifts = self._shifts(client, ks)
        if shifts is None:
            raise ViewerDataError(f"energy {energy_index} of run {self.uid[:8]} is not aligned yet")
        region = region or Region.full(shape)
        stride = stride_for(region) if max_px is None else stride_for(region, max_px=max_px)
        # read a margin around the region so that shifted content fills it
        margin = (int(np.ceil(np.abs(shifts).max())) // stride + 2) * stride
        big = Region(max(0, region.y0 - margin), min(shape[0], region.y1 + margin),
                     max(0, region.x0 - margin), min(shape[1], region.x1 + margin))
        big = Region(region.y0 - (region.y0 - big.y0) // stride * stride, big.y1,
                     region.x0 - (region.x0 - big.x0) // stride * stride, big.x1)
        rows, cols = big.slices(stride)
        pos = self._flat_position(energy_index, flats.shape[0])
        f0 = pos * self.flats_per_energy
        absorb = absorbance(frames[ks[0]:ks[-1] + 1, rows, cols], flats[f0:f0 + self.flats_per_energy, rows, cols],
                            darks[:, rows, cols])
        mean = shifted_mean(absorb, shifts, stride=stride)
        oy, ox = (region.y0 - big.y0) // stride, (region.x0 - big.x0) // stride
        h, w = -(-region.height // stride), -(-region.width // stride)
        return ImageTile(data=np.ascontiguousarray(mean[oy:oy + h, ox:ox + w]), region=region, stride=stride,
                         full_shape=shape)

    def pixel_spectrum(self, row: float, col: float) -> tuple[np.ndarray, np.ndarray]:
        """Absorbance of aligned pixel ``(row, col)`` vs energy (eV, sorted): the mean over
        that energy's frames, each read where the drift had put the pixel."""
        return self.source.call(self._pixel_spectrum, float(row), float(col))

    def _pixel_spectrum(self, client, row, col):
        frames, flats, darks = (self._frames(client, s) for s in self.FRAME_STREAMS)
        drift = self._drift(client)
        if frames is None or not drift:
            raise ViewerDataError(f"run {self.uid[:8]} has no aligned frames yet")
        ks = np.asarray(drift["frame_index"], dtype=int)
        shifts = np.column_stack([drift["shift_y_px"], drift["shift_x_px"]])
        ny, nx = frames.shape[-2:]
        if not (0 <= row < ny and 0 <= col < nx):
            raise ViewerDataError(f"pixel ({row:.0f}, {col:.0f}) is outside the {ny}×{nx} image")
        ys, xs = row - shifts[:, 0], col - shifts[:, 1]
        half = MAX_PIXEL_WINDOW_PX // 2
        r0 = int(max(0, np.floor(max(ys.min(), row - half)) - 1))
        r1 = int(min(ny, np.ceil(min(ys.max(), row + half)) + 2))
        c0 = int(max(0, np.floor(max(xs.min(), col - half)) - 1))
        c1 = int(min(nx, np.ceil(min(xs.max(), col + half)) + 2))
        window = np.asarray(frames[: int(ks.max()) + 1, r0:r1, c0:c1])[ks]
        flat_window = np.asarray(flats[:, r0:r1, c0:c1])
        dark_window = np.asarray(darks[:, r0:r1, c0:c1])
        energy_index = ks // self.fpe
        values = np.full(len(ks), np.nan, np.float32)
        for pos in sorted({self._flat_position(int(i), flat_window.shape[0]) for i in energy_index}):
            use = np.array([self._flat_position(int(i), flat_window.shape[0]) == pos for i in energy_index])
            f0 = pos * self.flats_per_energy
            absorb = absorbance(window[use], flat_window[f0:f0 + self.flats_per_energy], dark_window)
            values[use] = pixel_values(absorb, (r0, c0), row, col, shifts[use])
        energies = self.energies_ev[energy_index]
        uniq = np.unique(energies)
        with np.errstate(invalid="ignore"):
            mean = np.array([np.nanmean(values[energies == e]) if np.isfinite(values[energies == e]).any()
                             else np.nan for e in uniq])
        return uniq, mean

    # -- export ---------------------------------------------------------------------
    def export_links(self) -> list[tuple[str, str]]:
        """``(label, url)`` of Tiled export links for the data shown (no API key in them)."""
        links = []
        if self.analysis_uid is not None:
            for f in self.MAP_FIELDS:
                for label, media in EXPORT_FORMATS.items():
                    if label == "CSV" or label == "TIFF":
                        links.append((f"{f.title} map ({label})",
                                      self.source.export_url(f"{self.analysis_uid}/maps/{f.name}", media,
                                                             slice_="-1")))
            links.append(("drift table (CSV)", _table_url(self.source, f"{self.analysis_uid}/drift/internal")))
            links.append(("mean spectrum (CSV)", _table_url(self.source, f"{self.analysis_uid}/spectrum/internal")))
        links.append(("raw frames (NumPy bytes)", self.source.export_url(
            f"{self.uid}/primary/{self._image_keys.get('primary') or 'txm_det_image'}", "application/octet-stream")))
        return links


def _table_url(source: TiledSource, path: str) -> str:
    base = source.export_url(path, "text/csv")
    return base.replace("/array/full/", "/table/full/")


#: scan_type -> run class; anything else gets :class:`RawRun` (frames and status only)
RUN_CLASSES: dict[str, type[RawRun]] = {"xanes2d": Xanes2DRun}


def map_fields() -> tuple[MapField, ...]:
    """Every map field some run class shows, once each (the page builds a view for each)."""
    fields = {}
    for cls in RUN_CLASSES.values():
        for f in cls.MAP_FIELDS:
            fields.setdefault(f.name, f)
    return tuple(fields.values())


def open_run(source: TiledSource, uid: str) -> RawRun:
    """The run ``uid`` (a raw run, or an analysis run's raw run) as its scan type's class.

    Raises
    ------
    UnknownRun
        No such run in the catalog.
    """
    uid = str(uid).strip()
    if not uid:
        raise UnknownRun("no run uid given")

    def get_start(client):
        try:
            return dict(client[uid].metadata.get("start") or {})
        except KeyError:
            raise UnknownRun(f"no run {uid!r} in Tiled at {source.display_uri}") from None

    start = source.call(get_start)
    if _is_analysis(start):
        return open_run(source, start["parent_uid"])
    if "uid" not in start:
        raise UnknownRun(f"{uid!r} in Tiled at {source.display_uri} is not a Bluesky run")
    cls = RUN_CLASSES.get(start.get("scan_type"), RawRun)
    return cls(source, start)
