"""Document bookkeeping of the live analysis: labels, old runs without them, bad labels."""
from __future__ import annotations

import copy

import numpy as np
import pytest

from txm_live.callbacks import LiveAnalysis
from txm_live.plans import xanes_2d

ENERGIES = [8270.0, 8290.0, 8310.0, 8320.0, 8328.0, 8333.0, 8336.0, 8340.0, 8345.0, 8360.0, 8380.0, 8400.0, 8420.0]
LABEL_KEYS = ("frame_type", "frame_energy_index", "frame_repeat", "frame_energy_ev")


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """The documents of one short scan (RunEngine, simulated beamline writing HDF5)."""
    from bluesky import RunEngine

    from simulators.beamline import make_sim_beamline
    from simulators.model import SimConfig

    bl = make_sim_beamline(tmp_path_factory.mktemp("frames"), config=SimConfig(shape=(64, 64), seed=5))
    RE = RunEngine({}, call_returns_result=False)
    docs = []
    RE.subscribe(lambda name, doc: docs.append((name, copy.deepcopy(doc))))
    RE(xanes_2d(bl.detector, bl.energy, ENERGIES, shutter=bl.shutter, sample_stage=bl.sample_stage,
                n_darks=2, frames_per_energy=2))
    return docs


def _analyse(docs):
    out = []
    handle = LiveAnalysis(None, sinks=[lambda name, doc: out.append((name, doc))])
    for name, doc in docs:
        handle(name, doc)
    assert handle.wait(120)
    handle.close()
    (analysis,) = handle.analyses.values()
    return analysis, out


def test_labels_drive_the_analysis(recorded):
    analysis, out = _analyse(recorded)
    assert not analysis.failed and analysis.frames.notes == []
    assert [n for n, _ in out][-1] == "stop" and out[-1][1]["exit_status"] == "success"
    assert len(analysis.pipeline.aligned_labels) == 2 * len(ENERGIES)


def test_a_run_recorded_without_labels_is_matched_by_sequence_number(recorded):
    labelled, _ = _analyse(recorded)
    old = []
    for name, doc in copy.deepcopy(recorded):
        if name == "start":
            doc.pop("frame_label_keys")
        if name == "event":
            for key in LABEL_KEYS:
                doc["data"].pop(key, None)
        old.append((name, doc))
    analysis, _ = _analyse(old)
    assert any("no frame labels" in note for note in analysis.frames.notes)
    np.testing.assert_array_equal(analysis.pipeline.final.whiteline, labelled.pipeline.final.whiteline)


def test_a_frame_labelled_with_another_energy_fails_the_analysis_clearly(recorded):
    docs = copy.deepcopy(recorded)
    primary = next(d["uid"] for n, d in docs if n == "descriptor" and d["name"] == "primary")
    event = next(d for n, d in docs if n == "event" and d["descriptor"] == primary)
    event["data"]["frame_energy_ev"] += 5.0
    analysis, out = _analyse(docs)
    stop = out[-1][1]
    assert stop["exit_status"] == "fail"
    assert "was taken at 8425.0 eV, but the start document lists 8420.0 eV" in stop["reason"]
