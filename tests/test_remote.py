"""Analysis out of the acquisition process: documents over 0MQ to ``txm-live serve-analysis``.

Expected outcomes, asserted:

* The msgpack serializer carries numpy arrays bit for bit and refuses what JSON-safe
  documents never hold; a pickle payload from the socket is refused, never run.
* A scan published through a ``txm-live zmq-proxy`` process and analysed by a
  ``txm-live serve-analysis`` process gives the same analysis run (maps, drift, spectrum,
  status) as the live analysis in the acquisition process.
* The service killed mid-run and restarted: its half-written analysis run is closed
  (``exit_status='abort'``), the next run is analysed, and the run it missed is analysed
  by one ``txm-live replay UID`` command.
* A raw run that never sends a stop (its process died) has its analysis closed when the
  next run starts.

The service restart and the profile's publishing take minutes of wall time (beamline
timing, process starts): they are marked ``outage_long`` and run by
``benchmarks/bench_outage.py``, not by ``make test``.
"""
from __future__ import annotations

import pickle
import subprocess
import sys
import threading
import time

import msgpack
import numpy as np
import pytest
from bluesky import RunEngine

from reliability_helpers import ENERGIES, analysis_runs, make_beamline, xanes_plan
from txm_live.callbacks import subscribe_live_analysis
from txm_live.remote import (
    NDARRAY_EXT,
    AnalysisService,
    DocumentPublisher,
    ZmqProxy,
    pack_document,
    unpack_document,
)
from txm_live.store import subscribe_tiled_writer
from txm_live.store_process import AnalysisServiceProcess, ProxyProcess

ANALYSIS_TIMEOUT_S = 300.0


# ---- serializer ------------------------------------------------------------------------
def test_documents_cross_the_wire_bit_for_bit():
    image = np.arange(12, dtype=np.float32).reshape(3, 4)
    image[0, 0] = np.nan
    doc = {"uid": "u", "data": {"img": image, "counts": np.array([1, 2], dtype=">u2"), "n": np.int64(3),
                                "ok": np.bool_(True), "x": np.float32(0.5), "label": "Ni K"},
           "seq_num": 1, "tuple": (1, 2)}
    back = unpack_document(pack_document(doc))
    np.testing.assert_array_equal(back["data"]["img"], image)
    assert back["data"]["img"].dtype == np.float32 and back["data"]["counts"].dtype == np.dtype(">u2")
    assert back["data"]["n"] == 3 and back["data"]["ok"] is True and back["data"]["x"] == 0.5
    assert back["tuple"] == [1, 2] and back["data"]["label"] == "Ni K"


def test_object_arrays_are_refused_both_ways():
    with pytest.raises(TypeError, match="dtype object cannot be sent"):
        pack_document({"data": np.array([object()], dtype=object)})
    forged = msgpack.packb({"a": msgpack.ExtType(NDARRAY_EXT, msgpack.packb(["|O", [1]]) + b"\x00" * 8)})
    with pytest.raises(ValueError, match="refusing a numpy array of dtype '|O'"):
        unpack_document(forged)


