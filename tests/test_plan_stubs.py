"""Plan stubs: every frame and move checkpointed, every frame labelled in its event."""
from __future__ import annotations

import numpy as np
import pytest
from bluesky import preprocessors as bpp

from txm_live.callbacks._bookkeeping import DEFAULT_LABEL_KEYS
from txm_live.devices.label import FRAME_LABEL_KEYS, make_frame_label
from txm_live.plans import stubs, xanes_2d

ENERGIES = [8320.0, 8333.0, 8340.0, 8350.0]


def _run(RE, plan):
    docs, msgs = [], []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    RE.msg_hook = lambda msg: msgs.append((msg.command, getattr(msg.obj, "name", None)))
    RE(plan)
    return docs, msgs


def _events(docs, stream):
    uid = next(d["uid"] for n, d in docs if n == "descriptor" and d["name"] == stream)
    return [d for n, d in docs if n == "event" and d["descriptor"] == uid]


def test_every_trigger_and_every_move_has_its_own_checkpoint(RE, sim_beamline):
    bl = sim_beamline
    _, msgs = _run(RE, xanes_2d(bl.detector, bl.energy, ENERGIES, shutter=bl.shutter,
                                sample_stage=bl.sample_stage, n_darks=2, frames_per_energy=2))
    moved = {bl.energy.name, bl.sample_stage.x.name, bl.shutter.name}
    since_checkpoint = {"saves": 0, "steps": 0}
    n_triggers = 0
    last_save = max(i for i, (command, _) in enumerate(msgs) if command == "save")
    for command, name in msgs[:last_save]:  # the measurement (the cleanup after it is not rewound)
        if command == "checkpoint":
            since_checkpoint = {"saves": 0, "steps": 0}
        elif command == "save":
            since_checkpoint["saves"] += 1
        elif (command == "trigger" and name == bl.detector.name) or (command == "set" and name in moved):
            n_triggers += command == "trigger"
            # a rewind to the last checkpoint re-runs this step only, never a saved event
            assert since_checkpoint == {"saves": 0, "steps": 0}, (command, name)
            since_checkpoint["steps"] += 1
    assert n_triggers == 2 + 2 * len(ENERGIES) + len(ENERGIES)  # darks, sample frames, flats


def test_each_event_says_what_its_frame_is(RE, sim_beamline):
    bl = sim_beamline
    docs, _ = _run(RE, xanes_2d(bl.detector, bl.energy, ENERGIES, shutter=bl.shutter,
                                sample_stage=bl.sample_stage, n_darks=2, frames_per_energy=2,
                                flats_per_energy=2, flat_every=2))
    start = docs[0][1]
    assert start["frame_label_keys"] == DEFAULT_LABEL_KEYS
    scan = sorted(ENERGIES, reverse=True)
    darks = [(e["data"]["frame_type"], e["data"]["frame_energy_index"], e["data"]["frame_repeat"])
             for e in _events(docs, "dark")]
    assert darks == [("dark", -1, 0), ("dark", -1, 1)]
    primary = _events(docs, "primary")
    assert [(e["data"]["frame_energy_index"], e["data"]["frame_repeat"]) for e in primary] == [
        (i, r) for i in range(len(scan)) for r in range(2)]
    for e in primary:
        assert e["data"]["frame_type"] == "sample"
        assert e["data"]["frame_energy_ev"] == scan[e["data"]["frame_energy_index"]]
        assert e["data"]["energy"] == pytest.approx(e["data"]["frame_energy_ev"])
    flats = [(e["data"]["frame_energy_index"], e["data"]["frame_repeat"]) for e in _events(docs, "flat")]
    assert flats == [(i, r) for i in start["flat_energy_indices"] for r in range(2)]
    # the detector wrote each frame where its label says (physics, not labels)
    truth = bl.detector.truth_log
    assert all(not t["truth"].sample_in_beam for t in truth if t["frame_type"] == "flat")
    assert [t["truth"].shutter_open for t in truth if t["frame_type"] == "dark"] == [False, False]


def test_the_label_keys_are_one_contract():
    """The device's data keys, the callbacks' defaults and the plan's record agree."""
    label = make_frame_label()
    assert set(label.describe()) == set(FRAME_LABEL_KEYS.values()) == set(DEFAULT_LABEL_KEYS.values())
    assert FRAME_LABEL_KEYS == DEFAULT_LABEL_KEYS


def test_md_cannot_override_what_the_plan_measures(RE, sim_beamline):
    bl = sim_beamline
    with pytest.raises(ValueError, match=r"md may not set \['energies_ev'\]"):
        RE(xanes_2d(bl.detector, bl.energy, ENERGIES, shutter=bl.shutter, sample_stage=bl.sample_stage,
                    md={"energies_ev": [1.0, 2.0], "sample": "NMC"}))
    docs, _ = _run(RE, xanes_2d(bl.detector, bl.energy, ENERGIES, shutter=bl.shutter,
                                sample_stage=bl.sample_stage, n_darks=1, md={"sample": "NMC", "element": "Ni"}))
    assert docs[0][1]["sample"] == "NMC" and docs[0][1]["energies_ev"] == sorted(ENERGIES, reverse=True)


def test_stubs_compose_into_other_plans(RE, sim_beamline):
    """What a tomography or operando plan will do: darks, then frames at one energy, flats."""
    bl = sim_beamline
    label = make_frame_label()

    @bpp.stage_decorator([bl.detector])
    @bpp.run_decorator(md={"scan_type": "custom"})
    def plan():
        yield from stubs.take_darks(bl.detector, label, bl.shutter, 2)
        yield from stubs.set_shutter(bl.shutter, "open")
        yield from stubs.move_energy(bl.energy, 8350.0)
        yield from stubs.acquire_frames(bl.detector, label, 3, energy_index=0, energy_ev=8350.0,
                                        readables=[bl.energy])
        yield from stubs.take_flats(bl.detector, label, bl.sample_stage, 2, sample_in_um=(0.0, 0.0),
                                    sample_out_um=(500.0, 0.0), energy_index=0, energy_ev=8350.0)

    docs, _ = _run(RE, plan())
    assert [e["data"]["frame_repeat"] for e in _events(docs, "primary")] == [0, 1, 2]
    assert [e["data"]["frame_type"] for e in _events(docs, "flat")] == ["flat", "flat"]
    assert bl.sample_stage.x.position == 0.0  # back in after the flats
    assert np.isnan(_events(docs, "dark")[0]["data"]["frame_energy_ev"])
