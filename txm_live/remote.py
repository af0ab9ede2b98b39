"""Analysis out of the acquisition process: documents over 0MQ, analysed by another process.

The acquisition process stays lean: a :class:`DocumentPublisher` subscribed to its
RunEngine serialises each document (msgpack, microseconds) and hands it to 0MQ, which
sends it from its own I/O thread. A :class:`ZmqProxy` (bound to 127.0.0.1 only) fans the
documents out; ``txm-live serve-analysis`` (:class:`AnalysisService`) subscribes and runs
the same live analysis as in-process (:class:`txm_live.callbacks.LiveAnalysis`), writing
the analysis runs to Tiled through a spooling writer. Frames are read from the detector's
files, so the service runs where those files are visible.

::

    txm-live zmq-proxy --in-port 5577 --out-port 5578          # or TXM_LIVE_ZMQ_PROXY in the profile
    TXM_LIVE_ZMQ_PUBLISH=127.0.0.1:5577 ipython --profile-dir=profile_collection
    txm-live serve-analysis --zmq 127.0.0.1:5578 --tiled txm-live-data/tiled

Wire format
-----------
One 0MQ frame per document, ``prefix + b" " + name + b" " + payload`` — the framing of
bluesky's ``Publisher`` / ``RemoteDispatcher`` (``bluesky.callbacks.zmq``), so bluesky's
dispatcher can consume it with ``deserializer=unpack_document``. The payload is msgpack;
numpy arrays travel as msgpack extension type :data:`NDARRAY_EXT` holding their dtype
string, shape and raw bytes; numpy scalars as plain numbers. Decoding never unpickles:
object arrays are refused on both sides (bluesky's default serializer is pickle, which
runs code chosen by whoever can reach the socket).

Restarts
--------
0MQ publish/subscribe keeps nothing for a subscriber that is not connected. A service
that starts (or restarts) in the middle of a run cannot analyse it: it reports the run as
missed and how to replay it (``txm-live replay UID``), and resumes with the next run. A
run whose stop never comes (the acquisition process died) is closed when the next run
starts or the service stops: its analysis is fed a stop document with
``exit_status='abort'`` and a reason saying so, so its analysis run is closed.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid

import msgpack
import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["pack_document", "unpack_document", "NDARRAY_EXT", "zmq_address", "DocumentPublisher", "ZmqProxy",
           "AnalysisService", "DEFAULT_IN_PORT", "DEFAULT_OUT_PORT"]

#: msgpack extension type code of a numpy array
NDARRAY_EXT = 42
#: numpy dtype kinds that may cross the wire (no objects, no void/structured)
_WIRE_KINDS = frozenset("biufcUSmM")
#: Messages 0MQ queues per peer before it drops (documents are small; frames stay in files)
HIGH_WATER_MARK = 100_000
#: Default ports of the proxy: publishers connect to the first, subscribers to the second
DEFAULT_IN_PORT, DEFAULT_OUT_PORT = 5577, 5578
#: The proxy and the default addresses are on this interface only
LOOPBACK = "127.0.0.1"
#: Seconds a new subscriber waits for its subscription to reach the publishers
SUBSCRIPTION_SETTLE_S = 0.5
#: Milliseconds the service waits for a message before checking whether to stop
RECEIVE_POLL_MS = 200


# ---- serializer ------------------------------------------------------------------------
def _pack_default(obj):
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in _WIRE_KINDS:
            raise TypeError(f"a numpy array of dtype {obj.dtype} cannot be sent (only numbers, booleans, strings)")
        header = msgpack.packb([obj.dtype.str, list(obj.shape)])
        return msgpack.ExtType(NDARRAY_EXT, header + np.ascontiguousarray(obj).tobytes())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"an object of type {type(obj).__name__} cannot be sent as a document field")


def _unpack_ext(code, data):
    if code != NDARRAY_EXT:
        raise ValueError(f"unknown msgpack extension type {code} in a document (expected {NDARRAY_EXT}: ndarray)")
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(data)
    dtype_str, shape = unpacker.unpack()
    dtype = np.dtype(dtype_str)
    if dtype.kind not in _WIRE_KINDS:
        raise ValueError(f"refusing a numpy array of dtype {dtype_str!r} from the wire")
    body = data[unpacker.tell():]
    return np.frombuffer(body, dtype=dtype).reshape(shape).copy()


def pack_document(doc: dict) -> bytes:
    """msgpack bytes of a document (numpy arrays as extension :data:`NDARRAY_EXT`)."""
    return msgpack.packb(doc, default=_pack_default, use_bin_type=True)


def unpack_document(data: bytes) -> dict:
    """The document packed by :func:`pack_document`; never unpickles anything.

    Raises
    ------
    ValueError
        Not a msgpack document, an unknown extension type, or an object array.
    """
    try:
        doc = msgpack.unpackb(data, ext_hook=_unpack_ext, raw=False, strict_map_key=False)
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError) as exc:
        raise ValueError(f"not a txm-live document message: {exc}") from exc
    if not isinstance(doc, dict):
        raise ValueError(f"a document must be a mapping; got {type(doc).__name__}")
    return doc


def zmq_address(address, *, default_host: str = LOOPBACK) -> str:
    """``tcp://host:port`` from ``'host:port'``, ``':port'``, a port number or a full address."""
    if isinstance(address, int):
        return f"tcp://{default_host}:{address}"
    text = str(address)
    if "://" in text:
        return text
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"a 0MQ address is 'host:port' or 'tcp://host:port'; got {address!r}")
    return f"tcp://{host or default_host}:{port}"


