"""sCMOS-like detector behind a scintillator: illumination, noise, defects, 16-bit output.

All counts are per *output* (binned) pixel: ``flat_counts`` is what an open-beam pixel of
the delivered image reads at ``reference_exposure_s``, whatever the binning (binning is
treated as averaging, as FXI's software binning does).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numba
import numpy as np

# Gaussian draws dominate the cost of a large frame; numpy's generators release the GIL
# when filling an ``out=`` array, so the frame is filled in a fixed number of row bands,
# each from its own seeded stream: results do not depend on how many threads run them.
_NOISE_BANDS = 2
_POOL = None


def _pool():
    global _POOL  # one small pool for the process, created on first use
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=_NOISE_BANDS, thread_name_prefix="txm-sim-noise")
    return _POOL

__all__ = ["DetectorModel"]


@numba.njit(fastmath=True, cache=True)
def _light_counts(gain, row, col, trans, has_trans, noise, dark, read_var, threshold, out,
                  low_index):
    """Fused per-pixel counts: signal = gain·row·col·T; Gaussian shot+read noise + dark.

    Pixels expecting fewer than ``threshold`` photo-counts get ``-1 - signal`` (negative
    marker) and their flat index in ``low_index[:n_low]`` (``n_low`` is returned) so the
    caller can draw them exactly from a Poisson law. One serial pass
    (~10× fewer memory passes than the numpy expression; serial because numba's parallel
    barrier costs more than it saves on a 2-core machine shared with other work).
    """
    ny, nx = out.shape
    n_low = 0
    for i in range(ny):
        r = row[i]
        for j in range(nx):
            sig = gain[i, j] * r * col[j]
            if has_trans:
                sig *= trans[i, j]
            if sig < threshold:
                out[i, j] = -1.0 - sig
                low_index[n_low] = i * nx + j
                n_low += 1
            else:
                out[i, j] = sig + np.sqrt(sig + read_var) * noise[i, j] + dark[i, j]
    return n_low


@numba.njit(fastmath=True, cache=True)
def _to_uint16(counts, full_scale, out):
    """Round and clip to [0, full_scale] into a uint16 array."""
    ny, nx = counts.shape
    for i in range(ny):
        for j in range(nx):
            c = counts[i, j]
            if c < 0.0:
                c = 0.0
            elif c > full_scale:
                c = full_scale
            out[i, j] = np.uint16(np.rint(c))


@dataclass
class DetectorModel:
    """Counts, noise and defects of the TXM camera.

    Parameters
    ----------
    shape : tuple of int
        (ny, nx) of the delivered (binned) image.
    flat_counts : float
        Mean open-beam counts per pixel above the dark level at ``reference_exposure_s``
        (FXI: 1e4–1e5; per-pixel SNR ≈ sqrt(flat_counts) ≈ 170 by default).
    reference_exposure_s : float
        Exposure at which the open beam gives ``flat_counts``; counts scale linearly with
        the exposure.
    dark_counts : float
        Mean dark offset, counts (what the camera reads with no light).
    dark_variation_counts : float
        Fixed per-pixel spread of the dark offset (DSNU), counts.
    read_noise_counts : float
        Gaussian read noise per pixel and frame, counts rms.
    saturation_counts : int
        Full scale of the 16-bit output; values are clipped to [0, saturation_counts].
    gain_variation : float
        Fixed per-pixel relative gain spread (PRNU); cancels in flat-field correction.
    flat_variation : float
        Peak-to-valley scale of the smooth illumination pattern (beam footprint falling
        off toward the edges, plus horizontal stripes from the mono/mirrors at a third of
        that amplitude).
    flat_time_variation : float
        Relative amplitude of the slow drift of the illumination with time (ring current,
        beam position): the global scale varies by ± this, and the stripes move.
    flat_period_s : float
        Time scale of those changes, s.
    hot_pixel_fraction, dead_pixel_fraction : float
        Fraction of pixels that are hot (a large fixed extra dark signal, present in darks
        too) or dead (no response to light: they read the dark level). At least one of
        each whenever the fraction is > 0.
    zingers_per_megapixel : float
        Mean number of zingers (single bright pixels from stray high-energy events) per
        megapixel per frame at ``reference_exposure_s``, scaling with exposure.
    gaussian_threshold_counts : float
        Shot noise is drawn exactly (Poisson) for pixels expecting fewer photo-counts than
        this, and from a Gaussian of equal mean and variance above it (indistinguishable
        there, and several times faster).
    seed : int
        Seeds the fixed pattern (gain, dark, defects) and the noise stream. Same seed and
        same sequence of calls → identical frames.
    """

    shape: tuple = (128, 128)
    flat_counts: float = 3e4
    reference_exposure_s: float = 0.05
    dark_counts: float = 100.0
    dark_variation_counts: float = 2.0
    read_noise_counts: float = 3.0
    saturation_counts: int = 65535
    gain_variation: float = 0.01
    flat_variation: float = 0.15
    flat_time_variation: float = 0.01
    flat_period_s: float = 300.0
    hot_pixel_fraction: float = 1e-4
    dead_pixel_fraction: float = 1e-4
    zingers_per_megapixel: float = 20.0
    gaussian_threshold_counts: float = 1000.0
    seed: int = 0

    def __post_init__(self):
        if not 0 < self.saturation_counts <= 65535:
            raise ValueError(f"saturation_counts must be in (0, 65535], got {self.saturation_counts}")
        if self.flat_counts <= 0 or self.reference_exposure_s <= 0:
            raise ValueError(
                f"flat_counts and reference_exposure_s must be > 0, got "
                f"{self.flat_counts}, {self.reference_exposure_s}"
            )
        ny, nx = self.shape = tuple(int(s) for s in self.shape)
        rng = np.random.default_rng(self.seed)
        npix = ny * nx
        self.gain = (1.0 + self.gain_variation * rng.standard_normal(self.shape)).astype(np.float32)
        self.dark = (
            self.dark_counts + self.dark_variation_counts * rng.standard_normal(self.shape)
        ).astype(np.float32)
        n_hot = max(1, round(self.hot_pixel_fraction * npix)) if self.hot_pixel_fraction > 0 else 0
        n_dead = max(1, round(self.dead_pixel_fraction * npix)) if self.dead_pixel_fraction > 0 else 0
        flat_idx = rng.choice(npix, size=n_hot + n_dead, replace=False)
        self.hot_pixels = np.unravel_index(np.sort(flat_idx[:n_hot]), self.shape)
        self.dead_pixels = np.unravel_index(np.sort(flat_idx[n_hot:]), self.shape)
        # Hot pixels: extra dark signal per reference exposure, 5 %–100 % of full scale.
        self.hot_counts = rng.uniform(0.05, 1.0, n_hot) * self.saturation_counts
        self.gain[self.dead_pixels] = 0.0
        self._pattern_phase = rng.uniform(0, 2 * np.pi, size=3)
        self._noise_rng = np.random.default_rng(rng.integers(2**63))
        self._low_index = np.empty(npix, np.int64)  # scratch for the counts kernel
        self._band_rngs = [np.random.default_rng(rng.integers(2**63)) for _ in range(_NOISE_BANDS)]
        self._u = ((np.arange(ny) + 0.5) / ny - 0.5).astype(np.float32)
        self._v = ((np.arange(nx) + 0.5) / nx - 0.5).astype(np.float32)

    # ------------------------------------------------------------------ illumination
    def flat_scale(self, time_s: float, energy_ev: float | None = None) -> float:
        """Global illumination scale at ``time_s`` (1 ± flat_time_variation).

        A smooth oscillation (period ``flat_period_s``) plus a slower one, so that flats
        taken minutes apart differ by up to ~1 % by default. ``energy_ev`` adds a mild
        flux dependence on energy (−5 % per keV above 8 keV), as a mono and undulator do.
        """
        w = 2 * np.pi / self.flat_period_s
        p = self._pattern_phase
        scale = 1.0 + self.flat_time_variation * (
            0.7 * np.sin(w * time_s + p[0]) + 0.3 * np.sin(0.29 * w * time_s + p[1])
        )
        if energy_ev is not None:
            scale *= 1.0 - 0.05 * (float(energy_ev) - 8000.0) / 1000.0
        return float(scale)

    def illumination(self, time_s: float, energy_ev: float | None = None) -> np.ndarray:
        """Expected open-beam counts per pixel at the reference exposure, (ny, nx) float32.

        Separable (row profile × column profile), so it costs O(ny + nx) per frame plus one
        outer product; the stripes move by a fraction of their spacing over
        ``flat_period_s``, so a flat taken later does not divide out perfectly.
        """
        row, col = self._profiles(time_s, energy_ev)
        return row[:, None] * col[None, :]

    def _profiles(self, time_s, energy_ev):
        """Row (ny,) and column (nx,) float32 factors whose outer product is the flat."""
        fv = self.flat_variation
        p = self._pattern_phase
        drift = 2 * np.pi * float(time_s) / self.flat_period_s * 0.25
        row = (1.0 - fv * (2 * self._u) ** 2) * (
            1.0 + fv / 3.0 * np.sin(2 * np.pi * 7.0 * self._u + p[2] + drift)
        )
        col = 1.0 - fv * 0.7 * (2 * self._v) ** 2
        scale = self.flat_counts * self.flat_scale(time_s, energy_ev)
        return (scale * row).astype(np.float32), col.astype(np.float32)

    # ------------------------------------------------------------------ exposure
    def _standard_normal(self) -> np.ndarray:
        """A (ny, nx) float32 array of N(0, 1) draws, filled band-parallel."""
        out = np.empty(self.shape, np.float32)
        ny = self.shape[0]
        edges = np.linspace(0, ny, _NOISE_BANDS + 1).astype(int)
        if out.size < 1 << 20:  # small frames: threads cost more than they save
            for g, a, b in zip(self._band_rngs, edges[:-1], edges[1:]):
                g.standard_normal(dtype=np.float32, out=out[a:b])
            return out
        futures = [
            _pool().submit(g.standard_normal, dtype=np.float32, out=out[a:b])
            for g, a, b in zip(self._band_rngs, edges[:-1], edges[1:])
        ]
        for f in futures:
            f.result()
        return out

    def expose(
        self,
        transmission=None,
        *,
        exposure_s: float,
        time_s: float,
        energy_ev: float | None = None,
        shutter_open: bool = True,
    ) -> np.ndarray:
        """One read-out frame.

        Parameters
        ----------
        transmission : ndarray (ny, nx) or None
            Fraction of the open-beam intensity reaching each pixel (after the sample
            and the optics blur); ``None`` → open beam (a flat).
        exposure_s : float
            Exposure time, s (> 0).
        time_s : float
            Time of the exposure, s (drives the illumination drift).
        energy_ev : float, optional
            Photon energy, eV (mild flux dependence).
        shutter_open : bool
            ``False`` → a dark frame: dark offset, read noise, hot pixels, no light.

        Returns
        -------
        ndarray (ny, nx) uint16
        """
        if exposure_s <= 0:
            raise ValueError(f"exposure_s must be > 0, got {exposure_s}")
        rng = self._noise_rng
        t_rel = exposure_s / self.reference_exposure_s
        ny, nx = self.shape
        if shutter_open:
            if transmission is not None and transmission.shape != self.shape:
                raise ValueError(f"transmission shape {transmission.shape} != {self.shape}")
            row, col = self._profiles(time_s, energy_ev)
            row = row * np.float32(t_rel)
            noise = self._standard_normal()
            counts = np.empty(self.shape, np.float32)
            has_trans = transmission is not None
            trans = np.asarray(transmission, np.float32) if has_trans else self.gain
            n_low = _light_counts(self.gain, row, col, trans, has_trans, noise, self.dark,
                                  np.float32(self.read_noise_counts**2),
                                  np.float32(self.gaussian_threshold_counts), counts,
                                  self._low_index)
            if n_low:
                low = np.unravel_index(self._low_index[:n_low], self.shape)
                s_low = -1.0 - counts[low].astype(np.float64)
                counts[low] = (rng.poisson(np.maximum(s_low, 0.0)) + self.dark[low]
                               + self.read_noise_counts * noise[low])
        else:
            counts = self._standard_normal()
            counts *= np.float32(self.read_noise_counts)
            counts += self.dark
        if len(self.hot_pixels[0]):
            counts[self.hot_pixels] += (self.hot_counts * t_rel).astype(np.float32)
        if shutter_open:
            n_z = rng.poisson(self.zingers_per_megapixel * ny * nx / 1e6 * t_rel)
            if n_z:
                iy, ix = rng.integers(0, ny, n_z), rng.integers(0, nx, n_z)
                counts[iy, ix] += rng.uniform(0.05, 1.0, n_z).astype(np.float32) * self.saturation_counts
        out = np.empty(self.shape, np.uint16)
        _to_uint16(counts, np.float32(self.saturation_counts), out)
        return out
