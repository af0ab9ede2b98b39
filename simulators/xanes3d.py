"""3D XANES on the simulated TXM: a fly tomography at every energy, and its ground truth.

A 3D XANES scan (FXI: ~60 min for 30–60 energies) repeats :func:`simulate_tomo_scan` at
each energy of a list: darks, a continuous half turn, flats, then the monochromator moves
to the next energy (the optics follow to stay in focus). The sample's Ni valence field
(``simulators.phantom``: each particle oxidised from its surface inward) shows through the
per-valence attenuation of ``simulators.spectra``, so every voxel has its own Ni K-edge
spectrum. Between energies the sample drifts as :class:`simulators.drift.DriftModel`
says: slow thermal drift and a random walk in the time the energy change takes, plus a
jump each time the monochromator moves.

Ground truth
------------
- :attr:`Xanes3DScan.drift_px` — mean detector-plane drift (dy, dx) of each energy's
  projections, px (CONVENTIONS sign): what registration between energies must recover.
- :func:`voxel_truth` — per voxel on the reconstruction grid of
  :func:`txm_live.analysis.reconstruct` (``simulators.tomography`` module docstring):
  material fraction, mean Ni oxidation state, and the whiteline and edge energies of
  the voxel's own mixture spectrum.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .model import SimConfig, SimTXM
from .tomography import TomoScan, make_tomo_sim, particle_subsamples, simulate_tomo_scan

__all__ = ["Xanes3DScan", "VoxelTruth", "iter_xanes3d_scan", "simulate_xanes3d_scan",
           "make_xanes3d_sim", "voxel_truth", "ENERGY_CHANGE_S"]

#: Time from the end of one energy's tomography to the start of the next, s: move the
#: monochromator, zone plate and detector, let them settle, bring the sample back in
#: (FXI's 3D XANES: ~60 min for ~60 energies, about a minute per energy in all).
ENERGY_CHANGE_S = 30.0
#: A voxel counts as inside a particle (``VoxelTruth.mask``) when at least this fraction
#: of it is material.
FULL_VOXEL_FRACTION = 0.999
#: Fine energy grid of the truth's mixture spectra, eV (as ``SimTXM.truth_maps``).
TRUTH_GRID_EV = 0.05
#: Voxels handled at once when their mixture spectra are evaluated (memory bound).
_TRUTH_CHUNK = 8192


@dataclass
class Xanes3DScan:
    """One simulated 3D XANES scan: a :class:`TomoScan` per energy, in acquisition order.

    Attributes
    ----------
    scans : list of TomoScan
    energies_ev : ndarray (n_energies,)
        Energy of each scan, eV, acquisition order.
    """

    scans: list
    energies_ev: np.ndarray

    @property
    def drift_px(self) -> np.ndarray:
        """Mean detector-plane drift (dy, dx) of each scan's projections, px, (n, 2)."""
        return np.array([s.drift_px.mean(axis=0) for s in self.scans])

    @property
    def center_px(self) -> np.ndarray:
        """Each scan's true rotation centre (``TomoScan.center_px``), (n,)."""
        return np.array([s.center_px for s in self.scans])

    @property
    def object_shift_px(self) -> np.ndarray:
        """Each scan's (dy, dx, dz) object shift (``TomoScan.object_shift_px``), (n, 3)."""
        return np.array([s.object_shift_px for s in self.scans])


def make_xanes3d_sim(config: SimConfig | None = None, *, n_angles: int, **phantom_kwargs) -> SimTXM:
    """A tomography-ready :class:`SimTXM` (:func:`make_tomo_sim`) for a 3D XANES scan.

    The default config puts the rotation axis 0.8 µm off the detector centre (a typical
    FXI offset). The simulator keeps one projection per angle (``n_angles`` of them), so
    the phantom is projected once for the whole scan, not once per energy.
    """
    cfg = SimConfig(rotation_axis_offset_um=0.8) if config is None else config
    sim = make_tomo_sim(cfg, **phantom_kwargs)
    sim.keep_projections(int(n_angles) + 2)
    return sim


