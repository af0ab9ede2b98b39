"""Replay a stored run through the live analysis: ``txm-live replay UID``.

The run's documents come back from Tiled (``client[uid].documents()``, new style only:
``stream_resource`` / ``stream_datum``, one ``stream_datum`` per stream covering every
frame, events before the frames) and go through the very callback the RunEngine feeds
live (:class:`txm_live.callbacks.LiveAnalysis`), which writes a new analysis run
(``replay: True``, ``parent_uid`` = the raw run) to the same store. The analysis decides
everything from frame labels, not arrival order, so the maps equal the live ones.

Re-taken frames: when a pause lands just after an event was saved, the RunEngine re-takes
that frame under the same ``seq_num``, and Tiled stores both rows. Tiled's document
export keeps one event per ``seq_num`` and numbers the rows 1, 2, 3 … as if there were
no repeats; :func:`documents_with_row_seq_nums` restores each row's own ``seq_num`` (from
the stream's table) so that the analysis can tell the re-take from the first take.
"""
from __future__ import annotations

import argparse
import logging
import sys

logger = logging.getLogger(__name__)

__all__ = ["replay", "add_replay_arguments", "run_replay", "find_analysis_runs", "documents_with_row_seq_nums"]


def _expected_documents(run) -> int | None:
    """Rough count of documents for the progress bar (start, stop, events, stream docs)."""
    try:
        stop = run.metadata.get("stop") or {}
        n_events = sum((stop.get("num_events") or {}).values())
        n_streams = len(stop.get("num_events") or {})
        return 2 + n_events + 3 * n_streams
    except Exception:
        return None


def _row_seq_nums(run, stream: str):
    """``seq_num`` of every row of ``stream`` in Tiled's table (None if it has no table)."""
    try:
        return [int(v) for v in run[stream].base["internal"].read()["seq_num"]]
    except (KeyError, AttributeError, TypeError):
        return None


def _split_datum(doc: dict, seq_nums: list[int]) -> list[dict]:
    """The rows of one replayed ``stream_datum``, one datum per run of consecutive seq_nums."""
    start, stop = doc["indices"]["start"], doc["indices"]["stop"]
    out, row = [], start
    while row < stop:
        end = row + 1
        while end < stop and seq_nums[end] == seq_nums[end - 1] + 1:
            end += 1
        out.append({**doc, "uid": f"{doc['uid']}-{row}", "indices": {"start": row, "stop": end},
                    "seq_nums": {"start": seq_nums[row], "stop": seq_nums[end - 1] + 1}})
        row = end
    return out


def documents_with_row_seq_nums(run):
    """``run.documents()`` with each frame row's own ``seq_num`` (see the module docstring).

    Yields ``(name, doc)``; a ``stream_datum`` whose stream holds repeated ``seq_num`` values
    (re-taken frames) is split so each row carries the ``seq_num`` its event had.
    """
    streams: dict[str, str] = {}
    for name, doc in run.documents():
        if name == "descriptor":
            streams[doc["uid"]] = doc["name"]
        if name == "stream_datum" and doc["descriptor"] in streams:
            seq_nums = _row_seq_nums(run, streams[doc["descriptor"]])
            if (seq_nums is not None and len(set(seq_nums)) != len(seq_nums)
                    and len(seq_nums) >= doc["indices"]["stop"]):
                for part in _split_datum(doc, seq_nums):
                    yield name, part
                continue
        yield name, doc


def group_runs(client, run) -> list:
    """The runs to replay for ``run``: itself, or every run of its 3D XANES scan in energy
    order when it is one energy of a :func:`txm_live.plans.xanes_3d` group (its analysis
    spans the group's runs)."""
    from tiled.queries import Key

    start = run.metadata["start"]
    group_uid = start.get("xanes3d_uid")
    if not group_uid:
        return [run]
    found = client.search(Key("start.xanes3d_uid") == group_uid)
    runs = [found[u] for u in found]
    return sorted(runs, key=lambda r: int(r.metadata["start"].get("xanes3d_index", 0)))


