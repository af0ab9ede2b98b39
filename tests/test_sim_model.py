"""SimTXM end to end: focus, magnification, drift, flats/darks — measured from the images."""

import numpy as np
import pytest
from scipy import ndimage
from skimage.registration import phase_cross_correlation

from simulators.model import SimConfig, SimTXM

STILL = dict(drift_rate_nm_per_s=(0.0, 0.0), drift_oscillation_nm=0.0,
             drift_walk_nm_per_sqrt_s=0.0, mono_jump_nm=0.0)


class Shot:
    """A frame and the ZP/detector positions it was taken with."""

    def __init__(self, frame, zp, det):
        self.frame, self.truth, self.image, self.zp, self.det = frame, frame.truth, frame.image, zp, det


def absorbance(sim, shot, *, time_s=None, n_darks=2):
    """-ln((I-D)/(F-D)) with a fresh flat and dark taken right after ``shot``."""
    t = shot.truth
    kw = dict(energy_ev=t.energy_ev, zp_z_mm=shot.zp, det_z_mm=shot.det,
              exposure_s=t.exposure_s, time_s=t.time_s if time_s is None else time_s)
    flat = sim.acquire(sample_x_um=1e3, **kw).image.astype(float)
    dark = np.mean([sim.acquire(shutter_open=False, **kw).image for _ in range(n_darks)], axis=0)
    num = np.maximum(shot.image - dark, 1.0)
    return -np.log(num / np.maximum(flat - dark, 1.0))


def take(sim, energy_ev, *, optics_ev=None, refocus_zp_only_from=None, **kw):
    """Acquire at ``energy_ev`` with ZP/detector focused for ``optics_ev`` (default: tracked)."""
    if refocus_zp_only_from is not None:
        _, det = sim.optics.focus_positions(refocus_zp_only_from)
        zp = sim.optics.zone_plate_refocus(energy_ev, det)
    else:
        zp, det = sim.optics.focus_positions(energy_ev if optics_ev is None else optics_ev)
    return Shot(sim.acquire(energy_ev=energy_ev, zp_z_mm=zp, det_z_mm=det, **kw), zp, det)


def fitted_blur_px(sim, frame, meas):
    """Blur sigma (px) that best explains the measured absorbance, given the truth drift.

    Template: the noise-free transmission, shifted and Gaussian-blurred in Fourier space
    (exact for sub-pixel sigma); defects are removed from the measurement by a 3×3
    median before comparing.
    """
    t = frame.truth
    spec = ndimage.fourier_shift(np.fft.fft2(np.exp(-sim.absorbance(t.energy_ev))), t.drift_px)
    ky = np.fft.fftfreq(spec.shape[0])[:, None]
    kx = np.fft.fftfreq(spec.shape[1])[None, :]
    k2 = ky**2 + kx**2
    clean = ndimage.median_filter(meas, 3)
    inner = (slice(12, -12), slice(12, -12))
    sigmas = np.arange(0.0, 4.001, 0.05)
    err = []
    for s in sigmas:
        model = np.fft.ifft2(spec * np.exp(-2 * np.pi**2 * s**2 * k2)).real
        model = ndimage.median_filter(-np.log(np.maximum(model, 1e-6)), 3)
        err.append(np.mean((clean - model)[inner] ** 2))
    return sigmas[int(np.argmin(err))]


def sharpness(a, lo=0.1, hi=0.25):
    """Fraction of the image's power at 0.1–0.25 cycles/px (fine detail); scale-free.

    A 3×3 median first removes defect pixels, which would otherwise add white power.
    """
    a = ndimage.median_filter(a, 3)
    power = np.abs(np.fft.fft2(a - a.mean())) ** 2
    k = np.hypot(np.fft.fftfreq(a.shape[0])[:, None], np.fft.fftfreq(a.shape[1])[None, :])
    return power[(k > lo) & (k < hi)].sum() / power.sum()


def centroids(a, threshold):
    """Absorbance-weighted particle centroids (a 3×3 median removes defect pixels)."""
    a = ndimage.median_filter(a, 3)
    labels, n = ndimage.label(a > threshold)
    return np.array(ndimage.center_of_mass(a, labels, range(1, n + 1)))


