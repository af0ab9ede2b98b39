"""The local spool: every run's documents on local disk until Tiled holds all of them.

Bluesky documents are small (frames stay in the detector's files), so the Tiled writer
(:class:`txm_live.store.SafeTiledWriter`) appends *every* document to the spool before it
tries Tiled, and a run leaves the spool only once Tiled is verified to hold it completely.
A storage outage then costs nothing: the scan goes on, the documents wait here, and they
are delivered when the server answers again — by the writer itself, or by
``txm-live spool flush`` after the acquisition process has gone.

Format
------
One file per run, ``<run uid>.jsonl``, in the spool folder. Each line is one document,
in the order the run emitted it::

    {"name": "event", "doc": {...}}

the line format of bluesky-tiled-plugins' JSON-lines backup, so its readers read these
files too. Numpy arrays are written as (nested) lists, numpy scalars as numbers, NaN and
±inf as ``NaN`` / ``Infinity`` / ``-Infinity`` (Python's :mod:`json` reads them back).
A line is serialised completely before it is written with a single ``write`` on a file
opened for appending, so a document that cannot be serialised is reported and never
leaves half a line; a line cut short by a crash (no final newline) is dropped with a
warning when the file is read or appended to again.

Ownership
---------
A process holds an exclusive ``flock`` on the files of the runs it writes until they are
delivered; the lock goes when the process does. A file nobody holds is an *orphan*: its
writer has gone, and any process (``txm-live spool flush``, or a new session's writer)
may adopt and deliver it. An orphan without a stop document can never be finished by its
writer; :func:`close_orphan` appends a stop document (``exit_status='abort'``, the reason
saying so) before it is delivered, so no run — raw or analysis — stays open for ever.
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import threading
import time
import uuid
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["Spool", "SpoolEntry", "RunTally", "encode_line", "read_spool_file", "list_spool", "tally_documents",
           "close_orphan", "SUFFIX"]

SUFFIX = ".jsonl"

#: numpy dtype kinds that are written as JSON numbers, booleans or strings
_JSON_KINDS = frozenset("biufUS")


def _json_default(obj):
    """``json.dumps`` hook: numpy arrays as lists, numpy scalars as Python numbers."""
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in _JSON_KINDS:
            raise TypeError(f"a numpy array of dtype {obj.dtype} cannot be written as JSON")
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"an object of type {type(obj).__name__} cannot be written as JSON")


def encode_line(name: str, doc: dict) -> bytes:
    """One spool line for a document: ``{"name": ..., "doc": ...}`` + newline, UTF-8.

    Raises
    ------
    TypeError
        The document holds something JSON cannot represent (an object array, a Python
        object); nothing is written then.
    """
    text = json.dumps({"name": name, "doc": doc}, default=_json_default, separators=(",", ":"),
                      allow_nan=True, ensure_ascii=False)
    return (text + "\n").encode("utf-8")


def read_spool_file(path) -> list[tuple[str, dict]]:
    """The documents of one spool file, in order.

    A last line without its newline (the writer was killed mid-write) is dropped with a
    warning. Any other line that does not parse raises :class:`ValueError` naming the
    file and the line.
    """
    path = Path(path)
    data = path.read_bytes()
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    if tail:
        logger.warning("%s: dropping an incomplete last line (%d bytes; the writer stopped mid-write)",
                       path, len(tail))
    documents = []
    for number, line in enumerate(lines, start=1):
        try:
            item = json.loads(line)
            documents.append((item["name"], item["doc"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}, line {number}: not a spooled document ({exc})") from exc
    return documents


@dataclasses.dataclass
class RunTally:
    """What one run's documents add up to — the yardstick a stored run is checked against.

    Attributes
    ----------
    uid : str
        The run's uid (its start document's).
    n_documents : int
    stop_uid : str or None
        The stop document's uid; None while the run is open.
    exit_status : str or None
    seq_nums : dict
        Stream name -> sorted list of the events' ``seq_num`` (each event once).
    external_frames : dict
        ``(stream name, data key)`` -> number of frames the ``stream_datum`` documents
        announced (the extent the stored external array must have).
    internal_arrays : dict
        Stream name -> data keys the writer stores as arrays beside the table (arrays
        larger than a few elements): their first dimension counts the events.
    """

    uid: str
    n_documents: int = 0
    stop_uid: str | None = None
    exit_status: str | None = None
    seq_nums: dict = dataclasses.field(default_factory=dict)
    external_frames: dict = dataclasses.field(default_factory=dict)
    internal_arrays: dict = dataclasses.field(default_factory=dict)


#: Arrays with more elements than this are stored beside the event table
#: (bluesky-tiled-plugins' ``MAX_ARRAY_SIZE``).
TABLE_ARRAY_LIMIT = 16


def tally_documents(documents) -> RunTally:
    """Count what a run's documents hold (see :class:`RunTally`)."""
    tally = None
    stream_of: dict[str, str] = {}
    resource_key: dict[str, str] = {}
    for name, doc in documents:
        if name == "start":
            tally = RunTally(uid=doc["uid"])
        if tally is None:
            raise ValueError(f"the documents do not begin with a start document (first: {name!r})")
        tally.n_documents += 1
        if name == "descriptor":
            stream = doc["name"]
            stream_of[doc["uid"]] = stream
            tally.seq_nums.setdefault(stream, [])
            for key, dk in doc.get("data_keys", {}).items():
                shape = [s for s in dk.get("shape", []) if s is not None]
                if "external" not in dk and dk.get("dtype") == "array" and int(np.prod(shape)) > TABLE_ARRAY_LIMIT:
                    tally.internal_arrays.setdefault(stream, set()).add(key)
        elif name == "event":
            tally.seq_nums[stream_of[doc["descriptor"]]].append(int(doc["seq_num"]))
        elif name == "event_page":
            tally.seq_nums[stream_of[doc["descriptor"]]].extend(int(s) for s in doc["seq_num"])
        elif name == "stream_resource":
            resource_key[doc["uid"]] = doc.get("data_key", "")
        elif name == "stream_datum":
            key = (stream_of[doc["descriptor"]], resource_key[doc["stream_resource"]])
            extent = int(doc["indices"]["stop"]) - int(doc["indices"]["start"])
            tally.external_frames[key] = tally.external_frames.get(key, 0) + extent
        elif name == "stop":
            tally.stop_uid = doc["uid"]
            tally.exit_status = doc.get("exit_status")
    if tally is None:
        raise ValueError("no documents")
    for stream in tally.seq_nums:
        tally.seq_nums[stream].sort()
    return tally


