"""Zone-plate optics relations against the numbers a beamline scientist would check."""

import numpy as np
import pytest

from txm_live.devices.optics import HC_KEV_NM, TXMOptics, ZonePlate, wavelength_nm

FXI = TXMOptics()


def test_wavelength_at_ni_edge():
    # 12.398 keV·Å / 8.333 keV = 1.4879 Å
    assert wavelength_nm(8333.0) == pytest.approx(0.148787, rel=1e-4)
    assert HC_KEV_NM == pytest.approx(1.23984)
    np.testing.assert_allclose(wavelength_nm([5000.0, 10000.0]), [0.247968, 0.123984], rtol=1e-6)


def test_wavelength_rejects_nonpositive_energy():
    with pytest.raises(ValueError, match="energy_ev must be > 0"):
        wavelength_nm(0.0)


def test_fxi_zone_plate_numbers():
    zp = ZonePlate()
    lam_m = 1.23984e-9 / 8.333
    f_expected_mm = 244e-6 * 30e-9 / lam_m * 1e3
    assert zp.focal_length_mm(8333.0) == pytest.approx(f_expected_mm, rel=1e-9)
    assert 48.5 < zp.focal_length_mm(8333.0) < 50.0  # "f ≈ 49 mm at 8.333 keV"
    assert zp.numerical_aperture(8333.0) == pytest.approx(lam_m * 1e9 / 60.0, rel=1e-9)
    assert 23.0 < zp.depth_of_focus_um(8000.0) < 24.0  # "~23 µm at 8 keV"
    assert zp.resolution_nm() == pytest.approx(36.6)
    # f scales with energy (a ZP is chromatic)
    assert zp.focal_length_mm(10000.0) / zp.focal_length_mm(8000.0) == pytest.approx(1.25)


def test_pixel_size_is_20_nm_unbinned():
    assert FXI.pixel_size_nm() == pytest.approx(20.0)
    assert FXI.pixel_size_nm(16) == pytest.approx(320.0)
    with pytest.raises(ValueError, match="binning must be >= 1"):
        FXI.pixel_size_nm(0)


@pytest.mark.parametrize("energy_ev", [5000.0, 7112.0, 8333.0, 12000.0, 15000.0])
def test_focus_positions_satisfy_lens_equation(energy_ev):
    p, big_l = FXI.focus_positions(energy_ev)
    q = big_l - p
    f = FXI.zone_plate.focal_length_mm(energy_ev)
    assert 1.0 / p + 1.0 / q == pytest.approx(1.0 / f, rel=1e-12)
    assert q / p == pytest.approx(32.5, rel=1e-12)
    state = FXI.imaging_state(energy_ev, p, big_l)
    assert abs(state.defocus_um) < 1e-6
    assert state.relative_magnification == pytest.approx(1.0)
    # In focus the blur is the ZP's own: an Airy spot of Rayleigh radius 1.22 dr ≈ 37 nm
    # has a best-fit Gaussian sigma of ~13 nm.
    assert 0.010 < state.blur_sigma_um < 0.015


def test_fixed_optics_defocus_and_blur_grow_with_energy_offset():
    p, big_l = FXI.focus_positions(8333.0)
    states = [FXI.imaging_state(8333.0 + de, p, big_l) for de in (1.0, 10.0, 100.0)]
    defocus = np.array([abs(s.defocus_um) for s in states])
    # Paraxial estimate: d(defocus) ≈ dp_conj/df · df with p_conj = fq/(q−f); at fixed q,
    # dp/df = (M+1)²/M² and df = f·dE/E.
    f = FXI.zone_plate.focal_length_mm(8333.0)
    expected = ((33.5 / 32.5) ** 2) * f * 1e3 * np.array([1.0, 10.0, 100.0]) / 8333.0
    np.testing.assert_allclose(defocus, expected, rtol=0.02)
    # 10 eV off focus already exceeds the ~24 µm depth of focus
    assert defocus[1] > states[1].depth_of_focus_um
    blur = [s.blur_sigma_um for s in states]
    assert blur[0] < blur[1] < blur[2]
    # the chief ray still passes the ZP centre: magnification q/p unchanged
    for s in states:
        assert s.magnification == pytest.approx(32.5)


def test_zone_plate_refocus_is_sharp_but_changes_magnification():
    p0, big_l = FXI.focus_positions(8333.0)
    e1 = 8533.0
    p1 = FXI.zone_plate_refocus(e1, big_l)
    f1 = FXI.zone_plate.focal_length_mm(e1)
    assert 1.0 / p1 + 1.0 / (big_l - p1) == pytest.approx(1.0 / f1, rel=1e-10)
    state = FXI.imaging_state(e1, p1, big_l)
    assert abs(state.defocus_um) < 1e-6
    # longer f with the detector fixed → ZP moves away from the sample → lower M
    assert p1 > p0
    assert state.relative_magnification < 0.99
    assert state.magnification == pytest.approx((big_l - p1) / p1)


def test_refocus_impossible_and_out_of_range_are_errors():
    with pytest.raises(ValueError, match="shorter than 4 f"):
        FXI.zone_plate_refocus(8333.0, 100.0)
    with pytest.raises(ValueError, match="outside the supported range"):
        FXI.focus_positions(20000.0)
    with pytest.raises(ValueError, match="need 0 < zp_z_mm < det_z_mm"):
        FXI.imaging_state(8333.0, 60.0, 50.0)
