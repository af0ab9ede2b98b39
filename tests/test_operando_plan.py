"""The operando plan under interruptions: potentiostat faults, suspender, abort, resume; bad input.

Real RunEngine, the simulated TXM (64², 10 energies: these tests are about the documents
and the cell, not the maps) writing HDF5, the simulated potentiostat whose cell feeds the
sample, the live 2D XANES analysis and the session callback. Truth: the cell's own event
log and readings, the charge counted from I·t (closed form), the files on disk.
"""
from __future__ import annotations

import threading
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.utils import RunEngineInterrupted

from simulators.beamline import make_sim_beamline
from simulators.devices import make_sim_potentiostat
from simulators.model import SimConfig, SimTXM
from simulators.phantom import make_nmc_phantom
from txm_live.callbacks import LiveAnalysis, OperandoSessionCallback
from txm_live.energies import xanes_energy_list
from txm_live.plans import CyclingStep, OperandoResume, PotentiostatFault, operando, potentiostat_suspender
from txm_live.plans.operando import resume_from_starts

ENERGIES = xanes_energy_list(8333.0, pre_edge_step_ev=25.0, near_edge_step_ev=7.0, post_edge_step_ev=48.0)
MEASURE_EVERY_S = 600.0
PROTOCOL = [CyclingStep.charge(1.0, voltage_max_v=4.3)]


class Beamline:
    """A tiny simulated TXM with a cell, a RunEngine, the live analyses and a document log."""

    def __init__(self, data_dir: Path):
        phantom = make_nmc_phantom(n_particles=6, radius_range_um=(3.0, 5.0), seed=3, state_of_charge=0.0)
        model = SimTXM(SimConfig(shape=(64, 64), seed=3), sample=phantom)
        self.bl = make_sim_beamline(data_dir, model=model)
        self.pstat = make_sim_potentiostat(self.bl.model, self.bl.clock, seed=3)
        self.RE = RunEngine({}, call_returns_result=False)
        self.docs: list = []
        self.session_docs: list = []
        self.session = OperandoSessionCallback(lambda name, doc: self.session_docs.append((name, doc)))
        self.live = LiveAnalysis(sinks=[self.session])
        # the session callback hears each raw start before the live analysis can emit from it
        for callback in (lambda name, doc: self.docs.append((name, doc)), self.session, self.live):
            self.RE.subscribe(callback)

    def plan(self, **kwargs):
        kwargs.setdefault("protocol", PROTOCOL)
        kwargs.setdefault("measure_every_s", MEASURE_EVERY_S)
        return operando(self.bl.detector, self.bl.energy, ENERGIES, potentiostat=self.pstat, shutter=self.bl.shutter,
                        sample_stage=self.bl.sample_stage, record_every_s=120.0,
                        xanes_options={"n_darks": 1}, **kwargs)

    def runs(self, scan_type=None):
        """``[(start, stop)]`` of the raw runs, in order."""
        starts = {d["uid"]: d for n, d in self.docs if n == "start"}
        stops = {d["run_start"]: d for n, d in self.docs if n == "stop"}
        return [(s, stops.get(uid)) for uid, s in starts.items() if scan_type in (None, s.get("scan_type"))]

    def events(self, run_uid, stream="primary"):
        descriptors = {d["uid"] for n, d in self.docs if n == "descriptor" and d["run_start"] == run_uid
                       and d["name"] == stream}
        return [d for n, d in self.docs if n == "event" and d["descriptor"] in descriptors]

    def session_rows(self, stream="measurements"):
        descriptors = {d["uid"] for n, d in self.session_docs if n == "descriptor" and d["name"] == stream}
        rows = [d["data"] for n, d in self.session_docs if n == "event" and d["descriptor"] in descriptors]
        for n, d in self.session_docs:
            if n == "event_page" and d["descriptor"] in descriptors:
                keys = list(d["data"])
                rows += [dict(zip(keys, values)) for values in zip(*d["data"].values())]
        return rows

    def settle(self):
        assert self.live.wait(120) and self.session.wait(120)
        assert self.live.failures == [] and self.session.failures == []


@pytest.fixture
def beamline(tmp_path):
    return Beamline(tmp_path)


def _one_c_a(pstat) -> float:
    return pstat.nominal_capacity_mah.get() / 1000.0