class _Payload:
    """Unpickling this creates a file: what an attacker's pickle could do."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickle_from_the_socket_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Payload(marker))
    with pytest.raises(ValueError, match="not a txm-live document message"):
        unpack_document(payload)
    assert not marker.exists()
    pickle.loads(payload).close()  # negative control: bluesky's default deserializer runs it
    assert marker.exists()


# ---- in-process transport ----------------------------------------------------------------
class _Recorder:
    def __init__(self):
        self.documents = []

    def __call__(self, name, doc):
        self.documents.append((name, doc))


def test_a_scan_arrives_in_order_through_the_proxy_and_the_service_reports_missed_runs(tmp_path):
    RE = RunEngine({}, call_returns_result=False)
    emitted = []
    RE.subscribe(lambda n, d: emitted.append((n, d)))
    bl = make_beamline(tmp_path, size=64)
    recorder, lines = _Recorder(), []
    with ZmqProxy(0, 0) as proxy:
        service = AnalysisService(proxy.out_address, recorder, tiled_hint="URI", out=lines.append)
        ready = threading.Event()
        thread = threading.Thread(target=service.run, kwargs={"ready": ready.set}, daemon=True)
        thread.start()
        assert ready.wait(30)
        publisher = DocumentPublisher(proxy.in_address)
        assert publisher.wait_for_subscriber(30)
        RE.subscribe(publisher)
        RE(xanes_plan(bl, ENERGIES[::4]))
        deadline = time.monotonic() + 30
        while len(recorder.documents) < len(emitted) and time.monotonic() < deadline:
            time.sleep(0.05)
        service.stop()
        thread.join(10)
        publisher.close()
    assert [(n, d["uid"] if "uid" in d else None) for n, d in recorder.documents] == \
           [(n, d["uid"] if "uid" in d else None) for n, d in emitted]
    assert publisher.failures == [] and publisher.n_sent == len(emitted)
    assert service.gaps == {} and service.missed == {}

    # a service that starts mid-run: the run is reported with its replay command, not analysed
    late = AnalysisService("127.0.0.1:1", _Recorder(), tiled_hint="URI", out=lines.append)
    uid = emitted[0][1]["uid"]
    for name, doc in emitted[5:]:
        late.dispatch(name, doc)
    assert list(late.missed) == [uid] and late.analysis.documents == []
    assert f"txm-live replay {uid} --tiled URI" in lines[-1]


def test_a_run_that_never_stops_has_its_analysis_closed_when_the_next_run_starts(tmp_path):
    RE = RunEngine({}, call_returns_result=False)
    runs = []
    RE.subscribe(lambda n, d: runs[-1].append((n, d)) if n != "start" else runs.append([(n, d)]))
    RE(xanes_plan(make_beamline(tmp_path / "a", size=64), ENERGIES[::4]))
    RE(xanes_plan(make_beamline(tmp_path / "b", size=64), ENERGIES[::4]))
    first, second = runs
    recorder = _Recorder()
    service = AnalysisService("127.0.0.1:1", recorder, out=lambda text: None)
    for name, doc in first[: len(first) // 2]:  # the acquisition process dies here
        service.dispatch(name, doc)
    assert [n for n, _ in recorder.documents if n == "stop"] == []
    for name, doc in second:
        service.dispatch(name, doc)
    closing, second_stop = [d for n, d in recorder.documents if n == "stop"]
    assert closing["run_start"] == first[0][1]["uid"] and closing["exit_status"] == "abort"
    assert f"no stop document: run {second[0][1]['uid']} started before this one ended" in closing["reason"]
    assert second_stop == second[-1][1]
    assert service.closed_unfinished == [first[0][1]["uid"]] and service.finished == [second[0][1]["uid"]]


# ---- out of process -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def remote(tiled_server, tmp_path_factory):
    """A ``txm-live zmq-proxy`` and a ``txm-live serve-analysis`` writing to the session's Tiled."""
    logs = tmp_path_factory.mktemp("remote")
    proxy = ProxyProcess(log_path=logs / "proxy.log").start()
    service = AnalysisServiceProcess(proxy.out_address, tiled_server.uri, log_path=logs / "service.log",
                                     options=["--spool", logs / "spool"]).start()
    yield {"proxy": proxy, "service": service, "spool": logs / "spool"}
    service.stop()
    proxy.stop()


def _wait_for_analysis(client, uid, n_runs=1, timeout_s=ANALYSIS_TIMEOUT_S):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        runs = analysis_runs(client, uid)
        if len(runs) >= n_runs and all("stop" in r.metadata for r in runs.values()):
            return runs
        time.sleep(0.5)
    raise AssertionError(f"no {n_runs} finished analysis run(s) of {uid} within {timeout_s} s")


def _scan_with_publisher(tiled_server, proxy, frames, *, in_process: bool, seed=1, energies=ENERGIES,
                         realistic_timing=False, started=None):
    RE = RunEngine({}, call_returns_result=False)
    if started is not None:
        RE.subscribe(lambda name, doc: started.append(doc["uid"]), "start")
    client = tiled_server.client()
    writer = subscribe_tiled_writer(RE, client, batch_size=100)
    live = subscribe_live_analysis(RE, None, writer=writer) if in_process else None
    publisher = DocumentPublisher(proxy.in_address)
    assert publisher.wait_for_subscriber(60)
    RE.subscribe(publisher)
    (uid,) = RE(xanes_plan(make_beamline(frames, seed=seed, realistic_timing=realistic_timing), energies))
    if live is not None:
        assert live.wait(ANALYSIS_TIMEOUT_S)
    assert writer.wait_delivered(ANALYSIS_TIMEOUT_S), writer.failures
    publisher.close()
    return uid, (live.analysis_uids[uid][0] if live is not None else None)


def test_analysis_in_a_separate_process_equals_the_in_process_one(remote, tiled_server):
    client = tiled_server.client()
    uid, local_uid = _scan_with_publisher(tiled_server, remote["proxy"], tiled_server.frames_dir / "remote-a",
                                          in_process=True)
    runs = _wait_for_analysis(client, uid, n_runs=2)
    assert local_uid in runs
    (remote_uid,) = set(runs) - {local_uid}
    local, other = runs[local_uid], runs[remote_uid]
    for run in (local, other):
        assert run.metadata["stop"]["exit_status"] == "success", run.metadata["stop"]["reason"]
    assert other.metadata["start"]["analysis_parameters"] == local.metadata["start"]["analysis_parameters"]
    for field in ("whiteline", "edge", "edge_jump", "mask"):
        np.testing.assert_array_equal(other["maps"][field].read(), local["maps"][field].read())
    for stream, field in (("drift", "drift_x_px"), ("drift", "drift_y_px"), ("spectrum", "mean_absorbance"),
                          ("status", "n_frames")):
        np.testing.assert_array_equal(other[stream][field].read(), local[stream][field].read())
    assert f"run {uid}: ended (success)" in remote["service"].output()


