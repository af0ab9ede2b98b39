"""A 2D XANES measurement on the simulated TXM without bluesky (for analysis tests, benchmarks).

Mirrors FXI's ``xanes_scan2``: darks once with the shutter closed, then per energy: move
energy (and ZP + detector when focus tracking), take the sample frame, move the sample
out for a flat, move it back. Energy lists come from :func:`txm_live.energies.xanes_energy_list`
(the project's one generator).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .model import SimTXM, TruthMaps

__all__ = ["XanesStack", "simulate_xanes_stack"]

#: Sample-out offset used for flats, µm: far beyond any FOV of this TXM.
SAMPLE_OUT_X_UM = 1000.0


@dataclass
class XanesStack:
    """Raw 2D XANES data plus its ground truth.

    Attributes
    ----------
    frames : ndarray (nE, ny, nx) uint16
        Sample-in frames, one per energy, in acquisition order.
    flats : ndarray (nE, ny, nx) uint16
        One flat (sample out) per energy, taken right after its frame.
    darks : ndarray (n_darks, ny, nx) uint16
        Shutter-closed frames taken before the scan.
    energies_ev : ndarray (nE,)
        Energy of each frame, eV.
    drift_px : ndarray (nE, 2)
        True unintended drift (dy, dx) of each sample frame, binned px (CONVENTIONS).
    truth : TruthMaps
        Chemical ground truth maps at zero drift.
    times_s : ndarray (nE,)
        Time of each sample frame, s.
    """

    frames: np.ndarray
    flats: np.ndarray
    darks: np.ndarray
    energies_ev: np.ndarray
    drift_px: np.ndarray
    truth: TruthMaps
    times_s: np.ndarray | None = None

    def absorbance(self) -> np.ndarray:
        """``-ln((I - D) / (F - D))`` with D the mean dark, (nE, ny, nx) float32.

        Counts at or below the dark level are clipped to 1 count above it, so dead pixels
        and opaque spots give large finite values rather than NaN.
        """
        dark = self.darks.astype(np.float32).mean(axis=0)
        num = np.maximum(self.frames.astype(np.float32) - dark, 1.0)
        den = np.maximum(self.flats.astype(np.float32) - dark, 1.0)
        return -np.log(num / den)


def simulate_xanes_stack(sim: SimTXM, energies_ev, *, n_darks=5, exposure_s=0.05,
                         seconds_per_energy=5.0, focus_tracking=True,
                         start_time_s=0.0) -> XanesStack:
    """Run a 2D XANES scan on ``sim``.

    Parameters
    ----------
    sim : SimTXM
        The simulated microscope (its drift and noise state advance).
    energies_ev : array_like (nE,)
        Energies in acquisition order (FXI scans high → low; any order works).
    n_darks : int
        Dark frames taken first, shutter closed, 0.1 s apart.
    exposure_s : float
        Exposure of every frame, s.
    seconds_per_energy : float
        Time from one energy's sample frame to the next (motion, settling, flat), s.
    focus_tracking : bool
        True: ZP and detector follow ``optics.focus_positions(E)`` (sharp, constant
        magnification). False: both stay where they focus the first energy (the image
        blurs away from it).
    start_time_s : float
        Time of the first dark, s.

    Returns
    -------
    XanesStack
    """
    energies = np.asarray(energies_ev, dtype=float)
    if energies.ndim != 1 or energies.size == 0:
        raise ValueError(f"energies_ev must be a non-empty 1-D list, got shape {energies.shape}")
    if n_darks < 1:
        raise ValueError(f"n_darks must be >= 1, got {n_darks}")
    optics = sim.optics
    zp0, det0 = optics.focus_positions(energies[0])
    t = float(start_time_s)
    darks = []
    for _ in range(n_darks):
        darks.append(sim.acquire(energy_ev=energies[0], zp_z_mm=zp0, det_z_mm=det0,
                                 shutter_open=False, exposure_s=exposure_s, time_s=t).image)
        t += 0.1
    ny, nx = sim.shape
    frames = np.empty((energies.size, ny, nx), np.uint16)
    flats = np.empty_like(frames)
    drift = np.empty((energies.size, 2))
    times = np.empty(energies.size)
    flat_delay_s = min(1.0, 0.4 * seconds_per_energy)
    for i, energy in enumerate(energies):
        zp, det = optics.focus_positions(energy) if focus_tracking else (zp0, det0)
        frame = sim.acquire(energy_ev=energy, zp_z_mm=zp, det_z_mm=det,
                            exposure_s=exposure_s, time_s=t)
        flat = sim.acquire(energy_ev=energy, zp_z_mm=zp, det_z_mm=det,
                           sample_x_um=SAMPLE_OUT_X_UM, exposure_s=exposure_s,
                           time_s=t + flat_delay_s)
        frames[i], flats[i] = frame.image, flat.image
        drift[i] = frame.truth.drift_px
        times[i] = t
        t += seconds_per_energy
    return XanesStack(frames=frames, flats=flats, darks=np.stack(darks), energies_ev=energies,
                      drift_px=drift, truth=sim.truth_maps(), times_s=times)
