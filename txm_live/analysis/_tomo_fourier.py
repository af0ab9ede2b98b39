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

__all__ = ["nufft_backend", "FILTER_NAMES", "ramp_filter"]

#: Smoothing windows of the ramp filter (tomopy's gridrec names where they overlap).
FILTER_NAMES = ("ramlak", "shepp", "cosine", "hann", "hamming")

#: Rows (two per complex sinogram) processed per FFT/NUFFT batch: bounds working memory
#: to about ``CHUNK_ROWS / 2 * n_angles * 2 nx`` complex64 values (≈ 100 MB at 1500
#: angles, 2048 wide) while keeping the NUFFT plan busy.
CHUNK_ROWS = 4


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
    raise ValueError(f"filter_name must be one of {FILTER_NAMES}; got {filter_name!r}")


def ramp_filter(n_pad: int, filter_name: str = "ramlak") -> np.ndarray:
    """Discrete ramp filter times a smoothing window, in FFT order, (n_pad,) float64.

    The ramp is the DFT of the band-limited spatial kernel ``h[0] = 1/4``,
    ``h[n odd] = −1/(π n)²``, ``h[n even] = 0`` (Kak & Slaney, ch. 3), not ``|k|``
    sampled directly: its zero-frequency value is not 0, which avoids the DC shift
    ("cupping") of a naively sampled ramp.
    """
    n = np.arange(n_pad)
    n = np.minimum(n, n_pad - n)  # circular distance
    h = np.zeros(n_pad)
    h[0] = 0.25
    odd = n % 2 == 1
    h[odd] = -1.0 / (np.pi * n[odd]) ** 2
    ramp = np.real(np.fft.fft(h))
    nu = np.abs(np.fft.fftfreq(n_pad))
    return ramp * _window(nu, filter_name)


def _angle_factors(theta, weights, center, n_win, win_start, pad_left):
    """Per-angle, per-frequency strength factors and NUFFT coordinates.

    Returns
    -------
    factor : ndarray (n_angles, n_win) complex64
        ``w_i / n_win · exp(2πi k δ / n_win)`` in fftshift order (k = −n_win/2 …), with
        δ the axis position inside the window, and 0 at the unpaired Nyquist term (which
        would leak one packed row into the other).
    coord : ndarray (n_angles · n_win, 2) float32
        (row, column) frequency of each sample, radians per pixel.
    """
    k = np.arange(n_win) - n_win // 2
    delta = center + pad_left - win_start
    phase = np.exp(2j * np.pi * k * delta / n_win)
    if n_win % 2 == 0:
        phase[0] = 0.0
    factor = (weights[:, None] / n_win) * phase[None, :]
    omega = 2.0 * np.pi * k / n_win
    coord = np.empty((theta.size, n_win, 2), np.float32)
    coord[..., 0] = -omega[None, :] * np.sin(theta)[:, None]
    coord[..., 1] = omega[None, :] * np.cos(theta)[:, None]
    return factor.astype(np.complex64), coord.reshape(-1, 2)


def _filtered_spectra(block, filt, n_pad, pad_left, win_start, n_win, pad_mode, workers):
    """Fourier coefficients of the filtered, axis-centred window of each projection.

    ``block`` (n_angles, n_rows, nx) real → (n_pairs, n_angles, n_win) complex64 in
    fftshift order; rows 2j and 2j + 1 are packed as real and imaginary parts.
    """
    n_angles, n_rows, nx = block.shape
    n_pairs = (n_rows + 1) // 2
    z = np.zeros((n_pairs, n_angles, n_pad), np.complex64)
    core = z[:, :, pad_left : pad_left + nx]
    core.real[...] = np.moveaxis(block[:, 0::2, :], 1, 0)
    if n_rows > 1:
        core.imag[: n_rows // 2] = np.moveaxis(block[:, 1::2, :], 1, 0)
    if pad_mode == "edge":
        z[:, :, :pad_left] = z[:, :, pad_left : pad_left + 1]
        z[:, :, pad_left + nx :] = z[:, :, pad_left + nx - 1 : pad_left + nx]
    spec = sfft.fft(z, axis=-1, workers=workers, overwrite_x=True)
    spec *= filt
    q = sfft.ifft(spec, axis=-1, workers=workers, overwrite_x=True)
    window = q[:, :, win_start : win_start + n_win]
    out = sfft.fft(window, axis=-1, workers=workers)
    return sfft.fftshift(out, axes=-1)


def nufft_backend(tomo, theta, weights, center, out, *, ncore, row_chunks,
                  filter_name="shepp", eps=1e-3, pad_mode="edge"):
    """Reconstruct every row of ``tomo`` into ``out`` (see module docstring).

    Parameters
    ----------
    tomo : ndarray (n_angles, ny, nx)
        Absorbance (any real dtype; read one row chunk at a time, never modified).
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
    filter_name : {'ramlak', 'shepp', 'cosine', 'hann', 'hamming'}
        Smoothing window of the ramp filter.
    eps : float
        NUFFT relative accuracy (float32 arithmetic: 1e-5 … 1e-1).
    pad_mode : {'edge', 'zero'}
        How projections are extended beyond the detector before filtering.
    """
    import ducc0  # noqa: PLC0415  (imported when the backend is used)

    n_angles, ny, nx = tomo.shape
    n_pad = sfft.next_fast_len(2 * nx)
    pad_left = (n_pad - nx) // 2
    n_win = nx
    win_start = int(round(center)) + pad_left - n_win // 2
    filt = ramp_filter(n_pad, filter_name).astype(np.float32)
    factor, coord = _angle_factors(theta, weights, center, n_win, win_start, pad_left)
    plan = ducc0.nufft.plan(nu2u=True, coord=coord, grid_shape=(nx, nx), epsilon=eps,
                            nthreads=ncore)
    slab = np.empty((CHUNK_ROWS // 2, nx, nx), np.complex64)
    for r0, r1, block in row_chunks(CHUNK_ROWS):
        spectra = _filtered_spectra(block, filt, n_pad, pad_left, win_start, n_win,
                                    pad_mode, ncore)
        spectra *= factor
        n_pairs = spectra.shape[0]
        res = slab[:n_pairs]
        plan.nu2u(forward=False, points=spectra.reshape(n_pairs, -1), out=res)
        for j in range(n_pairs):
            out[r0 + 2 * j] = res[j].real
            if r0 + 2 * j + 1 < r1:
                out[r0 + 2 * j + 1] = res[j].imag
