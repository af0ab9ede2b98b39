"""Projection clean-up: normalization checks, stripes/rings, zingers, jitter.

Each against the simulator's truth (jitter, the phantom's attenuation) or a reference
implementation (algotom's sorting-based stripe removal), with a negative control.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from simulators import SimConfig, make_tomo_sim, simulate_tomo_scan
from simulators.tomography import attenuation_volume
from txm_live.analysis import (
    FlatDarkWarning,
    TomoInputWarning,
    correct_jitter,
    estimate_jitter,
    fov_radius_px,
    normalize_projections,
    reconstruct,
    remove_outliers,
    remove_stripes,
)

N = 128
ROWS = slice(16, 112)


def nrmse(recon, truth, center):
    yy, xx = np.indices((N, N))
    r = fov_radius_px(N, center) - 1.0
    m = (yy - N // 2) ** 2 + (xx - N // 2) ** 2 < r * r
    a, t = recon[..., m].astype(np.float64).ravel(), truth[..., m].astype(np.float64).ravel()
    gain = (a @ t) / (a @ a)
    return float(np.sqrt(np.mean((gain * a - t) ** 2)) / np.sqrt(np.mean(t * t)))


@pytest.fixture(scope="module")
def jitter_scan():
    """Large vertical wobble (1 µm ≈ 3 px) and a random-walk drift: not a rigid rotation."""
    cfg = SimConfig(shape=(N, N), seed=2, rotation_axis_offset_um=1.5, wobble_um=1.0,
                    drift_rate_nm_per_s=(3.0, 5.0), drift_walk_nm_per_sqrt_s=40.0)
    sim = make_tomo_sim(cfg)
    scan = simulate_tomo_scan(sim, 241, mode="fly", flats_when="both")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FlatDarkWarning)
        absorb = np.nan_to_num(normalize_projections(scan.projections, scan.flats, scan.darks))
    truth = attenuation_volume(sim, scan.energy_ev, shift_px=scan.object_shift_px)
    return scan, absorb, truth


def test_jitter_estimate_matches_truth(jitter_scan):
    scan, absorb, _ = jitter_scan
    est = estimate_jitter(absorb, scan.theta_rad)
    true = scan.jitter_px
    err = est - true
    assert true[:, 0].std() > 0.9  # the vertical wobble really is ~1 px rms
    assert np.sqrt((err**2).mean(axis=0)).max() < 0.1  # achieved 0.07 (dy), 0.02 (dx) px rms
    assert np.corrcoef(est[:, 0], true[:, 0])[0, 1] > 0.99


def test_jitter_correction_sharpens_the_volume(jitter_scan):
    scan, absorb, truth = jitter_scan
    corrected, jitter = correct_jitter(absorb, scan.theta_rad)
    c = scan.center_px
    before = nrmse(reconstruct(absorb, scan.theta_rad, c)[ROWS], truth[ROWS], c)
    after = nrmse(reconstruct(corrected, scan.theta_rad, c)[ROWS], truth[ROWS], c)
    ideal, _ = correct_jitter(absorb, scan.theta_rad, jitter_px=scan.jitter_px)
    best = nrmse(reconstruct(ideal, scan.theta_rad, c)[ROWS], truth[ROWS], c)
    print(f"NRMSE: no correction {before:.3f}, corrected {after:.3f}, true jitter {best:.3f}")
    assert before > 1.8 * after  # achieved 0.30 → 0.14: the negative control is `before`
    assert after < best + 0.01  # as good as correcting with the true jitter
    assert jitter.shape == (absorb.shape[0], 2)


def _ring_data(jitter_scan):
    scan, absorb, truth = jitter_scan
    corrected, _ = correct_jitter(absorb, scan.theta_rad, jitter_px=scan.jitter_px)
    rng = np.random.default_rng(5)
    offsets = np.zeros(N, np.float32)
    cols = rng.choice(np.arange(20, 108), 10, replace=False)
    offsets[cols] = rng.choice([-1, 1], 10) * rng.uniform(0.05, 0.15, 10)  # bad pixels
    return scan, corrected, corrected + offsets, truth


def test_remove_stripes_removes_rings(jitter_scan):
    scan, clean, striped, truth = _ring_data(jitter_scan)
    c = scan.center_px

    def err(tomo):
        return nrmse(reconstruct(tomo, scan.theta_rad, c)[ROWS], truth[ROWS], c)

    err_clean, err_rings = err(clean), err(striped)
    fixed = remove_stripes(striped)
    err_fixed = err(fixed)
    print(f"NRMSE clean {err_clean:.3f}, with stripes {err_rings:.3f}, removed {err_fixed:.3f}")
    assert err_rings > err_clean + 0.08  # negative control: achieved 0.139 → 0.246
    assert err_fixed < err_clean + 0.03  # achieved 0.160 (size 9)
    assert err(remove_stripes(clean)) < err_clean + 0.006  # stripe-free data: achieved +0.003
    assert err(remove_stripes(striped, size=5)) < err_clean + 0.025  # achieved 0.155
    assert fixed.dtype == np.float32 and fixed.shape == striped.shape
    with pytest.raises(ValueError, match=r"method must be one of \('mean', 'sorting'\)"):
        remove_stripes(striped, method="wavelet")
    with pytest.raises(ValueError, match=r"size must be an odd integer >= 3; got 4"):
        remove_stripes(striped, size=4)


def test_remove_stripes_sorting_matches_algotom(jitter_scan):
    """The 'sorting' method is Vo's algorithm 3 as algotom implements it."""
    from algotom.prep.removal import remove_stripe_based_sorting

    _, _, striped, _ = _ring_data(jitter_scan)
    ours = remove_stripes(striped[:, 60:64], method="sorting", size=21)
    ref = np.stack([remove_stripe_based_sorting(striped[:, r], size=21, dim=1)
                    for r in range(60, 64)], axis=1)
    diff = np.abs(ours - ref)
    # identical but for ties in the sort (2 of 123 392 values swap with a neighbour)
    assert np.mean(diff > 1e-6) < 1e-4
    assert diff.max() < 1e-3


