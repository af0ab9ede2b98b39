"""``txm-live analyze`` on files laid out as FXI exports them, against the simulator's truth.

One 128² Ni K-edge scan of a half-charged NMC phantom (1e4 flat counts, 88 energies
high → low, as ``test_analysis_simulated``), written by the test-only FXI writer: FXI's
transmission ``img_xanes`` with averaged flats and darks. Figures quoted next to the
tolerances were measured on this scan.
"""
from __future__ import annotations

import argparse
import dataclasses
import warnings

import h5py
import numpy as np
import pytest
from fxi_beamline import (
    simulate_fly_scan,
    write_fly_scan_like_fxi,
    write_raw_xanes_like_txm_live_0_1,
    write_xanes_scan_like_fxi,
)
from scipy import ndimage

from simulators.model import SimConfig, SimTXM
from simulators.phantom import make_nmc_phantom
from simulators.stacks import simulate_xanes_stack
from txm_live.energies import xanes_energy_list
from txm_live.batch import (
    add_analyze_arguments,
    analyze_fxi_file,
    run_analyze,
)
from txm_live.io import FxiLayoutWarning, read_fxi_xanes

MIN_JUMP = 0.2  # accuracy is quoted on pixels with an edge jump (absorbance) of at least this


@pytest.fixture(scope="module")
def scan():
    sim = SimTXM(SimConfig(shape=(128, 128), flat_counts=1e4, seed=0),
                 sample=make_nmc_phantom(state_of_charge=0.5, seed=0))
    return sim, simulate_xanes_stack(sim, xanes_energy_list(8333.0)[::-1], n_darks=5)


@pytest.fixture(scope="module")
def fxi_file(scan, tmp_path_factory):
    sim, stack = scan
    path = tmp_path_factory.mktemp("fxi") / "xanes_scan2_id_7.h5"
    return write_xanes_scan_like_fxi(path, stack, pixel_size_nm=sim.pixel_size_nm)


def _rms(a) -> float:
    return float(np.sqrt(np.mean(np.square(a))))


def _errors(stack, maps_path):
    """Map errors against the truth, and the drift error, in the truth's (zero-drift) frame.

    The maps are registered on the first frame in acquisition order (the pipeline's
    reference, as live); they are moved by minus its true drift before comparison.
    """
    with h5py.File(maps_path) as f:
        maps = {k: f[k][()] for k in ("whiteline", "edge", "edge_jump", "mask", "shifts")}
    ref = 0  # the first frame measured
    back = -stack.drift_px[ref]

    def to_truth_frame(image):
        return ndimage.shift(image, back, order=1, mode="constant", cval=np.nan)

    jump = to_truth_frame(maps["edge_jump"])
    out = {}
    for name, truth in (("whiteline", stack.truth.whiteline_ev), ("edge", stack.truth.edge_ev)):
        moved = to_truth_frame(np.where(maps["mask"].astype(bool), maps[name], np.nan))
        sel = stack.truth.mask & np.isfinite(moved) & (jump >= MIN_JUMP)
        out[name] = (moved - truth)[sel]
    truth_shifts = -(stack.drift_px - stack.drift_px[ref])
    out["drift_px"] = _rms(np.hypot(*(maps["shifts"] - truth_shifts).T))
    return out


def test_fxi_2d_xanes_file_gives_maps_within_the_usual_accuracy(scan, fxi_file, tmp_path):
    _, stack = scan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # dead pixels reported as invalid
        out = analyze_fxi_file(fxi_file, tmp_path, progress=False)
    with h5py.File(out["maps"]) as f:
        assert f.attrs["layout"] == "xanes2d" and "transmission" in f.attrs["layout_reason"]
    err = _errors(stack, out["maps"])
    assert err["whiteline"].size > 0.6 * stack.truth.mask.sum()  # 2833 of 3969
    assert _rms(err["whiteline"]) <= 0.26  # achieved 0.175 eV
    assert abs(np.mean(err["whiteline"])) <= 0.05  # achieved +0.027 eV
    assert _rms(err["edge"]) <= 0.30  # achieved 0.195 eV
    assert err["drift_px"] <= 0.08  # achieved 0.055 px (reference: the first frame measured)


