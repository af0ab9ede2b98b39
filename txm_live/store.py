"""The Tiled store: an embedded server on 127.0.0.1, the writer, and finding runs again.

At a facility txm-live points at the facility's Tiled URL; on a laptop or in tests
:class:`EmbeddedTiled` starts a local Tiled server (SQLite catalog + data folder) on a
background thread, reachable over HTTP so a second process (another IPython, a replay, an
analysis worker) can read the runs. Raw frames stay in the detector's HDF5 files; Tiled
registers them as external data, so the server is given the frame folder as readable
storage.
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

logger = logging.getLogger(__name__)

URI_FILE = "tiled-uri.txt"

_process_api_key: str | None = None


def _default_api_key() -> str:
    """One random key for every embedded server of this process (see EmbeddedTiled Notes)."""
    global _process_api_key
    if _process_api_key is None:
        import secrets

        _process_api_key = secrets.token_hex(16)
    return _process_api_key


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
        0 picks a free port.
    api_key : str, optional
        Single-user key; when omitted, one random key shared by all embedded servers of
        this process. It is part of :attr:`uri`.

    Notes
    -----
    Tiled keeps its server settings process-wide: the last server started sets the key
    every server of the process accepts (measured: a first server answers 401 once a
    second one with another key has started). Hence one key per process by default.

    The URI (with its key) is also written to ``directory/tiled-uri.txt`` with owner-only
    permissions, so other processes on this machine can connect
    (:func:`connect` reads it).
    """

    def __init__(self, directory, *, readable_storage=(), port: int = 0, api_key: str | None = None):
        from tiled.server import SimpleTiledServer

        register_bluesky_exporters()
        self.directory = Path(directory).resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        storage = [Path(p).resolve() for p in readable_storage]
        for p in storage:
            p.mkdir(parents=True, exist_ok=True)
        self._server = SimpleTiledServer(
            directory=self.directory, readable_storage=storage or None, port=port,
            api_key=api_key or _default_api_key(),
        )
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
    """A Tiled client from a URI, or from a folder an :class:`EmbeddedTiled` runs in."""
    from tiled.client import from_uri

    target = str(uri_or_directory)
    if not target.startswith(("http://", "https://")):
        uri_file = Path(target) / URI_FILE
        if not uri_file.exists():
            raise FileNotFoundError(
                f"no Tiled server is running for {target!r} ({uri_file} is missing); "
                "start one with `txm-live serve` or give its URI"
            )
        target = uri_file.read_text().strip()
    return from_uri(target)


class SafeTiledWriter:
    """``bluesky_tiled_plugins.TiledWriter`` on its own thread, unable to stop a scan.

    Each write to Tiled is an HTTP round trip (~0.1 s per document measured here), far too
    slow for the RunEngine's thread. Documents are queued and written in order by a worker
    thread, each event as it comes (``batch_size=1``) so other processes see the run
    grow. If Tiled fails (the server went away, a disk filled), TiledWriter logs the error
    and routes the rest of the run to ``backup_directory`` as JSON lines (its backup
    callback); anything it raises all the same is logged and kept in :attr:`failures`.
    Either way the scan and its raw files carry on untouched (``tests/test_store.py``).
    """

    def __init__(self, client, *, backup_directory=None, batch_size: int = 1):
        import queue
        import threading

        from bluesky_tiled_plugins import TiledWriter

        self.backup_directory = Path(backup_directory) if backup_directory else None
        if self.backup_directory is not None:
            self.backup_directory.mkdir(parents=True, exist_ok=True)
        self._writer = TiledWriter(
            client,
            batch_size=batch_size,
            backup_directory=str(self.backup_directory) if self.backup_directory else None,
        )
        self.failures: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="tiled-writer", daemon=True)
        self._thread.start()

    def __call__(self, name, doc):
        # Documents are not copied: bluesky does not mutate a document after emitting it.
        self._queue.put((name, doc))

    def _work(self):
        while True:
            name, doc = self._queue.get()
            try:
                if name is not None:
                    self._writer(name, doc)
            except Exception as exc:  # a storage failure must never reach the RunEngine
                message = f"Tiled writer failed on {name!r} document: {exc!r}"
                self.failures.append(message)
                logger.error(message)
            finally:
                self._queue.task_done()

    def flush(self, timeout: float | None = 60.0) -> bool:
        """Wait until every queued document is written; False if ``timeout`` (s) ran out."""
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True


def subscribe_tiled_writer(RE, client, *, backup_directory=None, batch_size: int = 1) -> SafeTiledWriter:
    """Subscribe a :class:`SafeTiledWriter` for ``client`` to the RunEngine ``RE``."""
    writer = SafeTiledWriter(client, backup_directory=backup_directory, batch_size=batch_size)
    writer.token = RE.subscribe(writer)
    return writer
