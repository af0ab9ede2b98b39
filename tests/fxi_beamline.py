"""Test-only writer of files laid out as FXI's own export writes them, from simulated scans.

Written independently of ``txm_live.io`` (plain h5py, the reductions FXI's export
workflow performs, dataset by dataset) so that a reader bug cannot hide behind a writer
sharing it. What FXI writes, as checked in its export code:

2D XANES (``export_xanes_scan``, ``{plan_name}_id_{scan_id}.h5``)
    ``uid`` str, ``scan_id`` int, ``note`` str, ``scan_time`` float, ``X_eng`` the
    start document's energy list in keV (float64, no units attribute), ``img_bkg``
    float32 flats averaged per energy ``(n_energies, ny, nx)``, ``img_dark`` float32
    darks averaged per dark event ``(1, ny, nx)``, ``img_xanes`` float32
    ``(mean sample - mean dark) / (mean flat - mean dark)`` with NaN and inf set to 0,
    ``Magnification`` float (zone plate x 10x objective), ``Pixel Size`` the string
    ``str(6500 / M) + 'nm'``.
Fly scan (``export_fly_scan``, ``fly_scan_id_{scan_id}.h5``)
    ``note``, ``uid``, ``scan_id``, ``scan_time``, ``X_eng`` scalar keV, ``img_bkg``
    and ``img_dark`` uint16 raw stacks, ``img_bkg_avg`` / ``img_dark_avg`` float32
    per-pixel medians ``(1, ny, nx)``, ``img_tomo`` uint16 ``(n, ny, nx)``, ``angle``
    degrees (float64), ``x_ini``, ``y_ini``, ``z_ini``, ``r_ini``, ``Magnification``,
    ``Pixel Size``.
"""
from __future__ import annotations

from dataclasses import dataclass

import h5py
import numpy as np

FXI_OBJECTIVE = 10.0  # FXI's export: M = (DetU_z / zp_z - 1) * 10
CAMERA_PIXEL_NM = 6500.0  # FXI's export: pixel = 6500 / M nm


def fxi_magnification(sim) -> float:
    """FXI's ``Magnification`` for a simulated TXM: zone plate times the objective."""
    return float(sim.optics.magnification) * FXI_OBJECTIVE


def write_xanes_scan_like_fxi(path, stack, *, uid="3b1c0e7a-sim", scan_id=101, note="simulated NMC",
                              scan_time=1.7e9, magnification=325.0, pixel_size_nm=None):
    """Write a simulated 2D XANES scan (``simulators.stacks.XanesStack``) as FXI exports it.

    One sample frame and one flat per energy, darks taken once (one dark event).
    ``pixel_size_nm`` defaults to FXI's ``6500 / Magnification``.
    """
    img_xanes_avg = stack.frames.astype(np.float64)  # mean over one frame per energy
    img_bkg_avg = stack.flats.astype(np.float64)
    img_dark_avg = np.mean(stack.darks[None], axis=1)  # (1 dark event, ny, nx)
    with np.errstate(divide="ignore", invalid="ignore"):
        img_xanes_norm = (img_xanes_avg - img_dark_avg) * 1.0 / (img_bkg_avg - img_dark_avg)
    img_xanes_norm[np.isnan(img_xanes_norm)] = 0
    img_xanes_norm[np.isinf(img_xanes_norm)] = 0
    pxl_sz = CAMERA_PIXEL_NM / magnification if pixel_size_nm is None else pixel_size_nm
    with h5py.File(path, "w") as hf:
        hf.create_dataset("uid", data=uid)
        hf.create_dataset("scan_id", data=scan_id)
        hf.create_dataset("note", data=str(note))
        hf.create_dataset("scan_time", data=scan_time)
        hf.create_dataset("X_eng", data=list(np.asarray(stack.energies_ev) / 1000.0))
        hf.create_dataset("img_bkg", data=np.array(img_bkg_avg, dtype=np.float32))
        hf.create_dataset("img_dark", data=np.array(img_dark_avg, dtype=np.float32))
        hf.create_dataset("img_xanes", data=np.array(img_xanes_norm, dtype=np.float32))
        hf.create_dataset("Magnification", data=magnification)
        hf.create_dataset("Pixel Size", data=str(pxl_sz) + "nm")
    return path