# ---- publishing ------------------------------------------------------------------------
class DocumentPublisher:
    """A RunEngine callback publishing every document to a 0MQ proxy.

    ``RE.subscribe(DocumentPublisher("127.0.0.1:5577"))``. Sending never blocks the
    RunEngine: the document is serialised and queued to 0MQ's I/O thread; with no proxy
    or no subscriber, 0MQ drops it (publish/subscribe keeps nothing for absent readers).
    A subscription takes a moment to travel back from a subscriber to a new publisher;
    :meth:`wait_for_subscriber` waits for it (the socket is an XPUB, a PUB that also hears
    subscriptions).

    Parameters
    ----------
    address : str or int
        The proxy's input (``host:port``; a bare port means 127.0.0.1).
    prefix : bytes
        Tag in front of each message (bluesky's convention; no spaces).
    """

    def __init__(self, address, *, prefix: bytes = b""):
        import zmq

        if not isinstance(prefix, bytes) or b" " in prefix:
            raise ValueError(f"prefix must be bytes without spaces; got {prefix!r}")
        self.address = zmq_address(address)
        self.prefix = prefix
        self.n_sent = 0
        self.failures: list[str] = []
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.XPUB)
        self._socket.setsockopt(zmq.SNDHWM, HIGH_WATER_MARK)
        self._socket.setsockopt(zmq.LINGER, 1000)  # ms to flush at close, then give up
        self._socket.connect(self.address)
        self._lock = threading.Lock()  # 0MQ sockets are not thread-safe

    def __call__(self, name, doc):
        try:
            message = b" ".join([self.prefix, name.encode(), pack_document(doc)])
            with self._lock:
                self._socket.send(message)
            self.n_sent += 1
        except Exception as exc:  # publishing must never stop a scan
            text = f"could not publish a {name!r} document: {exc!r}"
            self.failures.append(text)
            logger.error(text)

    def wait_for_subscriber(self, timeout_s: float = 10.0) -> bool:
        """True once a subscription (e.g. a ``serve-analysis`` through the proxy) has reached
        this publisher; False after ``timeout_s``. Documents sent before are dropped."""
        import zmq

        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                try:
                    message = self._socket.recv(zmq.NOBLOCK)
                except zmq.Again:
                    message = None
            if message is not None and message[:1] == b"\x01":
                return True
            if time.monotonic() > deadline:
                return False
            if message is None:
                time.sleep(0.02)

    def close(self) -> None:
        with self._lock:
            self._socket.close()
            self._context.term()


