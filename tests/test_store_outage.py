"""Storage outages with a real Tiled server process (``txm-live serve``) killed and restarted.

Expected outcomes, asserted:

* Tiled killed in the middle of a scan (after it stored part of the run) and restarted:
  the scan finishes untouched; afterwards the raw run in Tiled holds every event and frame
  exactly once and its stop document (the partial record replaced, not appended to), and
  its analysis run exists with the same maps the live analysis computed. In ``make test``
  the outage is a few seconds on a scan without beamline timing; the acceptance case —
  30 s during a scan in beamline time — is marked ``outage_long``.
* A scan made while Tiled is down is delivered when it returns (``outage_long``).
* The acquisition process killed mid-scan: its runs wait in the spool as orphans;
  ``txm-live spool flush`` closes them (``exit_status='abort'``) and delivers them
  (``outage_long``).

``outage_long`` cases take minutes of wall time (beamline timing, a 30 s outage, process
starts), so ``make test`` leaves them out; ``benchmarks/bench_outage.py`` runs them
(``pytest -m outage_long``) and prints their figures.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from bluesky import RunEngine

from reliability_helpers import (
    ENERGIES,
    analysis_runs,
    assert_raw_run_complete,
    final_maps,
    make_beamline,
    short_client_retries,  # noqa: F401 (fixture)
    stored_seq_nums,
    xanes_plan,
)
from txm_live.callbacks import subscribe_live_analysis
from txm_live.spool import list_spool, read_spool_file, tally_documents
from txm_live.store import subscribe_tiled_writer
from txm_live.store_process import TiledServerProcess

OUTAGE_S = 30.0
#: The outage of the quick case in ``make test``: long enough for the writer to fail, go
#: offline and probe at least once before the server is back.
SHORT_OUTAGE_S = 3.0


@pytest.fixture(scope="module")
def tiled_server_process(tmp_path_factory):
    """One ``txm-live serve`` for the module (a start costs seconds); tests kill and restart it."""
    server = TiledServerProcess(tmp_path_factory.mktemp("outage") / "data", create=True).start()
    yield server
    server.stop()


@pytest.fixture
def tiled_process(tiled_server_process, tmp_path):
    """The module's server, running; ``frames`` is a folder of this test's own."""
    server = tiled_server_process
    if not server.alive:
        server.start()
    server.test_frames = server.frames / tmp_path.name
    return server


def _kill_when_stored(server, client, uids, *, min_events: int, outage_s: float, log: dict):
    """Kill the server once it holds ``min_events`` primary events of the raw run; restart it
    ``outage_s`` later (a thread: the scan goes on meanwhile)."""
    def work():
        while True:
            try:
                if uids and len(stored_seq_nums(client[uids[0]], "primary")) >= min_events:
                    break
            except Exception:
                pass
            time.sleep(0.2)
        server.kill()
        log["killed"] = time.monotonic()
        time.sleep(outage_s)
        server.start()
        log["restarted"] = time.monotonic()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def test_tiled_killed_mid_scan_and_restarted_loses_and_doubles_nothing(tiled_process, tmp_path,
                                                                         short_client_retries):
    server = tiled_process
    RE = RunEngine({}, call_returns_result=False)
    writer = subscribe_tiled_writer(RE, server.client(), spool_directory=tmp_path / "spool", retry_interval_s=1.0)
    analysis_docs = []
    live = subscribe_live_analysis(RE, None, writer=writer, sinks=[lambda n, d: analysis_docs.append((n, d))])
    log = {}

    def kill_at_third_energy(name, doc):
        """On the RunEngine's thread, so the scan is surely running: once Tiled holds what
        came so far, kill it; a thread restarts it SHORT_OUTAGE_S later."""
        if doc["seq_num"] != 3 or "killed" in log:
            return
        assert writer.flush(60)
        log["held"] = len(stored_seq_nums(server.client()[doc_uids[0]], "primary"))
        server.kill()
        log["killed"] = True
        threading.Timer(SHORT_OUTAGE_S, lambda: (server.start(), log.setdefault("restarted", True))).start()

    doc_uids = []
    RE.subscribe(lambda name, doc: doc_uids.append(doc["uid"]), "start")
    RE.subscribe(kill_at_third_energy, "event")
    (uid,) = RE(xanes_plan(make_beamline(server.test_frames, seed=3)))
    assert log["held"] >= 1  # Tiled held part of the run when it died
    assert live.wait(300) and writer.wait_delivered(600), writer.failures
    assert log.get("restarted") and any("documents go to the spool" in f for f in writer.failures)

    client = server.client()
    raw = client[uid]
    assert raw.metadata["stop"]["exit_status"] == "success"
    counts = assert_raw_run_complete(raw, sorted(server.test_frames.glob("*.h5")))
    assert counts == {"dark": 2, "flat": len(ENERGIES), "primary": len(ENERGIES)}
    assert writer.deliveries[uid] == "replaced"  # the partial record was replaced, not appended to
    (analysis,) = analysis_runs(client, uid).values()
    assert analysis.metadata["stop"]["exit_status"] == "success"
    np.testing.assert_array_equal(analysis["maps"]["whiteline"].read()[-1], final_maps(analysis_docs)["whiteline"])
    assert stored_seq_nums(analysis, "drift") == list(range(1, len(ENERGIES) + 1))
    assert writer.pending_runs == [] and list((tmp_path / "spool").glob("*.jsonl")) == []


@pytest.mark.outage_long
def test_killing_tiled_for_30_s_mid_scan_loses_nothing(tiled_process, tmp_path, short_client_retries):
    server = tiled_process
    client = server.client()
    RE = RunEngine({}, call_returns_result=False)
    writer = subscribe_tiled_writer(RE, client, spool_directory=tmp_path / "spool", retry_interval_s=2.0)
    analysis_docs = []
    live = subscribe_live_analysis(RE, None, writer=writer, sinks=[lambda n, d: analysis_docs.append((n, d))])
    uids, scan_end = [], {}
    RE.subscribe(lambda name, doc: uids.append(doc["uid"]), "start")
    RE.subscribe(lambda name, doc: scan_end.setdefault("t", time.monotonic()), "stop")
    bl = make_beamline(server.test_frames, realistic_timing=True)  # ~45 s of beamline time
    log = {}
    killer = _kill_when_stored(server, server.client(), uids, min_events=3, outage_s=OUTAGE_S, log=log)

    (uid,) = RE(xanes_plan(bl))
    killer.join(OUTAGE_S + 120)
    assert RE.state == "idle" and "restarted" in log
    assert log["killed"] < scan_end["t"], "Tiled must die while the scan runs"
    assert live.wait(300) and writer.wait_delivered(600), writer.failures
    assert any("documents go to the spool" in f for f in writer.failures)  # it did go offline

    client = server.client()
    raw = client[uid]
    assert raw.metadata["stop"]["exit_status"] == "success"
    counts = assert_raw_run_complete(raw, sorted(server.test_frames.glob("*.h5")))
    assert counts == {"dark": 2, "flat": len(ENERGIES), "primary": len(ENERGIES)}
    # the partial record written before the kill was replaced, not appended to
    assert writer.deliveries[uid] == "replaced"

    (analysis,) = analysis_runs(client, uid).values()
    assert analysis.metadata["stop"]["exit_status"] == "success"
    stored_wl = analysis["maps"]["whiteline"].read()[-1]
    np.testing.assert_array_equal(stored_wl, final_maps(analysis_docs)["whiteline"])
    assert stored_seq_nums(analysis, "drift") == list(range(1, len(ENERGIES) + 1))
    assert writer.pending_runs == [] and list((tmp_path / "spool").glob("*.jsonl")) == []


@pytest.mark.outage_long
def test_a_scan_made_while_tiled_is_down_is_delivered_when_it_returns(tiled_process, tmp_path, short_client_retries):
    server = tiled_process
    RE = RunEngine({}, call_returns_result=False)
    writer = subscribe_tiled_writer(RE, server.client(), spool_directory=tmp_path / "spool", retry_interval_s=1.0)
    live = subscribe_live_analysis(RE, None, writer=writer)
    server.kill()
    (uid,) = RE(xanes_plan(make_beamline(server.test_frames, seed=2)))
    assert live.wait(300) and writer.flush(300)
    assert not writer.online
    spooled = {e.uid: e for e in list_spool(tmp_path / "spool")}
    assert uid in spooled and spooled[uid].has_stop and spooled[uid].held  # this process holds them
    assert len(spooled) == 2  # the raw run and its analysis run

    server.start()
    assert writer.wait_delivered(600), writer.failures
    client = server.client()
    assert_raw_run_complete(client[uid], sorted(server.test_frames.glob("*.h5")))
    (analysis,) = analysis_runs(client, uid).values()
    assert analysis.metadata["stop"]["exit_status"] == "success"
    assert set(writer.deliveries.values()) == {"written"}


ACQUISITION = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from bluesky import RunEngine
    from reliability_helpers import make_beamline, xanes_plan
    from txm_live.callbacks import subscribe_live_analysis
    from txm_live.store import connect, subscribe_tiled_writer

    RE = RunEngine({{}})
    writer = subscribe_tiled_writer(RE, connect({catalog!r}), spool_directory={spool!r})
    subscribe_live_analysis(RE, None, writer=writer)
    RE.subscribe(lambda name, doc: print("event", doc["seq_num"], flush=True), "event")
    RE(xanes_plan(make_beamline({frames!r}, seed=4, realistic_timing=True)))
""")


