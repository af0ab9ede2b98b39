"""``txm-live`` services as child processes that tests and fault drills can start, kill and restart.

:class:`TxmLiveProcess` runs one ``txm-live`` sub-command (``serve``, ``serve-analysis``,
``zmq-proxy``) with its output in a log file, waits for the line it prints when ready,
and stops it gently (SIGTERM: the service closes its runs and flushes) or kills it
(SIGKILL: a crash). :class:`TiledServerProcess` is ``txm-live serve`` on a catalog
folder; a restart comes back on the same port with the same key, as a server restarted
by its operator would::

    with TiledServerProcess(tmp / "data", create=True) as server:
        client = server.client()
        server.kill()       # Tiled is gone
        ...
        server.start()      # back on the same port
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["TxmLiveProcess", "TiledServerProcess", "AnalysisServiceProcess", "ProxyProcess", "free_port"]

#: Seconds to wait for a service's ready line (a cold start imports tiled, numba, bluesky)
READY_TIMEOUT_S = 120.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TxmLiveProcess:
    """One ``txm-live`` sub-command in a child process.

    Parameters
    ----------
    args : list of str
        The sub-command and its arguments, e.g. ``["zmq-proxy", "--in-port", "0"]``.
    ready_pattern : str
        Regular expression of the output line that says the service is ready.
    log_path : path
        Where its stdout and stderr go (appended across restarts).
    env : dict, optional
        Extra environment variables.
    """

    def __init__(self, args, *, ready_pattern: str, log_path, env: dict | None = None):
        self.args = [str(a) for a in args]
        self.ready_pattern = re.compile(ready_pattern)
        self.log_path = Path(log_path)
        self.env = dict(env or {})
        self.process: subprocess.Popen | None = None
        self.ready_match: re.Match | None = None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "txm_live.cli", *self.args]

    def start(self, *, timeout_s: float = READY_TIMEOUT_S) -> "TxmLiveProcess":
        """Start it and wait for its ready line; RuntimeError (with its output) if it exits first."""
        if self.alive:
            raise RuntimeError(f"{self.args[0]} is already running (pid {self.process.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            text = self.log_path.read_bytes()[offset:].decode(errors="replace")
            match = self.ready_pattern.search(text)
            if match:
                self.ready_match = match
                return self
            if self.process.poll() is not None:
                raise RuntimeError(f"`txm-live {' '.join(self.args)}` exited with {self.process.returncode}:\n"
                                   f"{text[-3000:]}")
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"`txm-live {' '.join(self.args)}` was not ready within {timeout_s} s; see {self.log_path}")

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM, wait up to ``timeout_s``, then SIGKILL; returns the exit code."""
        if not self.alive:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return self.kill()

    def kill(self) -> int | None:
        """SIGKILL: the service dies as in a crash, with no chance to clean up."""
        if self.alive:
            self.process.kill()
        return None if self.process is None else self.process.wait()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self):
        return self.start() if not self.alive else self

    def __exit__(self, *exc):
        self.stop()


class TiledServerProcess(TxmLiveProcess):
    """``txm-live serve DIR`` on 127.0.0.1; restarts reuse the port and the catalog's key.

    Parameters
    ----------
    directory : path
        The data folder (catalog in ``DIR/tiled``, detector files in ``DIR/frames``).
    port : int
        0 picks a free port once; restarts keep it.
    create : bool
        Pass ``--create`` (a new catalog).
    """

    def __init__(self, directory, *, port: int = 0, create: bool = False, log_path=None):
        self.directory = Path(directory).resolve()
        self.port = int(port) or free_port()
        args = ["serve", self.directory, "--port", self.port] + (["--create"] if create else [])
        super().__init__(args, ready_pattern=r"Tiled server for .* at (http://\S+)",
                         log_path=log_path or self.directory.parent / f"tiled-serve-{self.port}.log")

    def start(self, *, timeout_s: float = READY_TIMEOUT_S) -> "TiledServerProcess":
        """Start (or restart) it; after the first start the catalog exists, so restarts
        run without ``--create``, as an operator would restart it."""
        super().start(timeout_s=timeout_s)
        if "--create" in self.args:
            self.args.remove("--create")
        return self

    @property
    def catalog(self) -> Path:
        return self.directory / "tiled"

    @property
    def frames(self) -> Path:
        return self.directory / "frames"

    @property
    def base_uri(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1"

    def client(self):
        from .store import connect

        return connect(self.catalog)


class AnalysisServiceProcess(TxmLiveProcess):
    """``txm-live serve-analysis --zmq ADDRESS --tiled TILED`` (extra options after)."""

    def __init__(self, zmq_address: str, tiled, *, log_path, options=()):
        args = ["serve-analysis", "--zmq", zmq_address, "--tiled", tiled, *options]
        super().__init__(args, ready_pattern=r"serve-analysis: listening", log_path=log_path)


class ProxyProcess(TxmLiveProcess):
    """``txm-live zmq-proxy`` on free ports of 127.0.0.1 (restarts keep them)."""

    def __init__(self, *, in_port: int = 0, out_port: int = 0, log_path):
        self.in_port = int(in_port) or free_port()
        self.out_port = int(out_port) or free_port()
        super().__init__(["zmq-proxy", "--in-port", self.in_port, "--out-port", self.out_port],
                         ready_pattern=r"0MQ proxy: publishers", log_path=log_path)

    @property
    def in_address(self) -> str:
        return f"127.0.0.1:{self.in_port}"

    @property
    def out_address(self) -> str:
        return f"127.0.0.1:{self.out_port}"