@pytest.mark.filterwarnings("ignore:.*pixel values are invalid", "ignore::txm_live.analysis.XanesInputWarning")
def test_reading_fxi_transmission_as_raw_counts_fails(fxi_file, tmp_path):
    """Negative control: the old reader's assumption (img_xanes = raw frames) on FXI's file."""
    with pytest.warns(FxiLayoutWarning, match="looks like transmission"), \
            pytest.raises(ValueError, match="fit_xanes needs at least 8 distinct energies; got 0"):
        analyze_fxi_file(fxi_file, tmp_path, progress=False, layout="xanes2d_raw")


def test_zingers_in_fxi_transmission_are_removed_before_registration(scan, fxi_file, tmp_path):
    """FXI's export leaves zingers in img_xanes; rebuilding counts from its flats and darks
    lets the pipeline remove them, as live. Without flats and darks (plain -ln T) the
    zingers stay in the maps: whiteline and edge errors 1.5x larger."""
    _, stack = scan
    bare = tmp_path / "no_flats.h5"
    with h5py.File(fxi_file) as src, h5py.File(bare, "w") as dst:
        for name in src:
            if name not in ("img_bkg", "img_dark"):
                src.copy(src[name], dst, name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # dead pixels reported as invalid
        full = analyze_fxi_file(fxi_file, tmp_path / "full", progress=False)
    with pytest.warns(UserWarning, match="no img_bkg/img_dark"):
        plain = analyze_fxi_file(bare, tmp_path / "plain", progress=False)
    full_err, plain_err = _errors(stack, full["maps"]), _errors(stack, plain["maps"])
    assert full_err["drift_px"] <= 0.08  # achieved 0.055 px (plain -ln T: 0.074 px)
    assert _rms(full_err["whiteline"]) <= 0.26  # achieved 0.175 eV
    assert _rms(plain_err["whiteline"]) >= 0.24  # achieved 0.276 eV: zingers left in the maps
    assert _rms(plain_err["edge"]) >= 0.25  # achieved 0.296 eV (0.195 with counts rebuilt)


def test_raw_count_file_read_as_raw_gives_the_same_accuracy(scan, tmp_path):
    _, stack = scan
    path = write_raw_xanes_like_txm_live_0_1(tmp_path / "xanes_legacy.h5", stack)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        out = analyze_fxi_file(path, tmp_path / "maps", progress=False, layout="xanes2d_raw")
    err = _errors(stack, out["maps"])
    assert _rms(err["whiteline"]) <= 0.26  # achieved 0.171 eV
    assert err["drift_px"] <= 0.08  # achieved 0.056 px


def _cli(*argv):
    return add_analyze_arguments(argparse.ArgumentParser(prog="txm-live analyze")).parse_args(list(argv))


def test_cli_refuses_a_raw_file_and_names_the_override(scan, tmp_path, capsys):
    _, stack = scan
    path = write_raw_xanes_like_txm_live_0_1(tmp_path / "xanes_legacy.h5", stack)
    assert run_analyze(_cli(str(path), "--no-progress", "-o", str(tmp_path / "o"))) == 1
    err = capsys.readouterr().err
    assert "img_xanes holds raw detector counts" in err and "--layout xanes2d_raw" in err


def test_analyze_refuses_a_fly_scan_with_too_few_angles(tmp_path, capsys):
    """A fly scan reconstructs (``tests/test_tomo_live.py`` checks the volume); one with
    too few projections is refused with the count, nothing half-written, exit 1."""
    sim = SimTXM(SimConfig(shape=(64, 64), seed=2))
    path = write_fly_scan_like_fxi(tmp_path / "fly_scan_id_9.h5",
                                   simulate_fly_scan(sim, np.linspace(0.0, 180.0, 7), n_flats=2, n_darks=2))
    with pytest.raises(ValueError, match=r"too few angles: 7 projections, at least 8 needed"):
        analyze_fxi_file(path, tmp_path / "o", progress=False)
    assert run_analyze(_cli(str(path), "--no-progress", "-o", str(tmp_path / "o"))) == 1
    assert "too few angles: 7 projections" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing half-written
    # a folder of fly scans (3D XANES) is recognised and refused the same way
    write_fly_scan_like_fxi(tmp_path / "fly_scan_id_10.h5",
                            simulate_fly_scan(sim, np.linspace(0.0, 180.0, 7), energy_ev=8350.0, n_flats=2,
                                              n_darks=2), scan_id=10)
    assert run_analyze(_cli(str(tmp_path), "--no-progress")) == 3
    assert (f"holds a 3D XANES scan of 2 fly scans (8350.0–8400.0 eV); `analyze` fits 2D XANES files: "
            f"run `txm-live analyze3d {tmp_path}`" in capsys.readouterr().err)