def close_orphan(documents, *, closed_by: str) -> tuple[str, dict] | None:
    """A stop document for a run whose writer has gone without one; None if it has one.

    ``exit_status='abort'``; the reason says that the stop was added, by whom, and how
    many documents the run had.
    """
    if not documents or documents[0][0] != "start":
        raise ValueError("the documents do not begin with a start document")
    if any(name == "stop" for name, _ in documents):
        return None
    start = documents[0][1]
    num_events: dict[str, int] = {}
    stream_of = {}
    for name, doc in documents:
        if name == "descriptor":
            stream_of[doc["uid"]] = doc["name"]
            num_events.setdefault(doc["name"], 0)
        elif name == "event":
            num_events[stream_of[doc["descriptor"]]] += 1
        elif name == "event_page":
            num_events[stream_of[doc["descriptor"]]] += len(doc["seq_num"])
    reason = (f"no stop document: the process writing this run ended after {len(documents)} documents; "
              f"stop added by {closed_by}")
    stop = {"uid": str(uuid.uuid4()), "run_start": start["uid"], "time": time.time(), "exit_status": "abort",
            "reason": reason, "num_events": num_events}
    return "stop", stop


@dataclasses.dataclass
class SpoolEntry:
    """One run in a spool folder, as ``txm-live spool list`` shows it."""

    uid: str
    path: Path
    n_documents: int
    has_stop: bool
    exit_status: str | None
    plan_name: str | None
    parent_uid: str | None
    start_time: float | None
    size_bytes: int
    held: bool  # a live process holds it (its writer delivers it itself)


