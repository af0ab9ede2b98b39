"""Potentiostat devices: one protocol, simulated on the SimClock and EPICS-shaped.

Real parts: ophyd devices, a real RunEngine and a real bluesky suspender. Truth: charge
I·t and the clock's time (closed forms), the cell's own state, the protocol's list of
components and the PV names it documents.
"""
import math
import threading

import numpy as np
import pytest
from bluesky import plan_stubs as bps
from bluesky import preprocessors as bpp
from bluesky.suspenders import SuspendBoolHigh
from ophyd.sim import make_fake_device

from simulators.beamline import make_sim_beamline
from simulators.devices import SimPotentiostat, make_sim_potentiostat
from simulators.electrochem import CellParameters, NMCCell
from simulators.model import SimConfig, SimTXM
from simulators.phantom import make_nmc_phantom
from simulators.timing import SimClock
from txm_live.devices.potentiostat import (
    POTENTIOSTAT_COMPONENTS,
    EpicsPotentiostat,
    check_potentiostat,
    make_epics_potentiostat,
)

PREFIX = "XF:18IDB-ES{Pstat:1}"


@pytest.fixture
def pstat():
    clock = SimClock()
    cell = NMCCell(np.linspace(1.5, 3.0, 20), seed=1, params=CellParameters(nominal_capacity_mah=2.0),
                   start_time_s=clock.now())
    return SimPotentiostat(name="pstat", cell=cell, clock=clock)


@pytest.fixture
def epics_pstat():
    return make_epics_potentiostat(PREFIX, device_factory=make_fake_device)


def test_both_devices_have_the_protocols_components_and_kinds(pstat, epics_pstat):
    check_potentiostat(pstat)
    check_potentiostat(epics_pstat)
    names = {n for group in POTENTIOSTAT_COMPONENTS.values() for n in group}
    assert set(pstat.component_names) == set(epics_pstat.component_names) == names
    for name in names:
        assert getattr(pstat, name).kind == getattr(epics_pstat, name).kind, name

    class NotAPotentiostat:
        name = "shutter"
        voltage_v = current_a = None

    with pytest.raises(TypeError, match=r"'shutter' is not a potentiostat .* missing \['current_setpoint_a'"):
        check_potentiostat(NotAPotentiostat())


def test_c_rate_writes_the_current_setpoint(pstat, epics_pstat):
    pstat.c_rate.put(0.5)
    assert pstat.current_setpoint_a.get() == pytest.approx(0.5 * 2.0e-3)  # 0.5C of 2 mAh
    epics_pstat.nominal_capacity_mah.sim_put(4.0)
    epics_pstat.c_rate.put(2.0)
    assert epics_pstat.current_setpoint_a.get() == pytest.approx(8.0e-3)
    assert epics_pstat.c_rate.get() == pytest.approx(2.0)
    epics_pstat.nominal_capacity_mah.sim_put(0.0)
    with pytest.raises(ValueError, match="nominal_capacity_mah must be > 0"):
        epics_pstat.c_rate.put(1.0)


def test_a_charge_step_in_simulated_time(RE, pstat):
    readings = []

    def plan():
        yield from bps.mv(pstat.c_rate, 1.0, pstat.voltage_max_v, 4.3)
        yield from bps.mv(pstat.mode, "cc")
        for _ in range(3):
            yield from bps.mv(pstat.elapse, 600.0)
            readings.append((yield from bps.read(pstat)))

    RE(plan())
    assert pstat.clock.now() == pytest.approx(1800.0)  # three 10-minute waits, no real time
    last = readings[-1]
    assert last["pstat_time_s"]["value"] == pytest.approx(1800.0)
    assert last["pstat_step_time_s"]["value"] == pytest.approx(1800.0)
    assert last["pstat_current_a"]["value"] == pytest.approx(2.0e-3)
    assert last["pstat_capacity_mah"]["value"] == pytest.approx(1.0, rel=1e-12)  # 2 mA · 0.5 h
    volts = [r["pstat_voltage_v"]["value"] for r in readings]
    assert 3.6 < volts[0] < volts[1] < volts[2] < 4.3  # charging raises the voltage
    assert pstat.cell.state().soc == pytest.approx(0.5, rel=1e-12)