def iter_xanes3d_scan(sim: SimTXM, energies_ev, n_angles: int, *,
                      energy_change_s: float = ENERGY_CHANGE_S, start_time_s: float = 0.0,
                      **tomo_kwargs):
    """Yield one :class:`TomoScan` per energy as the scan proceeds (live use, low memory).

    Parameters
    ----------
    sim : SimTXM
        Ideally from :func:`make_xanes3d_sim` (projection cache sized to ``n_angles``).
    energies_ev : array_like (n_energies,)
        Energies in acquisition order, eV (e.g. ``txm_live.energies.xanes_energy_list``).
    n_angles : int
        Projections per tomography.
    energy_change_s : float
        Time between one tomography's last flat and the next one's first dark, s.
    start_time_s : float
        Time of the first dark, s.
    **tomo_kwargs
        Passed to :func:`simulate_tomo_scan` (``mode``, ``exposure_s``, ``n_darks``,
        ``n_flats``, ``flats_when``, ``theta_range_deg``, ...).
    """
    energies = np.asarray(energies_ev, dtype=float)
    if energies.ndim != 1 or energies.size < 1 or not np.all(np.isfinite(energies)):
        raise ValueError(f"energies_ev must be a 1-D list of finite energies; got {energies_ev!r}")
    if energy_change_s < 0:
        raise ValueError(f"energy_change_s must be >= 0 s; got {energy_change_s}")
    t = float(start_time_s)
    for energy in energies:
        scan = simulate_tomo_scan(sim, n_angles, energy_ev=float(energy), start_time_s=t,
                                  **tomo_kwargs)
        t = _end_time(scan) + float(energy_change_s)
        yield scan


def _end_time(scan: TomoScan) -> float:
    times = [scan.times_s[-1], scan.flat_times_s[-1], scan.dark_times_s[-1]]
    return float(max(times))


def simulate_xanes3d_scan(sim: SimTXM, energies_ev, n_angles: int, **kwargs) -> Xanes3DScan:
    """All of :func:`iter_xanes3d_scan` at once (same arguments)."""
    scans = list(iter_xanes3d_scan(sim, energies_ev, n_angles, **kwargs))
    return Xanes3DScan(scans=scans, energies_ev=np.array([s.energy_ev for s in scans]))


@dataclass(frozen=True)
class VoxelTruth:
    """Per-voxel chemical truth on the reconstruction grid, (n_rows, nx, nx) each.

    Attributes
    ----------
    occupancy : ndarray float32
        Fraction 0…1 of the voxel filled with material.
    oxidation_state : ndarray float32
        Mean Ni valence of the material in the voxel; NaN where empty.
    whiteline_ev, edge_ev : ndarray float32
        Argmax and first 0.5 crossing of the voxel's normalized mixture spectrum (its
        material's valences, each as the projections see it: the nearest valence level),
        eV; NaN where empty.
    mask : ndarray bool
        Voxels wholly inside a particle (occupancy ≥ ``FULL_VOXEL_FRACTION``).
    """

    occupancy: np.ndarray
    oxidation_state: np.ndarray
    whiteline_ev: np.ndarray
    edge_ev: np.ndarray
    mask: np.ndarray


