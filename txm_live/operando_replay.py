"""An operando session from Tiled: find its runs, replay its analysis, find where to resume.

Every run of a session carries the session's ``operando_uid`` in its start document
(:mod:`txm_live.plans.operando`). :func:`replay_session` feeds the stored runs, in the
order they were measured, through a new :class:`~txm_live.callbacks.OperandoSessionCallback`:
each measurement's raw start document and the documents of its stored 2D XANES analysis
run (or, with ``reanalyse=True``, its raw documents through the live 2D XANES analysis
again). The session analysis run it writes (``replay: True``) holds the same rows as the
one written live.
"""
from __future__ import annotations

import logging

from txm_live.plans.operando import OperandoResume, resume_from_starts

logger = logging.getLogger(__name__)

__all__ = ["find_session_runs", "replay_session", "resume_point", "session_analysis_runs"]


def find_session_runs(client, operando_uid: str, *, scan_type: str | None = None) -> dict:
    """Raw runs of a session ``{uid: run}`` in the order they started (optionally one scan type)."""
    from tiled.queries import Key

    results = client.search(Key("start.operando_uid") == operando_uid)
    if scan_type is not None:
        results = results.search(Key("start.scan_type") == scan_type)
    runs = {uid: results[uid] for uid in results}
    runs = {uid: run for uid, run in runs.items() if run.metadata["start"].get("analysis") is None}
    return dict(sorted(runs.items(), key=lambda kv: kv[1].metadata["start"]["time"]))


def session_analysis_runs(client, operando_uid: str) -> dict:
    """Session analysis runs of ``operando_uid`` ``{uid: run}``, oldest first."""
    from tiled.queries import Key

    results = client.search(Key("start.operando_uid") == operando_uid).search(
        Key("start.analysis") == "operando_session")
    runs = {uid: results[uid] for uid in results}
    return dict(sorted(runs.items(), key=lambda kv: kv[1].metadata["start"]["time"]))


def _stored_xanes_analysis(client, raw_uid: str):
    """The first stored live (not replayed) 2D XANES analysis run of ``raw_uid``, or None."""
    from txm_live.callbacks.xanes2d import ANALYSIS_NAME
    from txm_live.replay import find_analysis_runs

    for run in find_analysis_runs(client, raw_uid).values():
        start = run.metadata["start"]
        if start.get("analysis") == ANALYSIS_NAME and not start.get("replay"):
            return run
    return None


def replay_session(operando_uid: str, client, *, results_client=None, sinks=(), reanalyse: bool = False,
                   timeout: float | None = 600.0, **options) -> list[str]:
    """Replay a stored session through the session analysis; return the new analysis run uid(s).

    Parameters
    ----------
    operando_uid : str
    client : tiled client
        Where the session's runs are stored.
    results_client : tiled client, optional
        Where the session analysis run is written; default ``client``; ``False``: not written.
    sinks : sequence of callables ``(name, doc)``
        Also receive the session analysis run's documents.
    reanalyse : bool
        Re-run the 2D XANES analysis on each measurement's raw frames (as
        ``txm-live replay`` does) instead of reading its stored analysis run.
    timeout : float or None
        Seconds to wait for the analysis and the writes.
    **options
        Options of :class:`~txm_live.callbacks.OperandoSessionCallback` (``calibration``,
        ``segmentation`` …): give those the live session used.

    Raises
    ------
    KeyError
        No run of ``operando_uid`` in ``client``.
    """
    from txm_live.callbacks.operando import OperandoSessionCallback
    from txm_live.store import SafeTiledWriter

    runs = find_session_runs(client, operando_uid)
    if not runs:
        raise KeyError(f"no run with operando_uid {operando_uid!r} in the Tiled store")
    target = client if results_client is None else (results_client or None)
    writer = SafeTiledWriter(target) if target is not None else None
    outputs = ([writer] if writer is not None else []) + list(sinks)

    def emit(name, doc):
        for output in outputs:
            output(name, doc)

    callback = OperandoSessionCallback(emit, replay=True, **options)
    for uid, run in runs.items():
        start = run.metadata["start"]
        callback("start", start)
        if start.get("scan_type") == "xanes2d":
            _feed_measurement(callback, client, uid, run, reanalyse=reanalyse, timeout=timeout)
    callback.close("replayed from Tiled")
    if not callback.wait(timeout) or (writer is not None and not writer.flush(timeout)):
        raise TimeoutError(f"the replay of session {operando_uid} did not finish within {timeout} s")
    if callback.failures:
        logger.error("replay of session %s: %s", operando_uid, "; ".join(callback.failures))
    return list(callback.analysis_uids.get(operando_uid, []))


def _feed_measurement(callback, client, uid: str, run, *, reanalyse: bool, timeout) -> None:
    if reanalyse:
        from txm_live.replay import replay

        replay(uid, client, results_client=False, progress=False, timeout=timeout, sinks=[callback])
        return
    analysis = _stored_xanes_analysis(client, uid)
    if analysis is None:
        logger.warning("measurement %s has no stored 2D XANES analysis; replay with reanalyse=True", uid)
        return
    for name, doc in analysis.documents():
        callback(name, doc)


def resume_point(client, operando_uid: str) -> OperandoResume:
    """Where a stopped session continues (:class:`~txm_live.plans.operando.OperandoResume`).

    From the start documents of the session's runs in Tiled: the next measurement index
    after the last one begun, the protocol step it was in, and the charge counter's
    value at the session start.
    """
    runs = find_session_runs(client, operando_uid)
    if not runs:
        raise KeyError(f"no run with operando_uid {operando_uid!r} in the Tiled store")
    return resume_from_starts([run.metadata["start"] for run in runs.values()])
