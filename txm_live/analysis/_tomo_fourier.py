"""Filtered backprojection by non-uniform FFT gridding: the default ``'nufft'`` backend.

Private module; :func:`txm_live.analysis.reconstruct` calls :func:`nufft_backend`.

The method, per pair of detector rows (packed as the real and imaginary parts of one
complex sinogram, since backprojection maps real data to real slices):

1. pad each projection to ``M = next_fast_len(2 nx)`` columns (edge values by default),
   FFT, multiply by the discrete ramp filter (the DFT of the band-limited Ram-Lak kernel,
   so the zero frequency is right and nothing wraps around) times a smoothing window;
2. inverse FFT and keep ``nx`` columns centred on the rotation axis, FFT again: these are
   the Fourier coefficients of each filtered projection's trigonometric interpolant,
   sampled on a polar grid ``k (cos θ, −sin θ) / nx``;
3. weight each angle by its share of the half turn (non-uniform fly-scan angles are
   handled) and shift by the sub-pixel centre as a phase; a type-1 NUFFT (``ducc0``)
   sums them onto the ``(nx, nx)`` slice — exact band-limited backprojection with the
   gridding kernel's apodization corrected inside the NUFFT.

The result inside the field of view is the FBP of the data with ideal (sinc)
interpolation, to the NUFFT accuracy ``eps``.
"""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft

__all__ = ["nufft_backend", "FourierBackprojector", "FILTER_NAMES", "ramp_filter"]

#: Smoothing windows of the ramp filter (tomopy's gridrec names where they overlap).
FILTER_NAMES = ("ramlak", "shepp", "cosine", "hamming", "hann", "parzen")

#: Rows (two per complex sinogram) processed per FFT/NUFFT batch. Working memory beyond
#: input and output: one padded complex sinogram pair (n_angles × 2 nx complex64, 49 MB
#: at 1500 angles × 2048), its windowed spectrum (half that) and the NUFFT's oversampled
#: grid (~(2 nx)² complex64) — independent of the number of rows.
CHUNK_ROWS = 2


def _window(nu, filter_name):
    """Smoothing window on |frequency| ``nu`` in cycles/pixel (0 … 0.5)."""
    if filter_name == "ramlak":
        return np.ones_like(nu)
    if filter_name == "shepp":
        return np.sinc(nu)  # sin(π ν) / (π ν): Shepp–Logan
    if filter_name == "cosine":
        return np.cos(np.pi * nu)
    if filter_name == "hann":
        return 0.5 + 0.5 * np.cos(2.0 * np.pi * nu)
    if filter_name == "hamming":
        return 0.54 + 0.46 * np.cos(2.0 * np.pi * nu)
    if filter_name == "parzen":  # cubic B-spline taper to 0 at Nyquist: the smoothest here
        x = 2.0 * nu
        return np.where(x <= 0.5, 1.0 - 6.0 * x**2 + 6.0 * x**3, 2.0 * (1.0 - x) ** 3)
    raise ValueError(f"filter_name must be one of {FILTER_NAMES}; got {filter_name!r}")


def ramp_filter(n_pad: int, filter_name: str = "ramlak", cutoff: float = 1.0) -> np.ndarray:
    """Discrete ramp filter times a smoothing window, in FFT order, (n_pad,) float64.

    The ramp is the DFT of the band-limited spatial kernel ``h[0] = 1/4``,
    ``h[n odd] = −1/(π n)²``, ``h[n even] = 0`` (Kak & Slaney, ch. 3), not ``|k|``
    sampled directly: its zero-frequency value is not 0, which avoids the DC shift
    ("cupping") of a naively sampled ramp. ``cutoff`` (0 < cutoff ≤ 1) stretches the
    window to end at ``cutoff`` × Nyquist (zero above), like tomopy's ``filter_par``.
    """
    n = np.arange(n_pad)
    n = np.minimum(n, n_pad - n)  # circular distance
    h = np.zeros(n_pad)
    h[0] = 0.25
    odd = n % 2 == 1
    h[odd] = -1.0 / (np.pi * n[odd]) ** 2
    ramp = np.real(np.fft.fft(h))
    nu = np.abs(np.fft.fftfreq(n_pad)) / float(cutoff)
    return ramp * np.where(nu <= 0.5, _window(np.minimum(nu, 0.5), filter_name), 0.0)


