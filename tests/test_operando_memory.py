"""The session callback's memory stops growing: 50 measurements keep per-particle numbers only.

One real measurement (the operando plan on the simulated TXM, 64², 10 energies, analysed
live) is recorded; its raw start document and its 2D XANES analysis run are then fed to
an :class:`OperandoSessionCallback` 50 times as 50 measurements of one session (fresh
uids, the maps shifted a pixel each time so tracking has work to do). The figures are
traced allocations (``tracemalloc``) held by the callback after the measurements have been
handled. The full 50-measurement session through the RunEngine is timed in
``benchmarks/bench_operando_session.py``.
"""
from __future__ import annotations

import gc
import tracemalloc
import uuid

import numpy as np
import pytest
from bluesky import RunEngine

from simulators.beamline import make_sim_beamline
from simulators.devices import make_sim_potentiostat
from simulators.model import SimConfig, SimTXM
from simulators.phantom import make_nmc_phantom
from txm_live.callbacks import LiveAnalysis, OperandoSessionCallback
from txm_live.energies import xanes_energy_list
from txm_live.plans import CyclingStep, operando

ENERGIES = xanes_energy_list(8333.0, pre_edge_step_ev=25.0, near_edge_step_ev=7.0, post_edge_step_ev=48.0)
N_MEASUREMENTS = 50


@pytest.fixture(scope="module")
def one_measurement(tmp_path_factory):
    """The raw start and the 2D XANES analysis documents of one measurement of a session."""
    phantom = make_nmc_phantom(n_particles=8, radius_range_um=(3.0, 5.0), seed=4, state_of_charge=0.0)
    model = SimTXM(SimConfig(shape=(64, 64), seed=4), sample=phantom)
    bl = make_sim_beamline(tmp_path_factory.mktemp("frames"), model=model)
    pstat = make_sim_potentiostat(bl.model, bl.clock, seed=4)
    analysis_docs = []
    live = LiveAnalysis(sinks=[lambda name, doc: analysis_docs.append((name, doc))])
    raw_starts = []
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(live)
    RE.subscribe(lambda name, doc: raw_starts.append(doc) if name == "start" else None)
    RE(operando(bl.detector, bl.energy, ENERGIES, potentiostat=pstat, shutter=bl.shutter,
                sample_stage=bl.sample_stage, protocol=[CyclingStep.rest(10.0)], measure_every_s=3600.0,
                xanes_options={"n_darks": 1}))
    assert live.wait(120) and live.failures == []
    (measurement,) = [s for s in raw_starts if s["scan_type"] == "xanes2d"]
    return measurement, analysis_docs


def _as_measurement(raw_start, analysis_docs, index):
    """The documents of measurement ``index``: fresh uids, maps shifted by ``index`` px."""
    raw = {**raw_start, "uid": str(uuid.uuid4()), "operando_index": index}
    uids = {}

    def new(uid):
        return uids.setdefault(uid, str(uuid.uuid4()))

    out = [("start", raw)]
    for name, doc in analysis_docs:
        fresh = [str(uuid.uuid4()) for _ in doc["uid"]] if name == "event_page" else new(doc["uid"])
        doc = dict(doc, uid=fresh)
        if name == "start":
            doc["parent_uid"] = raw["uid"]
        if name in ("descriptor", "stop"):
            doc["run_start"] = new(doc["run_start"])
        if name == "event_page":
            doc["descriptor"] = new(doc["descriptor"])
        if name == "event":
            doc["descriptor"] = new(doc["descriptor"])
            data = dict(doc["data"])
            for key in ("edge_jump", "whiteline", "edge", "mask"):
                if key in data and np.ndim(data[key]) == 2:
                    data[key] = np.roll(data[key], index % 3, axis=1)
            doc["data"] = data
        out.append((name, doc))
    return out


def _held_bytes():
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def test_fifty_measurements_hold_per_particle_numbers_only(one_measurement):
    raw_start, analysis_docs = one_measurement
    emitted = {"n": 0}
    callback = OperandoSessionCallback(lambda name, doc: emitted.__setitem__("n", emitted["n"] + 1))
    tracemalloc.start()
    try:
        held = []
        for index in range(N_MEASUREMENTS):
            for name, doc in _as_measurement(raw_start, analysis_docs, index):
                callback(name, doc)
            assert callback.wait(60)
            if index in (9, N_MEASUREMENTS - 1):
                held.append(_held_bytes())
    finally:
        tracemalloc.stop()
    assert callback.failures == []
    (state,) = callback.sessions.values()
    assert len(state.analysis.measurements) == N_MEASUREMENTS
    assert all(m.problem == "" for m in state.analysis.measurements)
    assert not (callback._raw_starts or callback._pending or callback._descriptors)  # nothing left waiting
    per_measurement = (held[1] - held[0]) / (N_MEASUREMENTS - 10)
    maps = sum(np.asarray(doc["data"][k]).nbytes for name, doc in analysis_docs if name == "event"
               and "edge_jump" in doc["data"] for k in ("edge_jump", "whiteline", "edge", "mask"))
    # held per measurement: its summary and per-particle rows (72 bytes a particle);
    # measured 1.96 kB with 8 particles. Keeping one measurement's maps would add 53 kB.
    assert per_measurement < 3000
    assert per_measurement < maps / 10  # maps of one measurement: 4 × 64² values