def voxel_truth(sim: SimTXM, *, rows=None, shift_px=(0.0, 0.0, 0.0), supersample: int = 3
                ) -> VoxelTruth:
    """The phantom's per-voxel oxidation state and whiteline on the reconstruction grid.

    Parameters
    ----------
    sim : SimTXM
        Its sample, spectra, image shape and pixel size define the volume.
    rows : slice or None
        Detector rows (slices) to compute; default all.
    shift_px : tuple of float
        (dy, dx, dz) object displacement, px, as for
        :func:`simulators.tomography.attenuation_volume` (``TomoScan.object_shift_px`` of
        the scan the volumes were registered to).
    supersample : int
        Sub-samples per voxel edge.

    Returns
    -------
    VoxelTruth
    """
    ny, nx = sim.shape
    r0, r1, _ = (slice(0, ny) if rows is None else rows).indices(ny)
    ss = int(supersample)
    if ss < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    p = sim.pixel_size_nm / 1e3
    grid = np.asarray(sim.spectra.valence_grid, float)
    dy, dx, dz = (float(v) for v in shift_px)
    sub = (np.arange(ss) + 0.5) / ss - 0.5
    axes = (((np.arange(r0, r1) - (ny - 1) / 2 - dy)[:, None] + sub).ravel() * p,
            ((nx // 2 - np.arange(nx) - dz)[:, None] + sub).ravel() * p,
            ((np.arange(nx) - nx // 2 - dx)[:, None] + sub).ravel() * p)
    shape = (r1 - r0, nx, nx)
    occ = np.zeros(shape, np.float32)
    vsum = np.zeros(shape, np.float32)
    parts = []  # per particle: (flat voxel index, valence level, material fraction)
    for part in sim.sample.particles:
        parts.append(_add_particle_levels(part, axes, ss, grid, shape, occ, vsum))
    wl, edge = _mixture_whiteline_edge(sim.spectra, grid, [p for p in parts if p], shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        ox = np.where(occ > 0, vsum / occ, np.nan).astype(np.float32)
    occ = np.minimum(occ, 1.0)
    return VoxelTruth(occupancy=occ, oxidation_state=ox, whiteline_ev=wl, edge_ev=edge,
                      mask=occ >= FULL_VOXEL_FRACTION)


def _add_particle_levels(part, axes, ss, grid, shape, occ, vsum):
    """Accumulate one particle's material fraction and valence sum; return its per-level
    fractions as (flat voxel index, level, fraction) arrays, or None out of view."""
    found = particle_subsamples(part, axes, ss)
    if found is None:
        return None
    ((y0, y1), (z0, z1), (x0, x1)), r, inside = found
    valence = np.where(inside, part.valence_at(r), 0.0)
    level = np.searchsorted(0.5 * (grid[1:] + grid[:-1]), valence)
    box = (y1 - y0, z1 - z0, x1 - x0)
    split = (box[0], ss, box[1], ss, box[2], ss)
    frac = inside.reshape(split).mean(axis=(1, 3, 5))
    dst = (slice(y0, y1), slice(z0, z1), slice(x0, x1))
    occ[dst] += frac.astype(np.float32)
    vsum[dst] += valence.reshape(split).mean(axis=(1, 3, 5)).astype(np.float32)
    # per-level fractions of the voxels this particle touches
    vox = np.ravel_multi_index(np.indices(box).reshape(3, -1) + np.array([[y0], [z0], [x0]]),
                               shape).reshape(box)
    vox_of_sub = np.repeat(np.repeat(np.repeat(vox, ss, 0), ss, 1), ss, 2)[inside]
    lev = level[inside]
    keys, n = np.unique(vox_of_sub * grid.size + lev, return_counts=True)
    vox_idx, lev_idx = np.divmod(keys, grid.size)
    return vox_idx, lev_idx, n.astype(np.float32) / ss**3


def _mixture_whiteline_edge(spectra, grid, parts, shape):
    """Whiteline and edge (eV) of each voxel's normalized mixture spectrum, NaN elsewhere."""
    wl = np.full(int(np.prod(shape)), np.nan, np.float32)
    edge = np.full(wl.shape, np.nan, np.float32)
    if not parts:
        return wl.reshape(shape), edge.reshape(shape)
    vox_idx, lev_idx, frac = (np.concatenate(a) for a in zip(*parts))
    voxels, row = np.unique(vox_idx, return_inverse=True)
    w_all = np.zeros((voxels.size, grid.size), np.float32)
    np.add.at(w_all, (row, lev_idx), frac)  # a voxel two particles touch sums both
    step = TRUTH_GRID_EV
    energy = np.arange(spectra.edge_ev(2.0) - 10.0, spectra.edge_ev(4.0) + 25.0, step)
    table = spectra.normalized(energy[None, :], grid[:, None]).astype(np.float32)  # (K, nE)
    for start in range(0, voxels.size, _TRUTH_CHUNK):
        sel = voxels[start: start + _TRUTH_CHUNK]
        w = w_all[start: start + _TRUTH_CHUNK]
        spec = (w / w.sum(axis=1, keepdims=True)) @ table  # (n, nE)
        r = np.arange(sel.size)
        i = np.clip(np.argmax(spec, axis=1), 1, energy.size - 2)
        y0, y1, y2 = spec[r, i - 1], spec[r, i], spec[r, i + 1]
        den = y0 - 2 * y1 + y2
        frac = np.where(den != 0, 0.5 * (y0 - y2) / np.where(den != 0, den, 1), 0.0)
        wl[sel] = energy[i] + frac * step
        j = np.clip(np.argmax(spec >= 0.5, axis=1), 1, energy.size - 1)
        a, b = spec[r, j - 1], spec[r, j]
        edge[sel] = energy[j - 1] + step * (0.5 - a) / np.where(b != a, b - a, 1)
    return wl.reshape(shape), edge.reshape(shape)