class FourierBackprojector:
    """Filter and backproject sinograms of one geometry (angles, width), any centre.

    The NUFFT plan depends only on the angles and the width, so one object serves every
    row chunk of a volume and every trial centre of a centre sweep.

    Parameters
    ----------
    theta, weights : ndarray (n_angles,) float64
        Angles (rad) and their quadrature weights (sum π).
    nx : int
        Detector width = slice width, px.
    ncore : int
        Threads for the FFTs and the NUFFT.
    filter_name, eps, pad_mode
        See :func:`nufft_backend`.
    """

    def __init__(self, theta, weights, nx, *, ncore, filter_name="hann", filter_cutoff=1.0,
                 eps=1e-2, pad_mode="edge"):
        import ducc0  # noqa: PLC0415  (imported when the backend is used)

        self._fft = ducc0.fft.c2c
        self.nx, self.ncore, self.pad_mode = int(nx), int(ncore), pad_mode
        self.n_pad = sfft.next_fast_len(2 * self.nx)
        self.pad_left = (self.n_pad - self.nx) // 2
        self.filt = ramp_filter(self.n_pad, filter_name, filter_cutoff).astype(np.float32)
        # frequencies in FFT order (0 … nx/2 − 1, −nx/2 … −1): no fftshift per call
        k = np.fft.fftfreq(self.nx, 1.0 / self.nx)
        self._k = k
        self._weight = (np.asarray(weights) / self.nx).astype(np.float32)
        omega = 2.0 * np.pi * k / self.nx
        coord = np.empty((theta.size, self.nx, 2), np.float32)
        coord[..., 0] = -omega[None, :] * np.sin(theta)[:, None]
        coord[..., 1] = omega[None, :] * np.cos(theta)[:, None]
        self._plan = ducc0.nufft.plan(nu2u=True, coord=coord.reshape(-1, 2),
                                      grid_shape=(self.nx, self.nx), epsilon=eps,
                                      nthreads=self.ncore)

    def filtered(self, block) -> np.ndarray:
        """Ramp-filtered, padded projections of rows packed in pairs.

        ``block`` (n_angles, n_rows, nx) real → (n_pairs, n_angles, n_pad) complex64;
        rows 2j and 2j + 1 are the real and imaginary parts of pair j.
        """
        n_angles, n_rows, nx = block.shape
        n_pairs, pl = (n_rows + 1) // 2, self.pad_left
        z = np.empty((n_pairs, n_angles, self.n_pad), np.complex64)
        core = z[:, :, pl : pl + nx]
        core.real[...] = np.moveaxis(block[:, 0::2, :], 1, 0)
        core.imag[...] = 0.0
        if n_rows > 1:
            core.imag[: n_rows // 2] = np.moveaxis(block[:, 1::2, :], 1, 0)
        if self.pad_mode == "edge":
            z[:, :, :pl] = z[:, :, pl : pl + 1]
            z[:, :, pl + nx :] = z[:, :, pl + nx - 1 : pl + nx]
        else:
            z[:, :, :pl] = 0.0
            z[:, :, pl + nx :] = 0.0
        # in place: the padded pair is the only sinogram-sized buffer
        self._fft(z, axes=(2,), forward=True, out=z, nthreads=self.ncore)
        z *= self.filt
        self._fft(z, axes=(2,), forward=False, inorm=2, out=z, nthreads=self.ncore)
        return z

    def backproject(self, q, center, out=None) -> np.ndarray:
        """Slices from :meth:`filtered` output for one ``center``.

        Returns (n_pairs, nx, nx) complex64: real part row 2j, imaginary part row 2j + 1.
        The window of ``nx`` filtered columns centred on the axis is Fourier transformed;
        the sub-pixel part of the centre is a phase ``exp(2πi k δ / nx)``.
        """
        nx = self.nx
        win_start = int(round(center)) + self.pad_left - nx // 2
        delta = center + self.pad_left - win_start
        spectra = self._fft(q[:, :, win_start : win_start + nx], axes=(2,), forward=True,
                            nthreads=self.ncore)
        phase = np.exp(2j * np.pi * self._k * delta / nx)
        if nx % 2 == 0:
            # the unpaired Nyquist term would leak one packed row into the other
            phase[nx // 2] = 0.0
        spectra *= phase.astype(np.complex64)
        spectra *= self._weight[:, None]
        n_pairs = q.shape[0]
        if out is None:
            out = np.empty((n_pairs, nx, nx), np.complex64)
        self._plan.nu2u(forward=False, points=spectra.reshape(n_pairs, -1), out=out)
        return out


def nufft_backend(tomo, theta, weights, center, out, *, ncore, row_chunks,
                  filter_name="hann", filter_cutoff=1.0, eps=1e-2, pad_mode="edge"):
    """Reconstruct every row of ``tomo`` into ``out`` (see module docstring).

    Parameters
    ----------
    tomo : ndarray (n_angles, ny, nx)
        Absorbance (read one row chunk at a time through ``row_chunks``, never modified).
    theta, weights : ndarray (n_angles,) float64
        Angles (rad) and their quadrature weights (sum π).
    center : float
        Detector column of the rotation axis.
    out : ndarray (ny, nx, nx) float32
        Written in place.
    ncore : int
        Threads for the FFTs and the NUFFT.
    row_chunks : callable
        ``row_chunks(chunk_rows)`` yields ``(r0, r1, block)`` with ``block`` the cleaned
        float32 rows ``tomo[:, r0:r1, :]``.
    filter_name : {'ramlak', 'shepp', 'cosine', 'hamming', 'hann', 'parzen'}
        Smoothing window of the ramp filter.
    filter_cutoff : float
        Where the window reaches zero, fraction of Nyquist (0 < cutoff ≤ 1).
    eps : float
        NUFFT relative accuracy (float32 arithmetic: 1e-5 … 1e-1).
    pad_mode : {'edge', 'zero'}
        How projections are extended beyond the detector before filtering.
    """
    bp = FourierBackprojector(theta, weights, tomo.shape[2], ncore=ncore,
                              filter_name=filter_name, filter_cutoff=filter_cutoff, eps=eps,
                              pad_mode=pad_mode)
    slab = np.empty((CHUNK_ROWS // 2, bp.nx, bp.nx), np.complex64)
    for r0, r1, block in row_chunks(CHUNK_ROWS):
        q = bp.filtered(block)
        res = bp.backproject(q, center, out=slab[: q.shape[0]])
        out[r0:r1:2] = res.real[: (r1 - r0 + 1) // 2]
        out[r0 + 1 : r1 : 2] = res.imag[: (r1 - r0) // 2]
