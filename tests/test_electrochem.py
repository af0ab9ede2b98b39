"""The simulated NMC811 cell against closed forms.

Truth: the published OCV equation of Chen et al. (2020) written out here independently,
charge conservation (I·t), the closed-form terminal voltage of a uniform electrode
(OCV + I·(R + τ/Q)), the parabolic-profile surface lead τ_D·rate, equilibrium at rest
(equal OCV → equal SOC), and the phantom's own projection for the valences it is given.
"""
import math

import numpy as np
import pytest
from scipy.stats import spearmanr

from simulators.electrochem import (
    CellControl,
    CellParameters,
    NMCCell,
    OperandoSample,
    nmc811_ocv_slope_v_per_soc,
    nmc811_ocv_v,
)
from simulators.model import SimConfig, SimTXM
from simulators.phantom import make_nmc_phantom

GRID = np.round(np.arange(2.0, 4.0 + 1e-9, 0.1), 6)


def chen2020_ocv(x):
    """Chen et al., J. Electrochem. Soc. 167, 080534 (2020): NMC811 OCP vs stoichiometry x."""
    return (-0.8090 * x + 4.4875 - 0.0428 * np.tanh(18.5138 * (x - 0.5542))
            - 17.7326 * np.tanh(15.7890 * (x - 0.3117)) + 17.5842 * np.tanh(15.9308 * (x - 0.3120)))


def uniform_params(**kwargs):
    """Identical particles: no contact/surface spread, none inactive, no hidden ones."""
    base = dict(contact_spread=0.0, surface_spread=0.0, inactive_fraction=0.0, n_hidden=0)
    return CellParameters(**{**base, **kwargs})


def test_ocv_is_chen_2020_over_the_cells_stoichiometry_window():
    soc = np.linspace(0.0, 1.0, 11)
    x = 0.9084 - soc * (0.9084 - 0.2661)
    np.testing.assert_allclose(nmc811_ocv_v(soc), chen2020_ocv(x), atol=1e-12)
    assert nmc811_ocv_v(0.0) == pytest.approx(3.5614, abs=1e-4)
    assert nmc811_ocv_v(1.0) == pytest.approx(4.2849, abs=1e-4)
    fine = np.linspace(0.0, 1.0, 20001)
    assert np.all(np.diff(nmc811_ocv_v(fine)) > 0)  # monotonic: one SOC per voltage
    h = 1e-6
    mid = np.linspace(0.01, 0.99, 99)
    numeric = (chen2020_ocv(0.9084 - (mid + h) * 0.6423) - chen2020_ocv(0.9084 - (mid - h) * 0.6423)) / (2 * h)
    np.testing.assert_allclose(nmc811_ocv_slope_v_per_soc(mid), numeric, rtol=1e-6)


def test_charge_counting_equals_the_charge_the_particles_took():
    cell = NMCCell(np.linspace(1.5, 3.0, 20), seed=2, params=CellParameters(inactive_fraction=0.2))
    current = cell.c_rate_current_a(0.5)
    assert current == pytest.approx(0.5e-3)  # 0.5C of 1 mAh
    cell.apply(CellControl(mode="cc", current_a=current))
    state = cell.advance(3600.0)
    assert state.capacity_mah == pytest.approx(0.5, rel=1e-12)  # I·t / 3.6 C per mAh
    assert state.counted_soc == pytest.approx(0.5, rel=1e-12)
    assert state.soc == pytest.approx(state.counted_soc, abs=1e-12)  # no charge lost or made
    assert state.inactive.sum() >= 2
    np.testing.assert_array_equal(state.particle_soc[state.inactive], 0.0)  # never react
    assert np.all(state.particle_soc[~state.inactive] > 0.3)


def test_uniform_electrode_voltage_is_ocv_plus_kinetic_and_ohmic_drop():
    params = uniform_params(kinetic_time_s=150.0, series_resistance_ohm=20.0, diffusion_um2_per_s=1e3)
    cell = NMCCell([3.0] * 10, params=params)  # all at the reference radius
    current = cell.c_rate_current_a(1.0)
    cell.apply(CellControl(mode="cc", current_a=current))
    state = cell.advance(1200.0)
    np.testing.assert_allclose(state.particle_soc, 1 / 3, rtol=1e-9)
    # closed form: V = U(soc) + I·(R + τ/Q), Q in coulombs (conductance g = Q/τ per volt)
    kinetic_ohm = 150.0 / (1.0 * 3.6)
    expected = nmc811_ocv_v(1 / 3) + current * (20.0 + kinetic_ohm)
    assert state.voltage_v == pytest.approx(expected, abs=1e-5)  # achieved 2e-7 V (implicit step)
    # negative control: the ohmic drop alone misses the kinetic overpotential (0.042 V)
    assert abs(state.voltage_v - (nmc811_ocv_v(1 / 3) + current * 20.0)) > 0.04


