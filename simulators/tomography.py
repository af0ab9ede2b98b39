"""Tomography on the simulated TXM without bluesky: scans, per-frame truth, true volume.

Mirrors FXI's ``fly_scan``: darks with the shutter closed, then projections while the
sample rotates (``'fly'``: continuous rotation, one frame per exposure, the angle of each
frame taken at mid-exposure from the stage's trajectory; ``'step'``: move, settle,
expose), then flats with the sample moved out (before, after or both). A fly-scan
frame is rendered at its mid-exposure angle (no motion blur: at FXI's 3°/s and 0.05 s
the sample turns 0.15° per frame, 0.2 px at the edge of a 128-px field of view).

Geometry and the reconstruction frame
-------------------------------------
The phantom (``simulators.phantom``) has x along detector columns, y along rows, z along
the beam; rotating by θ moves a point (x, z) to (x cos θ + z sin θ, −x sin θ + z cos θ),
and its projection lands on detector column ``rotation_center_px + x cos θ + z sin θ``
(pixels). :func:`txm_live.analysis.reconstruct` with ``center = TomoScan.center_px``
therefore returns ``recon[j, row, col]`` = attenuation (per pixel length) at

    ``x = (col − nx // 2) · p``,  ``z = (nx // 2 − row) · p``,
    ``y = (j − (ny − 1) / 2) · p − mean vertical drift``

with ``p`` the pixel size: the slice's row axis points against z (downstream at θ = 0),
columns along x, the axis at ``(nx // 2, nx // 2)``. :func:`attenuation_volume` returns
the phantom voxelized on exactly this grid (at zero drift).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .model import SimConfig, SimTXM
from .phantom import NMCPhantom, make_nmc_phantom
from .stacks import SAMPLE_OUT_X_UM

__all__ = ["TomoScan", "simulate_tomo_scan", "attenuation_volume", "make_tomo_phantom",
           "make_tomo_sim", "particle_subsamples", "project_rows", "DEFAULT_TOMO_ENERGY_EV"]

#: Above the Ni K edge (8333 eV): Ni absorbs, the NMC particles show with good contrast.
DEFAULT_TOMO_ENERGY_EV = 8400.0
#: Frame readout dead time of a fly scan, s (Kinetix-like; FXI: 0.05 s frames ≈ 20 fps).
FLY_READOUT_S = 0.0
#: Settling time after each step of a step scan, s.
STEP_SETTLE_S = 0.2
#: Time between dark frames and between flat frames, s.
CALIBRATION_FRAME_S = 0.1
#: Time to move the sample out of (or back into) the beam for flats, s.
SAMPLE_MOVE_S = 2.0
_MODES = ("fly", "step")
_FLATS_WHEN = ("before", "after", "both")


@dataclass
class TomoScan:
    """Raw projections of a simulated tomography scan and its ground truth.

    Attributes
    ----------
    projections : ndarray (n_angles, ny, nx) uint16
        Sample-in frames in acquisition order.
    flats : ndarray (n_flats, ny, nx) uint16
        Sample-out frames (all groups, in time order).
    darks : ndarray (n_darks, ny, nx) uint16
        Shutter-closed frames.
    theta_rad : ndarray (n_angles,)
        Angle of each projection as the stage reports it (fly: mid-exposure), radians.
    times_s, flat_times_s, dark_times_s : ndarray
        Mid-exposure time of each frame, s.
    truth : list of FrameTruth
        The simulator's record of every projection.
    energy_ev : float
    pixel_size_nm : float
        Binned pixel at the sample, nm.
    """

    projections: np.ndarray
    flats: np.ndarray
    darks: np.ndarray
    theta_rad: np.ndarray
    times_s: np.ndarray
    flat_times_s: np.ndarray
    dark_times_s: np.ndarray
    truth: list = field(repr=False)
    energy_ev: float = DEFAULT_TOMO_ENERGY_EV
    pixel_size_nm: float = 0.0

    @property
    def rotation_center_px(self) -> np.ndarray:
        """Per-frame detector column of the axis (``FrameTruth.rotation_center_px``), (n,)."""
        return np.array([t.rotation_center_px for t in self.truth])

    @property
    def drift_px(self) -> np.ndarray:
        """Per-frame unintended image shift (dy, dx), px, drift + wobble (CONVENTIONS), (n, 2)."""
        return np.array([t.drift_px for t in self.truth])

    def _rigid_fit(self):
        """Least-squares ``drift_x ≈ c0 + X cos θ + Z sin θ`` → (c0, X, Z, residual)."""
        th = self.theta_rad
        design = np.stack([np.ones_like(th), np.cos(th), np.sin(th)], axis=1)
        dx = self.drift_px[:, 1]
        coef, *_ = np.linalg.lstsq(design, dx, rcond=None)
        return coef[0], coef[1], coef[2], dx - design @ coef

    @property
    def center_px(self) -> float:
        """The ``center`` that reconstructs this scan: the axis column without drift, plus
        the constant part ``c0`` of the least-squares fit ``drift_x(θ) ≈ c0 + X cos θ +
        Z sin θ``. The sinusoid (the stage wobble's once-per-turn run-out, and the part of
        a slow drift that looks like it) moves the object by (X, Z) in the rotating frame
        (:attr:`object_shift_px`); what the fit leaves is :attr:`jitter_px`.
        """
        base = np.mean(self.rotation_center_px - self.drift_px[:, 1])
        return float(base + self._rigid_fit()[0])

    @property
    def object_shift_px(self) -> tuple:
        """(dy, dx, dz): where the scan's drift and wobble put the object in the
        reconstruction, px: mean vertical drift, and (X, Z) of the rigid fit of
        :attr:`center_px` (x along columns, z along the beam). Pass it to
        :func:`attenuation_volume` to compare a reconstruction with the truth."""
        _, x, z, _ = self._rigid_fit()
        return (float(self.drift_px[:, 0].mean()), float(x), float(z))

    @property
    def jitter_px(self) -> np.ndarray:
        """Per-frame (dy, dx) departure from rigid rotation about :attr:`center_px`, px,
        (n, 2): what a jitter correction should remove (CONVENTIONS sign: how far the
        content moved)."""
        dy = self.drift_px[:, 0]
        return np.stack([dy - dy.mean(), self._rigid_fit()[3]], axis=1)

    def absorbance(self) -> np.ndarray:
        """``−ln((I − D)/(F − D))`` with the mean dark and mean flat, (n, ny, nx) float32.

        A plain reference (no zinger removal; counts at or below the dark clipped to one
        count above it); the analysis layer has the careful version.
        """
        dark = self.darks.astype(np.float32).mean(axis=0)
        flat = np.maximum(self.flats.astype(np.float32).mean(axis=0) - dark, 1.0)
        num = np.maximum(self.projections.astype(np.float32) - dark, 1.0)
        return -np.log(num / flat)


def make_tomo_phantom(sim_shape, pixel_size_nm, *, axis_offset_um=0.0, seed=0,
                      z_spread_um=2.0, **kwargs) -> NMCPhantom:
    """An NMC phantom that stays inside the field of view at every angle.

    Particles are placed so that their orbit about the axis (imaged ``axis_offset_um``
    from the detector centre) never leaves the detector: the usable half-width
    ``R = fov/2 − |offset|`` less ``z_spread_um`` bounds x, so √(x² + z²) + r ≤ R.
    ``kwargs`` go to :func:`~simulators.phantom.make_nmc_phantom`.
    """
    ny, nx = sim_shape
    p_um = pixel_size_nm / 1e3
    half_w = 0.5 * nx * p_um - abs(axis_offset_um) - z_spread_um
    if half_w <= 0:
        raise ValueError(f"axis_offset_um={axis_offset_um} and z_spread_um={z_spread_um} leave "
                         f"no room in a {nx * p_um:.1f} µm wide field of view")
    return make_nmc_phantom(fov_um=(ny * p_um, 2.0 * half_w), z_spread_um=z_spread_um,
                            seed=seed, **kwargs)


def make_tomo_sim(config: SimConfig | None = None, **phantom_kwargs) -> SimTXM:
    """A :class:`SimTXM` whose sample is a :func:`make_tomo_phantom` for its geometry.

    ``config`` defaults to ``SimConfig()``; set ``rotation_axis_offset_um`` and
    ``wobble_um`` there. ``phantom_kwargs`` go to :func:`make_tomo_phantom` (``seed``
    defaults to ``config.seed``).
    """
    cfg = SimConfig() if config is None else config
    binning = cfg.sensor_shape[0] // cfg.shape[0]
    phantom_kwargs.setdefault("seed", cfg.seed)
    sample = make_tomo_phantom(cfg.shape, cfg.optics.pixel_size_nm(binning),
                               axis_offset_um=cfg.rotation_axis_offset_um, **phantom_kwargs)
    return SimTXM(cfg, sample=sample)


def _trajectory(mode, n_angles, theta0, theta_range, exposure_s, t0):
    """Angles (rad) and mid-exposure times (s) of the projections."""
    if mode == "fly":
        period = exposure_s + FLY_READOUT_S
        speed = theta_range / (n_angles * period)  # rad/s: one half turn in n frames
        times = t0 + (np.arange(n_angles) + 0.5) * period
        return theta0 + speed * (times - t0), times
    # step: both ends included, as FXI's step scans do
    theta = theta0 + np.linspace(0.0, theta_range, n_angles)
    times = t0 + np.arange(n_angles) * (STEP_SETTLE_S + exposure_s) + STEP_SETTLE_S + 0.5 * exposure_s
    return theta, times


def simulate_tomo_scan(sim: SimTXM, n_angles: int, *, mode: str = "fly",
                       theta_range_deg: float = 180.0, theta_start_deg: float = 0.0,
                       energy_ev: float = DEFAULT_TOMO_ENERGY_EV, exposure_s: float = 0.05,
                       n_darks: int = 10, n_flats: int = 10, flats_when: str = "after",
                       start_time_s: float = 0.0) -> TomoScan:
    """Run a fly or step tomography scan on ``sim`` (its drift and noise state advance).

    Parameters
    ----------
    sim : SimTXM
        The simulated microscope; set ``SimConfig.rotation_axis_offset_um`` and
        ``wobble_um`` for a realistic axis, and give it a :func:`make_tomo_phantom` sample
        so nothing leaves the field of view.
    n_angles : int
        Number of projections (≥ 2).
    mode : {'fly', 'step'}
        ``'fly'``: continuous rotation through ``theta_range_deg`` over the n frames, the
        angle of each frame at mid-exposure (the last one half a step short of the end);
        ``'step'``: ``n_angles`` stops from start to end inclusive, settling
        ``STEP_SETTLE_S`` at each.
    theta_range_deg, theta_start_deg : float
        Rotation range and start, degrees (converted to radians in the result).
    energy_ev : float
        Photon energy, eV; the optics are focused for it.
    exposure_s : float
        Exposure of every frame, s.
    n_darks, n_flats : int
        Numbers of dark and flat frames (flats per group when ``flats_when='both'``).
    flats_when : {'before', 'after', 'both'}
        When the sample-out flats are taken.
    start_time_s : float
        Time of the first dark, s.

    Returns
    -------
    TomoScan
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}; got {mode!r}")
    if flats_when not in _FLATS_WHEN:
        raise ValueError(f"flats_when must be one of {_FLATS_WHEN}; got {flats_when!r}")
    if int(n_angles) < 2 or n_darks < 1 or n_flats < 1:
        raise ValueError(f"need n_angles >= 2, n_darks >= 1, n_flats >= 1; got "
                         f"{n_angles}, {n_darks}, {n_flats}")
    if not exposure_s > 0 or not theta_range_deg > 0:
        raise ValueError(f"exposure_s and theta_range_deg must be > 0; got {exposure_s}, "
                         f"{theta_range_deg}")
    zp, det = sim.optics.focus_positions(energy_ev)
    kw = dict(energy_ev=energy_ev, zp_z_mm=zp, det_z_mm=det, exposure_s=exposure_s)
    t = float(start_time_s)

    def calibration(n, **extra):
        nonlocal t
        frames, times = [], []
        for _ in range(n):
            frames.append(sim.acquire(time_s=t, theta_rad=math.radians(theta_start_deg),
                                      **kw, **extra).image)
            times.append(t)
            t += CALIBRATION_FRAME_S
        return frames, times

    darks, dark_times = calibration(n_darks, shutter_open=False)
    flats, flat_times = [], []
    if flats_when in ("before", "both"):
        f, ft = calibration(n_flats, sample_x_um=SAMPLE_OUT_X_UM)
        flats += f
        flat_times += ft
        t += SAMPLE_MOVE_S
    theta, times = _trajectory(mode, int(n_angles), math.radians(theta_start_deg),
                               math.radians(theta_range_deg), exposure_s, t)
    ny, nx = sim.shape
    projections = np.empty((theta.size, ny, nx), np.uint16)
    truth = []
    for i, (th, ti) in enumerate(zip(theta, times)):
        frame = sim.acquire(time_s=float(ti), theta_rad=float(th), **kw)
        projections[i] = frame.image
        truth.append(frame.truth)
    t = float(times[-1]) + exposure_s
    if flats_when in ("after", "both"):
        t += SAMPLE_MOVE_S
        f, ft = calibration(n_flats, sample_x_um=SAMPLE_OUT_X_UM)
        flats += f
        flat_times += ft
    return TomoScan(
        projections=projections, flats=np.stack(flats), darks=np.stack(darks),
        theta_rad=np.asarray(theta, float), times_s=np.asarray(times, float),
        flat_times_s=np.asarray(flat_times), dark_times_s=np.asarray(dark_times),
        truth=truth, energy_ev=float(energy_ev), pixel_size_nm=float(sim.pixel_size_nm),
    )


