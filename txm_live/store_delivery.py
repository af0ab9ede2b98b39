"""Delivering a run's documents to Tiled exactly once, and checking that it holds them.

The spool (:mod:`txm_live.spool`) is the record of what a run *is*; Tiled is checked
against it. The redelivery rule, applied by :class:`txm_live.store.SafeTiledWriter` when
the server answers again and by ``txm-live spool flush``:

1. Tiled has no run with that uid: the run is written from the spool.
2. Tiled has the run and it matches the spool (stop document, every stream's events by
   ``seq_num`` once each, every array's extent): nothing is written.
3. Tiled has the run but not all of it (the server went away mid-run, a retried append
   doubled rows): the stored record is deleted — Tiled's own copies of the event table
   and arrays; the detector's files are external assets and are not touched — and the
   run is written again from the spool. A run that was still open continues live.

A run leaves the spool only when rule 2 holds. bluesky-tiled-plugins' ``TiledWriter``
cannot resume a run it partly wrote (it answers 409 Conflict on the start document),
hence rule 3.
"""
from __future__ import annotations

import dataclasses
import logging
from urllib.parse import parse_qs, urlencode, urlparse, urlunparse

from .spool import RunTally, tally_documents

logger = logging.getLogger(__name__)

__all__ = ["TiledUnavailable", "probe_tiled", "split_api_key", "stored_problems", "deliver_run", "Delivery",
           "REDELIVERY_BATCH_SIZE", "PROBE_TIMEOUT_S"]

#: Seconds a probe waits for the server (a live server answers in milliseconds).
PROBE_TIMEOUT_S = 3.0
#: Events per write when a finished run is delivered from the spool (one request per stream).
REDELIVERY_BATCH_SIZE = 10_000


class TiledUnavailable(ConnectionError):
    """The Tiled server does not answer, or refuses this client's key; the message says which."""


def split_api_key(uri: str) -> tuple[str, str | None]:
    """``(uri without its api_key query parameter, the key or None)``."""
    parsed = urlparse(uri)
    query = parse_qs(parsed.query)
    key = query.pop("api_key", [None])[0]
    return urlunparse(parsed._replace(query=urlencode(query, doseq=True))), key


def _api_root(uri: str) -> str:
    """``http://host:port/prefix/api/v1/`` of any URI below it."""
    parsed = urlparse(uri)
    path = parsed.path
    marker = path.find("/api/v1")
    root = (path[:marker] if marker >= 0 else path.rstrip("/")) + "/api/v1/"
    return urlunparse(parsed._replace(path=root, query="", params="", fragment=""))


