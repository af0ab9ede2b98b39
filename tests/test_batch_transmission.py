"""`txm-live analyze` on normalized transmission (FXI's img_xanes) vs on raw counts."""
from __future__ import annotations

import warnings

import h5py
import numpy as np
import pytest

from simulators.model import SimConfig, SimTXM
from simulators.phantom import make_nmc_phantom
from simulators.stacks import simulate_xanes_stack
from txm_live.analysis import flat_dark_correct, remove_zingers
from txm_live.batch import analyze_fxi_file
from txm_live.energies import xanes_energy_list
from txm_live.io import fxi_xanes_from_frames, write_fxi_xanes


def test_transmission_file_gives_the_raw_files_maps_to_float32_rounding(tmp_path):
    sim = SimTXM(SimConfig(shape=(64, 64), flat_counts=1e4, seed=4), sample=make_nmc_phantom(state_of_charge=0.5, seed=4))
    st = simulate_xanes_stack(sim, xanes_energy_list(8333.0, near_edge_step_ev=1.0)[::-1], n_darks=3)
    rows = np.arange(st.energies_ev.size)
    raw = write_fxi_xanes(tmp_path / "raw.h5", fxi_xanes_from_frames(
        st.frames, st.flats, st.darks, st.energies_ev, frame_energy_index=rows, flat_energy_index=rows,
        keep_raw=True))  # the analysis reads the raw frames kept in /txm_live/raw
    # the transmission the pipeline's own correction gives, stored as FXI does (float32, 0 = invalid)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dark = np.median(st.darks.astype(np.float32), axis=0)
        absorbance = np.stack([
            flat_dark_correct(remove_zingers(f, dark, sigma=10.0)[0],
                              remove_zingers(fl.astype(np.float32), dark, sigma=10.0)[0], dark, zinger_sigma=None)
            for f, fl in zip(st.frames, st.flats)])
    transmission = np.nan_to_num(np.exp(-absorbance), nan=0.0).astype(np.float32)
    normalized = tmp_path / "t.h5"
    with h5py.File(normalized, "w") as f:  # FXI's 2D XANES datasets without img_bkg/img_dark
        f["X_eng"] = st.energies_ev / 1000.0
        f["img_xanes"] = transmission
    maps_raw = analyze_fxi_file(raw, tmp_path / "a", progress=False)["maps"]
    with pytest.warns(UserWarning, match="no img_bkg/img_dark: img_xanes is taken as transmission"):
        maps_t = analyze_fxi_file(normalized, tmp_path / "b", progress=False)["maps"]
    with h5py.File(maps_raw) as a, h5py.File(maps_t) as b:
        np.testing.assert_array_equal(a["mask"][()], b["mask"][()])
        assert a["mask"][()].sum() > 500
        m = a["mask"][()]
        # achieved: max 0.00098 eV = one float32 step at 8.3 keV; 99 % of pixels identical
        assert np.max(np.abs(a["whiteline"][()] - b["whiteline"][()])[m]) <= 2e-3
        np.testing.assert_allclose(a["shifts"][()], b["shifts"][()], atol=1e-5)