def project_rows(sim: SimTXM, theta_rad, rows: slice, energy_ev: float = DEFAULT_TOMO_ENERGY_EV
                 ) -> np.ndarray:
    """Noise-free absorbance of a band of detector rows at many angles, analytically.

    The frames ``SimTXM.acquire`` would give with no drift, wobble, blur or noise, but
    only for ``rows`` — cheap sinograms for wide detectors (benchmarks at 2048 px, where
    whole simulated frames would cost minutes). The axis is at column
    ``(nx − 1)/2 + rotation_axis_offset_um / p``.

    Parameters
    ----------
    sim : SimTXM
    theta_rad : array_like (n_angles,)
    rows : slice
        Detector rows, step 1.
    energy_ev : float

    Returns
    -------
    ndarray (n_angles, n_rows, nx) float32
    """
    ny, nx = sim.shape
    r0, r1, step = rows.indices(ny)
    if step != 1 or r1 <= r0:
        raise ValueError(f"rows must be a non-empty slice with step 1; got {rows}")
    p = sim.pixel_size_nm / 1e3
    mu = np.asarray(sim.spectra.mu_grid_per_um(energy_ev), np.float32)
    origin = ((r0 + (r1 - r0 - 1) / 2 - (ny - 1) / 2) * p, -sim.config.rotation_axis_offset_um)
    theta = np.asarray(theta_rad, float)
    out = np.empty((theta.size, r1 - r0, nx), np.float32)
    for i, th in enumerate(theta):
        paths = sim.sample.project(sim.spectra.valence_grid, (r1 - r0, nx), p,
                                   theta_rad=float(th), origin_um=origin)
        out[i] = np.tensordot(mu, paths, axes=1)
    return out