def test_elapse_ends_early_at_the_cutoff(RE, pstat):
    def plan():
        yield from bps.mv(pstat.c_rate, 1.0, pstat.voltage_max_v, 3.9, pstat.on_limit, "rest")
        yield from bps.mv(pstat.mode, "cc")
        yield from bps.mv(pstat.elapse, 7200.0)

    RE(plan())
    assert pstat.limit_reached.get() == 1 and pstat.mode.get() == "rest"
    assert 600.0 < pstat.clock.now() < 3600.0  # stopped at 3.9 V, not after two hours
    cutoff = [e for e in pstat.cell.events if e[1] == "cutoff"]
    assert cutoff[0][0] == pytest.approx(pstat.clock.now()) and cutoff[0][2] >= 3.9
    # a further wait in the ended step returns at once, as the EPICS device does
    RE(bps.mv(pstat.elapse, 600.0))
    assert pstat.clock.now() == pytest.approx(cutoff[0][0])


def test_bad_settings_are_refused_before_the_step_starts(RE, pstat):
    pstat.on_limit.put("hold")
    with pytest.raises(ValueError, match="on_limit must be one of"):
        pstat.mode.put("cc")
    with pytest.raises(ValueError, match="mode must be one of"):
        pstat.mode.put("charge")
    with pytest.raises(ValueError, match="finite and >= 0 s"):
        pstat.elapse.set(-5.0)
    with pytest.raises(TypeError, match=r"use set\(duration_s\)"):
        pstat.elapse.put(5.0)
    assert pstat.cell.control.mode == "rest"  # nothing was applied


def test_a_fault_suspends_the_run_and_nothing_measured_is_lost(RE, pstat):
    """A disconnect mid-session: the suspender pauses, the fault is cleared, the run resumes."""
    RE.record_interruptions = True
    RE.install_suspender(SuspendBoolHigh(pstat.fault, sleep=0.0))
    pstat.inject_fault("disconnect", at_time_s=1000.0)
    seen = []

    def clear_soon(*, value, **_):
        if value:
            seen.append(value)
            threading.Timer(0.2, pstat.clear_fault.put, (1,)).start()  # the operator fixes it

    pstat.fault.subscribe(clear_soon, run=False)
    docs = []

    @bpp.run_decorator(md={"plan_name": "charge_steps"})
    def plan():
        yield from bps.mv(pstat.c_rate, 1.0)
        for _ in range(6):
            yield from bps.checkpoint()
            yield from bps.mv(pstat.mode, "cc")  # (re)apply the step: after a fault it is off
            yield from bps.mv(pstat.elapse, 300.0)
            yield from bps.trigger_and_read([pstat])

    RE(plan(), lambda name, doc: docs.append((name, doc)))
    assert seen == [3]
    events = [d for n, d in docs if n == "event"]
    streams = {d["uid"]: d["name"] for n, d in docs if n == "descriptor"}
    primary = [e for e in events if streams[e["descriptor"]] == "primary"]
    interruptions = [e["data"]["interruption"] for e in events if streams[e["descriptor"]] == "interruptions"]
    assert len(primary) == 6  # every step measured once
    assert interruptions == ["Signal pstat_fault is high"]  # the suspension, with its reason
    assert [d["exit_status"] for n, d in docs if n == "stop"] == ["success"]
    faults = [e["data"]["pstat_fault"] for e in primary]
    assert faults == [0] * 6
    capacity = [e["data"]["pstat_capacity_mah"] for e in primary]
    assert all(b > a for a, b in zip(capacity, capacity[1:]))  # charging again after resuming
    # the step in flight at the fault charged 100 s (900 → 1000 s), then was re-run in full
    # from its checkpoint: 6 × 300 s + 100 s of charge, and no time passed while suspended
    assert pstat.clock.now() == pytest.approx(1900.0)
    assert capacity[-1] == pytest.approx(2.0e-3 * (6 * 300.0 + 100.0) / 3.6, rel=1e-9)


def test_frames_of_the_microscope_bring_the_cell_along_and_trip_faults(pstat):
    base = make_nmc_phantom(n_particles=20, radius_range_um=(1.5, 3.0), seed=1, state_of_charge=0.0)
    sim = SimTXM(SimConfig(shape=(64, 64), seed=1), sample=base)
    sim.sample_source = pstat.sample_source(base)
    pstat.c_rate.put(1.0)
    pstat.mode.put("cc")
    pstat.inject_fault("disconnect", at_time_s=900.0)
    zp, det = sim.optics.focus_positions(8350.0)
    sim.acquire(energy_ev=8350.0, zp_z_mm=zp, det_z_mm=det, time_s=600.0)
    assert pstat.time_s.get() == pytest.approx(600.0) and pstat.fault.get() == 0
    assert pstat.capacity_mah.get() == pytest.approx(2.0e-3 * 600 / 3.6)
    sim.acquire(energy_ev=8350.0, zp_z_mm=zp, det_z_mm=det, time_s=1200.0)
    assert pstat.fault.get() == 3 and pstat.fault_message.get() == "cell disconnected"
    assert math.isnan(pstat.voltage_v.get()) and pstat.mode.get() == "rest"
    assert pstat.capacity_mah.get() == pytest.approx(2.0e-3 * 900 / 3.6)  # nothing after the fault


