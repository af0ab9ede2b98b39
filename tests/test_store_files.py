"""Detector files that are cut short or moved.

Expected outcomes, asserted:

* A truncated HDF5 file: reading frames beyond its end raises an error naming the file
  (h5py with ``swmr=True`` returns zeros silently — the negative control); a replay of a
  run whose file is truncated ends in a failed analysis run that names the file, not in
  maps computed from zeros.
* Detector files moved to a new root: ``txm-live replay --remap OLD=NEW`` gives the same
  maps as the live analysis; without it the replay fails and says to use ``--remap``.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil

import h5py
import numpy as np
import pytest

from reliability_helpers import final_maps, make_beamline, xanes_plan
from txm_live.callbacks import subscribe_live_analysis
from txm_live.callbacks._frames import FrameReader, TruncatedFrameFile
from txm_live.replay import add_replay_arguments, find_analysis_runs, replay, run_replay
from txm_live.store import subscribe_tiled_writer


def _write_frames(path, n_frames=6, shape=(128, 128)):
    """An SWMR file as the detector writes it: one chunk per frame, flushed per frame."""
    with h5py.File(path, "w", libver="latest") as f:
        ds = f.create_dataset("/entry/data/sample", shape=(0, *shape), maxshape=(None, *shape), dtype="u2",
                              chunks=(1, *shape))
        f.swmr_mode = True
        for k in range(n_frames):
            ds.resize(k + 1, axis=0)
            ds[k] = 1000 + k
            ds.flush()


def _cut_before_frame(path, frame: int, dataset="/entry/data/sample") -> None:
    with h5py.File(path, "r", libver="latest", swmr=True) as f:
        offset = f[dataset].id.get_chunk_info_by_coord((frame, 0, 0)).byte_offset
    os.truncate(path, offset + 100)  # a copy cut short inside frame `frame`


def test_frames_beyond_the_end_of_a_truncated_file_raise_naming_the_file(tmp_path):
    path = tmp_path / "scan.h5"
    _write_frames(path)
    _cut_before_frame(path, 3)
    uri = path.as_uri()
    reader = FrameReader(wait_s=0.0)
    np.testing.assert_array_equal(reader.read(uri, "/entry/data/sample", 0, 3)[:, 0, 0], [1000, 1001, 1002])
    with pytest.raises(TruncatedFrameFile, match=rf"{path}:/entry/data/sample: frame 3 needs bytes up to \d+ "
                                                 r"but the file has \d+: the file is truncated"):
        reader.read(uri, "/entry/data/sample", 2, 6)
    reader.close()
    # negative control: h5py's SWMR read of the same frames returns zeros without a word
    with h5py.File(path, "r", libver="latest", swmr=True) as f:
        silent = f["/entry/data/sample"][4:6]
    assert silent.max() == 0


def _args(*argv):
    parser = argparse.ArgumentParser()
    add_replay_arguments(parser)
    return parser.parse_args([str(a) for a in argv])


@pytest.fixture(scope="module")
def stored_scan(tiled_server, tmp_path_factory):
    """A short scan in Tiled with its live maps, frames under a beamtime folder of its own."""
    from bluesky import RunEngine

    RE = RunEngine({}, call_returns_result=False)
    client = tiled_server.client()
    writer = subscribe_tiled_writer(RE, client, batch_size=100)
    docs = []
    live = subscribe_live_analysis(RE, None, sinks=[lambda n, d: docs.append((n, d))])
    beamtime = tiled_server.frames_dir / tmp_path_factory.mktemp("beamtime").name
    (uid,) = RE(xanes_plan(make_beamline(beamtime, seed=6)))
    assert live.wait(300) and writer.wait_delivered(300), writer.failures
    return {"uid": uid, "client": client, "uri": tiled_server.uri, "beamtime": beamtime, "maps": final_maps(docs)}


def test_replay_reads_moved_files_with_remap_and_says_so_without(stored_scan, tmp_path, caplog):
    uid, client, old_root = stored_scan["uid"], stored_scan["client"], stored_scan["beamtime"]
    new_root = tmp_path / "archive" / old_root.name
    shutil.copytree(old_root, new_root)
    moved_away = old_root.with_name(old_root.name + "-gone")
    old_root.rename(moved_away)  # the files are no longer where the run says
    try:
        with caplog.at_level(logging.ERROR, logger="txm_live.replay"):
            assert run_replay(_args(uid, "--tiled", stored_scan["uri"], "--no-progress")) == 1
        assert "detector file(s) not found" in caplog.text and "--remap OLD_ROOT=NEW_ROOT" in caplog.text
        assert run_replay(_args(uid, "--tiled", stored_scan["uri"], "--no-progress",
                                "--remap", f"{old_root}={new_root}")) == 0
    finally:
        moved_away.rename(old_root)
    latest = list(find_analysis_runs(client, uid).values())[-1]
    assert latest.metadata["stop"]["exit_status"] == "success"
    np.testing.assert_array_equal(latest["maps"]["whiteline"].read()[-1], stored_scan["maps"]["whiteline"])


def test_remap_refuses_a_new_root_that_does_not_exist(stored_scan, tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert run_replay(_args(stored_scan["uid"], "--tiled", "unused", "--remap", f"/old={missing}")) == 2
    assert f"the new root '{missing}'" in capsys.readouterr().err


def test_replay_of_a_run_with_a_truncated_file_fails_naming_it(stored_scan, tmp_path):
    uid, client, root = stored_scan["uid"], stored_scan["client"], stored_scan["beamtime"]
    copy_root = tmp_path / "copy" / root.name
    shutil.copytree(root, copy_root)
    (h5_file,) = copy_root.glob("*.h5")
    _cut_before_frame(h5_file, 10)  # a copy cut short half-way through the sample frames
    uids = replay(uid, client, progress=False, path_map=[(str(root), str(copy_root))])
    stop = client[uids[0]].metadata["stop"]
    assert stop["exit_status"] == "fail"
    assert str(h5_file) in stop["reason"] and "the file is truncated" in stop["reason"]
