"""Simulated ophyd devices: focus tracking through the energy device, clock, detector files."""
from __future__ import annotations

import numpy as np
import pytest
from bluesky import plan_stubs as bps


def frame_at(RE, bl, energy_ev):
    """Move the energy (with whatever focus tracking is on); return (transmission, truth).

    Takes a sample frame and a flat (sample moved out), so the transmission is free of
    the illumination pattern and the detector's gain pattern.
    """
    RE(bps.mv(bl.energy, energy_ev))
    bl.detector.trigger().wait(10)
    truth = bl.detector.truth_log[-1]["truth"]
    RE(bps.mv(bl.sample_stage.x, 1000.0))
    bl.detector.trigger().wait(10)
    RE(bps.mv(bl.sample_stage.x, 0.0))
    sample, flat = (bl.detector._file._datasets["sample"][-2:].astype(float) - bl.model.config.dark_counts)
    return sample / np.clip(flat, 1, None), truth


def sharpness(transmission):
    """Steepest particle edges: the 99.5th percentile of the gradient magnitude.

    A 3×3 median and 1 px smoothing keep defects and photon noise out of it; blur spreads
    each edge and lowers it. Compare frames of similar contrast (both above the edge).
    """
    from scipy.ndimage import gaussian_filter, median_filter

    smooth = gaussian_filter(median_filter(transmission, size=3), 1.0)
    gy, gx = np.gradient(smooth)
    return float(np.percentile(np.hypot(gy, gx), 99.5))


@pytest.fixture
def staged(sim_beamline):
    sim_beamline.detector.stage()
    yield sim_beamline
    sim_beamline.detector.unstage()


def test_tracking_holds_focus_and_magnification_over_400_ev(RE, staged):
    bl = staged
    truths, sharp = [], []
    for e in (8133.0, 8333.0, 8433.0, 8533.0):
        image, truth = frame_at(RE, bl, e)
        truths.append(truth)
        sharp.append(sharpness(image))
        zp_z, det_z = bl.energy.optics.focus_positions(e)
        assert bl.zone_plate.z.position == pytest.approx(zp_z) and bl.detector_stage.z.position == pytest.approx(det_z)
    assert max(t.blur_sigma_px for t in truths) < 0.5
    assert np.ptp([t.magnification for t in truths]) < 1e-9
    assert sharp[3] == pytest.approx(sharp[2], rel=0.15)  # post-edge frames: same contrast, same focus


def test_without_tracking_the_image_blurs(RE, staged):
    bl = staged
    image_focused, truth_focused = frame_at(RE, bl, 8433.0)
    bl.energy.focus_mode.put("off")
    zp_before = bl.zone_plate.z.position
    image_off, truth_off = frame_at(RE, bl, 8533.0)
    assert bl.zone_plate.z.position == zp_before
    assert truth_off.blur_sigma_px > 5 * max(truth_focused.blur_sigma_px, 0.2)
    assert sharpness(image_off) < 0.7 * sharpness(image_focused)  # 2.4 px blur: edges ~45 % less steep


def test_zone_plate_only_refocus_changes_magnification(RE, staged):
    bl = staged
    _, truth_before = frame_at(RE, bl, 8333.0)
    bl.energy.focus_mode.put("zone_plate")
    det_before = bl.detector_stage.z.position
    _, truth_after = frame_at(RE, bl, 8533.0)
    assert bl.detector_stage.z.position == det_before
    assert truth_after.blur_sigma_px < 1.0
    assert abs(truth_after.magnification / truth_before.magnification - 1) > 0.01


def test_energy_outside_the_optics_range_is_refused_before_moving(RE, sim_beamline):
    bl = sim_beamline
    before = (bl.energy.position, bl.zone_plate.z.position)
    with pytest.raises(ValueError, match="outside the range"):
        bl.energy.set(30000.0)
    with pytest.raises(ValueError, match="focus_mode"):
        bl.energy.focus_mode.put("sideways")
        bl.energy.set(8400.0)
    assert (bl.energy.position, bl.zone_plate.z.position) == before


def test_moves_take_simulated_time_in_parallel(RE, sim_beamline):
    bl = sim_beamline
    zp0, det0 = bl.zone_plate.z.position, bl.detector_stage.z.position
    zp1, det1 = bl.energy.optics.focus_positions(8353.0)
    # closed form: each axis takes |Δ| / speed + settle; energy 20 eV at 20 eV/s + 0.5 s
    # = 1.5 s, ZP ~0.12 mm at 2 mm/s + 0.1 s ≈ 0.16 s, detector ~4 mm at 20 mm/s + 0.2 s
    # ≈ 0.40 s
    durations = [abs(8353.0 - bl.energy.position) / bl.energy.speed + bl.energy.settle_s,
                 abs(zp1 - zp0) / bl.zone_plate.z.speed + bl.zone_plate.z.settle_s,
                 abs(det1 - det0) / bl.detector_stage.z.speed + bl.detector_stage.z.settle_s]
    t0 = bl.clock.now()
    RE(bps.mv(bl.energy, 8353.0))  # ZP and detector follow, alongside
    bl.clock.settle()
    elapsed = bl.clock.now() - t0
    assert durations[0] == pytest.approx(1.5)
    assert elapsed == pytest.approx(max(durations), abs=1e-9)  # achieved: exactly 1.500 s
    # negative control: one move after the other would take their sum, 2.06 s
    assert sum(durations) - elapsed > 0.5


def test_unstaged_detector_refuses_to_trigger(sim_beamline):
    with pytest.raises(RuntimeError, match="staged"):
        sim_beamline.detector.trigger()
