"""Live analysis on the document stream: route runs, hand work to a worker, emit analysis runs.

One call sets it up for a profile or ``make demo``::

    handle = subscribe_live_analysis(RE, tiled_client, preview_dir="previews")
    RE(xanes_2d(...))
    handle.wait(60)                       # block until the queued analysis is done
    handle.analysis_uids[raw_uid]         # the analysis run(s) of a raw run

The RunEngine thread only runs :meth:`LiveAnalysis.__call__`, which copies the document
onto a queue and returns (microseconds). One worker thread feeds an
``event_model.RunRouter`` that builds an analysis per run by ``scan_type``
(:data:`ANALYSES`); analysis documents go to a :class:`txm_live.store.SafeTiledWriter`
(its own thread) and to any extra ``sinks``. Errors in analysis are logged, recorded in the
analysis run and in :attr:`LiveAnalysis.failures`, and never reach the RunEngine.

Memory stays bounded over a session: once a run's analysis has emitted its results, only
the last ``keep_runs`` finished analyses (with their stacks) and their previews are kept
for inspection (:attr:`LiveAnalysis.analyses`, :attr:`LiveAnalysis.previews`); older ones
are released.
"""
from __future__ import annotations

import copy
import inspect
import logging
from collections import OrderedDict
import queue
import threading
import time

import event_model

from .operando import OperandoSessionCallback, subscribe_operando_session
from .preview import PngPreview
from .tomo import TOMO_ANALYSIS_NAME, TomoAnalysis, read_volume
from .xanes2d import ANALYSIS_NAME, Xanes2DAnalysis
from .xanes3d import XANES3D_ANALYSIS_NAME, Xanes3DAnalysis, Xanes3DGroups

logger = logging.getLogger(__name__)

__all__ = ["ANALYSES", "PLAN_ANALYSES", "LiveAnalysis", "OperandoSessionCallback", "PngPreview", "TomoAnalysis",
           "Xanes2DAnalysis", "Xanes3DAnalysis", "Xanes3DGroups", "read_volume", "subscribe_live_analysis",
           "subscribe_operando_session", "ANALYSIS_NAME", "TOMO_ANALYSIS_NAME", "XANES3D_ANALYSIS_NAME"]

#: scan_type -> analysis class (an ``event_model.DocumentRouter`` taking ``(start, emit, **options)``)
ANALYSES = {"xanes2d": Xanes2DAnalysis, "tomo": TomoAnalysis}
#: plan_name -> analysis class; looked up before ``ANALYSES`` (a plan's run gets its analysis
#: whatever its ``scan_type``; a ``xanes_3d`` energy run is a tomography run whose analysis
#: gathers the runs of its group: :mod:`.xanes3d`)
PLAN_ANALYSES = {"tomo_fly": TomoAnalysis, "tomo_step": TomoAnalysis, "xanes_3d": Xanes3DAnalysis}
#: Options the live session supplies itself (not the caller's).
_SESSION_OPTIONS = ("start", "emit", "preview", "replay", "groups")


def _options_for(cls, options: dict) -> dict:
    """The options ``cls`` takes: one session's options serve every analysis class (an
    option of the XANES analysis is no error for a tomography run, and the reverse)."""
    accepted = inspect.signature(cls).parameters
    return {k: v for k, v in options.items() if k in accepted}