class ZmqProxy:
    """A 0MQ forwarder on 127.0.0.1: publishers connect to ``in_port``, subscribers to ``out_port``.

    Parameters
    ----------
    in_port, out_port : int
        Ports on 127.0.0.1; 0 picks free ones (read :attr:`in_port` / :attr:`out_port`).
    host : str
        Interface to bind; 127.0.0.1 unless the facility's network is trusted.

    Use as a context manager, or :meth:`start` (thread) / :meth:`run` (blocking) and
    :meth:`stop`.
    """

    def __init__(self, in_port: int = DEFAULT_IN_PORT, out_port: int = DEFAULT_OUT_PORT, *, host: str = LOOPBACK):
        import zmq

        self.host = host
        self._context = zmq.Context()
        self._frontend = self._context.socket(zmq.XSUB)
        self._backend = self._context.socket(zmq.XPUB)
        self._control = self._context.socket(zmq.PAIR)
        for sock in (self._frontend, self._backend):
            sock.setsockopt(zmq.SNDHWM, HIGH_WATER_MARK)
            sock.setsockopt(zmq.RCVHWM, HIGH_WATER_MARK)
            sock.setsockopt(zmq.LINGER, 0)
        try:
            self.in_port = self._bind(self._frontend, in_port)
            self.out_port = self._bind(self._backend, out_port)
        except Exception:
            self._close_sockets()
            raise
        self._control_address = f"inproc://txm-live-proxy-{id(self)}"
        self._control.bind(self._control_address)
        self._thread: threading.Thread | None = None

    def _bind(self, sock, port: int) -> int:
        import zmq

        try:
            if port == 0:
                return sock.bind_to_random_port(f"tcp://{self.host}")
            sock.bind(f"tcp://{self.host}:{port}")
            return int(port)
        except zmq.ZMQError as exc:
            raise OSError(f"cannot bind the 0MQ proxy to {self.host}:{port}: {exc} (another proxy running?)") from exc

    @property
    def in_address(self) -> str:
        return f"tcp://{self.host}:{self.in_port}"

    @property
    def out_address(self) -> str:
        return f"tcp://{self.host}:{self.out_port}"

    def run(self) -> None:
        """Forward until :meth:`stop` (blocking)."""
        import zmq

        control = self._context.socket(zmq.PAIR)
        control.connect(self._control_address)
        try:
            zmq.proxy_steerable(self._frontend, self._backend, None, control)
        except zmq.ContextTerminated:
            pass
        finally:
            control.close(linger=0)
            self._close_sockets()

    def start(self) -> "ZmqProxy":
        """Forward on a daemon thread."""
        self._thread = threading.Thread(target=self.run, name="txm-live-zmq-proxy", daemon=True)
        self._thread.start()
        return self

    def wait(self) -> None:
        """Block until the forwarding thread ends (after :meth:`stop`)."""
        while self._thread is not None and self._thread.is_alive():
            self._thread.join(0.5)

    def stop(self, timeout: float = 5.0) -> None:
        if self._control.closed:
            return
        self._control.send(b"TERMINATE")
        if self._thread is not None:
            self._thread.join(timeout)
        self._control.close(linger=0)
        self._context.term()

    def _close_sockets(self) -> None:
        for sock in (self._frontend, self._backend):
            sock.close(linger=0)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


# ---- the analysis service ---------------------------------------------------------------
def _synthetic_stop(start_uid: str, reason: str) -> dict:
    return {"uid": str(uuid.uuid4()), "run_start": start_uid, "time": time.time(), "exit_status": "abort",
            "reason": reason}


