"""Tiled's websocket streaming as change notifications for one page.

Tiled 0.2.20 publishes every change of a node over a websocket
(``/api/v1/stream/single/<path>``): a container says when a child is created or its
metadata changes, a table sends the rows appended to it. :class:`TiledWatch` holds such
subscriptions for one page and hands each update, already decoded, to a callback. It
knows nothing about Bluesky runs: which nodes to watch is the adapter's business
(:mod:`txm_live.viewer._runs`).

Why not poll: asking Tiled "what changed?" over HTTP costs a request per stream per poll
(a table read is ~0.1 s here, and a table's row count is not in its structure). With the
websocket, an idle page costs nothing and a new row reaches the page in milliseconds,
carrying its values, so the page reads only what it shows (images).

Every subscription starts at sequence 1 (Tiled replays what its streaming cache still
holds); the caller reads the node's current content over HTTP once after subscribing and
merges, dropping duplicates, so nothing falls in between. A stream the writer closes at the
end of its run ends its subscription quietly; one that cannot be made or fails is reported
through ``on_lost``, and the page then polls over HTTP and builds a new watch once Tiled
answers again.
"""
from __future__ import annotations

import concurrent.futures
import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable

logger = logging.getLogger(__name__)

__all__ = ["TiledWatch", "WatchUpdate", "CONTAINER", "TABLE"]

#: node families a watch subscribes to
CONTAINER = "container"
TABLE = "table"
#: Largest websocket message accepted (bytes). Watched tables carry scalar rows only.
MAX_MESSAGE_BYTES = 4_000_000
#: Replay from the first update Tiled's streaming cache still holds.
REPLAY_FROM = 1


@dataclass(frozen=True)
class WatchUpdate:
    """One change of a watched node.

    Attributes
    ----------
    path : str
        The watched node (``"run_uid/stream"``; ``""`` is the catalog root).
    kind : str
        ``"child"`` (a child ``key`` was created, with its ``metadata``), ``"metadata"``
        (child ``key``'s metadata changed) or ``"rows"`` (``rows``, a DataFrame, were
        appended to the table).
    key : str
    metadata : dict
    rows : pandas.DataFrame or None
    sequence : int
        Tiled's per-node sequence number.
    """

    path: str
    kind: str
    key: str = ""
    metadata: Any = None
    rows: Any = None
    sequence: int = 0


class _InlineExecutor(concurrent.futures.Executor):
    """Runs Tiled's callbacks on the receiving thread, in order (no thread per node).

    A Tiled subscription shuts its executor down when it disconnects; one executor per
    subscription keeps that from touching the others.
    """

    def submit(self, fn, /, *args, **kwargs):
        future = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # reported like a thread pool would, never raised into Tiled's loop
            logger.exception("a Tiled watch callback failed")
            future.set_exception(exc)
        return future

    def shutdown(self, wait=True, *, cancel_futures=False):
        return None


class _Node:
    """One subscription: the Tiled object, its receiving thread, our callbacks."""

    def __init__(self, subscription, callbacks):
        self.subscription = subscription
        self.callbacks = callbacks  # Tiled's registries hold weak references: keep them alive here
        self.thread: threading.Thread | None = None
        self.stopping = False