def test_remove_outliers(jitter_scan):
    scan, clean, _, _ = _ring_data(jitter_scan)
    rng = np.random.default_rng(7)
    hit = (rng.integers(0, clean.shape[0], 300), rng.integers(0, N, 300), rng.integers(0, N, 300))
    dirty = clean.copy()
    dirty[hit] += rng.uniform(1.0, 3.0, 300).astype(np.float32)  # zingers: +1…3 absorbance
    cleaned, n = remove_outliers(dirty)
    assert np.abs(cleaned[hit] - clean[hit]).max() < 0.3  # every zinger back near its value
    untouched, n_false = remove_outliers(clean)
    # few changes on data without added zingers (achieved 0.07 %: mostly the simulated
    # detector's hot/dead pixels); the 6σ threshold leaves edges moving across pixels alone
    assert n_false < 0.001 * clean.size
    assert 300 <= n <= 300 + 2 * n_false + 5
    with pytest.raises(ValueError, match=r"n_angles >= 3"):
        remove_outliers(clean[:2])


def test_normalize_bad_calibration_frames(jitter_scan):
    scan, _, _ = jitter_scan
    proj = scan.projections[:20]
    with pytest.raises(ValueError, match=r"no darks: a tomography scan needs shutter-closed"):
        normalize_projections(proj, scan.flats, None)
    with pytest.raises(ValueError, match=r"no flats: a tomography scan needs sample-out"):
        normalize_projections(proj, scan.flats[:0], scan.darks)
    with pytest.raises(ValueError, match=r"flat field is not above the dark in any pixel"):
        normalize_projections(proj, np.zeros_like(scan.flats), scan.darks)
    # NaN flat pixels: stated fallback — those pixels are NaN (warned), and reconstruct
    # fills them from their row neighbours (warned again)
    flats = scan.flats.astype(np.float32)
    flats[:, 40, 70] = np.nan
    with pytest.warns(FlatDarkWarning, match=r"pixels set to NaN"):
        absorb = normalize_projections(scan.projections, flats, scan.darks)
    assert np.isnan(absorb[:, 40, 70]).all()
    with pytest.warns(TomoInputWarning, match=r"non-finite absorbance pixels replaced"):
        rec = reconstruct(absorb[:, 38:42], scan.theta_rad, scan.center_px)
    assert np.isfinite(rec).all()
