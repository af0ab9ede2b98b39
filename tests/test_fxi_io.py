"""FXI HDF5 files in and out: layouts recognised, units converted once, zeros as invalid
pixels, FXI's exact export layout written, mislabelled files refused.

Fixture files are written by ``tests/fxi_beamline.py`` (plain h5py, FXI's export
reductions) from scans of the simulated TXM, never by the code under test.
"""
from __future__ import annotations

import h5py
import numpy as np
import pytest
from fxi_beamline import (
    fxi_magnification,
    simulate_fly_scan,
    write_fly_scan_like_fxi,
    write_raw_xanes_like_txm_live_0_1,
    write_xanes_scan_like_fxi,
)

from simulators.model import SimConfig, SimTXM
from simulators.phantom import make_nmc_phantom
from simulators.stacks import simulate_xanes_stack
from txm_live.energies import xanes_energy_list
from txm_live.io import (
    FxiLayoutError,
    FxiLayoutWarning,
    fxi_fly_scan_from_frames,
    fxi_xanes_from_frames,
    nearest_flat_rows,
    open_fxi_xanes3d,
    parse_pixel_size_nm,
    read_fxi,
    read_fxi_fly_scan,
    read_fxi_xanes,
    write_fxi_fly_scan,
    write_fxi_xanes,
    write_maps_h5,
)

ENERGIES = xanes_energy_list(8333.0)[::11][::-1]  # 8 energies, high → low as FXI scans


@pytest.fixture(scope="module")
def sim():
    # Dead pixels read the dark level. Without read noise they read it exactly, so FXI's
    # export divides 0 by 0 there and writes its 0 marker (as for any pixel whose flat
    # equals its dark); more of them than by default so there are zeros to find.
    return SimTXM(SimConfig(shape=(64, 64), seed=4, dead_pixel_fraction=2e-3, read_noise_counts=0.0),
                  sample=make_nmc_phantom(state_of_charge=0.5, seed=4))


@pytest.fixture(scope="module")
def stack(sim):
    return simulate_xanes_stack(sim, ENERGIES, n_darks=3)


@pytest.fixture(scope="module")
def fly(sim):
    return simulate_fly_scan(sim, np.linspace(-90.0, 90.0, 13), n_flats=3, n_darks=5)


@pytest.fixture
def xanes_file(tmp_path, stack, sim):
    return write_xanes_scan_like_fxi(tmp_path / "xanes_scan2_id_101.h5", stack,
                                     magnification=fxi_magnification(sim))


@pytest.fixture
def fly_file(tmp_path, fly):
    return write_fly_scan_like_fxi(tmp_path / "fly_scan_id_202.h5", fly, magnification=324.0)


def _expected_transmission(stack):
    """FXI's normalization, computed here in float64 from the raw simulated frames."""
    dark = stack.darks.astype(np.float64).mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = ((stack.frames - dark) / (stack.flats - dark)).astype(np.float32)
    return t


# --------------------------------------------------------------------------- 2D XANES in
def test_fxi_xanes_file_reads_as_transmission_with_units_converted(xanes_file, stack, sim):
    data = read_fxi_xanes(xanes_file)
    assert data.layout == "xanes2d" and data.signal == "transmission"
    assert "img_xanes holds transmission" in data.layout_reason
    np.testing.assert_allclose(data.energies_ev, stack.energies_ev, rtol=0, atol=1e-9)  # keV → eV
    assert data.magnification == pytest.approx(325.0)
    assert data.pixel_size_nm == pytest.approx(6500.0 / 325.0)  # '20.0nm'
    assert (data.uid, data.scan_id, data.note, data.scan_time) == ("3b1c0e7a-sim", 101, "simulated NMC", 1.7e9)
    assert data.transmission.dtype == np.float32 and data.transmission.shape == stack.frames.shape
    assert data.frames is None and data.flat_avg.shape == stack.flats.shape and data.dark_avg.shape == (1, 64, 64)
    expected = _expected_transmission(stack)
    ok = np.isfinite(expected) & (expected != 0)
    np.testing.assert_array_equal(data.transmission[ok], expected[ok])


def test_fxi_zeros_are_invalid_pixels_never_transmission_zero(xanes_file, stack):
    with h5py.File(xanes_file) as f:
        on_disk = f["img_xanes"][()]
    zeros = on_disk == 0
    # the simulated dead pixels sit exactly at the dark level: FXI divided 0 by 0, wrote 0
    assert zeros.sum() >= stack.frames.shape[0] * 8
    data = read_fxi_xanes(xanes_file)
    np.testing.assert_array_equal(data.valid, ~zeros)
    assert np.isnan(data.transmission[zeros]).all()
    assert not (data.transmission == 0).any()