def test_focus_tracking_keeps_blur_and_magnification_over_400_ev():
    sim = SimTXM(SimConfig(**STILL, seed=1))
    blur, mags = [], []
    for i, energy in enumerate((8133.0, 8333.0, 8533.0)):
        frame = take(sim, energy, time_s=10.0 * i)
        blur.append(fitted_blur_px(sim, frame, absorbance(sim, frame)))
        mags.append(frame.truth.magnification)
        assert frame.truth.blur_sigma_px < 0.1
    # the in-focus sigma (0.04 px of 320 nm) is below what 128² images resolve: require
    # every fit to stay sub-pixel-sharp (fixed optics over this range give ~5 px)
    assert max(blur) <= 0.5 and np.ptp(blur) <= 0.3
    assert np.ptp(mags) == pytest.approx(0.0, abs=1e-9)


def test_fixed_optics_blur_grows_measurably():
    sim = SimTXM(SimConfig(**STILL, seed=2))
    e0, e1 = 8333.0, 8433.0
    sharp = take(sim, e1, time_s=0.0)
    a_sharp = absorbance(sim, sharp)
    blurred = take(sim, e1, optics_ev=e0, time_s=5.0)
    a_blur = absorbance(sim, blurred)
    # truth: ~190 µm defocus, σ = NA·|dz|/2 ≈ 0.75 µm ≈ 2.3 px of 320 nm
    assert abs(blurred.truth.defocus_um) > 150
    assert 2.0 < blurred.truth.blur_sigma_px < 2.8
    assert blurred.truth.magnification == pytest.approx(32.5)
    assert sharpness(a_blur) < 0.2 * sharpness(a_sharp)
    assert fitted_blur_px(sim, blurred, a_blur) == pytest.approx(blurred.truth.blur_sigma_px, abs=0.3)


def test_zone_plate_only_refocus_changes_magnification_measurably():
    sim = SimTXM(SimConfig(shape=(256, 256), **STILL, seed=3))
    e_ref, e1 = 8400.0, 8600.0
    ref = take(sim, e_ref, time_s=0.0)
    moved = take(sim, e1, refocus_zp_only_from=e_ref, time_s=5.0)
    rel = moved.truth.magnification / 32.5
    assert abs(rel - 1.0) > 0.015 and moved.truth.blur_sigma_px < 0.2
    c0 = centroids(absorbance(sim, ref), 0.15)
    c1 = centroids(absorbance(sim, moved), 0.15)
    assert len(c0) == len(c1) >= 6
    d0 = np.sort(np.hypot(*(c0[:, None] - c0[None]).transpose(2, 0, 1))[np.triu_indices(len(c0), 1)])
    d1 = np.sort(np.hypot(*(c1[:, None] - c1[None]).transpose(2, 0, 1))[np.triu_indices(len(c1), 1)])
    far = d0 > 40
    assert np.median(d1[far] / d0[far]) == pytest.approx(rel, abs=0.003)


def test_drift_truth_matches_pixels_shifted():
    cfg = SimConfig(drift_rate_nm_per_s=(40.0, -25.0), mono_jump_nm=100.0, seed=4,
                    flat_counts=5e4)
    sim = SimTXM(cfg)
    f1 = take(sim, 8400.0, time_s=0.0)
    a1 = absorbance(sim, f1)
    f2 = take(sim, 8410.0, time_s=60.0)  # mono moved → jump, plus 60 s of drift
    a2 = absorbance(sim, f2)
    assert sim.drift.n_jumps >= 1
    true = np.subtract(f2.truth.drift_px, f1.truth.drift_px)
    assert np.hypot(*true) > 5.0
    est, _, _ = phase_cross_correlation(a1, a2, upsample_factor=100)
    # CONVENTIONS: the registration shift is −(drift_img − drift_ref)
    np.testing.assert_allclose(est, -true, atol=0.1)