def test_a_fault_during_a_measurement_suspends_and_the_step_is_reapplied(beamline, capsys):
    b, pstat = beamline, beamline.pstat
    b.RE.install_suspender(potentiostat_suspender(pstat, sleep_s=0.0))
    fault_at_s = MEASURE_EVERY_S + 3.0  # a few seconds into the second measurement
    pstat.inject_fault("disconnect", at_time_s=fault_at_s)
    heard = []

    def operator(*, value, **_):  # the cell is reconnected and the fault cleared
        if value:
            heard.append(value)
            threading.Timer(0.3, pstat.clear_fault.put, (1,)).start()

    pstat.fault.subscribe(operator, run=False)
    b.RE(b.plan())
    b.settle()
    assert heard == [3]  # cell disconnected
    printed = capsys.readouterr().out
    assert "potentiostat pstat fault 3 (cell disconnected)" in printed  # the suspender said why
    measurements = b.runs("xanes2d")
    assert [s["operando_index"] for s, _ in measurements] == list(range(len(measurements)))
    assert len(measurements) >= 4  # every 600 s until the charge ends at 4.3 V
    assert all(stop["exit_status"] == "success" for _, stop in measurements)  # nothing lost
    # the step was re-applied after the fault: the gap after measurement 1 charges at 1C again
    (gap, _), = [(s, e) for s, e in b.runs("operando_cycling") if s["operando_index"] == 2]
    currents = [e["data"]["pstat_current_a"] for e in b.events(gap["uid"])]
    assert currents[0] == 0.0  # output off since the fault ...
    assert currents[-1] == pytest.approx(_one_c_a(pstat), rel=1e-12)  # ... and back at 1C
    faults = [(t, kind) for t, kind, _ in pstat.cell.events if kind in ("fault", "clear_fault")]
    assert [kind for _, kind in faults] == ["fault", "clear_fault"]
    assert faults[0][0] == pytest.approx(fault_at_s, abs=1.0)  # it struck where it was injected
    used = [row["used"] for row in b.session_rows()]
    assert used == [True] * len(measurements)  # every measurement analysed, the interrupted one too


def test_a_fault_without_suspender_stops_the_session_then_it_resumes(beamline):
    b, pstat = beamline, beamline.pstat
    fault_at_s = 1.5 * MEASURE_EVERY_S  # in the cycling gap after measurement 1
    pstat.inject_fault("high_impedance", at_time_s=fault_at_s)
    with pytest.raises(PotentiostatFault, match=r"pstat reports fault 1 \(voltage compliance\) at cell time 900 s"):
        b.RE(b.plan())
    b.settle()
    runs = b.runs()
    assert [s["scan_type"] for s, _ in runs] == ["xanes2d", "operando_cycling", "xanes2d", "operando_cycling"]
    assert [stop["exit_status"] for _, stop in runs] == ["success", "success", "success", "fail"]
    assert "reports fault 1 (voltage compliance)" in runs[-1][1]["reason"]
    for start, _ in b.runs("xanes2d"):  # raw frames on disk
        (resource,) = [d for n, d in b.docs if n == "stream_resource" and d["run_start"] == start["uid"]][:1]
        assert Path(urlparse(resource["uri"]).path).stat().st_size > 0
    readings = b.events(runs[-1][0]["uid"])  # the cell's readings up to the fault are kept
    assert readings and readings[-1]["data"]["pstat_time_s"] <= fault_at_s

    # the operator fixes the cell; the session continues where it stopped
    pstat.clear_fault.put(1)
    resume = resume_from_starts([s for s, _ in runs])
    assert resume == OperandoResume(runs[0][0]["operando_uid"], next_index=2, cycle=0, step_index=0,
                                    capacity_at_start_mah=0.0, initial_soc=0.0)
    b.RE(b.plan(resume=resume))
    b.settle()
    resumed = b.runs("xanes2d")[2:]
    assert resumed[0][0]["operando_index"] == 2 and resumed[0][0]["operando_uid"] == resume.operando_uid
    # counted SOC continues from the session start: charge passed / capacity (coulomb counting)
    for start, _ in resumed:
        assert start["counted_soc"] == pytest.approx(start["capacity_mah"] / pstat.nominal_capacity_mah.get())
    assert b.runs()[-1][0]["operando_complete"] is True
    rows = b.session_rows()
    assert [r["operando_index"] for r in rows] == list(range(len(b.runs("xanes2d"))))
    (analysis_uid,) = b.session.analysis_uids[resume.operando_uid]  # one session analysis run throughout
    stop = [d for n, d in b.session_docs if n == "stop"]
    assert len(stop) == 1 and stop[0]["exit_status"] == "success"


