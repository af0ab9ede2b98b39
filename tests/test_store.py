"""The Tiled store when things go wrong: a server that went away never costs a scan."""
from __future__ import annotations

import h5py
import pytest
from bluesky import RunEngine

from reliability_helpers import short_client_retries  # noqa: F401 (fixture)
from txm_live.plans import xanes_2d
from txm_live.spool import read_spool_file
from txm_live.store import EmbeddedTiled, TiledUnavailable, connect, subscribe_tiled_writer


def test_scan_survives_a_tiled_server_that_went_away(tmp_path, short_client_retries):
    from simulators.beamline import make_sim_beamline
    from simulators.model import SimConfig

    server = EmbeddedTiled(tmp_path / "catalog", readable_storage=[tmp_path / "frames"])
    RE = RunEngine({})
    writer = subscribe_tiled_writer(RE, server.client(), spool_directory=tmp_path / "spool")
    bl = make_sim_beamline(tmp_path / "frames", config=SimConfig(shape=(64, 64), seed=5))
    server.close()  # the server goes away before the scan

    (uid,) = RE(xanes_2d(bl.detector, bl.energy, [8330.0, 8340.0], shutter=bl.shutter,
                         sample_stage=bl.sample_stage, n_darks=1))
    assert RE.state == "idle"
    # the raw frames are on disk
    (h5_file,) = (tmp_path / "frames").glob("*.h5")
    with h5py.File(h5_file, "r") as f:
        assert f["/entry/data/sample"].shape == (2, 64, 64)
    # the documents were kept: the whole run in its spool file, every line whole
    assert writer.flush(300) and not writer.online
    documents = read_spool_file(tmp_path / "spool" / f"{uid}.jsonl")
    names = [name for name, _ in documents]
    assert names[0] == "start" and names[-1] == "stop" and names.count("stream_datum") == 5
    assert writer.pending_runs == [uid]
    assert "documents go to the spool" in writer.failures[0]


def test_connect_explains_a_missing_server(tmp_path):
    with pytest.raises(FileNotFoundError, match="no Tiled server is running"):
        connect(tmp_path)


def test_connect_to_a_dead_address_fails_at_once_naming_it():
    from txm_live.store_process import free_port

    port = free_port()
    with pytest.raises(TiledUnavailable, match=f"no Tiled server answers at http://127.0.0.1:{port}/api/v1/"):
        connect(f"http://127.0.0.1:{port}/api/v1")


def test_two_embedded_servers_in_one_process_both_answer(tmp_path, tiled_server):
    """Tiled's settings are process-wide; a second server must not lock out the first."""
    second = EmbeddedTiled(tmp_path / "second")
    try:
        assert len(second.client()) == 0  # the new, empty catalog answers
        tiled_server.client()  # and the session's server still accepts its key
    finally:
        second.close()
    tiled_server.client()
