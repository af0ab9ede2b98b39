"""The Tiled writer that never stops a scan and never loses or doubles a document.

:class:`SafeTiledWriter` is what the RunEngine (and the live analysis) call. On the
caller's thread it appends the document to the spool (:mod:`txm_live.spool`) and queues
it; a worker thread writes it to Tiled with bluesky-tiled-plugins' ``TiledWriter`` (one
per run). What happens when Tiled goes away:

* the first write that fails (after the Tiled client's own retries) takes the writer
  *offline*: every run it holds is marked for redelivery and later documents only go to
  the spool — the scan does not notice;
* every ``retry_interval_s`` the worker probes the server (one short request, no
  retries); when it answers, each run is delivered from the spool following the rule in
  :mod:`txm_live.store_delivery` (written, or its partial record replaced), in the order
  the runs started, and a run still open continues live;
* a run leaves the spool once Tiled is checked to hold its stop document and every event
  and frame exactly once (:func:`~txm_live.store_delivery.stored_problems`).

Documents carry their position in their run (the spool assigns it), so a document that a
redelivery already wrote is skipped when it comes off the queue: each is written once.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import queue
import threading
import time
import warnings

from .spool import Spool, close_orphan, tally_documents
from .store_delivery import (
    deliver_run,
    probe_tiled,
    split_api_key,
    stored_problems,
)

logger = logging.getLogger(__name__)

__all__ = ["SafeTiledWriter", "subscribe_tiled_writer", "DEFAULT_RETRY_INTERVAL_S"]

#: Seconds between two probes of a server that went away.
DEFAULT_RETRY_INTERVAL_S = 5.0
#: Seconds between two looks at the queue while waiting for it (flush, wait_delivered)
_WAIT_POLL_S = 0.02


@dataclasses.dataclass
class _Run:
    uid: str
    writer: object = None          # TiledWriter writing this run live
    delivered: int = 0             # documents at positions < delivered are in Tiled
    needs_redelivery: bool = False
    stopped: bool = False
    spool_complete: bool = True    # False once a document could not be spooled
    how: str = "live"              # how Tiled got it: 'live', or what the last redelivery did
    given_up: bool = False         # Tiled refused it twice: it waits in the spool, reported


def _is_outage(exc: BaseException) -> bool:
    """True for failures of the server or the network (wait and redeliver); False for a
    refusal of this run (a 4xx answer, a document TiledWriter cannot take)."""
    import httpx

    from .store_delivery import TiledUnavailable

    if isinstance(exc, (httpx.TransportError, TiledUnavailable, ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, httpx.HTTPStatusError):
        # 5xx: the server is in trouble; 429: busy; 401/403: restarted with another key
        # (a connector that re-reads the key can fix it)
        return exc.response.status_code >= 500 or exc.response.status_code in (401, 403, 429)
    return False


def _connector_for(client):
    """A zero-argument callable that builds a fresh client of the same server and node,
    after a quick probe (the Tiled client's own retries take ~25 s on a dead server)."""
    from tiled.client import from_uri

    uri, key_in_uri = split_api_key(client.uri)
    api_key = getattr(client.context, "api_key", None) or key_in_uri

    def connect():
        probe_tiled(uri, api_key=api_key)
        return from_uri(uri, api_key=api_key)

    return connect


class SafeTiledWriter:
    """Write documents to Tiled on a worker thread; spool them; redeliver after outages.

    Parameters
    ----------
    client : tiled client, or callable returning one
        Where runs are written. A callable (e.g. ``lambda: connect(folder)``) is called
        for the first connection and after every outage — use one when the server may
        not be up yet or may come back with a new address or key. A client is
        re-created from its URI and API key after an outage.
    spool_directory : path, optional
        The spool folder (:mod:`txm_live.spool`): documents survive a crash of this
        process too, and ``txm-live spool list|flush`` see them. Without one, runs are
        kept in memory until delivered.
    batch_size : int
        TiledWriter's batch size for live writing; 1 writes each event as it comes, so
        other processes see the run grow.
    analysis_batch_size : int, optional
        The batch size for analysis runs (start documents with a ``parent_uid``); default
        ``batch_size``. Raw events may be batched for speed while a live preview slice or
        map still reaches Tiled as soon as it is emitted (``analysis_batch_size=1``).
    retry_interval_s : float
        Seconds between probes of a server that went away.
    adopt_orphans : bool
        Deliver the runs that a process which has ended left in ``spool_directory``
        (those without a stop document are closed with ``exit_status='abort'`` first).
    backup_directory : path, optional
        Deprecated name of ``spool_directory``.

    Attributes
    ----------
    failures : list of str
        Every failure, with what happened to the documents.
    deliveries : dict
        Run uid -> how it reached Tiled (``'live'``, ``'written'``, ``'replaced'``,
        ``'already complete'``), once it is verified there.
    """

    def __init__(self, client, *, spool_directory=None, batch_size: int = 1,
                 retry_interval_s: float = DEFAULT_RETRY_INTERVAL_S, adopt_orphans: bool = True,
                 backup_directory=None, analysis_batch_size: int | None = None):
        if backup_directory is not None:
            if spool_directory is not None:
                raise TypeError("give spool_directory or its old name backup_directory, not both")
            warnings.warn("SafeTiledWriter(backup_directory=...) is now spool_directory=...", DeprecationWarning,
                          stacklevel=2)
            spool_directory = backup_directory
        if not retry_interval_s > 0:
            raise ValueError(f"retry_interval_s must be > 0 s; got {retry_interval_s!r}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size!r}")
        self.batch_size = int(batch_size)
        if analysis_batch_size is not None and int(analysis_batch_size) < 1:
            raise ValueError(f"analysis_batch_size must be >= 1 or None; got {analysis_batch_size!r}")
        self.analysis_batch_size = self.batch_size if analysis_batch_size is None else int(analysis_batch_size)
        self.retry_interval_s = float(retry_interval_s)
        self.spool = Spool(spool_directory)
        self.spool_directory = self.spool.directory
        self.failures: list[str] = []
        self.deliveries: dict[str, str] = {}
        is_connector = callable(client) and not hasattr(client, "context")
        self._connect = client if is_connector else _connector_for(client)
        self._client = self._first_client(client) if is_connector else client
        self._runs: dict[str, _Run] = {}
        self._backlog: set[str] = set()   # runs not (yet) verified, other than open live ones
        self._offline = self._client is None
        self._next_probe = 0.0
        self._queue: queue.Queue = queue.Queue()
        if adopt_orphans:
            self._adopt_orphans()
        self._thread = threading.Thread(target=self._work, name="tiled-writer", daemon=True)
        self._thread.start()

    @staticmethod
    def _first_client(connect):
        """Try the connector once; None (start offline, spooling) if the server is away."""
        try:
            return connect()
        except Exception as exc:
            logger.warning("Tiled is not reachable yet (%r); documents are spooled until it answers", exc)
            return None

    # ---- caller's thread --------------------------------------------------------------
    def __call__(self, name, doc):
        """Spool the document and queue it for Tiled; returns at once, never raises."""
        try:
            uid, index = self.spool.append(name, doc)
        except Exception as exc:  # the scan must go on; say loudly what is at risk
            uid = self._uid_of(name, doc)
            message = (f"could not spool a {name!r} document of run {uid}: {exc!r}; it is written to Tiled "
                       "only if the server answers now")
            self.failures.append(message)
            logger.error(message)
            index = None
        self._queue.put((uid, index, name, doc))

    def _uid_of(self, name, doc):
        return (doc.get("uid") if name == "start" else doc.get("run_start")) or "unknown run"

    # ---- worker thread ----------------------------------------------------------------
    def _work(self):
        while True:
            wait = None
            if self._backlog_to_deliver():
                wait = max(0.0, self._next_probe - time.monotonic())
            try:
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                item = False
            if item is None:
                self._queue.task_done()
                return
            if self._backlog_to_deliver() and time.monotonic() >= self._next_probe:
                self._redeliver()
            if item is False:
                continue
            try:
                self._handle(*item)
            except Exception as exc:  # never lose the worker
                message = f"Tiled writer: unexpected error on a {item[2]!r} document: {exc!r}"
                self.failures.append(message)
                logger.exception(message)
            finally:
                self._queue.task_done()

    def _backlog_to_deliver(self) -> bool:
        return any(self._runs[uid].needs_redelivery for uid in self._backlog if uid in self._runs)

    def _handle(self, uid, index, name, doc):
        run = self._runs.get(uid)
        if run is None:
            run = self._runs[uid] = _Run(uid)
        if index is None:
            run.spool_complete = False
        elif index < run.delivered:
            return  # a redelivery from the spool has written it already
        if name == "stop":
            run.stopped = True
        if run.given_up:
            return  # spooled; reported when Tiled refused it
        if self._offline or run.needs_redelivery:
            self._mark_for_redelivery(run)
            return
        try:
            if run.writer is None:
                from bluesky_tiled_plugins import TiledWriter

                analysis = name == "start" and bool(doc.get("parent_uid"))
                run.writer = TiledWriter(self._client,
                                         batch_size=self.analysis_batch_size if analysis else self.batch_size)
            run.writer(name, doc)
        except Exception as exc:
            self._failed(run, f"writing a {name!r} document of run {uid}", exc, retry=True)
            return
        run.delivered = (index + 1) if index is not None else run.delivered
        if name == "stop":
            self._confirm(run)

    def _mark_for_redelivery(self, run: _Run) -> None:
        run.needs_redelivery, run.given_up = True, False
        run.writer = None
        self._backlog.add(run.uid)

    def _failed(self, run: _Run, what: str, exc: BaseException, *, retry: bool) -> None:
        """An outage takes the writer offline; a refusal of this run alone is written again
        from the spool once (``retry``), else the run stays in the spool, reported."""
        if _is_outage(exc):
            self._go_offline(what, exc)
            return
        if retry:
            message = f"Tiled refused {what}: {exc!r}; the run is written again from the spool"
            self._mark_for_redelivery(run)
        else:
            message = (f"Tiled refused {what}: {exc!r}; the run stays in the spool "
                       f"({self.spool_directory or 'memory'}; `txm-live spool flush` tries again)")
            run.needs_redelivery, run.given_up = False, True
            run.writer = None
            self._backlog.add(run.uid)
        self.failures.append(message)
        logger.error(message)

    def _go_offline(self, what: str, exc: BaseException) -> None:
        if not self._offline:
            message = (f"Tiled failed while {what}: {exc!r}; documents go to the spool "
                       f"({self.spool_directory or 'memory'}) and are delivered when the server answers "
                       f"(probed every {self.retry_interval_s:g} s)")
            self.failures.append(message)
            logger.error(message)
        self._offline = True
        self._next_probe = time.monotonic() + self.retry_interval_s
        for run in self._runs.values():  # their writers hold connections to the old server
            self._mark_for_redelivery(run)

    def _confirm(self, run: _Run) -> None:
        """Check Tiled holds the finished run completely; then let it leave the spool."""
        documents = self.spool.documents(run.uid)
        try:
            problems = stored_problems(self._client, tally_documents(documents))
            if problems and run.spool_complete:
                logger.warning("run %s: %s; writing it again from the spool", run.uid, "; ".join(problems))
                run.how = deliver_run(self._client, documents).action
                problems = stored_problems(self._client, tally_documents(documents))
        except Exception as exc:
            self._failed(run, f"checking run {run.uid}", exc, retry=False)
            return
        if problems:
            message = f"run {run.uid} stays in the spool: Tiled does not hold it completely ({'; '.join(problems)})"
            self.failures.append(message)
            logger.error(message)
            run.needs_redelivery = False
            self._backlog.add(run.uid)
            return
        self.deliveries[run.uid] = run.how
        self._backlog.discard(run.uid)
        del self._runs[run.uid]
        self.spool.discard(run.uid)

    def _reconnect(self) -> bool:
        try:
            client = self._connect()
        except Exception as exc:
            logger.info("Tiled still unavailable: %r", exc)
            self._next_probe = time.monotonic() + self.retry_interval_s
            return False
        self._client = client
        self._offline = False
        return True

    def _redeliver(self) -> None:
        """Deliver every run marked for redelivery, oldest first, once the server answers."""
        if self._offline or self._client is None:
            if not self._reconnect():
                return
        for uid in [u for u in self._runs if self._runs[u].needs_redelivery]:
            run = self._runs[uid]
            if not run.spool_complete:
                message = f"run {uid} cannot be redelivered: its spool lacks documents that could not be written"
                self.failures.append(message)
                run.needs_redelivery = False
                continue
            documents = self.spool.documents(uid)
            try:
                delivery = deliver_run(self._client, documents, open_batch_size=self.batch_size)
            except Exception as exc:
                self._failed(run, f"redelivering run {uid}", exc, retry=False)
                if self._offline:
                    return
                continue
            logger.info("run %s %s from the spool (%d documents)", uid, delivery.action, len(documents))
            run.writer, run.delivered, run.needs_redelivery = delivery.writer, len(documents), False
            run.how = delivery.action
            if run.stopped or any(name == "stop" for name, _ in documents[-1:]):
                run.stopped = True
                self._confirm(run)
            else:
                self._backlog.discard(uid)  # open again, written live from here on

    def _adopt_orphans(self) -> None:
        for uid in self.spool.adopt_orphans():
            documents = self.spool.documents(uid)
            stop = close_orphan(documents, closed_by=f"txm-live SafeTiledWriter (pid {os.getpid()})")
            if stop is not None:
                self.spool.append(*stop)
                logger.warning("run %s was left open by a process that has ended; closed it (exit_status "
                               "'abort')", uid)
            self._runs[uid] = _Run(uid, needs_redelivery=True, stopped=True)
            self._backlog.add(uid)

    # ---- waiting and stopping ---------------------------------------------------------
    @property
    def online(self) -> bool:
        """False while the server is considered gone (documents only spooled)."""
        return not self._offline

    @property
    def pending_runs(self) -> list[str]:
        """Runs not yet verified in Tiled (open runs included)."""
        return self.spool.runs()

    def flush(self, timeout: float | None = 60.0) -> bool:
        """Wait until every queued document is written to Tiled or, while it is away, spooled.

        Returns False if ``timeout`` (s) ran out.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(_WAIT_POLL_S)
        return True

    def wait_delivered(self, timeout: float | None = 60.0) -> bool:
        """Wait until every finished run is verified in Tiled; False if ``timeout`` ran out."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._queue.unfinished_tasks or self._backlog:
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(_WAIT_POLL_S)
        return True

    def close(self, timeout: float | None = 60.0) -> None:
        """Finish the queue, stop the worker and release the spooled runs (files stay)."""
        self.flush(timeout)
        self._queue.put(None)
        self._thread.join(timeout)
        left = self.spool.runs()
        if left:
            where = self.spool_directory or "memory (now lost)"
            message = f"closing with {len(left)} run(s) not verified in Tiled, kept in {where}: {', '.join(left)}"
            self.failures.append(message)
            logger.error(message)
        self.spool.close()


def subscribe_tiled_writer(RE, client, *, spool_directory=None, batch_size: int = 1, **options) -> SafeTiledWriter:
    """Subscribe a :class:`SafeTiledWriter` for ``client`` to the RunEngine ``RE``.

    ``options`` go to :class:`SafeTiledWriter` (``retry_interval_s``, ``adopt_orphans``,
    ``analysis_batch_size``, ``backup_directory``).
    """
    writer = SafeTiledWriter(client, spool_directory=spool_directory, batch_size=batch_size, **options)
    writer.token = RE.subscribe(writer)
    return writer