def test_an_abort_mid_measurement_keeps_what_was_measured(beamline):
    b = beamline
    original = b.bl.detector.trigger
    count = {"n": 0}

    def trigger():
        status = original()
        if b.bl.detector.frame_type.get() == "sample":
            count["n"] += 1
            if count["n"] == len(ENERGIES) + 2:  # the second measurement's second frame
                threading.Thread(target=b.RE.request_pause, kwargs={"defer": False}).start()
        return status

    b.bl.detector.trigger = trigger
    with pytest.raises(RunEngineInterrupted):
        b.RE(b.plan())
    b.RE.abort(reason="operator stopped the session")
    b.settle()
    measurements = b.runs("xanes2d")
    assert [stop["exit_status"] for _, stop in measurements] == ["success", "abort"]
    rows = b.session_rows()
    assert [r["used"] for r in rows] == [True, False]
    assert rows[1]["problem"].startswith("incomplete measurement (raw run abort")
    resume = resume_from_starts([s for s, _ in b.runs()])
    assert resume.next_index == 2  # the aborted measurement keeps its index


def test_a_pause_while_cycling_resumes_where_it_was(beamline):
    b, pstat = beamline, beamline.pstat
    original = pstat._elapse
    calls = {"n": 0}

    def elapse(duration_s):
        calls["n"] += 1
        if calls["n"] == 3:  # in the first cycling run
            threading.Thread(target=b.RE.request_pause, kwargs={"defer": False}).start()
            threading.Event().wait(0.1)  # the request reaches the RunEngine during this wait
        return original(duration_s)

    pstat._elapse = elapse
    with pytest.raises(RunEngineInterrupted):
        b.RE(b.plan())
    assert b.RE.state == "paused"
    b.RE.resume()
    b.settle()
    runs = b.runs()
    assert all(stop["exit_status"] == "success" for _, stop in runs)
    assert runs[-1][0]["operando_complete"] is True
    measurements = b.runs("xanes2d")
    assert [s["operando_index"] for s, _ in measurements] == list(range(len(measurements)))
    gap = b.events(b.runs("operando_cycling")[0][0]["uid"])
    times = [e["data"]["pstat_time_s"] for e in gap]
    assert np.all(np.diff(times) > 0)  # readings in order; none lost or doubled by the rewind
    assert [r["used"] for r in b.session_rows()] == [True] * len(measurements)


def test_bad_arguments_are_refused_before_anything_moves(beamline):
    b = beamline
    with pytest.raises(ValueError, match=r"CyclingStep.mode must be one of \('cc', 'cv', 'rest'\), got 'charge'"):
        CyclingStep("charge")
    with pytest.raises(ValueError, match="a rest step needs a finite max_duration_s"):
        CyclingStep("rest")
    with pytest.raises(ValueError, match="a CC step needs a finite, non-zero c_rate"):
        CyclingStep("cc")
    with pytest.raises(ValueError, match="protocol must be a non-empty sequence of CyclingStep"):
        b.RE(b.plan(protocol=[]))
    with pytest.raises(ValueError, match=r"md may not set \['counted_soc'\]"):
        b.RE(b.plan(md={"counted_soc": 0.5}))
    with pytest.raises(ValueError, match="measure_every_s must be a positive number of seconds, got -1"):
        b.RE(b.plan(measure_every_s=-1))
    with pytest.raises(TypeError, match="'shutter' is not a potentiostat"):
        b.RE(operando(b.bl.detector, b.bl.energy, ENERGIES, potentiostat=b.bl.shutter, shutter=b.bl.shutter,
                      sample_stage=b.bl.sample_stage, protocol=PROTOCOL, measure_every_s=60.0))
    assert b.docs == [] and b.pstat.clock.now() == 0.0  # nothing ran