@pytest.mark.outage_long
def test_the_service_survives_its_restart_and_a_missed_run_is_replayed_with_one_command(remote, tiled_server):
    client = tiled_server.client()
    proxy, service = remote["proxy"], remote["service"]
    started, killed = [], threading.Event()

    def kill_when_b_is_being_analysed():
        deadline = time.monotonic() + ANALYSIS_TIMEOUT_S
        while not (started and analysis_runs(client, started[0])):  # the service began B's analysis run
            if time.monotonic() > deadline:
                return
            time.sleep(0.2)
        service.kill()  # mid-run: its analysis run of B is half written, its spool orphaned
        killed.set()

    killer = threading.Thread(target=kill_when_b_is_being_analysed, daemon=True)
    killer.start()
    uid_b, _ = _scan_with_publisher(tiled_server, proxy, tiled_server.frames_dir / "remote-b", in_process=False,
                                    seed=2, energies=ENERGIES[::2], realistic_timing=True, started=started)
    killer.join(ANALYSIS_TIMEOUT_S)
    assert killed.is_set(), "the service never started analysing run B"
    service.start()  # adopts the orphaned spool: B's analysis run is closed and delivered
    uid_c, _ = _scan_with_publisher(tiled_server, proxy, tiled_server.frames_dir / "remote-c", in_process=False,
                                    seed=3)
    (analysis_c,) = _wait_for_analysis(client, uid_c).values()
    assert analysis_c.metadata["stop"]["exit_status"] == "success"

    (half,) = _wait_for_analysis(client, uid_b).values()
    assert half.metadata["stop"]["exit_status"] == "abort"
    assert "no stop document: the process writing this run ended" in half.metadata["stop"]["reason"]

    replayed = subprocess.run([sys.executable, "-m", "txm_live.cli", "replay", uid_b, "--tiled", tiled_server.uri,
                               "--no-progress"], capture_output=True, text=True, timeout=ANALYSIS_TIMEOUT_S)
    assert replayed.returncode == 0, replayed.stderr[-2000:]
    full = [r for r in analysis_runs(client, uid_b).values() if r.metadata["start"].get("replay")]
    assert len(full) == 1 and full[0].metadata["stop"]["exit_status"] == "success"
    assert len(full[0]["drift"]["drift_x_px"].read()) == len(ENERGIES[::2])


@pytest.mark.outage_long
def test_the_profile_publishes_and_leaves_the_analysis_to_another_process(tmp_path):
    import os
    import textwrap
    from pathlib import Path

    startup = Path(__file__).resolve().parents[1] / "profile_collection" / "startup"
    code = textwrap.dedent(f"""
        import glob, threading, time
        from tiled.queries import Key
        from txm_live.remote import AnalysisService
        ns = {{}}
        for path in sorted(glob.glob({str(startup)!r} + "/*.py")):
            exec(compile(open(path).read(), path, "exec"), ns)
        received = []
        service = AnalysisService(ns["zmq_proxy"].out_address, lambda n, d: received.append(n), out=lambda t: None)
        ready = threading.Event()
        threading.Thread(target=service.run, kwargs={{"ready": ready.set}}, daemon=True).start()
        assert ready.wait(60) and ns["zmq_publisher"].wait_for_subscriber(60)
        RE, xanes = ns["RE"], ns["xanes"]
        uid, = RE(xanes(ns["xanes_energy_list"](8333.0)[::6], n_darks=1))
        assert ns["tiled_writer"].wait_delivered(300)
        deadline = time.monotonic() + 30
        while service.finished != [uid] and time.monotonic() < deadline:
            time.sleep(0.1)
        local = len(ns["tiled_client"].search(Key("start.parent_uid") == uid))
        print(ns["live_analysis"], received[0], received[-1], service.finished == [uid], local)
    """)
    env = {**os.environ, "TXM_LIVE_DATA": str(tmp_path), "TXM_LIVE_SIM_SIZE": "64", "MPLBACKEND": "Agg",
           "TXM_LIVE_ZMQ_PROXY": "0:0", "TXM_LIVE_ANALYSIS": "remote"}
    for name in ("TXM_LIVE_TILED_URI", "TXM_LIVE_DEVICES", "TXM_LIVE_ZMQ_PUBLISH"):
        env.pop(name, None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=540, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    # no live analysis in the acquisition process, every document published, no local analysis run
    assert out.stdout.strip().splitlines()[-1] == "None start stop True 0"