def replay(uid: str, client, *, results_client=None, progress: bool = True, timeout: float | None = 600.0,
           preview_dir=None, sinks=(), path_map=(), **options) -> list[str]:
    """Feed the stored run ``uid`` through the live analysis; return the new analysis uids.

    Parameters
    ----------
    uid : str
        The raw run (scan id prefixes are not resolved; give the uid). A run of a 3D
        XANES scan replays the scan's every energy run (:func:`group_runs`), and returns
        the group's analysis run.
    client : tiled client
        Where the raw run is stored.
    results_client : tiled client, optional
        Where the analysis run is written; default ``client``. ``False``: not written.
    progress : bool
        tqdm progress bar over the documents (on stderr).
    timeout : float or None
        Seconds to wait for the analysis and the writes to finish.
    path_map : sequence of (old_root, new_root)
        Detector files moved: references under ``old_root`` are read from ``new_root``
        (:class:`txm_live.store_remap.PathRemap`; the stored run is not changed).
    preview_dir, sinks, **options
        As for :class:`txm_live.callbacks.LiveAnalysis`.

    Raises
    ------
    KeyError
        No run ``uid`` in ``client``.
    TimeoutError
        The analysis did not finish within ``timeout``.
    """
    from tqdm.auto import tqdm

    from txm_live.callbacks import LiveAnalysis
    from txm_live.store_remap import PathRemap

    remap = PathRemap(path_map)
    runs = group_runs(client, client[uid])
    target = client if results_client is None else (results_client or None)
    handle = LiveAnalysis(target, preview_dir=preview_dir, sinks=sinks, replay=True, **options)
    try:
        total = sum(_expected_documents(run) or 0 for run in runs) or None
        with tqdm(total=total, unit="doc", desc=f"replay {uid[:8]}",
                  disable=not progress, file=sys.stderr) as bar:
            for run in runs:
                for name, doc in documents_with_row_seq_nums(run):
                    handle(*remap(name, doc))
                    bar.update(1)
        if not handle.wait(timeout):
            raise TimeoutError(f"the analysis of run {uid} did not finish within {timeout} s")
    finally:
        handle.close()
    if handle.failures:
        logger.error("replay of %s: %s", uid, "; ".join(handle.failures))
    if remap.missing:
        logger.error("replay of %s: %d detector file(s) not found, e.g. %s%s", uid, len(remap.missing),
                     remap.missing[0], "" if path_map else "; if the files moved, give --remap OLD_ROOT=NEW_ROOT")
    return list(handle.analysis_uids.get(uid, []))


def find_analysis_runs(client, raw_uid: str) -> dict:
    """Analysis runs of a raw run: ``{analysis uid: run}``, oldest first."""
    from tiled.queries import Key

    results = client.search(Key("start.parent_uid") == raw_uid)
    runs = {uid: results[uid] for uid in results}
    return dict(sorted(runs.items(), key=lambda kv: kv[1].metadata["start"]["time"]))


def add_replay_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("uid", help="uid of the stored raw run")
    parser.add_argument("--tiled", default="txm-live-data/tiled",
                        help="Tiled URI, or the folder of an embedded server started by `txm-live serve` "
                             "(default: txm-live-data/tiled)")
    parser.add_argument("--previews", default=None, help="folder for PNG previews (default: none)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the analysis")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--remap", action="append", default=[], metavar="OLD_ROOT=NEW_ROOT",
                        help="detector files moved: read files under OLD_ROOT from NEW_ROOT (absolute folders; "
                             "repeatable)")


def run_replay(args) -> int:
    """CLI entry: replay ``args.uid``; print the analysis run(s); 0 if every analysis succeeded."""
    from txm_live.store import connect
    from txm_live.store_remap import parse_remap

    try:
        path_map = parse_remap(args.remap)
    except ValueError as exc:
        print(f"txm-live replay: {exc}", file=sys.stderr)
        return 2
    client = connect(args.tiled)
    try:
        uids = replay(args.uid, client, progress=not args.no_progress, timeout=args.timeout,
                      preview_dir=args.previews, path_map=path_map)
    except KeyError:
        print(f"no run {args.uid!r} in {args.tiled}", file=sys.stderr)
        return 2
    if not uids:
        print(f"run {args.uid} has no live analysis for its scan_type", file=sys.stderr)
        return 1
    status = 0
    for uid in uids:
        stop = client[uid].metadata.get("stop") or {}
        print(f"analysis run {uid}: {stop.get('exit_status', '?')} — {stop.get('reason', '')}")
        status |= stop.get("exit_status") != "success"
    return int(status)
