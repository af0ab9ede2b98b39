"""A session's memory stays bounded: LiveAnalysis keeps only the last few finished runs."""
from __future__ import annotations

import gc
import weakref

import pytest

from txm_live.callbacks import LiveAnalysis, subscribe_live_analysis
from txm_live.plans import xanes_2d

ENERGIES = [8270.0, 8290.0, 8310.0, 8320.0, 8328.0, 8333.0, 8336.0, 8340.0, 8345.0, 8360.0, 8380.0, 8400.0, 8420.0]


def _scans(RE, bl, keep_runs, n_scans=10):
    live = subscribe_live_analysis(RE, None, keep_runs=keep_runs)
    refs, held = [], []
    for _ in range(n_scans):
        (uid,) = RE(xanes_2d(bl.detector, bl.energy, ENERGIES, shutter=bl.shutter,
                             sample_stage=bl.sample_stage, n_darks=1))
        assert live.wait(120)
        analysis = live.analyses[live.analysis_uids[uid][0]]  # the newest is always kept
        assert analysis.result is not None and len(analysis.stack) == len(ENERGIES)
        refs.append(weakref.ref(analysis))
        del analysis
        held.append((len(live.analyses), len(live.previews)))
    live.close(RE)
    gc.collect()
    return live, refs, held


@pytest.fixture
def small_beamline(tmp_path):
    from simulators.beamline import make_sim_beamline
    from simulators.model import SimConfig

    return make_sim_beamline(tmp_path, config=SimConfig(shape=(64, 64), seed=2))


def test_ten_scans_hold_at_most_keep_runs_analyses(RE, small_beamline):
    sim_beamline = small_beamline
    live, refs, held = _scans(RE, sim_beamline, keep_runs=2)
    assert max(n for n, _ in held) == 2 and max(p for _, p in held) == 2
    alive = [r for r in refs if r() is not None]
    assert alive == refs[-2:]             # the last two; the eight before were released and freed
    assert len(live.analysis_uids) == 10  # the uids (strings) of every run stay
    # negative control: without the release every analysis stays
    _, refs_all, _ = _scans(RE, sim_beamline, keep_runs=4, n_scans=4)
    assert sum(r() is not None for r in refs_all) == 4


def test_keep_runs_is_checked():
    with pytest.raises(ValueError, match="keep_runs must be an integer >= 0"):
        LiveAnalysis(None, keep_runs=-1)