def test_flat_rows_from_the_nearest_energy_with_flats():
    np.testing.assert_array_equal(nearest_flat_rows([0, 0, 3, 6], 8), [0, 0, 3, 3, 3, 6, 6, 6])
    np.testing.assert_array_equal(nearest_flat_rows([1, 3], 4), [1, 1, 1, 3])  # tie at 2 → earlier


# --------------------------------------------------------------------------- fly scan in
def test_fly_scan_reads_angles_energy_raw_stacks_and_averages_exactly(fly_file, fly):
    data = read_fxi(fly_file)
    assert data.layout == "fly_scan" and "raw counts" in data.layout_reason
    np.testing.assert_array_equal(data.theta_rad, np.deg2rad(fly.angles_deg))
    assert data.theta_rad[0] == pytest.approx(-np.pi / 2) and data.theta_rad[-1] == pytest.approx(np.pi / 2)
    assert data.energy_ev == pytest.approx(8400.0, abs=1e-9)
    for got, want in ((data.projections, fly.projections), (data.flats, fly.flats), (data.darks, fly.darks)):
        assert got.dtype == np.uint16
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(data.flat_avg, np.median(fly.flats, axis=0, keepdims=True).astype(np.float32))
    np.testing.assert_array_equal(data.dark_avg, np.median(fly.darks, axis=0, keepdims=True).astype(np.float32))
    assert (data.x_ini_um, data.y_ini_um, data.z_ini_um) == (12.5, -3.25, 0.0)
    assert data.r_ini_rad == pytest.approx(-np.pi / 2)
    assert data.magnification == 324.0 and data.pixel_size_nm == pytest.approx(6500.0 / 324.0)
    assert (data.uid, data.scan_id) == ("9d2f-sim-fly", 202)


def test_pixel_size_strings():
    assert parse_pixel_size_nm("20.061728395061728nm") == pytest.approx(20.061728395061728)
    assert parse_pixel_size_nm(b"0.02um") == pytest.approx(20.0)
    assert parse_pixel_size_nm(np.array(b"21.3 nm")) == pytest.approx(21.3)
    assert parse_pixel_size_nm(21.3) == 21.3
    with pytest.raises(ValueError, match=r"unknown unit 'px' in 'Pixel Size' '20px'"):
        parse_pixel_size_nm("20px")
    with pytest.raises(ValueError, match=r"cannot parse 'Pixel Size' 'twenty nm'"):
        parse_pixel_size_nm("twenty nm")
    with pytest.raises(ValueError, match="must be a positive length"):
        parse_pixel_size_nm("-3nm")


def test_x_eng_units_attribute(tmp_path, xanes_file):
    with h5py.File(xanes_file, "a") as f:
        kev = f["X_eng"][()]
        del f["X_eng"]
        f["X_eng"] = kev * 1000.0
        f["X_eng"].attrs["units"] = "eV"
    np.testing.assert_allclose(read_fxi_xanes(xanes_file).energies_ev, kev * 1000.0)
    with h5py.File(xanes_file, "a") as f:
        f["X_eng"].attrs["units"] = "Ry"
    with pytest.raises(ValueError, match=r"unknown X_eng units 'Ry'"):
        read_fxi_xanes(xanes_file)


# --------------------------------------------------------------------------- refused files
def test_raw_counts_in_img_xanes_are_refused_unless_asked_for(tmp_path, stack):
    path = write_raw_xanes_like_txm_live_0_1(tmp_path / "xanes_legacy.h5", stack)
    with pytest.raises(FxiLayoutError, match=r"img_xanes holds raw detector counts \(uint16, .*median "
                                              r"[0-9.e+]+\)\), but FXI's 2D XANES layout stores transmission"
                                              r".*layout='xanes2d_raw'"):
        read_fxi(path)
    data = read_fxi(path, layout="xanes2d_raw")
    assert data.layout == "xanes2d_raw" and data.transmission is None
    np.testing.assert_array_equal(data.frames, stack.frames)
    np.testing.assert_array_equal(data.flat_energy_index, np.arange(ENERGIES.size))
    # a raw file that says so is read as raw without being asked
    labelled = write_raw_xanes_like_txm_live_0_1(tmp_path / "xanes_raw.h5", stack, label="counts")
    assert read_fxi(labelled).layout == "xanes2d_raw"