def test_surface_leads_the_core_by_the_parabolic_profile_value():
    params = uniform_params(diffusion_um2_per_s=2e-3)
    cell = NMCCell([3.0] * 5, params=params)
    tau_d = 3.0**2 / (15 * 2e-3)  # 300 s
    rate = 1 / 3600  # 1C in SOC per second
    cell.apply(CellControl(mode="cc", current_a=cell.c_rate_current_a(1.0)))
    state = cell.advance(2400.0)  # 8 diffusion times: steady
    lead = state.particle_surface_soc - state.particle_soc
    np.testing.assert_allclose(lead, tau_d * rate, rtol=0.005)  # achieved 3e-4 (exp(-8))
    cell.apply(CellControl(mode="cc", current_a=-cell.c_rate_current_a(1.0)))
    state = cell.advance(1800.0)  # 6 diffusion times after the reversal
    lag = state.particle_surface_soc - state.particle_soc
    np.testing.assert_allclose(lag, -tau_d * rate, rtol=0.01)  # achieved 0.5 % (2·exp(-6))


def test_big_and_poorly_contacted_particles_lag():
    radii = np.linspace(1.5, 4.5, 12)
    by_size = NMCCell(radii, params=uniform_params())
    by_size.apply(CellControl(mode="cc", current_a=by_size.c_rate_current_a(1.0)))
    state = by_size.advance(1200.0)
    assert spearmanr(radii, state.particle_soc)[0] == pytest.approx(-1.0)  # strictly by size
    by_contact = NMCCell([3.0] * 40, params=uniform_params(contact_spread=0.5, diffusion_um2_per_s=1e3), seed=4)
    by_contact.apply(CellControl(mode="cc", current_a=by_contact.c_rate_current_a(1.0)))
    state = by_contact.advance(1200.0)
    kinetic = by_contact.particle_properties().kinetic_time_s
    assert spearmanr(kinetic, state.particle_soc)[0] < -0.99  # achieved -1.0
    assert np.ptp(state.particle_soc) > 0.1  # achieved 0.17: a heterogeneous electrode


def test_rest_brings_every_active_particle_to_one_ocv():
    cell = NMCCell(np.linspace(1.5, 3.0, 25), seed=1)
    cell.apply(CellControl(mode="cc", current_a=cell.c_rate_current_a(1.0)))
    charged = cell.advance(1800.0)
    active = ~charged.inactive
    assert np.ptp(charged.particle_soc[active]) > 0.1  # achieved 0.26: heterogeneous under current
    cell.apply(CellControl(mode="rest"))
    rested = cell.advance(10 * 3600.0)
    assert rested.current_a == 0.0
    assert rested.capacity_mah == pytest.approx(charged.capacity_mah, abs=1e-15)
    assert np.ptp(rested.particle_soc[active]) < 1e-9  # achieved 4e-14
    assert rested.voltage_v == pytest.approx(float(nmc811_ocv_v(rested.particle_soc[active].mean())), abs=1e-9)


def test_cc_cutoff_then_cv_hold_then_end_current():
    cell = NMCCell(np.linspace(1.5, 3.0, 20), seed=3)
    one_c = cell.c_rate_current_a(1.0)
    cell.apply(CellControl(mode="cc", current_a=one_c, voltage_max_v=4.1, on_limit="cv",
                           end_current_a=0.05 * one_c))
    state = cell.advance_to(3 * 3600.0, stop_on_step_end=True)
    assert state.limit_reached and state.mode == "cv"
    assert state.voltage_v == pytest.approx(4.1, abs=0.01)  # cut within one 5 s step
    held = [cell.advance(300.0) for _ in range(4)]
    for s in held:
        assert s.voltage_v == pytest.approx(4.1, abs=1e-9)  # CV holds its setpoint
    currents = [s.current_a for s in held]
    assert all(0 < b < a for a, b in zip(currents, currents[1:]))  # tapering
    state = cell.advance_to(10 * 3600.0, stop_on_step_end=True)
    assert state.mode == "rest" and state.current_a == 0.0
    assert [e[1] for e in cell.events][-2:] == ["cutoff", "end_current"]
    # negative control: on_limit='rest' stops the current at the cutoff
    other = NMCCell(np.linspace(1.5, 3.0, 20), seed=3)
    other.apply(CellControl(mode="cc", current_a=one_c, voltage_max_v=4.1, on_limit="rest"))
    state = other.advance_to(3 * 3600.0, stop_on_step_end=True)
    assert state.mode == "rest" and state.current_a == 0.0


