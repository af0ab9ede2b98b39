"""2D XANES stacks and chemical truth maps: the spectra come out where the physics put them."""

import numpy as np
import pytest
import xraydb
from scipy import ndimage

from simulators.model import SimConfig, SimTXM
from simulators.phantom import make_nmc_phantom
from simulators.stacks import simulate_xanes_stack
from txm_live.energies import xanes_energy_list

NI_K = xraydb.xray_edge("Ni", "K").energy


def _uniform_sim(**cfg):
    config = SimConfig(seed=11, **cfg)
    sample = make_nmc_phantom(fov_um=(40.96, 40.96), state_of_charge=0.0, seed=11)
    return SimTXM(config, sample=sample)


@pytest.fixture(scope="module")
def uniform_stack():
    sim = _uniform_sim()
    return sim, simulate_xanes_stack(sim, xanes_energy_list(NI_K)[::-1])  # FXI scans high → low


def test_standard_energy_list():
    """The one energy-list generator: the study's layout (txm_live.energies docstring)."""
    e = xanes_energy_list(NI_K)
    assert e.size == 88
    assert e[0] == pytest.approx(NI_K - 60) and e[-1] == pytest.approx(NI_K + 120)
    assert np.all(np.diff(e) > 0)
    dense = e[(e >= NI_K - 10) & (e <= NI_K + 25)]
    assert np.max(np.diff(dense)) == pytest.approx(0.5) and dense.size == 71
    post = e[e >= NI_K + 25]
    assert post.size >= 8 and np.max(np.diff(post)) <= 8.0  # what the edge normalization needs


def test_stack_layout_and_truth(uniform_stack):
    sim, st = uniform_stack
    n = st.energies_ev.size
    assert st.frames.shape == st.flats.shape == (n, *sim.shape)
    assert st.frames.dtype == st.flats.dtype == st.darks.dtype == np.uint16
    assert st.darks.shape == (5, *sim.shape)
    assert st.drift_px.shape == (n, 2)
    assert np.median(st.darks) == pytest.approx(100, abs=2)
    assert 1e4 < np.median(st.flats) < 1e5
    assert np.all(np.diff(st.times_s) > 0)
    assert np.hypot(*(st.drift_px[-1] - st.drift_px[0])) > 0.3  # the sample really drifts


def _region_spectrum(st):
    """Mean absorbance over the thick interior of the uniform-Ni2+ particles."""
    absorb = st.absorbance()
    mask = st.truth.mask & (st.truth.thickness_um > 3.0)
    mask = ndimage.binary_erosion(mask, iterations=3)  # drift stays ≤ ~2 px: stay inside
    assert mask.sum() > 100
    absorb = ndimage.median_filter(absorb, size=(1, 3, 3))  # defects and zingers
    order = np.argsort(st.energies_ev)
    return st.energies_ev[order], absorb[order][:, mask].mean(axis=1)


def test_uniform_ni2_edge_and_whiteline_from_noisy_frames(uniform_stack):
    sim, st = uniform_stack
    energy, mu = _region_spectrum(st)
    pre = energy < NI_K - 10
    post = energy > NI_K + 24
    pre_line = np.polyval(np.polyfit(energy[pre], mu[pre], 1), energy)
    post_line = np.polyval(np.polyfit(energy[post], mu[post], 1), energy)
    norm = (mu - pre_line) / (post_line - pre_line)
    near = (energy > NI_K - 10) & (energy < NI_K + 10)
    i = np.nonzero(near & (norm >= 0.5))[0][0]
    edge = np.interp(0.5, norm[i - 1 : i + 1], energy[i - 1 : i + 1])
    assert edge == pytest.approx(NI_K, abs=2.0)
    j = int(np.argmax(np.where(energy < NI_K + 20, norm, -np.inf)))
    fit = slice(j - 3, j + 4)  # ±1.5 eV parabola around the sampled maximum
    c = np.polyfit(energy[fit], norm[fit], 2)
    whiteline = -c[1] / (2 * c[0])
    assert whiteline == pytest.approx(sim.spectra.whiteline_ev(2.0), abs=0.5)


def test_truth_maps_uniform_for_soc_zero(uniform_stack):
    sim, st = uniform_stack
    tm = st.truth
    assert tm.mask.sum() > 500
    wl = tm.whiteline_ev[tm.mask]
    assert np.nanstd(wl) < 0.01
    assert np.nanmean(wl) == pytest.approx(sim.spectra.whiteline_ev(2.0), abs=0.05)
    assert np.nanmean(tm.edge_ev[tm.mask]) == pytest.approx(NI_K, abs=0.05)
    assert np.allclose(tm.oxidation_state[tm.mask], 2.0)
    assert np.all(np.isnan(tm.whiteline_ev[~tm.mask]))
    jump = sim.spectra.edge_jump_per_um(NI_K)
    np.testing.assert_array_equal(tm.mask, tm.thickness_um * jump >= sim.config.mask_min_edge_jump)


def test_truth_whiteline_follows_oxidation_state():
    sim = SimTXM(SimConfig(seed=12), sample=make_nmc_phantom(state_of_charge=0.6, seed=12))
    tm = sim.truth_maps()
    ox, wl, edge = tm.oxidation_state[tm.mask], tm.whiteline_ev[tm.mask], tm.edge_ev[tm.mask]
    assert np.ptp(ox) > 0.8
    assert np.corrcoef(ox, wl)[0, 1] > 0.9
    assert np.corrcoef(ox, edge)[0, 1] > 0.95
    assert wl[ox > 3.2].mean() > wl[ox < 2.8].mean() + 0.5
    # a pixel's edge follows its mean valence at ~1.25 eV per unit
    slope = np.polyfit(ox, edge, 1)[0]
    assert slope == pytest.approx(1.25, abs=0.25)


def test_no_focus_tracking_blurs_away_from_first_energy():
    sim = _uniform_sim()
    energies = np.array([8333.0, 8343.0, 8383.0, 8433.0])
    st = simulate_xanes_stack(sim, energies, n_darks=1, focus_tracking=False)
    assert st.frames.shape[0] == 4
    # blur grows with distance from the focused energy (checked on the frames' truth)
    sim2 = _uniform_sim()
    zp, det = sim2.optics.focus_positions(8333.0)
    blur = [sim2.acquire(energy_ev=e, zp_z_mm=zp, det_z_mm=det).truth.blur_sigma_px
            for e in energies]
    assert np.all(np.diff(blur) > 0) and blur[-1] > 2.0


def test_bad_arguments_rejected():
    sim = _uniform_sim()
    with pytest.raises(ValueError, match="energies_ev must be a non-empty 1-D list"):
        simulate_xanes_stack(sim, [])
    with pytest.raises(ValueError, match="n_darks must be >= 1"):
        simulate_xanes_stack(sim, [8333.0], n_darks=0)