def probe_tiled(uri: str, *, api_key: str | None = None, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Check, without retries, that a Tiled server answers at ``uri`` and accepts ``api_key``.

    Raises
    ------
    TiledUnavailable
        Nothing answers (connection refused, no route, timeout), the answer is not
        Tiled's, or the key is refused; the message names the server.
    """
    import httpx

    uri, key_in_uri = split_api_key(uri)
    api_key = api_key or key_in_uri
    root = _api_root(uri)
    try:
        with httpx.Client(trust_env=False, timeout=timeout_s) as http:
            info = http.get(root)
            if info.status_code != 200:
                raise TiledUnavailable(f"{root} answered HTTP {info.status_code}: not a Tiled server, or not ready")
            headers = {"Authorization": f"Apikey {api_key}"} if api_key else {}
            answer = http.get(root + "metadata/", headers=headers)
            if answer.status_code in (401, 403) and not api_key:
                raise TiledUnavailable(f"the Tiled server at {root} requires an API key and none was given: add "
                                       "?api_key=... to the URI, or give the catalog folder of `txm-live serve`")
            if answer.status_code in (401, 403):
                raise TiledUnavailable(f"the Tiled server at {root} refuses this API key "
                                       f"(HTTP {answer.status_code}); was it restarted with another key?")
    except httpx.TimeoutException as exc:
        raise TiledUnavailable(f"the Tiled server at {root} did not answer within {timeout_s} s ({exc!r})") from exc
    except httpx.TransportError as exc:
        raise TiledUnavailable(f"no Tiled server answers at {root} ({exc})") from exc


# ---- checking a stored run against its documents ------------------------------------
def _stream_node(run, stream: str):
    node = run[stream]
    return getattr(node, "base", node)


def _stored_seq_nums(node) -> list[int]:
    if "internal" not in node:
        return []
    table = node["internal"].read(columns=["seq_num"])
    return sorted(int(s) for s in table["seq_num"])


def _extent(node, key: str) -> int:
    return int(node[key].shape[0]) if key in node else 0


def _stop_problems(run, tally: RunTally) -> list[str]:
    stop = run.metadata.get("stop") or None
    if tally.stop_uid is None:
        return ["Tiled holds a stop document the spool does not have"] if stop else []
    if stop is None:
        return ["no stop document in Tiled"]
    if stop.get("uid") != tally.stop_uid:
        return [f"Tiled's stop document {stop.get('uid')} is not the spooled one {tally.stop_uid}"]
    return []


def _stream_problems(node, stream: str, seq_nums: list[int], tally: RunTally) -> list[str]:
    problems = []
    stored = _stored_seq_nums(node)
    if stored != seq_nums:
        doubled = len(stored) - len(set(stored))
        problems.append(f"stream {stream!r}: {len(stored)} events in Tiled ({doubled} doubled), "
                        f"{len(seq_nums)} spooled")
    for key in sorted(tally.internal_arrays.get(stream, ())):
        if seq_nums and _extent(node, key) != len(seq_nums):
            problems.append(f"stream {stream!r}: array {key!r} has {_extent(node, key)} rows in Tiled, "
                            f"{len(seq_nums)} events spooled")
    return problems


def stored_problems(client, tally: RunTally) -> list[str]:
    """What Tiled lacks or holds twice of the run ``tally`` describes; empty when it matches.

    Checks the stop document, each stream's events by ``seq_num`` (each once), the
    arrays stored beside the event table, and each external (detector) array's extent.
    """
    try:
        run = client[tally.uid]
    except KeyError:
        return [f"run {tally.uid} is not in Tiled"]
    problems = _stop_problems(run, tally)
    streams = set(run)
    for stream, seq_nums in tally.seq_nums.items():
        if stream not in streams:
            problems.append(f"stream {stream!r} is not in Tiled")
            continue
        problems += _stream_problems(_stream_node(run, stream), stream, seq_nums, tally)
    for (stream, key), n_frames in tally.external_frames.items():
        if stream in streams:
            stored = _extent(_stream_node(run, stream), key)
            if stored != n_frames:
                problems.append(f"stream {stream!r}: {key!r} registers {stored} frames in Tiled, "
                                f"{n_frames} announced")
    return problems


# ---- delivering -----------------------------------------------------------------------
@dataclasses.dataclass
class Delivery:
    """What :func:`deliver_run` did.

    Attributes
    ----------
    uid : str
    action : str
        ``'written'`` (not in Tiled before), ``'replaced'`` (a partial record deleted and
        written again) or ``'already complete'``.
    problems : list of str
        What the stored record lacked before (for ``'replaced'``).
    writer : TiledWriter or None
        The writer that wrote the run; an open run continues through it.
    """

    uid: str
    action: str
    problems: list
    writer: object = None


def _remove_stored(client, uid: str) -> None:
    """Delete Tiled's record of a run (external detector files are left alone)."""
    client[uid].delete(recursive=True, external_only=False)


def deliver_run(client, documents, *, open_batch_size: int = 1) -> Delivery:
    """Write a run's documents to Tiled following the redelivery rule (module docstring).

    Parameters
    ----------
    client : tiled client
        Where runs are written.
    documents : list of (name, doc)
        The whole run so far, from its start document.
    open_batch_size : int
        TiledWriter's batch size for a run still open (it continues live through the
        returned writer); a finished run is written in batches of
        :data:`REDELIVERY_BATCH_SIZE` (one write per stream).
    """
    from bluesky_tiled_plugins import TiledWriter

    tally = tally_documents(documents)
    finished = tally.stop_uid is not None
    action, problems = "written", []
    try:
        client[tally.uid]
    except KeyError:
        pass
    else:
        problems = stored_problems(client, tally) if finished else ["the run is still open"]
        if not problems:
            return Delivery(tally.uid, "already complete", [])
        logger.warning("run %s in Tiled is incomplete (%s); replacing it from the spool", tally.uid,
                       "; ".join(problems))
        _remove_stored(client, tally.uid)
        action = "replaced"
    batch_size = REDELIVERY_BATCH_SIZE if finished else int(open_batch_size)
    writer = TiledWriter(client, batch_size=batch_size)
    for name, doc in documents:
        writer(name, doc)
    return Delivery(tally.uid, action, problems, writer)
