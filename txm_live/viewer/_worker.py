"""One background thread per page: reads from Tiled off the web server's event loop.

Jobs are keyed; a job submitted under a key that is still waiting replaces the waiting
one (a burst of zoom events reads once, a slow server does not pile up polls). A job
submitted under the key of the job that is running waits until that one is done and then
goes to the back of the queue, behind whatever the running job submitted (a poll that
queues image reads is not overtaken by the next poll). A job returns a callable, which
is run on the page's document (Bokeh's ``add_next_tick_callback``, the thread-safe way to
change models), or None.
"""
from __future__ import annotations

import logging
import threading
import time

from ._runs import ViewerDataError

logger = logging.getLogger(__name__)

__all__ = ["PageWorker"]


class PageWorker:
    """Run keyed jobs in order on one thread; post their results with ``post``.

    Parameters
    ----------
    post : callable ``(fn)``
        Schedules ``fn()`` on the page (document thread).
    on_error : callable ``(key, exc)`` returning a callable or None
        Turns a job's exception into what the page shows (called on the worker thread).
    """

    def __init__(self, post, on_error):
        self._post = post
        self._on_error = on_error
        self._jobs: dict[str, object] = {}
        self._running: str | None = None
        self._after_running: dict[str, object] = {}
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="txm-viewer-page", daemon=True)
        self._thread.start()

    def submit(self, key: str, job) -> None:
        """Queue ``job()`` under ``key`` (replacing a waiting job with that key)."""
        with self._cond:
            if self._closed:
                return
            if key == self._running:
                self._after_running[key] = job
                return
            self._jobs.pop(key, None)
            self._jobs[key] = job
            self._cond.notify()

    def pending(self, key: str) -> bool:
        """True if a job under ``key`` waits (not counting one that runs)."""
        with self._cond:
            return key in self._jobs or key in self._after_running

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._jobs.clear()
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                key = next(iter(self._jobs))
                job = self._jobs.pop(key)
                self._running = key
            started = time.perf_counter()
            try:
                result = job()
            except ViewerDataError as exc:
                result = self._on_error(key, exc)
            except Exception as exc:  # the page shows one line; the log keeps the traceback
                logger.exception("viewer job %r failed", key)
                result = self._on_error(key, exc)
            logger.debug("viewer job %r took %.3f s", key, time.perf_counter() - started)
            with self._cond:
                self._running = None
                again = self._after_running.pop(key, None)
                if again is not None and not self._closed:
                    self._jobs.pop(key, None)
                    self._jobs[key] = again
            if result is not None and not self._closed:
                try:
                    self._post(result)
                except Exception:  # the page went away
                    logger.debug("could not post a result of %r to the page", key, exc_info=True)
