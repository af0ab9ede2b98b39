"""FXI-style HDF5 reading and writing."""

import h5py
import numpy as np
import pytest

from txm_live.io import read_fxi_xanes, write_fxi_xanes, write_maps_h5


def test_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 60000, (5, 8, 9), dtype=np.uint16)
    flats = rng.integers(0, 60000, (5, 8, 9), dtype=np.uint16)
    darks = rng.integers(0, 200, (3, 8, 9), dtype=np.uint16)
    e = np.linspace(8300, 8400, 5)
    p = write_fxi_xanes(tmp_path / "x.h5", frames, e, flats=flats, darks=darks,
                        magnification=32.5, pixel_size_nm=21.3, attrs={"note": "sim"})
    with h5py.File(p) as f:
        assert f["X_eng"][0] == pytest.approx(8.3)  # keV, as FXI writes it
        assert f["Pixel Size"][()].decode() == "21.3nm"
    d = read_fxi_xanes(p)
    np.testing.assert_allclose(d.energies_ev, e)
    np.testing.assert_array_equal(d.frames, frames)
    np.testing.assert_array_equal(d.flats, flats)
    np.testing.assert_array_equal(d.darks, darks)
    assert d.magnification == 32.5 and d.pixel_size_nm == pytest.approx(21.3)
    assert d.attrs["note"] == "sim"


def test_fxi_native_layout_kev_without_units(tmp_path):
    """FXI's own files: X_eng in keV with no unit attribute, 'Pixel Size' string."""
    p = tmp_path / "fxi.h5"
    with h5py.File(p, "w") as f:
        f["X_eng"] = np.array([8.30, 8.33, 8.36])
        f["img_xanes"] = np.ones((3, 4, 4), np.uint16)
        f["img_bkg"] = np.ones((3, 4, 4), np.uint16)
        f["img_dark"] = np.zeros((1, 4, 4), np.uint16)
        f["Magnification"] = 32.5
        f["Pixel Size"] = "0.02um"
        f["scan_id"] = 1234
    d = read_fxi_xanes(p)
    np.testing.assert_allclose(d.energies_ev, [8300, 8330, 8360])
    assert d.pixel_size_nm == pytest.approx(20.0) and d.attrs["scan_id"] == 1234


def test_errors(tmp_path):
    p = tmp_path / "bad.h5"
    with h5py.File(p, "w") as f:
        f["X_eng"] = np.array([8.3, 8.4])
        f["other"] = 1
    with pytest.raises(KeyError, match=r"lacks \['img_xanes'\]; it has \['X_eng', 'other'\]"):
        read_fxi_xanes(p)
    with h5py.File(p, "w") as f:
        f["X_eng"] = np.array([8.3, 8.4])
        f["img_xanes"] = np.ones((3, 4, 4))
    with pytest.raises(ValueError, match=r"img_xanes has shape \(3, 4, 4\), expected \(2, ny, nx\)"):
        read_fxi_xanes(p)
    with pytest.raises(ValueError, match="frames must be"):
        write_fxi_xanes(tmp_path / "w.h5", np.ones((3, 4, 4)), [1, 2])


def test_write_maps(tmp_path):
    p = write_maps_h5(tmp_path / "m.h5", {"a": np.ones((4, 4)), "e": np.arange(3.0)},
                      attrs={"params": {"e0": 8333.0}, "none": None})
    with h5py.File(p) as f:
        assert f["a"].shape == (4, 4) and '"e0": 8333.0' in f.attrs["params"]