class TiledWatch:
    """Websocket subscriptions to Tiled nodes, reporting to one callback.

    Parameters
    ----------
    client : tiled client
        The connected root client (its context carries the address and API key).
    on_update : callable ``(WatchUpdate)``
        Called on a receiving thread for every update; must return quickly.
    on_lost : callable ``(path, reason)``
        Called once when a subscription fails or ends while the watch is open.
    """

    def __init__(self, client, on_update: Callable[[WatchUpdate], None],
                 on_lost: Callable[[str, str], None]):
        self._client = client
        self._on_update = on_update
        self._on_lost = on_lost
        self._nodes: dict[str, _Node] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._lost = False

    @property
    def healthy(self) -> bool:
        """Open, and no subscription has failed."""
        return not self._closed and not self._lost

    def watching(self, path: str) -> bool:
        with self._lock:
            return path in self._nodes

    def subscribe(self, path: str, family: str) -> bool:
        """Watch the node at ``path`` (``""``: the catalog root). Idempotent.

        Returns True when a new subscription was started (the caller then reads the
        node's current content once over HTTP).
        """
        if family not in (CONTAINER, TABLE):
            raise ValueError(f"family must be {CONTAINER!r} or {TABLE!r}; got {family!r}")
        with self._lock:
            if self._closed or path in self._nodes:
                return False
            node = self._make(path, family)
            self._nodes[path] = node
        node.thread = threading.Thread(target=self._receive, args=(path, node), daemon=True,
                                       name=f"txm-viewer-watch {path or '/'}")
        node.thread.start()
        return True

    def unsubscribe(self, path: str) -> None:
        """Stop watching ``path`` (no-op if it is not watched)."""
        with self._lock:
            node = self._nodes.pop(path, None)
        if node is not None:
            node.stopping = True
            node.subscription.disconnect(wait=False)

    def unsubscribe_under(self, prefix: str) -> None:
        """Stop watching ``prefix`` and every node below it."""
        with self._lock:
            paths = [p for p in self._nodes if p == prefix or p.startswith(prefix + "/")]
        for p in paths:
            self.unsubscribe(p)

    def retain(self, run_uids) -> None:
        """Stop watching nodes below runs other than ``run_uids`` (the root stays)."""
        keep = {str(u) for u in run_uids}
        with self._lock:
            paths = [p for p in self._nodes if p and p.split("/")[0] not in keep]
        for p in paths:
            self.unsubscribe(p)

    def close(self) -> None:
        """Stop every subscription (returns without waiting for their threads)."""
        with self._lock:
            self._closed = True
            nodes, self._nodes = list(self._nodes.values()), {}
        for node in nodes:
            node.stopping = True
            try:
                node.subscription.disconnect(wait=False)
            except Exception:  # closing a half-open socket
                logger.debug("closing a Tiled subscription failed", exc_info=True)

    # ------------------------------------------------------------------ internals
    def _make(self, path: str, family: str) -> _Node:
        from tiled.client.stream import ContainerSubscription, TableSubscription

        segments = [s for s in path.split("/") if s]
        context = self._client.context
        if family == CONTAINER:
            sub = ContainerSubscription(context, segments or None, _InlineExecutor(),
                                        self._client.structure_clients)

            def child(update, path=path):
                self._deliver(WatchUpdate(path, "child", key=update.key, metadata=dict(update.metadata),
                                          sequence=update.sequence))

            def metadata(update, path=path):
                self._deliver(WatchUpdate(path, "metadata", key=update.key, metadata=dict(update.metadata),
                                          sequence=update.sequence))
            callbacks = [child, metadata]
            sub.child_created.add_callback(child)
            sub.child_metadata_updated.add_callback(metadata)
        else:
            sub = TableSubscription(context, segments, _InlineExecutor())

            def rows(update, path=path):
                self._deliver(WatchUpdate(path, "rows", rows=update.data(), sequence=update.sequence))
            callbacks = [rows]
            sub.new_data.add_callback(rows)
        return _Node(sub, callbacks)

    def _deliver(self, update: WatchUpdate) -> None:
        if not self._closed:
            self._on_update(update)

    def _receive(self, path: str, node: _Node) -> None:
        """Thread body: Tiled's blocking receive loop; a return or error we did not ask for is a loss."""
        reason = None
        try:
            node.subscription.start(start=REPLAY_FROM, max_size=MAX_MESSAGE_BYTES)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
        with self._lock:
            if self._nodes.get(path) is node:
                del self._nodes[path]
            if node.stopping or self._closed or reason is None:
                return  # we asked, or the writer closed the stream at the end of its run: nothing is lost
            self._lost = True
        logger.info("Tiled watch of %r ended (%s); the page polls instead", path or "/", reason)
        self._on_lost(path, reason)
