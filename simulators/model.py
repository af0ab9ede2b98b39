"""The simulated TXM: sample, optics, drift and detector wired into one ``acquire`` call.

Pure numpy/scipy; no ophyd. The ophyd devices in ``simulators/devices.py`` wrap
:class:`SimTXM` and only pass positions and time in.

Per frame (see :meth:`SimTXM.acquire`):

1. optics: ``imaging_state(E, zp_z_mm, det_z_mm)`` → magnification and blur;
2. sample: the per-valence projection of the analytic phantom (stored sparsely: only
   pixels with material and valence levels present), cached per (theta, magnification)
   and re-centred when the window moves beyond its margin, contracted with ``mu_k(E)``
   → absorbance;
3. transmission ``exp(−absorbance)`` is shifted (drift + stage offset) and blurred in one
   multiplication in Fourier space, on a window padded with real sample content (and a
   taper to the open beam at its very edge) so nothing wraps around;
4. detector: illumination × transmission → counts, noise, dark, defects, 16 bits.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field, fields

import numba
import numpy as np
import scipy.fft

from txm_live.devices.optics import TXMOptics

from .detector_model import DetectorModel
from .drift import DriftModel
from .phantom import NMCPhantom, make_nmc_phantom
from .spectra import NiXanesModel

__all__ = ["SimConfig", "FrameTruth", "Frame", "TruthMaps", "SimTXM"]

_TAPER_PX = 8  # raised-cosine taper to the open beam at the edge of the FFT window


@numba.njit(fastmath=True, cache=True)
def _scatter_expm1(neg_absorb, rows, cols, y0, x0, wy, wx, out):
    """out[r, c] = expm1(-A)·wy[r]·wx[c] for each material pixel inside the window.

    ``rows``/``cols`` locate the material pixels on the extended projection grid; the
    window starts at extended (y0, x0) and spans len(wy) × len(wx); ``out`` (at least
    that large, zero elsewhere) receives T − 1, tapered to 0 at the window edge.
    """
    hy, hx = wy.size, wx.size
    for n in range(rows.size):
        r = rows[n] - y0
        c = cols[n] - x0
        if 0 <= r < hy and 0 <= c < hx:
            out[r, c] = np.expm1(neg_absorb[n]) * wy[r] * wx[c]


@numba.njit(fastmath=True, cache=True)
def _apply_separable(spec, gy, gx):
    """spec[i, j] *= gy[i] · gx[j] in place (one pass over the spectrum)."""
    ny, nx = spec.shape
    for i in range(ny):
        g = gy[i]
        for j in range(nx):
            spec[i, j] *= g * gx[j]


@numba.njit(fastmath=True, cache=True)
def _crop_transmission(t_minus_1, y0, x0, ny, nx):
    """Contiguous T = 1 + (T − 1) on the (ny, nx) crop at (y0, x0), clipped at 0."""
    out = np.empty((ny, nx), np.float32)
    for i in range(ny):
        for j in range(nx):
            v = 1.0 + t_minus_1[y0 + i, x0 + j]
            out[i, j] = v if v > 0.0 else 0.0
    return out


@dataclass
class SimConfig:
    """Everything that defines a simulated TXM, with realistic FXI-like defaults.

    Parameters
    ----------
    shape : tuple of int
        (ny, nx) of the delivered (binned) image. The binning is
        ``sensor_shape[0] // shape[0]`` and must be the same on both axes; the nominal
        pixel is ``optics.pixel_size_nm(binning)`` (128² → 16×16 binning → 320 nm, FOV
        41 µm).
    sensor_shape : tuple of int
        (ny, nx) of the camera sensor (2048² Kinetix ROI).
    optics : TXMOptics
        Zone plate, magnification, objective, camera pixel.
    flat_counts : float
        Open-beam counts per binned pixel above dark at ``reference_exposure_s``.
    reference_exposure_s : float
        Exposure giving ``flat_counts``; counts scale linearly with exposure.
    dark_counts, read_noise_counts : float
        Dark offset and read noise, counts.
    saturation_counts : int
        16-bit full scale.
    gain_variation, flat_variation, flat_time_variation, flat_period_s : float
        Detector gain spread, illumination pattern peak-to-valley, its relative drift
        with time, and the time scale of that drift (see :class:`DetectorModel`).
    hot_pixel_fraction, dead_pixel_fraction : float
        Fractions of defective pixels (at least one of each when > 0).
    zingers_per_megapixel : float
        Mean zingers per megapixel per reference exposure.
    drift_rate_nm_per_s : tuple of float
        Steady thermal drift (dy, dx) of the sample, nm/s at the sample plane.
    drift_oscillation_nm, drift_oscillation_period_s : float
        Slow oscillating drift amplitude (nm) and period (s).
    drift_walk_nm_per_sqrt_s : float
        Random-walk drift, nm/√s.
    mono_jump_nm : float
        Standard deviation per axis of the sample jump each time the energy changes, nm.
    rotation_axis_offset_um : float
        Where the rotation axis is imaged, relative to the detector centre, µm at the
        sample (+ → toward larger column): the phantom's origin sits on the axis, so at
        theta = 0 the whole image is shifted by this much, and in tomography the centre
        of rotation is off the detector centre, as at a real instrument (FXI: tens of
        unbinned pixels; 0.8 µm = 40 px of 20 nm is typical). Default 0 keeps 2D XANES
        geometry identical to the phantom's; set it for tomography. The default phantom
        is narrowed by twice this so it stays in view.
    wobble_um : float
        Amplitude of the rotation stage's wobble (radial run-out, once per turn, along x;
        half of it along y from axis tilt), µm; zero at theta = 0, so 2D XANES at a fixed
        angle never sees it. Counted in ``FrameTruth.drift_px``.
    max_blur_sigma_px : float
        Cap on the blur sigma in binned pixels (an unfocused image is already mush at
        this blur; the cap bounds the FFT padding and keeps frames fast).
    margin_fraction : float
        Extra projection margin kept around the image (fraction of its size) so that
        drift moves real sample content in without re-projecting.
    mask_min_edge_jump : float
        Truth-map mask threshold: pixels whose Ni edge jump (absorbance units) is at least
        this; 0.03 ≈ 0.46 µm of NMC811, about 4× the per-pixel absorbance noise at
        3e4 counts.
    seed : int
        Seeds phantom, drift and detector (each its own stream).
    """

    shape: tuple = (128, 128)
    sensor_shape: tuple = (2048, 2048)
    optics: TXMOptics = field(default_factory=TXMOptics)
    flat_counts: float = 3e4
    reference_exposure_s: float = 0.05
    dark_counts: float = 100.0
    read_noise_counts: float = 3.0
    saturation_counts: int = 65535
    gain_variation: float = 0.01
    flat_variation: float = 0.15
    flat_time_variation: float = 0.01
    flat_period_s: float = 300.0
    hot_pixel_fraction: float = 1e-4
    dead_pixel_fraction: float = 1e-4
    zingers_per_megapixel: float = 20.0
    drift_rate_nm_per_s: tuple = (0.6, 1.0)
    drift_oscillation_nm: float = 30.0
    drift_oscillation_period_s: float = 900.0
    drift_walk_nm_per_sqrt_s: float = 1.0
    mono_jump_nm: float = 25.0
    rotation_axis_offset_um: float = 0.0
    wobble_um: float = 0.02
    max_blur_sigma_px: float = 50.0
    margin_fraction: float = 1.0 / 16.0
    mask_min_edge_jump: float = 0.03
    seed: int = 0


@dataclass(frozen=True)
class FrameTruth:
    """What really happened in one frame (ground truth for tests).

    Attributes
    ----------
    time_s, energy_ev : float
        When and at which energy the frame was taken.
    drift_px : tuple of float
        Unintended image shift (dy, dx) in binned pixels (thermal drift + mono jumps +
        rotation-stage wobble), CONVENTIONS sign: +dy = content moved toward larger row
        index.
    stage_offset_px : tuple of float
        Image shift (dy, dx) caused by the commanded sample stage offset, binned px.
    sample_in_beam : bool
        Whether any sample content reaches the detector.
    shutter_open : bool
    magnification : float
        ZP magnification delivered (``q/p``).
    blur_sigma_px : float
        Gaussian blur sigma applied, binned px (after the ``max_blur_sigma_px`` cap).
    flat_scale : float
        Global illumination scale (time and energy), relative to ``flat_counts``.
    defocus_um, exposure_s, theta_rad : float
        Sample-side defocus, exposure time and rotation angle of the frame.
    rotation_center_px : float
        Detector column (binned px, 0 = first column's centre) on which the rotation axis
        is imaged in this frame: detector centre + axis offset + stage x + drift x. The
        ``center`` a tomopy-style reconstruction of these columns needs.
    """

    time_s: float
    energy_ev: float
    drift_px: tuple
    stage_offset_px: tuple
    sample_in_beam: bool
    shutter_open: bool
    magnification: float
    blur_sigma_px: float
    flat_scale: float
    defocus_um: float = 0.0
    exposure_s: float = 0.05
    theta_rad: float = 0.0
    rotation_center_px: float = 0.0


@dataclass(frozen=True)
class Frame:
    """A detector image, (ny, nx) uint16, and its :class:`FrameTruth`."""

    image: np.ndarray
    truth: FrameTruth


@dataclass(frozen=True)
class TruthMaps:
    """Chemical ground truth at zero drift and nominal magnification, (ny, nx) each.

    Attributes
    ----------
    whiteline_ev : ndarray float
        Argmax of each pixel's normalized spectrum (mixture of its valences), eV.
    edge_ev : ndarray float
        Its 0.5 crossing, eV.
    oxidation_state : ndarray float
        Path-length-weighted mean Ni valence.
    thickness_um : ndarray float
        Path length through material, µm (defined everywhere; 0 off the particles).
    mask : ndarray bool
        Pixels whose Ni edge jump is at least ``SimConfig.mask_min_edge_jump``;
        ``whiteline_ev``, ``edge_ev`` and ``oxidation_state`` are NaN outside it.
    """

    whiteline_ev: np.ndarray
    edge_ev: np.ndarray
    oxidation_state: np.ndarray
    thickness_um: np.ndarray
    mask: np.ndarray


class SimTXM:
    """A simulated full-field TXM at a Ni K-edge NMC sample.

    Parameters
    ----------
    config : SimConfig, optional
    sample : NMCPhantom, optional
        Default: ``make_nmc_phantom(fov_um=<the FOV>, seed=config.seed)``.
    spectra : NiXanesModel, optional
        Default: ``NiXanesModel()`` (Ni2+ half-step at xraydb's 8333 eV).

    Attributes
    ----------
    pixel_size_nm : float
        Nominal binned pixel at the sample, nm.
    binning : int
    fov_um : tuple of float
        (height, width) of the nominal field of view, µm.

    Notes
    -----
    The image is presented upright: moving the sample stage by +x µm moves the image
    content by ``+x / pixel`` columns (a real ZP inverts the image; the camera software
    flips it back). Drift is generated at the sample plane in nm, so its size in pixels
    grows with magnification and shrinks with binning.
    """

    def __init__(self, config: SimConfig | None = None, sample: NMCPhantom | None = None,
                 spectra: NiXanesModel | None = None):
        self.config = cfg = SimConfig() if config is None else config
        ny, nx = (int(s) for s in cfg.shape)
        by, bx = cfg.sensor_shape[0] // ny, cfg.sensor_shape[1] // nx
        if by != bx or by < 1:
            raise ValueError(
                f"shape {cfg.shape} must bin sensor_shape {cfg.sensor_shape} equally on both "
                f"axes (got binning {by} x {bx})"
            )
        self.shape = (ny, nx)
        self.binning = by
        self.optics = cfg.optics
        self.pixel_size_nm = cfg.optics.pixel_size_nm(by)
        self.fov_um = (ny * self.pixel_size_nm / 1e3, nx * self.pixel_size_nm / 1e3)
        if sample is None:
            fov = (self.fov_um[0], self.fov_um[1] - 2.0 * abs(cfg.rotation_axis_offset_um))
            sample = make_nmc_phantom(fov_um=fov, seed=cfg.seed)
        self.sample = sample
        self.spectra = NiXanesModel() if spectra is None else spectra
        seeds = np.random.SeedSequence(cfg.seed).spawn(3)
        self._wobble_phase = np.random.default_rng(seeds[2]).uniform(0, 2 * np.pi, 2)
        # Every detector setting SimConfig carries goes to the DetectorModel by name, so a
        # setting added to both flows through without a second list to keep in step.
        detector_settings = {
            f.name: getattr(cfg, f.name)
            for f in fields(DetectorModel)
            if f.name not in ("shape", "seed") and hasattr(cfg, f.name)
        }
        self.detector = DetectorModel(
            shape=self.shape, seed=int(seeds[0].generate_state(1)[0]), **detector_settings
        )
        self.drift = DriftModel(
            rate_per_s=tuple(cfg.drift_rate_nm_per_s),
            oscillation_amplitude=cfg.drift_oscillation_nm,
            oscillation_period_s=cfg.drift_oscillation_period_s,
            walk_per_sqrt_s=cfg.drift_walk_nm_per_sqrt_s,
            jump_sigma=cfg.mono_jump_nm,
            seed=int(seeds[1].generate_state(1)[0]),
        )
        self._last_energy_ev: float | None = None
        self._proj_cache: OrderedDict = OrderedDict()
        self._proj_cache_size = 3
        self._margin_px = max(4, int(math.ceil(cfg.margin_fraction * max(ny, nx))))
        self._truth_maps: TruthMaps | None = None
        #: Optional ``callable(time_s) -> NMCPhantom`` asked for the sample before every
        #: frame (an operando cell whose particles change oxidation state with time); it
        #: returns the same object while nothing changed, so cached projections are kept.
        self.sample_source = None
        self._displacement_nm = np.zeros(2)

    # ------------------------------------------------------------------ changing sample
    def set_sample(self, sample: NMCPhantom) -> None:
        """Replace the sample, e.g. with the same particles in another state of charge.

        Drift, detector and time carry on; cached projections and truth maps are dropped
        (:meth:`truth_maps` then describes the new sample).
        """
        if not isinstance(sample, NMCPhantom):
            raise TypeError(f"sample must be an NMCPhantom, got {type(sample).__name__}")
        self.sample = sample
        self._proj_cache.clear()
        self._truth_maps = None

    def displace_sample(self, dy_um: float, dx_um: float) -> None:
        """Move the sample by (dy, dx) µm for good, as a step in its drift.

        What a stage coming back from another field of view with a repeatability error, or
        a cell re-seated after reconnection, does to the image. Counted in
        ``FrameTruth.drift_px`` like any drift (truth maps stay at zero drift).
        """
        step = np.array([float(dy_um), float(dx_um)]) * 1e3
        if not np.all(np.isfinite(step)):
            raise ValueError(f"displacement must be finite, got ({dy_um}, {dx_um}) µm")
        self._displacement_nm = self._displacement_nm + step

    def _follow_sample_source(self, time_s: float) -> None:
        if self.sample_source is not None:
            sample = self.sample_source(float(time_s))
            if sample is not self.sample:
                self.set_sample(sample)

    # ------------------------------------------------------------------ projections
    def keep_projections(self, n_entries: int) -> None:
        """Keep up to ``n_entries`` (angle, magnification) projections cached (default 3).

        A 3D XANES scan repeats the same angles at every energy: with one entry per angle
        each phantom projection is computed once for the whole scan (about 1 MB per angle
        at 128², sparse), not once per energy.
        """
        n = int(n_entries)
        if n < 1:
            raise ValueError(f"n_entries must be >= 1; got {n_entries!r}")
        self._proj_cache_size = n
        while len(self._proj_cache) > n:
            self._proj_cache.popitem(last=False)

    def _projection(self, theta_rad: float, rel_mag: float, centre_px, need_px: int) -> dict:
        """Cached sparse per-valence projection covering the window around ``centre_px``.

        The projection (K, ny + 2m, nx + 2m) of the phantom, with the sample shifted by
        ``origin`` (integer px, CONVENTIONS sign) so its central (ny, nx) block is the
        image, is stored sparsely: only pixels with material (``index``, flat indices into
        the extended grid) and only valence levels present (``levels``), as a contiguous
        (len(levels), n_support) float32 array ``values``. Background pixels, usually
        most of the image, then cost nothing per frame. It is recomputed (and re-centred)
        when drift or the stage offset moves the window beyond its margin.
        """
        key = (round(float(theta_rad), 12), round(float(rel_mag), 12))
        entry = self._proj_cache.get(key)
        cy, cx = centre_px
        if entry is not None:
            oy, ox = entry["origin"]
            m = entry["margin"]
            if abs(cy - oy) + need_px <= m and abs(cx - ox) + need_px <= m:
                self._proj_cache.move_to_end(key)
                return entry
        m = need_px + self._margin_px
        ny, nx = self.shape
        p_eff_um = self.pixel_size_nm / 1e3 / rel_mag
        # Content shifted by +s px on the detector = the sample seen from origin -s.
        ext_shape = (ny + 2 * m, nx + 2 * m)
        levels, index, values = self.sample.project_sparse(
            self.spectra.valence_grid, ext_shape, p_eff_um, theta_rad=theta_rad,
            # the phantom's origin is on the rotation axis, imaged off the detector centre
            origin_um=(-cy * p_eff_um, -cx * p_eff_um - self.config.rotation_axis_offset_um),
        )
        rows, cols = np.divmod(index, ext_shape[1])
        entry = {
            "levels": levels,
            "index": index,
            "rows": rows.astype(np.int32),
            "cols": cols.astype(np.int32),
            "values": values,
            "ext_shape": ext_shape,
            "origin": (cy, cx),
            "margin": m,
        }
        self._proj_cache[key] = entry
        self._proj_cache.move_to_end(key)
        while len(self._proj_cache) > self._proj_cache_size:
            self._proj_cache.popitem(last=False)
        return entry

    def _window(self, energy_ev, theta_rad, rel_mag, shift_int, half_px, fn=None):
        """Absorbance (or ``fn(-absorbance)``, which must map 0 to 0) on the image window
        grown by ``half_px`` on each side; (ny + 2 half, nx + 2 half) float32."""
        entry = self._projection(theta_rad, rel_mag, shift_int, half_px)
        mu = self.spectra.mu_grid_per_um(energy_ev)[entry["levels"]].astype(np.float32)
        vals = mu @ entry["values"]  # one BLAS pass over the material pixels only
        if fn is not None:
            vals = fn(np.negative(vals, out=vals), out=vals)
        hy, hx = entry["ext_shape"]
        full = np.zeros(hy * hx, np.float32)
        full[entry["index"]] = vals
        full = full.reshape(hy, hx)
        ny, nx = self.shape
        m = entry["margin"]
        oy, ox = entry["origin"]
        # Extended row m + i shows the sample shifted by origin; we want shift_int.
        y0 = m - half_px - (shift_int[0] - oy)
        x0 = m - half_px - (shift_int[1] - ox)
        return full[y0 : y0 + ny + 2 * half_px, x0 : x0 + nx + 2 * half_px]

    def absorbance(self, energy_ev, *, theta_rad=0.0) -> np.ndarray:
        """Noise-free absorbance ``sum_k mu_k(E) L_k`` with no drift, blur or offset.

        Parameters
        ----------
        energy_ev : float
            Photon energy, eV.
        theta_rad : float, optional
            Sample rotation, radians.

        Returns
        -------
        ndarray (ny, nx) float32
        """
        return np.array(self._window(float(energy_ev), theta_rad, 1.0, (0, 0), 0))

    # ------------------------------------------------------------------ acquisition
    def _wobble_nm(self, theta_rad) -> np.ndarray:
        """Rotation-stage wobble (dy, dx) at ``theta_rad``, nm; zero at theta = 0."""
        a = self.config.wobble_um * 1e3
        py, px = self._wobble_phase
        return np.array([0.5 * a * (np.sin(theta_rad + py) - np.sin(py)),
                         a * (np.cos(theta_rad + px) - np.cos(px))])

    def _sample_visible(self, theta_rad, rel_mag, shift_px, reach_px) -> bool:
        """Does any particle (grown by ``reach_px``) overlap the detector?"""
        ny, nx = self.shape
        p_eff_um = self.pixel_size_nm / 1e3 / rel_mag
        c, s = math.cos(theta_rad), math.sin(theta_rad)
        for part in self.sample.particles:
            x, y, z = part.center_um
            x_rot = c * x + s * z + self.config.rotation_axis_offset_um
            px_x = x_rot / p_eff_um + (nx - 1) / 2 + shift_px[1]
            px_y = y / p_eff_um + (ny - 1) / 2 + shift_px[0]
            r = part.radius_um / p_eff_um + reach_px
            if -r < px_x < nx - 1 + r and -r < px_y < ny - 1 + r:
                return True
        return False

    def _transmission(self, energy_ev, theta_rad, rel_mag, shift_px, sigma_px):
        """Shifted, blurred transmission on the image, (ny, nx) float32."""
        ny, nx = self.shape
        s_int = (int(round(shift_px[0])), int(round(shift_px[1])))
        frac = (shift_px[0] - s_int[0], shift_px[1] - s_int[1])
        half = int(math.ceil(4.0 * sigma_px)) + 2 + _TAPER_PX
        hy, hx = ny + 2 * half, nx + 2 * half
        entry = self._projection(theta_rad, rel_mag, s_int, half)
        mu = self.spectra.mu_grid_per_um(energy_ev)[entry["levels"]].astype(np.float32)
        neg_absorb = (-mu) @ entry["values"]  # one BLAS pass over the material pixels
        # Taper T − 1 to 0 (open beam) over the outermost pixels, so the periodic FFT sees
        # no jump at the window edge (which would ring through a sub-pixel shift).
        ramp = (0.5 - 0.5 * np.cos(np.pi * (np.arange(_TAPER_PX) + 0.5) / _TAPER_PX)).astype(np.float32)
        wy = np.ones(hy, np.float32)
        wy[:_TAPER_PX], wy[-_TAPER_PX:] = ramp, ramp[::-1]
        wx = np.ones(hx, np.float32)
        wx[:_TAPER_PX], wx[-_TAPER_PX:] = ramp, ramp[::-1]
        fy = scipy.fft.next_fast_len(hy, real=True)
        fx = scipy.fft.next_fast_len(hx, real=True)
        trans = np.zeros((fy, fx), np.float32)  # T − 1; zero off the sample and in padding
        m, (oy, ox) = entry["margin"], entry["origin"]
        y0 = m - half - (s_int[0] - oy)
        x0 = m - half - (s_int[1] - ox)
        _scatter_expm1(neg_absorb, entry["rows"], entry["cols"], y0, x0, wy, wx, trans)
        # Fourier: Gaussian blur and sub-pixel shift as one separable multiplier.
        spec = scipy.fft.rfft2(trans, workers=-1, overwrite_x=True)
        ky = scipy.fft.fftfreq(fy).astype(np.float32)
        kx = scipy.fft.rfftfreq(fx).astype(np.float32)
        two_pi2 = 2.0 * np.pi**2 * sigma_px**2
        gy = np.exp(-two_pi2 * ky**2 - 2j * np.pi * ky * frac[0]).astype(np.complex64)
        gx = np.exp(-two_pi2 * kx**2 - 2j * np.pi * kx * frac[1]).astype(np.complex64)
        _apply_separable(spec, gy, gx)
        out = scipy.fft.irfft2(spec, s=(fy, fx), workers=-1, overwrite_x=True)
        return _crop_transmission(out, half, half, ny, nx)

    def acquire(self, *, energy_ev, zp_z_mm, det_z_mm, sample_x_um=0.0, sample_y_um=0.0,
                theta_rad=0.0, shutter_open=True, exposure_s=0.05, time_s=0.0) -> Frame:
        """Take one detector frame.

        Parameters
        ----------
        energy_ev : float
            Monochromator energy, eV. A change from the previous call (any frame,
            shutter open or not) adds a random jump to the sample drift.
        zp_z_mm, det_z_mm : float
            Sample→ZP and sample→detector distances, mm; with
            ``optics.focus_positions(energy_ev)`` the image is sharp at nominal
            magnification; anything else defocuses and/or rescales the image.
        sample_x_um, sample_y_um : float
            Commanded sample stage offset, µm. Small offsets shift the image; moving the
            sample clear of the FOV gives an open-beam (flat) frame.
        theta_rad : float
            Sample rotation about the vertical axis, radians.
        shutter_open : bool
            ``False`` → dark frame.
        exposure_s : float
            Exposure, s; counts are ``flat_counts * exposure_s / reference_exposure_s``.
        time_s : float
            Time of the frame, s (injected; drives drift and illumination changes).

        Returns
        -------
        Frame
        """
        cfg = self.config
        energy_ev = float(energy_ev)
        if not exposure_s > 0:
            raise ValueError(f"exposure_s must be > 0, got {exposure_s}")
        # validates energy range and geometry before any state (drift jumps) changes
        state = self.optics.imaging_state(energy_ev, zp_z_mm, det_z_mm)
        rel = state.relative_magnification
        self._follow_sample_source(time_s)
        if self._last_energy_ev is not None and abs(energy_ev - self._last_energy_ev) > 1e-6:
            self.drift.mono_moved()
        self._last_energy_ev = energy_ev
        px_um = self.pixel_size_nm / 1e3
        drift = ((self.drift.offset(time_s) + self._displacement_nm + self._wobble_nm(theta_rad))
                 / self.pixel_size_nm * rel)
        stage = np.array([sample_y_um, sample_x_um], dtype=float) / px_um * rel
        sigma_px = min(state.blur_sigma_um / px_um * rel, cfg.max_blur_sigma_px)
        shift = drift + stage
        in_beam = self._sample_visible(theta_rad, rel, shift, 4.0 * sigma_px + 1.0)
        trans = None
        if shutter_open and in_beam:
            trans = self._transmission(energy_ev, theta_rad, rel, shift, sigma_px)
        image = self.detector.expose(
            trans, exposure_s=exposure_s, time_s=time_s, energy_ev=energy_ev,
            shutter_open=shutter_open,
        )
        truth = FrameTruth(
            time_s=float(time_s), energy_ev=energy_ev,
            drift_px=(float(drift[0]), float(drift[1])),
            stage_offset_px=(float(stage[0]), float(stage[1])),
            sample_in_beam=bool(in_beam), shutter_open=bool(shutter_open),
            magnification=state.magnification, blur_sigma_px=float(sigma_px),
            flat_scale=self.detector.flat_scale(time_s, energy_ev),
            defocus_um=state.defocus_um, exposure_s=float(exposure_s), theta_rad=float(theta_rad),
            rotation_center_px=float((self.shape[1] - 1) / 2 + cfg.rotation_axis_offset_um / px_um * rel
                                     + stage[1] + drift[1]),
        )
        return Frame(image=image, truth=truth)

    # ------------------------------------------------------------------ ground truth
    def truth_maps(self) -> TruthMaps:
        """Chemical ground truth from the noise-free per-pixel spectra (cached).

        Each pixel's normalized spectrum is the path-length-weighted mixture of its
        valence levels' spectra, evaluated on a 0.05 eV grid from 10 eV below the Ni2+
        edge to 25 eV above the Ni4+ edge; whiteline = its argmax (parabola-refined),
        edge = its first upward 0.5 crossing (linear interpolation).
        """
        if self._truth_maps is not None:
            return self._truth_maps
        sp = self.spectra
        entry = self._projection(0.0, 1.0, (0, 0), 0)
        ny, nx = self.shape
        m, (oy, ox) = entry["margin"], entry["origin"]
        iy = entry["rows"].astype(np.int64) - m - oy  # image row of each material pixel
        ix = entry["cols"].astype(np.int64) - m - ox
        inside = np.flatnonzero((iy >= 0) & (iy < ny) & (ix >= 0) & (ix < nx))
        pixel = iy[inside] * nx + ix[inside]
        p = entry["values"][:, inside]  # (L, n) path length per level
        valences = sp.valence_grid[entry["levels"]]
        thickness = np.zeros(ny * nx)
        thickness[pixel] = p.sum(axis=0)
        jump = float(sp.edge_jump_per_um(sp.edge_ev(2.0)))
        mask = thickness * jump >= self.config.mask_min_edge_jump
        step = 0.05
        energy = np.arange(sp.edge_ev(2.0) - 10.0, sp.edge_ev(4.0) + 25.0, step)
        table = sp.normalized(energy[None, :], valences[:, None]).astype(np.float32)  # (L, nE)
        wl = np.full(ny * nx, np.nan)
        edge = np.full(ny * nx, np.nan)
        ox_state = np.full(ny * nx, np.nan)
        keep = np.flatnonzero(mask[pixel])  # columns of p inside the mask
        chunk = 8192
        for start in range(0, keep.size, chunk):
            cols = keep[start : start + chunk]
            sel = pixel[cols]
            w = p[:, cols] / p[:, cols].sum(axis=0)
            ox_state[sel] = valences @ w
            spec = w.T @ table  # (n, nE): the pixel's normalized mixture spectrum
            r = np.arange(cols.size)
            i = np.clip(np.argmax(spec, axis=1), 1, energy.size - 2)
            y0, y1, y2 = spec[r, i - 1], spec[r, i], spec[r, i + 1]
            den = y0 - 2 * y1 + y2
            frac = np.where(den != 0, 0.5 * (y0 - y2) / np.where(den != 0, den, 1), 0.0)
            wl[sel] = energy[i] + frac * step
            j = np.clip(np.argmax(spec >= 0.5, axis=1), 1, energy.size - 1)
            a, b = spec[r, j - 1], spec[r, j]
            edge[sel] = energy[j - 1] + step * (0.5 - a) / np.where(b != a, b - a, 1)
        self._truth_maps = TruthMaps(
            whiteline_ev=wl.reshape(ny, nx), edge_ev=edge.reshape(ny, nx),
            oxidation_state=ox_state.reshape(ny, nx),
            thickness_um=thickness.reshape(ny, nx), mask=mask.reshape(ny, nx),
        )
        return self._truth_maps
