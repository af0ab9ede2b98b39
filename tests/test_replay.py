"""``txm-live replay UID``: a stored run (no live analysis when it was measured) replayed
from Tiled over HTTP into a new analysis run."""
from __future__ import annotations

import numpy as np

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
    np.testing.assert_array_equal(analysis["maps"]["whiteline"].read()[-1], maps["data"]["whiteline"])


def test_replay_of_an_unknown_uid_says_so(tiled_server, capsys):
    assert run_replay(_args("no-such-run", "--tiled", tiled_server.uri, "--no-progress")) == 2
    assert "no run 'no-such-run'" in capsys.readouterr().err