@pytest.mark.outage_long
def test_an_acquisition_process_killed_mid_scan_is_closed_and_delivered_by_spool_flush(tiled_process, tmp_path):
    from pathlib import Path

    server = tiled_process
    spool = tmp_path / "spool"
    code = ACQUISITION.format(tests=str(Path(__file__).parent), catalog=str(server.catalog), spool=str(spool),
                              frames=str(server.test_frames))
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True, env={**__import__("os").environ, "MPLBACKEND": "Agg"})
    try:
        for line in child.stdout:
            if line.split() == ["event", "6"]:  # a few energies into the scan
                break
    finally:
        child.kill()  # the IPython session dies: no stop document, no cleanup
        child.wait()

    listing = subprocess.run([sys.executable, "-m", "txm_live.cli", "spool", "list", str(spool)],
                             capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0, listing.stderr
    assert "2 run(s) waiting" in listing.stdout and listing.stdout.count("orphaned") == 2
    assert listing.stdout.count(" open ") == 2
    raw_file = next(p for p in spool.glob("*.jsonl") if read_spool_file(p)[0][1].get("plan_name"))
    raw_uid = raw_file.stem
    spooled = tally_documents(read_spool_file(raw_file))

    flush = subprocess.run([sys.executable, "-m", "txm_live.cli", "spool", "flush", str(spool),
                            "--tiled", str(server.catalog)], capture_output=True, text=True, timeout=600)
    assert flush.returncode == 0, flush.stdout + flush.stderr
    assert "delivered 2 run(s); 0 failed" in flush.stdout
    assert flush.stdout.count("closed: it had no stop document") == 2
    assert list(spool.glob("*.jsonl")) == []

    client = server.client()
    raw = client[raw_uid]
    stop = raw.metadata["stop"]
    assert stop["exit_status"] == "abort" and "no stop document" in stop["reason"]
    for stream, seq_nums in spooled.seq_nums.items():  # every spooled event once
        assert stored_seq_nums(raw, stream) == seq_nums == list(range(1, len(seq_nums) + 1))
    assert len(spooled.seq_nums["primary"]) >= 6
    (analysis,) = analysis_runs(client, raw_uid).values()
    assert analysis.metadata["stop"]["exit_status"] == "abort"
    assert "no stop document" in analysis.metadata["stop"]["reason"]