def write_raw_xanes_like_txm_live_0_1(path, stack, *, pixel_size_nm=320.0, label=None):
    """The raw-count file txm-live 0.1 wrote: uint16 counts in ``img_xanes`` (no label)."""
    with h5py.File(path, "w") as f:
        f.create_dataset("X_eng", data=np.asarray(stack.energies_ev) / 1000.0).attrs["units"] = "keV"
        ds = f.create_dataset("img_xanes", data=stack.frames)
        if label is not None:
            ds.attrs["signal"] = label
        f.create_dataset("img_bkg", data=stack.flats)
        f.create_dataset("img_dark", data=stack.darks)
        f.create_dataset("Magnification", data=32.5)
        f.create_dataset("Pixel Size", data=f"{pixel_size_nm:g}nm")
    return path


@dataclass
class FlyScan:
    """A simulated fly scan: raw frames, angles and per-projection truth."""

    projections: np.ndarray  # (n, ny, nx) uint16
    angles_deg: np.ndarray  # (n,)
    flats: np.ndarray  # (n_flats, ny, nx) uint16
    darks: np.ndarray  # (n_darks, ny, nx) uint16
    energy_ev: float
    rotation_center_px: np.ndarray  # (n,) truth


def simulate_fly_scan(sim, angles_deg, *, energy_ev=8400.0, n_flats=4, n_darks=4, exposure_s=0.05,
                      frame_period_s=0.05, sample_out_um=1000.0) -> FlyScan:
    """FXI's fly scan on the simulated TXM: darks, projections while rotating, flats sample-out."""
    zp, det = sim.optics.focus_positions(energy_ev)
    t = 0.0
    darks = []
    for _ in range(n_darks):
        darks.append(sim.acquire(energy_ev=energy_ev, zp_z_mm=zp, det_z_mm=det, shutter_open=False,
                                 exposure_s=exposure_s, time_s=t).image)
        t += frame_period_s
    projections, centres = [], []
    for angle in np.asarray(angles_deg, dtype=float):
        frame = sim.acquire(energy_ev=energy_ev, zp_z_mm=zp, det_z_mm=det, theta_rad=np.deg2rad(angle),
                            exposure_s=exposure_s, time_s=t)
        projections.append(frame.image)
        centres.append(frame.truth.rotation_center_px)
        t += frame_period_s
    flats = []
    for _ in range(n_flats):
        flats.append(sim.acquire(energy_ev=energy_ev, zp_z_mm=zp, det_z_mm=det, sample_x_um=sample_out_um,
                                 exposure_s=exposure_s, time_s=t).image)
        t += frame_period_s
    return FlyScan(np.stack(projections), np.asarray(angles_deg, dtype=float), np.stack(flats),
                   np.stack(darks), float(energy_ev), np.asarray(centres))


def write_fly_scan_like_fxi(path, scan: FlyScan, *, uid="9d2f-sim-fly", scan_id=202, note="simulated tomo",
                            scan_time=1.7e9, magnification=325.0, x_ini=12.5, y_ini=-3.25, z_ini=0.0,
                            r_ini=None):
    """Write a simulated fly scan as FXI's ``export_fly_scan`` does."""
    img_dark_avg = np.median(scan.darks, axis=0, keepdims=True)
    img_bkg_avg = np.median(scan.flats, axis=0, keepdims=True)
    pxl_sz = CAMERA_PIXEL_NM / magnification
    with h5py.File(path, "w") as hf:
        hf.create_dataset("note", data=str(note))
        hf.create_dataset("uid", data=uid)
        hf.create_dataset("scan_id", data=int(scan_id))
        hf.create_dataset("scan_time", data=scan_time)
        hf.create_dataset("X_eng", data=scan.energy_ev / 1000.0)
        hf.create_dataset("img_bkg", data=np.array(scan.flats, dtype=np.uint16))
        hf.create_dataset("img_dark", data=np.array(scan.darks, dtype=np.uint16))
        hf.create_dataset("img_bkg_avg", data=np.array(img_bkg_avg, dtype=np.float32))
        hf.create_dataset("img_dark_avg", data=np.array(img_dark_avg, dtype=np.float32))
        hf.create_dataset("img_tomo", data=np.array(scan.projections, dtype=np.uint16))
        hf.create_dataset("angle", data=scan.angles_deg)
        hf.create_dataset("x_ini", data=x_ini)
        hf.create_dataset("y_ini", data=y_ini)
        hf.create_dataset("z_ini", data=z_ini)
        hf.create_dataset("r_ini", data=scan.angles_deg[0] if r_ini is None else r_ini)
        hf.create_dataset("Magnification", data=magnification)
        hf.create_dataset("Pixel Size", data=str(pxl_sz) + "nm")
    return path