def _is_held(path: Path) -> bool:
    """True when another open file description holds the run's lock (a live writer)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases our shared lock
    return False


def list_spool(directory) -> list[SpoolEntry]:
    """The runs waiting in a spool folder, oldest start first."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"no spool folder {str(directory)!r}")
    entries = []
    for path in sorted(directory.glob("*" + SUFFIX)):
        documents = read_spool_file(path)
        start = documents[0][1] if documents and documents[0][0] == "start" else {}
        stops = [doc for name, doc in documents if name == "stop"]
        entries.append(SpoolEntry(
            uid=start.get("uid", path.stem), path=path, n_documents=len(documents), has_stop=bool(stops),
            exit_status=stops[-1].get("exit_status") if stops else None, plan_name=start.get("plan_name"),
            parent_uid=start.get("parent_uid"), start_time=start.get("time"), size_bytes=path.stat().st_size,
            held=_is_held(path)))
    return sorted(entries, key=lambda e: (e.start_time or 0.0, e.uid))


class _RunFile:
    """One run's spool file, opened for appending and locked for as long as we hold it."""

    def __init__(self, path: Path, *, adopt: bool = False):
        self.path = path
        flags = os.O_WRONLY | os.O_APPEND | (0 if adopt else os.O_CREAT)
        self.fd = os.open(path, flags, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise
        self._drop_incomplete_tail()

    def _drop_incomplete_tail(self) -> None:
        """A line cut short by a crash must not swallow the next document."""
        size = os.fstat(self.fd).st_size
        if size == 0:
            return
        with open(self.path, "rb") as f:
            data = f.read()
        keep = data.rfind(b"\n") + 1
        if keep < size:
            logger.warning("%s: removing an incomplete last line (%d bytes) before appending",
                           self.path, size - keep)
            os.truncate(self.path, keep)

    def write(self, line: bytes, *, sync: bool = False) -> None:
        written = os.write(self.fd, line)
        if written != len(line):  # a full disk: undo the partial line
            os.ftruncate(self.fd, os.fstat(self.fd).st_size - written)
            raise OSError(f"{self.path}: only {written} of {len(line)} bytes written (disk full?)")
        if sync:
            os.fsync(self.fd)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # releases the lock
            self.fd = None


class Spool:
    """Documents of each run, kept until :meth:`discard` says Tiled holds the run.

    Parameters
    ----------
    directory : path, optional
        The spool folder (created if missing). Without one the documents are kept in
        memory: an outage is survived, a crash of this process is not.

    Notes
    -----
    :meth:`append` may be called from several threads (the RunEngine's for raw runs, the
    analysis worker's for analysis runs). Each document is routed to its run by its
    references (``run_start``, ``descriptor``, ``stream_resource``, ``resource``); the
    position a document gets in its run (0 for the start document) is what the writer
    uses to deliver each document exactly once.
    """

    def __init__(self, directory=None):
        self.directory = Path(directory).resolve() if directory is not None else None
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._files: dict[str, _RunFile] = {}
        self._memory: dict[str, list] = {}
        self._counts: dict[str, int] = {}
        self._run_of: dict[str, str] = {}  # descriptor / resource uid -> run uid
        self._current = threading.local()   # fallback: the last run started on this thread

    # ---- routing ------------------------------------------------------------------
    def _route(self, name: str, doc: dict) -> str:
        if name == "start":
            return doc["uid"]
        for ref in ("run_start", "descriptor", "stream_resource", "resource"):
            target = doc.get(ref)
            if isinstance(target, str):
                run = target if ref == "run_start" else self._run_of.get(target)
                if run is not None:
                    return run
        if name == "datum_page":  # references a list of resources
            for target in doc.get("resource", ()):
                if target in self._run_of:
                    return self._run_of[target]
        run = getattr(self._current, "uid", None)
        if run is None:
            raise ValueError(f"cannot tell which run a {name!r} document belongs to (no start seen)")
        return run

    def _remember(self, name: str, doc: dict, run: str) -> None:
        if name == "start":
            self._current.uid = run
        if name in ("descriptor", "stream_resource", "resource"):
            self._run_of[doc["uid"]] = run

    # ---- writing ------------------------------------------------------------------
    def append(self, name: str, doc: dict) -> tuple[str, int]:
        """Keep one document; returns ``(run uid, its position in the run)``.

        Raises
        ------
        TypeError
            The document cannot be written as JSON (nothing is written).
        OSError
            The spool folder cannot be written.
        ValueError
            The document's run is unknown.
        """
        line = encode_line(name, doc) if self.directory is not None else None
        with self._lock:
            run = self._route(name, doc)
            if self.directory is not None:
                run_file = self._files.get(run)
                if run_file is None:
                    run_file = self._files[run] = _RunFile(self.directory / f"{run}{SUFFIX}")
                run_file.write(line, sync=name == "stop")
            else:
                self._memory.setdefault(run, []).append((name, doc))
            self._remember(name, doc, run)
            index = self._counts.get(run, 0)
            self._counts[run] = index + 1
        return run, index

    # ---- reading ------------------------------------------------------------------
    def documents(self, uid: str) -> list[tuple[str, dict]]:
        """The run's documents kept so far, in order."""
        if self.directory is None:
            with self._lock:
                return list(self._memory.get(uid, ()))
        return read_spool_file(self.directory / f"{uid}{SUFFIX}")

    def runs(self) -> list[str]:
        """Runs held by this spool (not yet discarded), in the order they started."""
        with self._lock:
            return list(self._counts)

    def __contains__(self, uid) -> bool:
        return uid in self._counts

    # ---- ownership ----------------------------------------------------------------
    def adopt_orphans(self) -> list[str]:
        """Take over the spool files no live process holds; returns their run uids."""
        if self.directory is None:
            return []
        adopted = []
        for path in sorted(self.directory.glob("*" + SUFFIX)):
            uid = path.name[: -len(SUFFIX)]
            with self._lock:
                if uid in self._files:
                    continue
                try:
                    run_file = _RunFile(path, adopt=True)
                except (BlockingIOError, FileNotFoundError):
                    continue  # a live writer holds it, or it was delivered meanwhile
                self._files[uid] = run_file
            documents = read_spool_file(path)
            with self._lock:
                self._counts[uid] = len(documents)
                for name, doc in documents:
                    if name in ("descriptor", "stream_resource", "resource"):
                        self._run_of[doc["uid"]] = uid
            adopted.append(uid)
        return adopted

    def discard(self, uid: str) -> None:
        """Forget a run that Tiled now holds completely (its file is deleted)."""
        with self._lock:
            self._counts.pop(uid, None)
            self._memory.pop(uid, None)
            for key in [k for k, v in self._run_of.items() if v == uid]:
                del self._run_of[key]
            run_file = self._files.pop(uid, None)
        if run_file is not None:
            run_file.path.unlink(missing_ok=True)
            run_file.close()

    def release(self, uid: str) -> None:
        """Stop holding a run without deleting it (it stays for another process)."""
        with self._lock:
            self._counts.pop(uid, None)
            run_file = self._files.pop(uid, None)
        if run_file is not None:
            run_file.close()

    def close(self) -> None:
        """Release every run still held; their files stay for a later delivery."""
        for uid in self.runs():
            self.release(uid)