def test_discharge_to_the_lower_cutoff_keeps_soc_in_range():
    cell = NMCCell(np.linspace(1.5, 3.0, 20), seed=5, initial_soc=0.3)
    cell.apply(CellControl(mode="cc", current_a=-cell.c_rate_current_a(2.0), voltage_min_v=3.0))
    state = cell.advance_to(3600.0, stop_on_step_end=True)
    cutoff = [e for e in cell.events if e[1] == "cutoff"]
    assert state.limit_reached and len(cutoff) == 1 and cutoff[0][2] <= 3.0
    assert state.current_a == 0.0 and state.voltage_v > 3.0  # at rest the IR drop is gone
    assert state.particle_soc.min() >= 0.0
    assert state.soc == pytest.approx(state.counted_soc, abs=1e-12)  # empty particles drop out


def test_faults_turn_the_output_off_and_say_why():
    cell = NMCCell(np.linspace(1.5, 3.0, 10), seed=0)
    one_c = cell.c_rate_current_a(1.0)
    with pytest.raises(ValueError, match="compliance"):
        cell.apply(CellControl(mode="cc", current_a=1.0))  # 1 A on a 0.1 A instrument
    cell.apply(CellControl(mode="cc", current_a=one_c))
    cell.inject_fault("high_impedance", at_time_s=600.0)
    state = cell.advance_to(3600.0, stop_on_step_end=True)
    assert state.time_s == pytest.approx(600.0) and state.fault == 1
    assert state.fault_message == "voltage compliance" and state.mode == "rest"
    with pytest.raises(RuntimeError, match="voltage compliance"):
        cell.apply(CellControl(mode="cc", current_a=one_c))
    cell.clear_fault()
    cell.apply(CellControl(mode="cc", current_a=one_c))
    cell.inject_fault("disconnect")
    state = cell.state()
    assert state.fault == 3 and math.isnan(state.voltage_v) and state.current_a == 0.0
    cell.clear_fault()
    # negative control: a high impedance at rest needs no current, so no fault
    cell.apply(CellControl(mode="rest"))
    cell.inject_fault("high_impedance")
    assert cell.advance(600.0).fault == 0
    with pytest.raises(ValueError, match="fault kind must be one of"):
        cell.inject_fault("meteor")


def test_cv_beyond_the_instruments_current_is_a_current_compliance_fault():
    params = CellParameters(series_resistance_ohm=0.1, kinetic_time_s=1.0, compliance_current_a=0.01)
    cell = NMCCell(np.linspace(1.5, 3.0, 10), params=params)
    cell.apply(CellControl(mode="cv", voltage_v=4.2))
    assert cell.advance(10.0).fault == 2
    # negative control: the same step with a current limit inside the range runs
    limited = NMCCell(np.linspace(1.5, 3.0, 10), params=params)
    limited.apply(CellControl(mode="cv", voltage_v=4.2, current_limit_a=0.005))
    state = limited.advance(10.0)
    assert state.fault == 0 and state.current_a == pytest.approx(0.005)


@pytest.mark.parametrize("kwargs, message", [
    (dict(mode="charge"), "mode must be one of"),
    (dict(mode="cv"), "needs a finite voltage_v"),
    (dict(on_limit="hold"), "on_limit must be one of"),
    (dict(voltage_min_v=4.5), "must be below voltage_max_v"),
    (dict(current_a=math.nan), "current_a must be finite"),
])
def test_bad_controls_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CellControl(**kwargs)