class LiveAnalysis:
    """A ``(name, doc)`` callable that analyses runs on a worker thread.

    Parameters
    ----------
    tiled_client : tiled client, optional
        Where analysis runs are written (through a :class:`~txm_live.store.SafeTiledWriter`).
    preview_dir : path, optional
        Folder for PNG previews (Agg); previews are kept in memory (:attr:`previews`) anyway.
    writer : callable ``(name, doc)`` with ``flush(timeout)``, optional
        Writer for the analysis documents instead of a new one for ``tiled_client``;
        pass the raw run's writer to keep one writer per Tiled store (see
        :func:`subscribe_live_analysis`).
    sinks : sequence of callables ``(name, doc)``
        Also receive the analysis documents (on the worker thread).
    replay : bool
        Mark analysis runs as replays.
    preview_interval_s : float
        Least time between two PNG snapshots of one run.
    worker_threads : int, optional
        Numba threads for the analysis calls made by the worker (``numba.set_num_threads``
        is per calling thread); default numba's. Needs a thread-safe numba threading layer
        (omp or tbb; ``workqueue`` aborts on concurrent launches from the detector simulator).
    worker_nice : int
        Niceness added to the worker thread (Linux), so the RunEngine thread wins the CPU.
    keep_runs : int
        Finished analyses (and their previews) kept in memory for inspection; older ones
        are released once their results are emitted. Default 3.
    **options
        Passed to the analysis class (e.g. ``fit_params``, ``registration_mode``,
        ``partial_every``).
    """

    def __init__(self, tiled_client=None, *, preview_dir=None, sinks=(), replay: bool = False,
                 preview_interval_s: float = 2.0, writer=None, worker_threads: int | None = None,
                 worker_nice: int = 5, keep_runs: int = 3, **options):
        if isinstance(keep_runs, bool) or not isinstance(keep_runs, int) or keep_runs < 0:
            raise ValueError(f"keep_runs must be an integer >= 0; got {keep_runs!r}")
        self.keep_runs = keep_runs
        known = set().union(*(inspect.signature(c).parameters for c in {*ANALYSES.values(), *PLAN_ANALYSES.values()}))
        unknown = sorted(set(options) - (known - {'groups'}))
        if unknown:
            raise TypeError(f"no live analysis takes the options {unknown}; known options: "
                            f"{sorted(known - set(_SESSION_OPTIONS))}")
        self.writer = writer
        if self.writer is None and tiled_client is not None:
            from txm_live.store import SafeTiledWriter

            self.writer = SafeTiledWriter(tiled_client)
        self.sinks = list(sinks)
        self.preview_dir = preview_dir
        self.preview_interval_s = preview_interval_s
        self.replay = replay
        self.options = options
        self.worker_threads = worker_threads
        self.worker_nice = int(worker_nice)
        #: raw uid -> its analysis runs' uids (strings only: kept for the whole session)
        self.analysis_uids: dict[str, list[str]] = {}
        #: analysis uid -> analysis object: those running and the last ``keep_runs`` finished
        self.analyses: OrderedDict[str, object] = OrderedDict()
        #: raw uid -> preview, for the analyses in :attr:`analyses`
        self.previews: dict[str, PngPreview] = {}
        self.failures: list[str] = []
        #: the 3D XANES groups of this session (runs of one ``xanes_3d`` scan share one)
        self.xanes3d_groups = Xanes3DGroups()
        self.token = None
        self._queue: queue.Queue = queue.Queue()
        self._router = event_model.RunRouter([self._factory], handler_registry={})
        self._thread = threading.Thread(target=self._work, name="txm-live-analysis", daemon=True)
        self._thread.start()

    # RunEngine thread: copy and return
    def __call__(self, name, doc):
        self._queue.put((name, copy.deepcopy(doc)))

    def _init_worker(self):
        # Lower this thread's priority (Linux: per-thread nice) so the RunEngine and the
        # detector get the CPU first, and bound the numba threads this thread launches.
        import os

        if self.worker_nice and hasattr(os, "setpriority"):
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.worker_nice)
            except OSError as exc:
                logger.debug("could not lower the analysis worker's priority: %r", exc)
        if self.worker_threads is not None:
            import numba

            numba.set_num_threads(int(self.worker_threads))

    def _work(self):
        self._init_worker()
        while True:
            name, doc = self._queue.get()
            try:
                if name is None:
                    self.xanes3d_groups.close()  # a 3D XANES scan left open says what it could do
                    return
                self._router(name, doc)
                if name == "stop":
                    self._release_old()
            except Exception as exc:  # never lose the worker
                message = f"live analysis failed on {name!r} document: {exc!r}"
                self.failures.append(message)
                logger.exception(message)
            finally:
                self._queue.task_done()

    def _factory(self, name, start):
        cls = PLAN_ANALYSES.get(start.get("plan_name")) or ANALYSES.get(start.get("scan_type"))
        if cls is None:
            return [], []
        preview = PngPreview(self.preview_dir, name=f"{start['uid'][:8]}_{start.get('scan_type')}",
                             min_interval_s=self.preview_interval_s)
        self.previews[start["uid"]] = preview
        session = {"groups": self.xanes3d_groups} if "groups" in inspect.signature(cls).parameters else {}
        analysis = cls(start, self._emit, preview=preview, replay=self.replay, **session,
                       **_options_for(cls, self.options))
        self.analyses[analysis.uid] = analysis
        self.analysis_uids.setdefault(start["uid"], []).append(analysis.uid)
        return [analysis], []

    def _release_old(self) -> None:
        """Release finished analyses beyond the last ``keep_runs`` (their results are emitted)."""
        finished = [uid for uid, analysis in self.analyses.items() if getattr(analysis, "finished", False)]
        for uid in finished[: max(0, len(finished) - self.keep_runs)]:
            analysis = self.analyses.pop(uid)
            raw_uid = analysis.raw_start["uid"]
            if not any(a.raw_start["uid"] == raw_uid for a in self.analyses.values()):
                self.previews.pop(raw_uid, None)
            analysis.release()

    def _emit(self, name, doc):
        if self.writer is not None:
            self.writer(name, doc)
        for sink in self.sinks:
            try:
                sink(name, doc)
            except Exception as exc:
                message = f"sink {sink!r} failed on {name!r}: {exc!r}"
                self.failures.append(message)
                logger.error(message)

    def latest(self, raw_uid: str) -> dict:
        """The newest preview state of a raw run (for polling from a GUI's main thread)."""
        preview = self.previews.get(raw_uid)
        return dict(preview.state) if preview is not None else {}

    def wait(self, timeout: float | None = 60.0) -> bool:
        """Block until queued documents are analysed and written; False on timeout (s)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        if self.writer is not None:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            return self.writer.flush(left)
        return True

    def close(self, RE=None) -> None:
        """Unsubscribe (when ``RE`` is given) and stop the worker after the queued documents."""
        if RE is not None and self.token is not None:
            RE.unsubscribe(self.token)
            self.token = None
        self._queue.put((None, None))


def subscribe_live_analysis(RE, tiled_client=None, *, preview_dir=None, writer=None, **options) -> LiveAnalysis:
    """Subscribe a :class:`LiveAnalysis` to ``RE``; returns it (``.wait``, ``.analysis_uids``).

    Pass the raw run's :class:`~txm_live.store.SafeTiledWriter` as ``writer`` (the one
    :func:`~txm_live.store.subscribe_tiled_writer` returned) so raw and analysis documents
    are written by one thread: two writers appending to the embedded (SQLite) Tiled at
    once get occasional HTTP 500s, which TiledWriter retries and may duplicate rows.
    """
    handle = LiveAnalysis(tiled_client, preview_dir=preview_dir, writer=writer, **options)
    handle.token = RE.subscribe(handle)
    return handle