def attenuation_volume(sim: SimTXM, energy_ev: float = DEFAULT_TOMO_ENERGY_EV, *,
                       rows=None, shift_px=(0.0, 0.0, 0.0), supersample: int = 3) -> np.ndarray:
    """The phantom's linear attenuation on the reconstruction grid, per pixel length.

    Parameters
    ----------
    sim : SimTXM
        Its sample, spectra, image shape and pixel size define the volume.
    energy_ev : float
        Photon energy, eV.
    rows : slice or None
        Detector rows (slices) to compute; default all.
    shift_px : tuple of float
        (dy, dx, dz) displacement of the object, px (``TomoScan.object_shift_px`` puts
        the truth where a scan's drift and wobble put the reconstruction).
    supersample : int
        Sub-samples per voxel edge (partial-volume averaging).

    Returns
    -------
    ndarray (n_rows, nx, nx) float32
        ``mu · p`` (attenuation per pixel length, the units of ``reconstruct``) at the
        points of the module docstring's transform: voxel ``[j, row, col]`` centred at
        ``x = (col − nx // 2 − dx) p``, ``z = (nx // 2 − row − dz) p``,
        ``y = (j − (ny − 1)/2 − dy) p``. Each sub-sample takes the attenuation of the
        valence level nearest its oxidation state, as the projections do.
    """
    ny, nx = sim.shape
    rows = slice(0, ny) if rows is None else rows
    r0, r1, _ = rows.indices(ny)
    ss = int(supersample)
    if ss < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    p = sim.pixel_size_nm / 1e3
    mu = np.asarray(sim.spectra.mu_grid_per_um(energy_ev), float)
    grid = np.asarray(sim.spectra.valence_grid, float)
    dy, dx, dz = (float(v) for v in shift_px)
    sub = (np.arange(ss) + 0.5) / ss - 0.5  # sub-sample offsets, voxel units
    ax_x = ((np.arange(nx) - nx // 2 - dx)[:, None] + sub[None, :]).ravel() * p
    ax_z = ((nx // 2 - np.arange(nx) - dz)[:, None] + sub[None, :]).ravel() * p
    ax_y = ((np.arange(r0, r1) - (ny - 1) / 2 - dy)[:, None] + sub[None, :]).ravel() * p
    acc = np.zeros((r1 - r0, nx, nx), np.float64)
    for part in sim.sample.particles:
        _add_particle(acc, part, (ax_y, ax_z, ax_x), ss, mu, grid)
    return (acc * p).astype(np.float32)


def particle_subsamples(part, axes, ss):
    """One particle's sub-samples on a voxel grid (shared by :func:`attenuation_volume` and
    :func:`simulators.xanes3d.voxel_truth`).

    Parameters
    ----------
    part : phantom particle (``center_um``, ``radius_um``, ``voids``, ``valence_at``)
    axes : (ndarray, ndarray, ndarray)
        Sub-sample coordinates (µm) along y, z, x, ``ss`` per voxel.
    ss : int
        Sub-samples per voxel edge.

    Returns
    -------
    None when the particle misses the grid, else ``(spans, r, inside)``: the voxel ranges
    ``((y0, y1), (z0, z1), (x0, x1))`` of its bounding box, the sub-samples' distance to
    its centre (µm) and whether each is material (inside the sphere, outside its voids),
    both ``(ss·Δy, ss·Δz, ss·Δx)``.
    """
    cx, cy, cz = part.center_um
    rad = part.radius_um
    spans = []
    for ax, c in zip(axes, (cy, cz, cx)):
        idx = np.flatnonzero(np.abs(ax - c) <= rad)
        if idx.size == 0:
            return None
        spans.append((idx[0] // ss, idx[-1] // ss + 1))  # whole voxels
    (y0, y1), (z0, z1), (x0, x1) = spans
    yy = (axes[0][y0 * ss : y1 * ss] - cy)[:, None, None]
    zz = (axes[1][z0 * ss : z1 * ss] - cz)[None, :, None]
    xx = (axes[2][x0 * ss : x1 * ss] - cx)[None, None, :]
    r = np.sqrt(xx * xx + yy * yy + zz * zz)
    inside = r <= rad
    for void in part.voids:
        c, a = void.quadric(0.0)
        d = (xx + cx - c[0], yy + cy - c[1], zz + cz - c[2])  # (x, y, z) from the void centre
        q = sum(a[i, j] * d[i] * d[j] for i in range(3) for j in range(3))
        inside &= q > 1.0
    return tuple(spans), r, inside


def _add_particle(acc, part, axes, ss, mu, grid):
    """Add one particle's sub-sample-averaged attenuation (1/µm) into ``acc`` (y, z, x)."""
    found = particle_subsamples(part, axes, ss)
    if found is None:
        return
    ((y0, y1), (z0, z1), (x0, x1)), r, inside = found
    level = np.searchsorted(0.5 * (grid[1:] + grid[:-1]), part.valence_at(r[inside]))
    val = np.zeros(r.shape)
    val[inside] = mu[level]
    shp = (y1 - y0, ss, z1 - z0, ss, x1 - x0, ss)
    acc[y0:y1, z0:z1, x0:x1] += val.reshape(shp).mean(axis=(1, 3, 5))
