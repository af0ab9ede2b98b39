"""Analytic NMC phantom: chord-length projections against geometry and voxelization."""

import numpy as np
import pytest

from simulators.phantom import NMCPhantom, Particle, Void, make_nmc_phantom
from simulators.spectra import NiXanesModel

GRID = np.round(np.arange(2.0, 4.0 + 1e-9, 0.1), 6)


def test_single_sphere_chords_and_volume():
    radius = 5.0
    ph = NMCPhantom([Particle((0.0, 0.0, 0.0), radius)])
    px = 0.05
    proj = ph.project(GRID, (256, 256), px)
    assert proj.shape == (GRID.size, 256, 256) and proj.dtype == np.float32
    total = proj.sum(axis=0)
    assert np.all(proj[1:] == 0)  # uniform Ni2+ → only the 2.0 bin
    assert total.max() == pytest.approx(2 * radius, rel=1e-3)
    volume = total.sum() * px * px
    assert volume == pytest.approx(4 / 3 * np.pi * radius**3, rel=2e-3)


def test_radial_valence_profile_binned_correctly():
    part = Particle((0.0, 0.0, 0.0), 4.0, core_valence=2.2, surface_valence=3.8, penetration_um=1.0)
    px = 0.04
    proj = NMCPhantom([part]).project(GRID, (256, 256), px)
    vol_k = proj.sum(axis=(1, 2)) * px * px
    mean_valence = (vol_k * GRID).sum() / vol_k.sum()
    # analytic volume-weighted mean valence of the profile
    r = np.linspace(0, 4.0, 20001)
    w = 4 * np.pi * r**2
    expected = (part.valence_at(r) * w).sum() / w.sum()
    assert mean_valence == pytest.approx(expected, abs=0.03)  # bins are 0.1 wide
    assert vol_k[GRID <= 2.1 + 1e-9].sum() == 0  # nothing below the core state
    assert vol_k[np.isclose(GRID, 3.8)] > 0  # surface shell present


def test_void_removes_its_volume():
    part = Particle((0.0, 0.0, 0.0), 4.0, 2.0, 3.0, 1.0)
    void = Void((1.0, -0.5, 0.3), (1.0, 0.6, 0.8), ((0.8, -0.6, 0.0), (0.6, 0.8, 0.0), (0, 0, 1.0)))
    px = 0.03
    full = NMCPhantom([part]).project(GRID, (320, 320), px).sum() * px * px
    holed = NMCPhantom([Particle(part.center_um, 4.0, 2.0, 3.0, 1.0, (void,))])
    left = holed.project(GRID, (320, 320), px).sum() * px * px
    assert full - left == pytest.approx(4 / 3 * np.pi * 1.0 * 0.6 * 0.8, rel=0.01)


def test_projection_matches_voxelization_and_rotation_keeps_volume():
    ph = make_nmc_phantom(fov_um=(20.0, 20.0), n_particles=4, state_of_charge=0.5, seed=3,
                          radius_range_um=(2.0, 3.0))
    px = 0.1
    proj = ph.project(GRID, (200, 200), px)
    occ, val = ph.voxelize((120, 200, 200), px)
    vol_proj = proj.sum() * px**2
    vol_vox = occ.sum() * px**3
    assert vol_vox == pytest.approx(vol_proj, rel=0.02)
    # valence: volume-weighted means agree
    v_proj = (proj.sum(axis=(1, 2)) * GRID).sum() / proj.sum()
    v_vox = np.nansum(val * occ) / occ.sum()
    assert v_vox == pytest.approx(v_proj, abs=0.03)
    assert np.all(np.isnan(val[occ == 0]))
    rotated = ph.project(GRID, (200, 200), px, theta_rad=0.6).sum() * px**2
    assert rotated == pytest.approx(vol_proj, rel=0.01)


def test_origin_shifts_the_projection():
    ph = make_nmc_phantom(fov_um=(20.0, 20.0), n_particles=3, seed=1, radius_range_um=(2.0, 3.0))
    px = 0.2
    a = ph.project(GRID, (100, 100), px).sum(axis=0)
    b = ph.project(GRID, (100, 100), px, origin_um=(-3 * px, -5 * px)).sum(axis=0)
    # viewing from origin −s moves the content by +s pixels
    np.testing.assert_allclose(b[3:, 5:], a[:-3, :-5], atol=1e-5)


def test_soc_zero_is_uniform_ni2_and_soc_one_oxidised():
    reduced = make_nmc_phantom(state_of_charge=0.0, seed=0)
    proj = reduced.project(GRID, (128, 128), 41.0 / 128)
    assert proj[1:].max() == 0 and proj[0].max() > 0
    charged = make_nmc_phantom(state_of_charge=1.0, seed=0)
    p = charged.project(GRID, (128, 128), 41.0 / 128)
    assert (p.sum(axis=(1, 2)) * GRID).sum() / p.sum() > 3.3


def test_heterogeneous_particles_and_surface_first():
    ph = make_nmc_phantom(state_of_charge=0.5, seed=0)
    assert len(ph.particles) == 12
    surface = np.array([p.surface_valence for p in ph.particles])
    core = np.array([p.core_valence for p in ph.particles])
    assert np.all(surface >= core)
    assert np.ptp(surface) > 0.3  # each particle its own state of charge
    assert any(len(p.voids) for p in ph.particles)


def test_default_sample_is_within_two_absorption_lengths():
    ph = make_nmc_phantom(seed=0)
    thickness = ph.project(GRID, (256, 256), 41.0 / 256).sum(axis=0).max()
    mu_max = NiXanesModel().mu_grid_per_um(NiXanesModel().whiteline_ev(2.0)).max()
    assert 0.3 < mu_max * thickness <= 2.0


def test_bad_arguments_rejected():
    with pytest.raises(ValueError, match="state_of_charge must be in"):
        make_nmc_phantom(state_of_charge=1.5)
    with pytest.raises(ValueError, match="pixel_size_um must be > 0"):
        make_nmc_phantom().project(GRID, (8, 8), 0.0)