def test_transmission_labelled_as_counts_is_refused(xanes_file):
    with h5py.File(xanes_file, "a") as f:
        f["img_xanes"].attrs["signal"] = "counts"
    with pytest.raises(FxiLayoutError, match=r"img_xanes is labelled signal='counts' but holds transmission "
                                              r"\(float32, .*\).*layout='xanes2d'"):
        read_fxi(xanes_file)
    assert read_fxi(xanes_file, layout="xanes2d").layout == "xanes2d"


def test_forcing_a_layout_the_content_contradicts_warns(xanes_file):
    with pytest.warns(FxiLayoutWarning, match=r"reading img_xanes as counts because layout='xanes2d_raw' was "
                                              r"given, but it looks like transmission"):
        data = read_fxi(xanes_file, layout="xanes2d_raw")
    assert data.layout == "xanes2d_raw" and "given by the caller" in data.layout_reason


def test_fly_scan_holding_transmission_is_refused(fly_file):
    with h5py.File(fly_file, "a") as f:
        t = (f["img_tomo"][()] / f["img_bkg_avg"][()]).astype(np.float32)
        del f["img_tomo"]
        f["img_tomo"] = t
    with pytest.raises(FxiLayoutError, match=r"img_tomo should hold raw detector counts .* but it looks like "
                                              r"transmission \(float32"):
        read_fxi(fly_file)


def test_ambiguous_incomplete_and_inconsistent_files_name_their_datasets(tmp_path, xanes_file, fly_file):
    both = tmp_path / "both.h5"
    with h5py.File(both, "w") as f:
        f["X_eng"] = [8.3, 8.4]
        f["img_xanes"] = np.ones((2, 4, 4), np.float32)
        f["img_tomo"] = np.ones((2, 4, 4), np.uint16)
    with pytest.raises(FxiLayoutError, match=r"has both img_xanes .* and img_tomo .*; datasets "
                                              r"\['X_eng', 'img_tomo', 'img_xanes'\]"):
        read_fxi(both)
    neither = tmp_path / "neither.h5"
    with h5py.File(neither, "w") as f:
        f["data"] = np.ones((2, 4, 4))
    with pytest.raises(FxiLayoutError, match=r"not an FXI 2D XANES file .* it has datasets \['data'\]"):
        read_fxi(neither)
    with h5py.File(fly_file, "a") as f:
        del f["angle"]
    with pytest.raises(FxiLayoutError, match=r"layout 'fly_scan' needs datasets .*\['angle'\] missing"):
        read_fxi(fly_file)
    with h5py.File(xanes_file, "a") as f:
        del f["X_eng"]
        f["X_eng"] = [8.3, 8.4]
    with pytest.raises(FxiLayoutError, match=r"img_xanes has shape \(8, 64, 64\), expected \(2, ny, nx\) "
                                              r"\(2 energies in X_eng\)"):
        read_fxi(xanes_file)


def test_unclear_content_is_refused(tmp_path):
    path = tmp_path / "odd.h5"
    with h5py.File(path, "w") as f:
        f["X_eng"] = [8.3, 8.4]
        f["img_xanes"] = np.full((2, 4, 4), 7.5, np.float32)
    with pytest.raises(FxiLayoutError, match=r"cannot tell whether img_xanes holds transmission or raw counts "
                                              r"\(float32, .*median 7.5\)"):
        read_fxi(path)


def test_readers_for_one_kind_refuse_the_other(xanes_file, fly_file):
    with pytest.raises(FxiLayoutError, match="is a fly scan"):
        read_fxi_xanes(fly_file)
    with pytest.raises(FxiLayoutError, match="is a 2D XANES scan"):
        read_fxi_fly_scan(xanes_file)
    with pytest.raises(ValueError, match=r"layout must be 'auto' or one of .*got 'xanes'"):
        read_fxi(xanes_file, layout="xanes")


# --------------------------------------------------------------------------- FXI layout out
def _layout(path):
    with h5py.File(path) as f:
        return {k: (v.dtype.kind if v.dtype.kind == "O" else v.dtype.str, v.shape)
                for k, v in f.items() if isinstance(v, h5py.Dataset)}, set(f.keys())