def test_stage_offset_shifts_image_and_far_offset_gives_flat():
    sim = SimTXM(SimConfig(**STILL, seed=5))
    px_um = sim.pixel_size_nm / 1e3
    base = take(sim, 8400.0)
    a0 = absorbance(sim, base)
    moved = take(sim, 8400.0, sample_x_um=7.3 * px_um, sample_y_um=-2.2 * px_um)
    a1 = absorbance(sim, moved)
    np.testing.assert_allclose(moved.truth.stage_offset_px, (-2.2, 7.3), atol=1e-9)
    est, _, _ = phase_cross_correlation(a0, a1, upsample_factor=100)
    np.testing.assert_allclose(est, (2.2, -7.3), atol=0.1)
    out = take(sim, 8400.0, sample_x_um=2 * sim.fov_um[1])
    assert not out.truth.sample_in_beam and base.truth.sample_in_beam
    det = sim.detector
    good = np.ones(sim.shape, bool)
    good[det.hot_pixels] = good[det.dead_pixels] = False
    expected = det.illumination(0.0, 8400.0)[good] * det.gain[good]
    ratio = (out.image[good] - det.dark[good]) / expected
    assert np.std(ratio) < 0.012  # shot noise only: no sample contrast
    ratio_in = (base.image[good] - det.dark[good]) / expected
    assert np.std(ratio_in) > 0.05


def test_dark_when_shutter_closed_and_exposure_scaling():
    sim = SimTXM(SimConfig(seed=6))
    dark = take(sim, 8333.0, shutter_open=False)
    assert not dark.truth.shutter_open
    assert np.median(dark.image) == pytest.approx(100, abs=2)
    flat1 = take(sim, 8333.0, sample_x_um=1e3, exposure_s=0.05)
    flat2 = take(sim, 8333.0, sample_x_um=1e3, exposure_s=0.1)
    ratio = (np.median(flat2.image) - 100) / (np.median(flat1.image) - 100)
    assert ratio == pytest.approx(2.0, rel=0.01)


def test_noise_free_absorbance_matches_measured():
    sim = SimTXM(SimConfig(**STILL, seed=7))
    for energy in (8300.0, 8342.0):
        frame = take(sim, energy)
        meas = absorbance(sim, frame)
        true = sim.absorbance(energy)
        assert np.median(np.abs(meas - true)) < 0.01
        assert true.max() > 0.2


def test_mono_move_adds_jump_only_on_energy_change():
    sim = SimTXM(SimConfig(seed=8))
    take(sim, 8333.0)
    take(sim, 8333.0, time_s=1.0)
    assert sim.drift.n_jumps == 0
    take(sim, 8334.0, time_s=2.0)
    assert sim.drift.n_jumps == 1


def test_seeded_reproducibility():
    def run(seed):
        sim = SimTXM(SimConfig(seed=seed))
        return [take(sim, e, time_s=3.0 * i) for i, e in enumerate((8330.0, 8340.0, 8350.0))]

    a, b, c = run(0), run(0), run(1)
    for fa, fb in zip(a, b):
        assert np.array_equal(fa.image, fb.image) and fa.truth == fb.truth
    assert not np.array_equal(a[0].image, c[0].image)


def test_rotation_keeps_integrated_absorbance():
    sim = SimTXM(SimConfig(seed=9))
    a0 = sim.absorbance(8400.0)
    a1 = sim.absorbance(8400.0, theta_rad=np.pi / 2)
    assert not np.allclose(a0, a1)
    assert a1.sum() == pytest.approx(a0.sum(), rel=0.02)


def test_config_validation():
    with pytest.raises(ValueError, match="must bin sensor_shape"):
        SimTXM(SimConfig(shape=(128, 256)))


def test_rotation_axis_is_where_the_truth_says():
    """Projections 180° apart are mirror images about the true centre of rotation."""
    sim = SimTXM(SimConfig(**STILL, rotation_axis_offset_um=1.1, wobble_um=0.0, seed=10))
    a0 = sim.absorbance(8400.0)
    a180 = sim.absorbance(8400.0, theta_rad=np.pi)
    zp, det = sim.optics.focus_positions(8400.0)
    frame = sim.acquire(energy_ev=8400.0, zp_z_mm=zp, det_z_mm=det, theta_rad=np.pi)
    centre = frame.truth.rotation_center_px
    off_px = 1.1e3 / sim.pixel_size_nm
    assert centre == pytest.approx((sim.shape[1] - 1) / 2 + off_px)
    est, _, _ = phase_cross_correlation(a0, a180[:, ::-1], upsample_factor=100)
    # flipping about column c_r maps x → 2 c_r − x: a mirror about the detector centre
    # leaves a residual shift of 2 (c_r − centre of the detector)
    assert est[1] == pytest.approx(2 * (centre - (sim.shape[1] - 1) / 2), abs=0.1)
    assert est[0] == pytest.approx(0.0, abs=0.1)


