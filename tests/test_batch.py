"""analyze_fxi_file and the `txm-live analyze` argument handling."""

import argparse

import h5py
import numpy as np
import pytest

from xanes_truth import larch_truth

from txm_live.analysis._synthetic import synthetic_xanes_stack
from txm_live.batch import add_analyze_arguments, analyze_fxi_file, run_analyze
from txm_live.io import fxi_xanes_from_frames, write_fxi_xanes


@pytest.fixture()
def fxi_file(tmp_path):
    absorb, E, tr = synthetic_xanes_stack((32, 32), flat_counts=0, seed=0, dtype=np.float64)
    rng = np.random.default_rng(0)
    flats = rng.poisson(2e4, absorb.shape) + 100
    frames = rng.poisson(2e4 * np.exp(-absorb)) + 100
    darks = rng.poisson(100, (3, 32, 32))
    rows = np.arange(E.size)
    data = fxi_xanes_from_frames(frames.astype(np.uint16), flats.astype(np.uint16), darks.astype(np.uint16), E,
                                 frame_energy_index=rows, flat_energy_index=rows,
                                 pixel_size_nm=21.3, magnification=325.0)
    return write_fxi_xanes(tmp_path / "scan_1.h5", data), dict(tr, energies=E)


def test_analyze_writes_maps_and_pngs(fxi_file, tmp_path):
    p, tr = fxi_file
    out = analyze_fxi_file(p, tmp_path / "out", progress=False, align="none", e0=tr["e0"])
    assert set(out) == {"maps", "whiteline", "edge", "edge_jump"}
    for name in ("whiteline", "edge", "edge_jump"):
        assert out[name].suffix == ".png" and out[name].stat().st_size > 1000
    with h5py.File(out["maps"]) as f:
        wl = f["whiteline"][()]
        mask = f["mask"][()]
        assert '"e0": 8333.0, "pre1": -50.0, "pre2": -10.0, "norm1": 25.0, "norm2": 150.0, "nnorm": 1' in f.attrs["fit_params"]
    assert mask.mean() > 0.95  # achieved: every pixel
    # truth: the analytic spectra normalized by Larch with the ranges the fit reports
    wl_true, _ = larch_truth(tr["energies"], tr["shift"], e0_ev=tr["e0"], jump=0.5, pre_slope=-2e-4,
                             pre1=-50.0, pre2=-10.0, norm1=25.0, norm2=150.0, nnorm=1)
    assert np.sqrt(np.nanmean((wl - wl_true)[mask] ** 2)) < 0.22  # achieved 0.146 eV


def test_cli_hooks(fxi_file, tmp_path, capsys):
    p, tr = fxi_file
    parser = add_analyze_arguments(argparse.ArgumentParser(prog="txm-live analyze"))
    args = parser.parse_args([str(p), "-o", str(tmp_path / "cli"), "--no-progress",
                              "--e0", "8333"])
    assert run_analyze(args) == 0
    assert "maps:" in capsys.readouterr().out
    args = parser.parse_args([str(tmp_path / "missing.h5")])
    assert run_analyze(args) == 2
    assert "no such file" in capsys.readouterr().err


def test_bad_align_option(fxi_file, tmp_path):
    p, _ = fxi_file
    with pytest.raises(ValueError, match="align must be one of"):
        analyze_fxi_file(p, tmp_path, align="fourier")
