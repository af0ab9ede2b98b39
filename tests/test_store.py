"""The Tiled store when things go wrong: a server that went away never costs a scan."""
from __future__ import annotations

import json

import h5py
from bluesky import RunEngine

from txm_live.plans import xanes_2d
from txm_live.store import EmbeddedTiled, connect, subscribe_tiled_writer


def test_scan_survives_a_tiled_server_that_went_away(tmp_path):
    from simulators.beamline import make_sim_beamline
    from simulators.model import SimConfig

    server = EmbeddedTiled(tmp_path / "catalog", readable_storage=[tmp_path / "frames"])
    RE = RunEngine({})
    writer = subscribe_tiled_writer(RE, server.client(), backup_directory=tmp_path / "backup")
    bl = make_sim_beamline(tmp_path / "frames", config=SimConfig(shape=(64, 64), seed=5))
    server.close()  # the server goes away before the scan

    (uid,) = RE(xanes_2d(bl.detector, bl.energy, [8330.0, 8340.0], shutter=bl.shutter,
                         sample_stage=bl.sample_stage, n_darks=1))
    assert RE.state == "idle"
    # the raw frames are on disk
    (h5_file,) = (tmp_path / "frames").glob("*.h5")
    with h5py.File(h5_file, "r") as f:
        assert f["/entry/data/sample"].shape == (2, 64, 64)
    # the documents were kept: TiledWriter's backup holds the whole run as JSON lines
    assert writer.flush(300)
    (backup,) = (tmp_path / "backup").glob("*.jsonl")
    names = [json.loads(line)["name"] for line in backup.read_text().splitlines()]
    assert names[0] == "start" and names[-1] == "stop" and "stream_datum" in names
    assert uid in backup.read_text()


def test_connect_explains_a_missing_server(tmp_path):
    import pytest

    with pytest.raises(FileNotFoundError, match="no Tiled server is running"):
        connect(tmp_path)


def test_two_embedded_servers_in_one_process_both_answer(tmp_path, tiled_server):
    """Tiled's settings are process-wide; a second server must not lock out the first."""
    second = EmbeddedTiled(tmp_path / "second")
    try:
        assert len(second.client()) == 0  # the new, empty catalog answers
        tiled_server.client()  # and the session's server still accepts its key
    finally:
        second.close()
    tiled_server.client()