def _wobble_drift_px(wobble_um, seed=11):
    """drift_px of a still sample at theta = 0, 90, 180, 270 degrees."""
    sim = SimTXM(SimConfig(**STILL, wobble_um=wobble_um, seed=seed))
    zp, det = sim.optics.focus_positions(8400.0)
    drift = [np.array(sim.acquire(energy_ev=8400.0, zp_z_mm=zp, det_z_mm=det, theta_rad=th).truth.drift_px)
             for th in (0.0, np.pi / 2, np.pi, 3 * np.pi / 2)]
    return sim, drift


def _wobble_amplitudes_px(drift):
    """Radii (y, x) of the wobble circle through the four drifts, whatever its phase.

    Closed form of a once-per-turn run-out d(θ) = a (cos(θ + φ) − cos φ): d(90°) + d(270°)
    = d(180°) = −2 a cos φ and d(270°) − d(90°) = 2 a sin φ, so a = |(d270 − d90)/2, d180/2|.
    """
    _, d90, d180, d270 = drift
    return np.hypot((d270 - d90) / 2, d180 / 2)


def test_wobble_is_zero_at_theta_zero_and_counted_as_drift():
    sim, drift = _wobble_drift_px(0.5)
    assert tuple(drift[0]) == (0.0, 0.0)
    np.testing.assert_allclose(drift[1] + drift[3], drift[2], atol=1e-12)  # a circle
    # 0.5 µm run-out along x (half of it along y from axis tilt) at 320 nm per pixel:
    # 1.5625 px and 0.78125 px (achieved to 1e-15; |drift| at 90° is 1.98 px)
    a_px = 0.5e3 / sim.pixel_size_nm
    np.testing.assert_allclose(_wobble_amplitudes_px(drift), [0.5 * a_px, a_px], rtol=1e-9)
    # negative control: twice the wobble (|drift| 3.95 px at 90°, inside the old
    # 0.1-4.7 px range) and none give other amplitudes
    for wobble_um in (1.0, 0.0):
        _, other = _wobble_drift_px(wobble_um)
        assert not np.allclose(_wobble_amplitudes_px(other), [0.5 * a_px, a_px], rtol=1e-3)


def test_large_stage_offset_brings_in_sample_from_outside_the_view():
    """A half-FOV move re-projects the phantom: the image equals the moved sample's."""
    sim = SimTXM(SimConfig(**STILL, wobble_um=0.0, seed=13, shape=(128, 128)))
    px_um = sim.pixel_size_nm / 1e3
    dx = 50  # px: far beyond the cached projection margin
    shot = take(sim, 8400.0, sample_x_um=dx * px_um)
    meas = absorbance(sim, shot)
    assert shot.truth.sample_in_beam
    # independent expectation from the phantom's public projection, viewed from −dx
    proj = sim.sample.project(sim.spectra.valence_grid, sim.shape, px_um,
                              origin_um=(0.0, -dx * px_um))
    expected = np.tensordot(sim.spectra.mu_grid_per_um(8400.0), proj, axes=1)
    sample = (expected > 0.05) | (sim.absorbance(8400.0) > 0.05)
    err = np.median(np.abs(meas - expected)[sample])
    assert err < 0.01
    assert np.median(np.abs(meas - sim.absorbance(8400.0))[sample]) > 10 * err  # it moved


def test_invalid_acquire_arguments_change_nothing():
    sim = SimTXM(SimConfig(seed=14))
    zp, det = sim.optics.focus_positions(8333.0)
    sim.acquire(energy_ev=8333.0, zp_z_mm=zp, det_z_mm=det)
    with pytest.raises(ValueError, match="exposure_s must be > 0"):
        sim.acquire(energy_ev=8340.0, zp_z_mm=zp, det_z_mm=det, exposure_s=0.0)
    with pytest.raises(ValueError, match="outside the supported range"):
        sim.acquire(energy_ev=30000.0, zp_z_mm=zp, det_z_mm=det)
    assert sim.drift.n_jumps == 0
