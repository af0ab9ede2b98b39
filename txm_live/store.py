"""The Tiled store: an embedded server on 127.0.0.1, the writer, and finding runs again.

At a facility txm-live points at the facility's Tiled URL; on a laptop or in tests
:class:`EmbeddedTiled` starts a local Tiled server (SQLite catalog + data folder) on a
background thread, reachable over HTTP so a second process (another IPython, a replay, an
analysis worker) can read the runs. Raw frames stay in the detector's HDF5 files; Tiled
registers them as external data, so the server is given the frame folder as readable
storage. The embedded server listens on 127.0.0.1 only and requires an API key.

Writing goes through :class:`SafeTiledWriter` (:mod:`txm_live.store_writer`), which
spools every document locally (:mod:`txm_live.spool`) and delivers each run exactly once
(:mod:`txm_live.store_delivery`), across outages of the server. :func:`connect` fails fast,
naming the address, when nothing answers there.
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["EmbeddedTiled", "connect", "catalog_exists", "catalog_api_key", "check_port_free",
           "register_bluesky_exporters", "SafeTiledWriter", "subscribe_tiled_writer", "TiledUnavailable",
           "probe_tiled", "URI_FILE", "API_KEY_FILE", "CATALOG_FILE"]

URI_FILE = "tiled-uri.txt"
#: Tiled's catalog database inside a catalog folder (its presence means "a catalog lives here")
CATALOG_FILE = "catalog.db"
#: Where ``txm-live serve`` keeps a catalog's API key (owner-only), so restarts keep it
API_KEY_FILE = "api-key"
#: The embedded server's only interface
HOST = "127.0.0.1"

_process_api_key: str | None = None


def _default_api_key() -> str:
    """One random key for every embedded server of this process (see EmbeddedTiled Notes)."""
    global _process_api_key
    if _process_api_key is None:
        import secrets

        _process_api_key = secrets.token_hex(16)
    return _process_api_key


def catalog_exists(directory) -> bool:
    """True when ``directory`` holds a Tiled catalog (its ``catalog.db``)."""
    return (Path(directory) / CATALOG_FILE).is_file()


def catalog_api_key(directory) -> str:
    """The API key kept in ``directory/api-key`` (created, owner-only, when missing).

    A server restarted on the same catalog keeps its key, so clients that hold it (a
    Tiled writer waiting out an outage, an analysis service) reconnect.
    """
    import secrets

    path = Path(directory) / API_KEY_FILE
    if path.exists():
        key = path.read_text().strip()
        if key:
            return key
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(16)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key


def check_port_free(port: int, host: str = HOST) -> None:
    """Raise :class:`OSError` naming ``host:port`` when another program listens there.

    Binds the way the server will (``SO_REUSEADDR``, as uvicorn does), so a port left in
    TIME_WAIT by a server that just stopped counts as free.
    """
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, int(port)))
        except OSError as exc:
            raise OSError(exc.errno, f"port {port} on {host} is already in use ({exc.strerror}): another "
                                     "Tiled server or program listens there; stop it or choose another "
                                     "port") from None


class _OneStorageRequestAtATime:
    """ASGI wrapper: the embedded server handles requests that may touch its SQL storage one
    at a time.

    Tiled's embedded server keeps event tables in DuckDB through a single shared connection
    (``StaticPool``); two requests handled at once on worker threads interleave their
    transactions ("cannot commit - no transaction is active", HTTP 500) and can leave the
    connection unusable. That happens as soon as two processes write at once — the
    acquisition's writer and an analysis service (measured). Array reads, the bulk of
    the traffic, do not use that storage and are not held back.
    """

    _UNLOCKED_GET_PREFIXES = ("/healthz", "/api/v1/array/")

    def __init__(self, app):
        self.app = app
        self._lock = None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or (scope["method"] in ("GET", "HEAD")
                                       and scope["path"].startswith(self._UNLOCKED_GET_PREFIXES)):
            return await self.app(scope, receive, send)
        import asyncio

        if self._lock is None:  # created in the server's event loop
            self._lock = asyncio.Lock()
        async with self._lock:
            await self.app(scope, receive, send)


def _serialize_storage_access(app) -> None:
    """Put :class:`_OneStorageRequestAtATime` outermost in a running FastAPI app.

    SimpleTiledServer starts serving inside its constructor; Starlette builds its
    middleware stack on the first request, so the stack is dropped and rebuilt on the next
    one with the wrapper in it (before anyone else knows the server's address).
    """
    app.middleware_stack = None
    app.add_middleware(_OneStorageRequestAtATime)


def register_bluesky_exporters() -> None:
    """Teach Tiled to export a BlueskyRun as a document stream (``run.documents()``).

    Must run before a server is built; registering twice is harmless.
    """
    from bluesky_tiled_plugins.exporters import json_seq_exporter
    from tiled.media_type_registration import default_serialization_registry

    default_serialization_registry.register("BlueskyRun", "application/json-seq", json_seq_exporter)


def _serialize_table_storage(catalog) -> None:
    """Let one request at a time use the embedded server's DuckDB table storage.

    Tiled 0.2 hands every request thread the *same* DuckDB connection (a SQLAlchemy
    ``StaticPool``): a table read (a viewer following the scan, a replay) while the writer
    appends event rows crashed the server process with a segmentation fault (measured: 2 of
    2 runs of 300 appends against a concurrent reader). A one-connection ``QueuePool``
    makes the requests take turns instead (``tests/test_store_tables.py``).
    """
    import sqlalchemy.pool

    for storage in getattr(catalog.context, "writable_storage", {}).values():
        if getattr(storage, "dialect", None) == "duckdb":
            storage.__dict__["_connection_pool"] = sqlalchemy.pool.QueuePool(
                storage._adbc_connection.adbc_clone, pool_size=1, max_overflow=0, timeout=60,
                reset_on_return=None)


class EmbeddedTiled:
    """A Tiled server on 127.0.0.1 holding a catalog in ``directory``.

    Parameters
    ----------
    directory : path
        Catalog (SQLite), Tiled's own data and logs. Reusing a folder reopens its runs.
    readable_storage : sequence of paths
        Folders of external files (detector HDF5) the server may read.
    port : int
        Port on 127.0.0.1 (the server listens on no other interface); 0 picks a free one.
        A port in use is refused at once with a message naming it.
    api_key : str, optional
        Single-user key; when omitted, one random key shared by all embedded servers of
        this process. It is part of :attr:`uri`.

    Notes
    -----
    Requests that may touch the event-table storage are handled one at a time (see
    :class:`_OneStorageRequestAtATime`): several writers (the acquisition, an analysis
    service) may write at once.

    Tiled keeps its server settings process-wide: the last server started sets the key
    every server of the process accepts (measured: a first server answers 401 once a
    second one with another key has started). Hence one key per process by default.

    The URI (with its key) is also written to ``directory/tiled-uri.txt`` with owner-only
    permissions, so other processes on this machine can connect
    (:func:`connect` reads it).
    """

    def __init__(self, directory, *, readable_storage=(), port: int = 0, api_key: str | None = None):
        if port:
            check_port_free(port)  # before the slow imports: a busy port is refused at once
        from tiled.server import SimpleTiledServer

        register_bluesky_exporters()
        self.directory = Path(directory).resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        storage = [Path(p).resolve() for p in readable_storage]
        for p in storage:
            p.mkdir(parents=True, exist_ok=True)
        try:
            self._server = SimpleTiledServer(
                directory=self.directory, readable_storage=storage or None, port=port,
                api_key=api_key or _default_api_key(),
            )
        except (TimeoutError, RuntimeError) as exc:
            where = f"port {port}" if port else "a free port"
            raise RuntimeError(f"the Tiled server for {self.directory} did not start on {HOST}, {where}: {exc} "
                               f"(see {self.directory / 'error.log'})") from exc
        _serialize_storage_access(self._server.app)
        _serialize_table_storage(self._server.catalog)
        self.uri = self._server.uri
        self._closed = False
        # The server's thread is not a daemon: without this, the interpreter would wait for
        # it forever at exit (non-daemon threads are joined before atexit handlers run).
        # threading._register_atexit is how concurrent.futures solves the same problem.
        register = getattr(threading, "_register_atexit", None)
        if register is not None:
            register(self.close)
        uri_file = self.directory / URI_FILE
        uri_file.write_text(self.uri + "\n")
        os.chmod(uri_file, 0o600)

    def client(self):
        """A new HTTP client of this server (``tiled.client.from_uri``)."""
        from tiled.client import from_uri

        return from_uri(self.uri)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._server.close()
        (self.directory / URI_FILE).unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def connect(uri_or_directory):
    """A Tiled client from a URI, or from a folder an :class:`EmbeddedTiled` runs in.

    The server is probed first (one request, a few seconds at most), so a dead address
    fails fast with a message naming it instead of the Tiled client's ~25 s of retries.

    Raises
    ------
    FileNotFoundError
        A folder with no server recorded in it.
    TiledUnavailable
        Nothing answers at the address, or the server refuses the key.
    """
    from tiled.client import from_uri

    target = str(uri_or_directory)
    recorded_in = None
    if not target.startswith(("http://", "https://")):
        uri_file = Path(target) / URI_FILE
        if not uri_file.exists():
            raise FileNotFoundError(
                f"no Tiled server is running for {target!r} ({uri_file} is missing); "
                "start one with `txm-live serve` or give its URI"
            )
        recorded_in = uri_file
        target = uri_file.read_text().strip()
    try:
        probe_tiled(target)
    except TiledUnavailable as exc:
        if recorded_in is None:
            raise
        raise TiledUnavailable(
            f"{exc}. The address was recorded in {recorded_in} by a server that has since stopped "
            f"without cleaning up; start it again with `txm-live serve {Path(recorded_in).parent.parent}`"
        ) from exc
    return from_uri(target)


# The writer lives in its own module; re-exported here, where users look for it.
from .store_delivery import TiledUnavailable, probe_tiled  # noqa: E402
from .store_writer import SafeTiledWriter, subscribe_tiled_writer  # noqa: E402