def test_xanes_export_layout_matches_fxi_dataset_by_dataset(tmp_path, xanes_file, stack, sim):
    n = ENERGIES.size
    data = fxi_xanes_from_frames(stack.frames, stack.flats, stack.darks, stack.energies_ev,
                                 frame_energy_index=np.arange(n), flat_energy_index=np.arange(n),
                                 uid="3b1c0e7a-sim", scan_id=101, note="simulated NMC", scan_time=1.7e9,
                                 magnification=fxi_magnification(sim), pixel_size_nm=20.0)
    ours = write_fxi_xanes(tmp_path / "ours.h5", data)
    fxi_layout, _ = _layout(xanes_file)
    our_layout, our_keys = _layout(ours)
    assert our_layout == fxi_layout and our_keys == set(fxi_layout) | {"txm_live"}
    with h5py.File(xanes_file) as a, h5py.File(ours) as b:
        for name in ("img_xanes", "img_bkg", "img_dark", "X_eng"):
            np.testing.assert_array_equal(b[name][()], a[name][()])
        assert b["Pixel Size"][()] == a["Pixel Size"][()] == b"20.0nm"
        assert b["X_eng"].attrs["units"] == "keV" and b["img_xanes"].attrs["signal"] == "transmission"
    back = read_fxi_xanes(ours)
    np.testing.assert_array_equal(back.valid, data.valid)
    np.testing.assert_array_equal(back.transmission[back.valid], data.transmission[data.valid])


def test_fly_export_layout_matches_fxi_dataset_by_dataset(tmp_path, fly_file, fly):
    data = fxi_fly_scan_from_frames(fly.projections, np.deg2rad(fly.angles_deg), fly.flats, fly.darks,
                                    fly.energy_ev, uid="9d2f-sim-fly", scan_id=202, note="simulated tomo",
                                    scan_time=1.7e9, magnification=324.0, pixel_size_nm=6500.0 / 324.0,
                                    x_ini_um=12.5, y_ini_um=-3.25, z_ini_um=0.0,
                                    r_ini_rad=np.deg2rad(fly.angles_deg[0]))
    ours = write_fxi_fly_scan(tmp_path / "ours.h5", data)
    fxi_layout, _ = _layout(fly_file)
    our_layout, our_keys = _layout(ours)
    assert our_layout == fxi_layout and our_keys == set(fxi_layout) | {"txm_live"}
    with h5py.File(fly_file) as a, h5py.File(ours) as b:
        for name in ("img_tomo", "img_bkg", "img_dark", "img_bkg_avg", "img_dark_avg", "X_eng", "Pixel Size"):
            np.testing.assert_array_equal(b[name][()], a[name][()])
        np.testing.assert_allclose(b["angle"][()], a["angle"][()], rtol=0, atol=1e-12)  # deg → rad → deg
        assert b["angle"].attrs["units"] == "deg"


def test_export_refuses_counts_a_uint16_cannot_hold(fly):
    with pytest.raises(ValueError, match=r"projections must hold raw counts \(integers 0–65535\)"):
        fxi_fly_scan_from_frames(fly.projections * 1.5, np.zeros(len(fly.angles_deg)), fly.flats, fly.darks,
                                 8400.0)


# --------------------------------------------------------------------------- 3D XANES
def test_3d_xanes_is_a_series_of_fly_scans(tmp_path, fly):
    folder = tmp_path / "xanes3d"
    folder.mkdir()
    energies = [8400.0, 8340.0, 8320.0]
    for i, e in enumerate(energies):
        scan = type(fly)(fly.projections + i, fly.angles_deg, fly.flats, fly.darks, e, fly.rotation_center_px)
        write_fly_scan_like_fxi(folder / f"fly_scan_id_{300 + i}.h5", scan, scan_id=300 + i)
    (folder / "xanes_scan2_id_299.h5").touch()  # other files in the folder are ignored
    series = open_fxi_xanes3d(folder, scan_ids=range(300, 303))
    np.testing.assert_allclose(series.energies_ev, energies, atol=1e-9)
    assert series.scan_ids == (300, 301, 302) and series.n_angles == (13, 13, 13)
    assert series.image_shape == (64, 64) and len(series) == 3
    np.testing.assert_array_equal(series.read(2).projections, fly.projections + 2)
    assert len(open_fxi_xanes3d(folder).paths) == 3
    with pytest.raises(FileNotFoundError, match=r"lacks \['fly_scan_id_303.h5'\]"):
        open_fxi_xanes3d(folder, scan_ids=range(301, 304))
    write_fly_scan_like_fxi(folder / "fly_scan_id_303.h5", fly, scan_id=303)  # 8400 eV again
    with pytest.raises(FxiLayoutError, match=r"fly scans at the same energy \[8400.0\] eV"):
        open_fxi_xanes3d(folder)


def test_write_maps(tmp_path):
    p = write_maps_h5(tmp_path / "m.h5", {"a": np.ones((4, 4)), "e": np.arange(3.0)},
                      attrs={"params": {"e0": 8333.0}, "none": None})
    with h5py.File(p) as f:
        assert f["a"].shape == (4, 4) and '"e0": 8333.0' in f.attrs["params"] and f.attrs["none"] == "None"
