"""The viewer's watch of a live run over Tiled's websockets (no browser needed).

A real scan (simulated beamline, RunEngine, live analysis, TiledWriter, embedded Tiled over
HTTP) runs while a watched run (:class:`TiledWatch` feeding :class:`Xanes2DRun`) and a
polled one follow it side by side, each through its own HTTP client whose requests are
counted. The watched run must end where the polled one ends, having read each analysis
table over HTTP once and every later row from the websocket.
"""
from __future__ import annotations

import queue
import threading
import time

import numpy as np
from bluesky import RunEngine

from simulators.beamline import make_sim_beamline
from simulators.model import SimConfig
from txm_live.callbacks import subscribe_live_analysis
from txm_live.plans import xanes_2d
from txm_live.store import subscribe_tiled_writer
from txm_live.viewer import TiledSource, open_run
from txm_live.viewer._watch import CONTAINER, TiledWatch

#: across the Ni K edge with the pre- and post-edge points the fit needs
ENERGIES = np.r_[8273.0, 8293.0, 8313.0, 8323.0, np.arange(8328.0, 8353.0, 4.0), 8363.0, 8383.0, 8413.0]
WAIT_S = 120


def _counting_source(tiled_server):
    """A TiledSource on its own client, and the list its HTTP request paths go to."""
    client = tiled_server.client()
    paths: list[str] = []
    client.context.http_client.event_hooks["request"].append(lambda request: paths.append(request.url.path))
    return TiledSource(client), client, paths


def _table_reads(paths, analysis_uid, stream):
    return sum(1 for p in paths if p.startswith("/api/v1/table/") and f"{analysis_uid}/{stream}/" in p)


def test_a_watched_run_reads_each_table_once_and_ends_where_a_polled_run_ends(tiled_server):
    RE = RunEngine({}, context_managers=[], call_returns_result=False)  # runs on a thread
    writer = subscribe_tiled_writer(RE, tiled_server.client())
    live = subscribe_live_analysis(RE, tiled_server.client(), writer=writer, partial_every=2,
                                   min_partial_energies=4, page_interval_s=0.2)
    bl = make_sim_beamline(tiled_server.frames_dir, config=SimConfig(shape=(64, 64), seed=11))
    started = threading.Event()
    uids = []
    RE.subscribe(lambda name, doc: (uids.append(doc["uid"]), started.set()), "start")

    watched_source, watched_client, watched_paths = _counting_source(tiled_server)
    polled_source, _, polled_paths = _counting_source(tiled_server)
    updates: queue.Queue = queue.Queue()
    watch = TiledWatch(watched_client, updates.put, lambda path, reason: updates.put(("lost", path, reason)))
    watch.subscribe("", CONTAINER)
    failures = []

    def scan():
        try:
            RE(xanes_2d(bl.detector, bl.energy, ENERGIES, shutter=bl.shutter, sample_stage=bl.sample_stage,
                        n_darks=2, md={"sample": "watched"}))
        except Exception as exc:  # shown by the assertion below instead of a silent thread
            failures.append(exc)
            started.set()
    thread = threading.Thread(target=scan, daemon=True)
    thread.start()
    try:
        assert started.wait(WAIT_S) and not failures, failures
        uid = uids[0]
        early = []  # the catalog announces the raw run once the writer has created it
        while not any(u.path == "" and u.kind == "child" and u.key == uid for u in early):
            early.append(updates.get(timeout=WAIT_S))
        watched, polled = open_run(watched_source, uid), open_run(polled_source, uid)
        watched.attach(watch)
        for update in early:
            watched.apply(update)
        watched.state()
        n_row_messages, n_calls = {}, 0
        # follow until the analysis has stopped and the writer has closed its tables'
        # streams (a closed stream has sent all its rows; the watch then drops it)
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            try:
                update = updates.get(timeout=0.2)
            except queue.Empty:
                update = None
            if update is not None:
                assert not isinstance(update, tuple), update  # no subscription was lost
                watched.apply(update)
                if update.kind == "rows":
                    stream = update.path.split("/")[1]
                    n_row_messages[stream] = n_row_messages.get(stream, 0) + 1
                polled.state()
                n_calls += 1
            state = watched.state()
            ana = state.analysis_uid
            tables = [f"{ana}/{s}/internal" for s in watched.ANALYSIS_STREAMS]
            if (state.analysis_status not in ("running", "none") and updates.empty()
                    and not any(watch.watching(t) for t in tables)):
                break
        thread.join(WAIT_S)
        assert live.wait(WAIT_S) and writer.flush(WAIT_S)
        final = watched.state()
        # a look at an idle watched run costs no request; a polled one costs several
        before = len(watched_paths)
        assert watched.state() == final and len(watched_paths) == before
        before = len(polled_paths)
        polled.state()
        assert len(polled_paths) - before >= 3
    finally:
        watch.close()
    # the watched run ends where a polled run (everything read over HTTP) ends
    assert final.analysis_status == "success", final
    assert final == open_run(polled_source, uid).state()
    assert (final.n_drift, final.n_spectrum, final.maps_final) == (len(ENERGIES), len(ENERGIES), True)
    np.testing.assert_array_equal(watched.drift()["frame_index"], np.arange(len(ENERGIES)))
    # each analysis table was read over HTTP once (when it appeared); the drift rows came in
    # several websocket messages (event pages every 0.2 s) ...
    for stream in ("drift", "spectrum", "maps"):
        assert _table_reads(watched_paths, ana, stream) == 1, (stream, watched_paths)
    assert n_row_messages["drift"] >= 2, n_row_messages
    # ... where the polled run, looking as often, re-read the table at every look while the
    # analysis ran (negative control; measured 20 reads in 75 looks)
    assert _table_reads(polled_paths, ana, "drift") >= 5 * _table_reads(watched_paths, ana, "drift"), n_calls
