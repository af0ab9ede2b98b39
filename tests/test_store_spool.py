"""The spool on disk: whole lines, numpy-aware JSON, crash tails, ownership by live processes."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap

import event_model
import numpy as np
import pytest

from txm_live.spool import Spool, list_spool, read_spool_file, tally_documents


def _analysis_documents():
    """An analysis run shaped like the live analysis's: float32 maps with NaN/inf, numpy scalars."""
    rng = np.random.default_rng(0)
    whiteline = rng.normal(8345.0, 1.0, (128, 128)).astype(np.float32)
    whiteline[0, 0], whiteline[1, 1], whiteline[2, 2] = np.nan, np.inf, -np.inf
    bundle = event_model.compose_run(metadata={"analysis": "xanes2d_live", "parent_uid": "raw"})
    array_key = {"source": "txm-live", "dtype": "array", "shape": [128, 128], "dtype_numpy": "<f4"}
    maps = bundle.compose_descriptor(name="maps", data_keys={
        "whiteline": array_key, "mask": {**array_key, "dtype_numpy": "|u1"},
        "n_energies": {"source": "txm-live", "dtype": "integer", "shape": []},
        "final": {"source": "txm-live", "dtype": "boolean", "shape": []},
        "e0_ev": {"source": "txm-live", "dtype": "number", "shape": []}})
    data = {"whiteline": whiteline, "mask": (whiteline > 8345).astype(np.uint8), "n_energies": np.int64(19),
            "final": np.bool_(True), "e0_ev": np.float64(8333.25)}
    event = maps.compose_event(data=data, timestamps={k: 0.0 for k in data})
    stop = bundle.compose_stop()
    return [("start", bundle.start_doc), ("descriptor", maps.descriptor_doc), ("event", event), ("stop", stop)]


def test_a_maps_event_is_spooled_as_one_parseable_line_bit_for_bit(tmp_path):
    docs = _analysis_documents()
    spool = Spool(tmp_path)
    positions = [spool.append(name, doc) for name, doc in docs]
    uid = docs[0][1]["uid"]
    assert positions == [(uid, 0), (uid, 1), (uid, 2), (uid, 3)]
    back = read_spool_file(tmp_path / f"{uid}.jsonl")
    assert [name for name, _ in back] == ["start", "descriptor", "event", "stop"]
    sent, got = docs[2][1]["data"], back[2][1]["data"]
    # float32 -> JSON -> float32 is exact, NaN and ±inf included
    np.testing.assert_array_equal(np.asarray(got["whiteline"], dtype=np.float32), sent["whiteline"])
    np.testing.assert_array_equal(np.asarray(got["mask"], dtype=np.uint8), sent["mask"])
    assert got["n_energies"] == 19 and got["final"] is True and got["e0_ev"] == 8333.25


def test_negative_control_the_plugins_backup_breaks_on_the_same_event(tmp_path):
    """bluesky-tiled-plugins' JSONL backup: the line stops at the array and the next
    document is glued to it — the defect the spool replaces."""
    from bluesky_tiled_plugins.writing._json_writer import JSONLinesWriter

    docs = _analysis_documents()
    backup = JSONLinesWriter(str(tmp_path))
    backup(*docs[0])
    backup(*docs[1])
    with pytest.raises(TypeError, match="not JSON serializable"):
        backup(*docs[2])
    backup(*docs[3])
    (path,) = tmp_path.glob("*.jsonl")
    lines = path.read_text().splitlines()
    assert len(lines) == 3  # the event's half line and the stop share one line
    assert '"data": {"whiteline": ' in lines[2] and lines[2].count('"name": "stop"') == 1
    with pytest.raises(json.JSONDecodeError):
        json.loads(lines[2])


def test_a_document_that_cannot_be_written_leaves_no_half_line(tmp_path):
    docs = _analysis_documents()
    spool = Spool(tmp_path)
    spool.append(*docs[0])
    spool.append(*docs[1])
    path = tmp_path / f"{docs[0][1]['uid']}.jsonl"
    before = path.read_bytes()
    bad = dict(docs[2][1], data={**docs[2][1]["data"], "whiteline": np.array([object()], dtype=object)})
    with pytest.raises(TypeError, match="dtype object cannot be written as JSON"):
        spool.append("event", bad)
    assert path.read_bytes() == before
    spool.append(*docs[3])
    assert [name for name, _ in read_spool_file(path)] == ["start", "descriptor", "stop"]


def test_a_line_cut_short_by_a_crash_is_dropped_not_glued_to_the_next(tmp_path, caplog):
    docs = _analysis_documents()
    spool = Spool(tmp_path)
    for doc in docs[:2]:
        spool.append(*doc)
    spool.close()  # the writer "dies": its lock goes, the file stays
    path = tmp_path / f"{docs[0][1]['uid']}.jsonl"
    with open(path, "ab") as f:
        f.write(b'{"name":"event","doc":{"data":{"whiteline":[8344.1,83')  # killed mid-write
    with caplog.at_level(logging.WARNING, logger="txm_live.spool"):
        assert [n for n, _ in read_spool_file(path)] == ["start", "descriptor"]
    assert "incomplete last line" in caplog.text
    adopter = Spool(tmp_path)
    assert adopter.adopt_orphans() == [docs[0][1]["uid"]]
    adopter.append(*docs[3])  # the stop goes on a line of its own
    assert [n for n, _ in read_spool_file(path)] == ["start", "descriptor", "stop"]


def test_a_run_held_by_a_live_process_is_adopted_only_once_that_process_is_dead(tmp_path):
    docs = _analysis_documents()
    uid = docs[0][1]["uid"]
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import json, sys, time
        from txm_live.spool import Spool
        start = json.loads(sys.argv[1])
        Spool({str(tmp_path)!r}).append("start", start)
        print("spooled", flush=True)
        time.sleep(600)
    """), json.dumps(docs[0][1])], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "spooled"
        (entry,) = list_spool(tmp_path)
        assert entry.uid == uid and entry.held and not entry.has_stop and entry.n_documents == 1
        assert Spool(tmp_path).adopt_orphans() == []  # the live writer keeps it
    finally:
        child.kill()
        child.wait()
    (entry,) = list_spool(tmp_path)
    assert not entry.held
    assert Spool(tmp_path).adopt_orphans() == [uid]


def test_documents_of_interleaved_runs_on_two_threads_are_routed_to_their_runs():
    import threading

    raw = event_model.compose_run()
    raw_desc = raw.compose_descriptor(name="primary", data_keys={"x": {"source": "s", "dtype": "number",
                                                                      "shape": []}})
    analysis = _analysis_documents()
    spool = Spool()  # in memory
    spool.append("start", raw.start_doc)
    spool.append("descriptor", raw_desc.descriptor_doc)

    def analysis_thread():
        for doc in analysis:
            spool.append(*doc)

    thread = threading.Thread(target=analysis_thread)
    thread.start()
    for i in range(3):
        spool.append("event", raw_desc.compose_event(data={"x": float(i)}, timestamps={"x": 0.0}))
    thread.join()
    spool.append("stop", raw.compose_stop())
    raw_tally = tally_documents(spool.documents(raw.start_doc["uid"]))
    assert raw_tally.seq_nums == {"primary": [1, 2, 3]} and raw_tally.n_documents == 6
    assert tally_documents(spool.documents(analysis[0][1]["uid"])).seq_nums == {"maps": [1]}