def test_epics_elapse_finishes_at_the_cutoff_or_a_fault(epics_pstat):
    status = epics_pstat.elapse.set(3600.0)
    assert not status.done
    epics_pstat.limit_reached.sim_put(1)  # the IOC reports the cutoff
    assert status.done and status.success
    epics_pstat.limit_reached.sim_put(0)
    status = epics_pstat.elapse.set(3600.0)
    epics_pstat.fault.sim_put(1)
    assert status.done
    epics_pstat.fault.sim_put(0)
    short = epics_pstat.elapse.set(0.05)  # wall time on a real instrument
    short.wait(timeout=10)
    assert short.success
    with pytest.raises(ValueError, match="mode must be one of"):
        epics_pstat.start_step("charge")
    epics_pstat.start_step("cc").wait(timeout=5)
    assert epics_pstat.mode.get() == "cc"


def test_epics_class_builds_offline_and_names_its_pvs():
    device = make_fake_device(EpicsPotentiostat)("SIM:PSTAT:", name="cell1")
    suffixes = {name: getattr(EpicsPotentiostat, name).suffix for name in device.component_names
                if getattr(EpicsPotentiostat, name).suffix}
    assert suffixes == {
        "mode": "Mode-RB", "current_setpoint_a": "I:SP-SP", "voltage_setpoint_v": "E:SP-SP",
        "voltage_max_v": "E:Hi-SP", "voltage_min_v": "E:Lo-SP", "current_limit_a": "I:Lim-SP",
        "end_current_a": "I:End-SP", "on_limit": "OnLim-Sel", "nominal_capacity_mah": "Cap:Nom-SP",
        "voltage_v": "E-I", "current_a": "I-I", "capacity_mah": "Q-I", "time_s": "T-I",
        "step_time_s": "StepT-I", "limit_reached": "LimReached-Sts", "fault": "Fault-Sts",
        "fault_message": "FaultMsg-I", "clear_fault": "Cmd:ClrFault-Cmd",
    }  # the module docstring's list
    assert EpicsPotentiostat.mode.kwargs["write_pv"] == "Mode-Sel"
    assert device.prefix == "SIM:PSTAT:"
    assert set(device.read_attrs) == {"mode", "voltage_v", "current_a", "capacity_mah", "time_s",
                                      "step_time_s", "limit_reached", "fault", "fault_message"}


def test_a_charging_cell_on_the_simulated_beamline(RE, tmp_path):
    """The profile's wiring: the detector's frames show the particles as the cell has them."""
    beamline = make_sim_beamline(tmp_path, config=SimConfig(shape=(64, 64), seed=2))
    n = len(beamline.model.sample.particles)
    pstat = make_sim_potentiostat(beamline.model, beamline.clock, inactive=[False] * n)
    detector = beamline.detector

    @bpp.stage_decorator([detector])
    @bpp.run_decorator(md={"plan_name": "charge_and_image"})
    def plan():
        yield from bps.mv(pstat.c_rate, 1.0)
        yield from bps.mv(pstat.mode, "cc")
        for _ in range(3):
            yield from bps.mv(pstat.elapse, 600.0)
            yield from bps.trigger_and_read([detector, pstat])

    docs = []
    RE(plan(), lambda name, doc: docs.append((name, doc)))
    events = [d for n, d in docs if n == "event"]
    times = [e["data"]["pstat_time_s"] for e in events]
    assert times == pytest.approx([600.0, 1200.0, 1800.0], abs=0.5)  # + exposures and readouts
    # each frame saw the particles at the cell's state: their mean valence rose with the charge
    truth = beamline.model.truth_maps()
    measured = np.nansum(truth.oxidation_state * truth.thickness_um) / truth.thickness_um[truth.mask].sum()
    state = pstat.cell.state()
    volume = np.array([p.radius_um for p in beamline.model.sample.particles]) ** 3
    expected = 2 + 2 * np.average(state.particle_soc, weights=volume)
    assert measured == pytest.approx(expected, abs=0.01)  # achieved 0.006 (0.1-wide valence bins)
    assert measured > 3.0  # achieved 3.18 at SOC 0.5; pristine is 2.0