class AnalysisService:
    """Subscribe to a 0MQ proxy and run the live analysis of every run; see the module docstring.

    Parameters
    ----------
    address : str
        The proxy's output (``host:port``).
    analysis : LiveAnalysis-like callable
        Receives the documents of every run whose start it saw; has ``wait(timeout)`` and
        ``close()`` (:class:`txm_live.callbacks.LiveAnalysis`).
    tiled_hint : str
        What ``--tiled`` to print in the replay hint for missed runs.
    prefix : bytes
        Only messages with this prefix (bluesky's convention).

    Attributes
    ----------
    started, finished : list of str
        Raw runs whose start / stop this service received.
    missed : dict
        Raw run uid -> why it was not analysed (started before the service).
    closed_unfinished : list of str
        Raw runs that never sent a stop; their analysis was closed here.
    gaps : dict
        Raw run uid -> number of events whose ``seq_num`` skipped (lost in transit).
    """

    def __init__(self, address, analysis, *, tiled_hint: str = "TILED", prefix: bytes = b"", out=None):
        self.address = zmq_address(address)
        self.analysis = analysis
        self.tiled_hint = tiled_hint
        self.prefix = prefix
        self.started: list[str] = []
        self.finished: list[str] = []
        self.missed: dict[str, str] = {}
        self.closed_unfinished: list[str] = []
        self.gaps: dict[str, int] = {}
        self._open: dict[str, dict] = {}          # raw run uid -> start document
        self._run_of: dict[str, str] = {}         # descriptor / resource uid -> run uid
        self._last_seq: dict[str, int] = {}       # descriptor uid -> last event seq_num
        self._stop = threading.Event()
        self._print = out or (lambda text: print(text, flush=True))

    # ---- routing ------------------------------------------------------------------------
    def _run_uid(self, name: str, doc: dict) -> str | None:
        for ref in ("run_start", "descriptor", "stream_resource", "resource"):
            target = doc.get(ref)
            if isinstance(target, str):
                return target if ref == "run_start" else self._run_of.get(target)
        return None

    def dispatch(self, name: str, doc: dict) -> None:
        """Route one document: analyse the runs whose start was seen, report the others."""
        if name == "start":
            self._close_open_runs(f"no stop document: run {doc['uid']} started before this one ended "
                                  "(the acquisition process may have restarted)")
            self._open[doc["uid"]] = doc
            self.started.append(doc["uid"])
            self._print(f"run {doc['uid']}: analysing ({doc.get('plan_name')}, scan_type {doc.get('scan_type')})")
            self.analysis(name, doc)
            return
        uid = self._run_uid(name, doc)
        if uid is None or uid not in self._open:
            self._report_missed(uid or doc.get("run_start") or "?", name)
            return
        if name in ("descriptor", "stream_resource", "resource"):
            self._run_of[doc["uid"]] = uid
        elif name == "event":
            self._check_sequence(uid, doc["descriptor"], [doc["seq_num"]])
        elif name == "event_page":
            self._check_sequence(uid, doc["descriptor"], doc["seq_num"])
        self.analysis(name, doc)
        if name == "stop":
            del self._open[uid]
            self.finished.append(uid)
            self._print(f"run {uid}: ended ({doc.get('exit_status')})")

    def _check_sequence(self, uid: str, descriptor: str, seq_nums) -> None:
        for seq in seq_nums:
            expected = self._last_seq.get(descriptor, 0) + 1
            if int(seq) != expected:
                self.gaps[uid] = self.gaps.get(uid, 0) + abs(int(seq) - expected)
                logger.error("run %s: event %s arrived where %s was expected (documents lost in transit)",
                             uid, seq, expected)
            self._last_seq[descriptor] = int(seq)

    def _report_missed(self, uid: str, name: str) -> None:
        if uid in self.missed or uid == "?":
            return
        self.missed[uid] = f"started before this service (first document seen: {name!r})"
        self._print(f"run {uid}: started before this service; not analysed. Replay it once it has ended: "
                    f"txm-live replay {uid} --tiled {self.tiled_hint}")

    def _close_open_runs(self, reason: str) -> None:
        for uid in list(self._open):
            self.analysis("stop", _synthetic_stop(uid, reason))
            del self._open[uid]
            self.closed_unfinished.append(uid)
            self._print(f"run {uid}: {reason}; its analysis run was closed (exit_status 'abort')")

    # ---- running ------------------------------------------------------------------------
    def run(self, *, ready=None, settle_s: float = SUBSCRIPTION_SETTLE_S) -> None:
        """Receive and dispatch until :meth:`stop`; then close open runs.

        ``ready`` (callable) is called once subscribed (after ``settle_s`` for the
        subscription to reach the publishers).
        """
        import zmq

        context = zmq.Context()
        sock = context.socket(zmq.SUB)
        sock.setsockopt(zmq.RCVHWM, HIGH_WATER_MARK)
        sock.setsockopt(zmq.SUBSCRIBE, self.prefix)
        sock.connect(self.address)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        try:
            time.sleep(settle_s)
            if ready is not None:
                ready()
            while not self._stop.is_set():
                if not poller.poll(RECEIVE_POLL_MS):
                    continue
                self._receive(sock.recv())
        finally:
            sock.close(linger=0)
            context.term()
            self._close_open_runs("no stop document: the analysis service stopped before the run ended")

    def _receive(self, message: bytes) -> None:
        try:
            prefix, name, payload = message.split(b" ", 2)
            if prefix != self.prefix:
                return
            doc = unpack_document(payload)
            self.dispatch(name.decode(), doc)
        except Exception as exc:  # one bad message must not end the service
            logger.error("dropped a message that could not be handled: %r", exc)

    def stop(self) -> None:
        self._stop.set()