def test_bad_cells_are_refused():
    with pytest.raises(ValueError, match="kinetic_time_s must be finite and > 0"):
        CellParameters(kinetic_time_s=0.0)
    with pytest.raises(ValueError, match="inactive_fraction must be in"):
        CellParameters(inactive_fraction=1.0)
    with pytest.raises(ValueError, match="non-empty list of positive radii"):
        NMCCell([])
    with pytest.raises(ValueError, match="one flag per visible particle"):
        NMCCell([2.0, 3.0], inactive=[True])
    with pytest.raises(ValueError, match="initial_soc must be in"):
        NMCCell([2.0], initial_soc=1.5)


def test_phantom_valences_follow_each_particles_soc():
    base = make_nmc_phantom(n_particles=8, radius_range_um=(2.0, 3.0), seed=1, state_of_charge=0.0)
    cell = NMCCell.from_phantom(base, seed=1)
    cell.apply(CellControl(mode="cc", current_a=cell.c_rate_current_a(1.0)))
    state = cell.advance(1500.0)
    phantom = cell.phantom(base)
    for particle, soc, surf in zip(phantom.particles, state.particle_soc, state.particle_surface_soc):
        assert particle.mean_valence() == pytest.approx(2 + 2 * soc, abs=1e-9)
        assert particle.surface_valence >= particle.core_valence  # charging: surface first
    # independent check through the projection: path-length-weighted valence per particle
    px = 0.05
    labels = phantom.label_map((800, 800), px)
    proj = phantom.project(GRID, (800, 800), px)
    for i, soc in enumerate(state.particle_soc):
        inside = labels == i + 1
        per_level = proj[:, inside].sum(axis=1)
        mean_v = (per_level * GRID).sum() / per_level.sum()
        assert mean_v == pytest.approx(2 + 2 * soc, abs=0.02)  # achieved <= 0.013 (0.1 bins, voids)


def test_operando_sample_feeds_the_microscope_as_the_cell_charges():
    base = make_nmc_phantom(n_particles=10, radius_range_um=(2.0, 3.0), seed=2, state_of_charge=0.0)
    cell = NMCCell.from_phantom(base, seed=2, inactive=[False] * 10)
    source = OperandoSample(cell, base, soc_tolerance=0.005)
    sim = SimTXM(SimConfig(shape=(64, 64), seed=2), sample=base)
    sim.sample_source = source
    cell.apply(CellControl(mode="cc", current_a=cell.c_rate_current_a(1.0)))
    assert source(0.0) is source(1.0)  # < 0.002 SOC in 1 s: below the tolerance, same phantom
    zp, det = sim.optics.focus_positions(8350.0)
    sim.acquire(energy_ev=8350.0, zp_z_mm=zp, det_z_mm=det, time_s=1800.0)
    assert cell.time_s == 1800.0  # the frame brought the cell to its time
    truth = sim.truth_maps()
    state = cell.state()
    weights = np.array([p.radius_um**3 for p in base.particles])
    expected = 2 + 2 * np.average(state.particle_soc, weights=weights)
    measured = np.nansum(truth.oxidation_state * truth.thickness_um) / truth.thickness_um[truth.mask].sum()
    assert measured == pytest.approx(expected, abs=0.015)  # achieved 0.007; pristine is 2.0, off by 0.6
    assert source.n_built == 2  # one at t=0, one at 1800 s


def test_displacement_is_counted_as_drift_and_nothing_else_changes():
    a = SimTXM(SimConfig(shape=(64, 64), seed=3))
    b = SimTXM(SimConfig(shape=(64, 64), seed=3))
    zp, det = a.optics.focus_positions(8350.0)
    fa = a.acquire(energy_ev=8350.0, zp_z_mm=zp, det_z_mm=det, time_s=10.0)
    fb = b.acquire(energy_ev=8350.0, zp_z_mm=zp, det_z_mm=det, time_s=10.0)
    np.testing.assert_array_equal(fa.image, fb.image)  # the hooks change nothing by default
    b.displace_sample(1.6, -3.2)
    fa = a.acquire(energy_ev=8350.0, zp_z_mm=zp, det_z_mm=det, time_s=20.0)
    fb = b.acquire(energy_ev=8350.0, zp_z_mm=zp, det_z_mm=det, time_s=20.0)
    px_um = a.pixel_size_nm / 1e3
    np.testing.assert_allclose(np.subtract(fb.truth.drift_px, fa.truth.drift_px),
                               (1.6 / px_um, -3.2 / px_um), atol=1e-9)
    with pytest.raises(TypeError, match="must be an NMCPhantom"):
        a.set_sample("sample")
