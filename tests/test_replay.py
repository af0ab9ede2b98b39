"""``txm-live replay UID``: a stored run (no live analysis when it was measured) replayed
from Tiled over HTTP into a new analysis run."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from txm_live.callbacks import LiveAnalysis
from txm_live.plans import xanes_2d
from txm_live.replay import add_replay_arguments, find_analysis_runs, run_replay
from txm_live.store import subscribe_tiled_writer

ENERGIES = np.r_[8273.0, 8293.0, 8313.0, 8323.0, np.arange(8328.0, 8353.0, 2.0), 8363.0, 8383.0, 8413.0]


def _args(*argv):
    import argparse

    parser = argparse.ArgumentParser()
    add_replay_arguments(parser)
    return parser.parse_args(list(argv))


def test_replay_command_writes_an_analysis_run(RE, sim_beamline, tiled_server, capsys):
    client = tiled_server.client()
    writer = subscribe_tiled_writer(RE, client, batch_size=100)
    bl = sim_beamline
    (uid,) = RE(xanes_2d(bl.detector, bl.energy, ENERGIES, shutter=bl.shutter, sample_stage=bl.sample_stage,
                         n_darks=2))
    assert writer.flush(120)
    assert find_analysis_runs(client, uid) == {}

    # the same documents fed live, in memory, for comparison
    docs = []
    live = LiveAnalysis(None, sinks=[lambda n, d: docs.append((n, d))])
    for name, doc in client[uid].documents():
        live(name, doc)
    assert live.wait(60)

    assert run_replay(_args(uid, "--tiled", tiled_server.uri, "--no-progress")) == 0
    assert "analysis run" in capsys.readouterr().out
    (analysis,) = find_analysis_runs(client, uid).values()
    assert analysis.metadata["start"]["replay"] is True
    assert analysis.metadata["stop"]["exit_status"] == "success"
    (maps,) = [d for n, d in docs if n == "event" and "whiteline" in d["data"] and d["data"]["final"]]
    whiteline = analysis["maps"]["whiteline"].read()[-1]
    np.testing.assert_array_equal(whiteline, maps["data"]["whiteline"])
    # and both are right, not merely equal (two all-NaN maps are equal too): against the
    # simulator's truth, aligned to the first frame as the maps are
    mask = analysis["maps"]["mask"].read()[-1].astype(bool)
    jump = analysis["maps"]["edge_jump"].read()[-1]
    t = bl.model.truth_maps()
    d0 = bl.detector.truth_for("sample")[0].drift_px
    wl_true = ndimage.shift(np.nan_to_num(t.whiteline_ev), d0, order=1, mode="nearest")
    inside = ndimage.binary_erosion(ndimage.shift(t.mask.astype(float), d0, order=0) > 0.5, iterations=2)
    sel = inside & mask & (jump >= 0.2)
    assert sel.sum() >= 0.8 * inside.sum()  # achieved 2276 of 2577 (0.88)
    # achieved 0.365 eV rms (20 energies, 2 eV apart across the edge)
    assert np.sqrt(np.mean((whiteline - wl_true)[sel] ** 2)) <= 0.55


def test_replay_of_an_unknown_uid_says_so(tiled_server, capsys):
    assert run_replay(_args("no-such-run", "--tiled", tiled_server.uri, "--no-progress")) == 2
    assert "no run 'no-such-run'" in capsys.readouterr().err
