"""Flat/dark correction to absorbance (private module).

Public names are re-exported by :mod:`txm_live.analysis`.
"""

from __future__ import annotations

import warnings

import numpy as np
from numba import njit, prange

__all__ = ["flat_dark_correct", "remove_zingers", "transmission_to_absorbance", "FlatDarkWarning",
           "SaturationWarning", "full_scale_counts"]

_FLAT_MODES = ("auto", "per_frame", "median")


class FlatDarkWarning(UserWarning):
    """Some pixels could not be corrected and were set to NaN."""


class SaturationWarning(FlatDarkWarning):
    """Pixels of a flat or a frame sat at the detector's full scale: set to NaN.

    A clipped flat gives a finite absorbance that is too low (``-ln(I / F_clipped)``), a
    clipped frame one that is too high: neither can be trusted, so they are not computed.
    """


def full_scale_counts(dtype) -> float | None:
    """The largest reading of a detector delivering ``dtype``: its maximum for integer
    types (65535 for uint16), None (unknown) for floats."""
    dtype = np.dtype(dtype)
    return float(np.iinfo(dtype).max) if dtype.kind in "ui" else None


def _mark_saturated(image, level, out, valid) -> int:
    """NaN where ``image >= level`` (in place on ``out``/``valid``); how many were valid."""
    hit = image >= level
    n = int(np.count_nonzero(hit & valid))
    out[hit] = np.nan
    valid[hit] = False
    return n


@njit(cache=True, inline="always")
def _median9(v):
    # insertion sort of 9 values, return the middle one
    for i in range(1, 9):
        x = v[i]
        j = i - 1
        while j >= 0 and v[j] > x:
            v[j + 1] = v[j]
            j -= 1
        v[j + 1] = x
    return v[4]


#: Frames with fewer pixels run the per-pixel kernels on one thread. On idle cores the
#: parallel kernel is twice as fast at any size (zingers on a 96² frame 0.29 vs 0.75 ms,
#: 1024² 45 vs 89 ms), but a parallel region waits for every thread, and on a machine
#: busy with other work (the scan, Tiled, other analyses) that wait dominates small
#: frames: 96² 0.4 ms median / 19 ms at the 90th percentile vs 0.8 / 1.3 ms on one
#: thread, 256² 20 vs 5.8 ms median (load average 6 on 2 cores).
PARALLEL_MIN_PIXELS = 512 * 512


@njit(cache=True, inline="always")
def _zinger_row(img, dark, k, out, i, v):
    """Row ``i`` of the zinger replacement (``v``: scratch of 9); returns its count."""
    ny, nx = img.shape
    c = 0
    for j in range(nx):
        n = 0
        for di in range(-1, 2):
            ii = min(max(i + di, 0), ny - 1)
            for dj in range(-1, 2):
                jj = min(max(j + dj, 0), nx - 1)
                v[n] = img[ii, jj]
                n += 1
        x = img[i, j]
        m = _median9(v)
        if np.isfinite(x) and np.isfinite(m):
            sig = np.sqrt(abs(m - dark[i, j]) + 1.0)
            if abs(x - m) > k * sig:
                out[i, j] = m
                c += 1
                continue
        out[i, j] = x
    return c


@njit(parallel=True, cache=True)
def _zinger_rows_parallel(img, dark, k, out):
    counts = np.zeros(img.shape[0], dtype=np.int64)
    for i in prange(img.shape[0]):
        counts[i] = _zinger_row(img, dark, k, out, i, np.empty(9))
    return counts.sum()


@njit(cache=True)
def _zinger_rows_serial(img, dark, k, out):
    v = np.empty(9)
    c = 0
    for i in range(img.shape[0]):
        c += _zinger_row(img, dark, k, out, i, v)
    return c


def _zinger_kernel(img, dark, k, out):
    """Replace pixels deviating from their 3x3 median by more than
    ``k * sqrt(|median - dark| + 1)`` (Poisson sigma in counts) by the median.
    Returns the number of pixels replaced."""
    rows = _zinger_rows_parallel if img.size >= PARALLEL_MIN_PIXELS else _zinger_rows_serial
    return rows(img, dark, k, out)


@njit(cache=True, inline="always")
def _absorbance_row(img, flat, dark, out, valid, i):
    for j in range(img.shape[1]):
        num = img[i, j] - dark[i, j]
        den = flat[i, j] - dark[i, j]
        if num > 0 and den > 0 and np.isfinite(num) and np.isfinite(den):
            out[i, j] = -np.log(num / den)
            valid[i, j] = True
        else:
            out[i, j] = np.nan
            valid[i, j] = False


@njit(parallel=True, cache=True)
def _absorbance_rows_parallel(img, flat, dark, out, valid):
    for i in prange(img.shape[0]):
        _absorbance_row(img, flat, dark, out, valid, i)


@njit(cache=True)
def _absorbance_rows_serial(img, flat, dark, out, valid):
    for i in range(img.shape[0]):
        _absorbance_row(img, flat, dark, out, valid, i)


def _absorbance_kernel(img, flat, dark, out, valid):
    """``out = -ln((img - dark) / (flat - dark))`` where both are positive and finite
    (``valid`` True), else NaN (``valid`` False)."""
    rows = _absorbance_rows_parallel if img.size >= PARALLEL_MIN_PIXELS else _absorbance_rows_serial
    rows(img, flat, dark, out, valid)


def remove_zingers(image, dark=None, *, sigma: float = 10.0):
    """Replace isolated outliers (zingers, hot pixels) by their 3x3 median.

    Parameters
    ----------
    image : array_like, shape (ny, nx)
        Raw counts.
    dark : array_like, shape (ny, nx) or float, optional
        Dark level subtracted before estimating the Poisson noise; default 0.
    sigma : float, optional
        Threshold in Poisson standard deviations ``sqrt(|median - dark| + 1)``.
        Default 10.

    Returns
    -------
    cleaned : ndarray
        New float array (float64 if ``image`` is float64, else float32).
    n_replaced : int
    """
    img = np.asarray(image)
    if img.ndim != 2:
        raise ValueError(f"image must be 2-D; got shape {img.shape}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0; got {sigma!r}")
    dtype = np.float64 if img.dtype == np.float64 else np.float32
    d = np.zeros(img.shape, dtype) if dark is None else np.broadcast_to(
        np.asarray(dark, dtype=dtype), img.shape)
    out = np.empty(img.shape, dtype=dtype)
    n = _zinger_kernel(img.astype(dtype, copy=False), np.ascontiguousarray(d), float(sigma), out)
    return out, int(n)


def _as_3d(a, name):
    a = np.asarray(a)
    if a.ndim == 2:
        return a[None]
    if a.ndim == 3:
        return a
    raise ValueError(f"{name} must be 2-D (ny, nx) or 3-D (n, ny, nx); got shape {a.shape}")


def flat_dark_correct(
    frames,
    flats,
    darks,
    *,
    flat_mode: str = "auto",
    zinger_sigma: float | None = 10.0,
    return_mask: bool = False,
    dtype=None,
    saturation_counts: float | None = None,
):
    """Absorbance ``-ln((I - D) / (F - D))`` from raw frames, flats and darks.

    Parameters
    ----------
    frames : array_like, shape (n, ny, nx) or (ny, nx)
        Raw sample images I (counts, any real dtype). Not modified.
    flats : array_like, shape (m, ny, nx) or (ny, nx)
        Flat fields F (sample out). Either one flat per frame (FXI's
        ``img_bkg`` in a XANES scan) or repeated flats combined by their
        per-pixel median; see ``flat_mode``.
    darks : array_like, shape (k, ny, nx) or (ny, nx)
        Dark images D (shutter closed); repeated darks are combined by their
        per-pixel median.
    flat_mode : {'auto', 'per_frame', 'median'}, optional
        ``'per_frame'``: ``flats[i]`` corrects ``frames[i]`` (needs m == n);
        ``'median'``: the median of all flats corrects every frame;
        ``'auto'`` (default): per-frame when m == n > 1, else median.
    zinger_sigma : float or None, optional
        Replace pixels of frames and flats that deviate from their 3x3 median
        by more than ``zinger_sigma`` Poisson standard deviations (zingers,
        hot pixels) by that median. Default 10; None disables it.
    return_mask : bool, optional
        Also return the validity mask. Default False.
    dtype : numpy dtype, optional
        Output float dtype; default float64 if any input is float64, else
        float32.
    saturation_counts : float, optional
        The detector's full-scale reading, counts. Pixels of a flat or a frame at
        or above it (after zinger removal) were clipped: their absorbance is NaN
        and a :class:`SaturationWarning` says how many. Default: the largest
        value of the frames' or flats' integer dtype (:func:`full_scale_counts`,
        65535 for uint16); float input is checked only when a level is given.
        ``numpy.inf`` turns the check off.

    Returns
    -------
    absorbance : ndarray, shape of ``frames``
        Absorbance. Pixels where ``F - D <= 0`` or ``I - D <= 0`` (dead
        pixels, fully absorbing regions, gaps), with non-finite input, or where
        the flat or the frame is saturated are NaN -- never inf -- and a
        :class:`FlatDarkWarning` (:class:`SaturationWarning`) reports how many.
    mask : ndarray of bool, shape of ``frames``
        Only with ``return_mask=True``: True where the absorbance is valid.

    Raises
    ------
    ValueError
        Shapes that do not match, an unknown ``flat_mode``, or a flat field
        that is not above the dark anywhere (e.g. all-zero flats).
    """
    if flat_mode not in _FLAT_MODES:
        raise ValueError(f"flat_mode must be one of {_FLAT_MODES}; got {flat_mode!r}")
    if zinger_sigma is not None and not zinger_sigma > 0:
        raise ValueError(f"zinger_sigma must be > 0 or None; got {zinger_sigma!r}")
    if saturation_counts is not None and not saturation_counts > 0:
        raise ValueError(f"saturation_counts must be > 0 counts or None; got {saturation_counts!r}")
    single = np.asarray(frames).ndim == 2
    fr, fl, dk = _matching_stacks(frames, flats, darks)
    out_dtype = _output_dtype(dtype, fr, fl, dk)
    if saturation_counts is None:
        levels = [v for v in (full_scale_counts(fr.dtype), full_scale_counts(fl.dtype)) if v is not None]
        saturation_counts = min(levels) if levels else np.inf
    n, m = fr.shape[0], fl.shape[0]
    per_frame = (flat_mode == "per_frame") or (flat_mode == "auto" and m == n and n > 1)
    if per_frame and m != n:
        raise ValueError(f"flat_mode='per_frame' needs one flat per frame; got {m} flats for {n} frames")
    dark = _combined_dark(dk, out_dtype, zinger_sigma)
    clean = _Cleaner(dark, out_dtype, zinger_sigma)
    flat = None if per_frame else clean.flat(np.median(fl, axis=0) if m > 1 else fl[0], None)
    out = np.empty(fr.shape, dtype=out_dtype)
    valid = np.empty(fr.shape, dtype=bool)
    n_saturated = 0
    for i in range(n):
        if per_frame:
            flat = clean.flat(fl[i], i)
        img = clean(fr[i])
        _absorbance_kernel(img, flat, dark, out[i], valid[i])
        n_saturated += _mark_saturated(flat, saturation_counts, out[i], valid[i])
        n_saturated += _mark_saturated(img, saturation_counts, out[i], valid[i])
    _warn_unusable(valid, n_saturated, saturation_counts)
    if single:
        out, valid = out[0], valid[0]
    return (out, valid) if return_mask else out


def _matching_stacks(frames, flats, darks):
    """Frames, flats and darks as 3-D stacks of one image shape (ValueError otherwise)."""
    fr, fl, dk = _as_3d(frames, "frames"), _as_3d(flats, "flats"), _as_3d(darks, "darks")
    for name, a in (("flats", fl), ("darks", dk)):
        if a.shape[1:] != fr.shape[1:]:
            raise ValueError(
                f"{name} image shape {a.shape[1:]} does not match the frames' {fr.shape[1:]}"
            )
    return fr, fl, dk


def _output_dtype(dtype, *stacks) -> np.dtype:
    out_dtype = np.dtype(dtype) if dtype is not None else (
        np.dtype(np.float64) if any(a.dtype == np.float64 for a in stacks) else np.dtype(np.float32)
    )
    if out_dtype.kind != "f":
        raise ValueError(f"dtype must be a float dtype; got {out_dtype}")
    return out_dtype


def _combined_dark(dk, out_dtype, zinger_sigma):
    """The per-pixel median of the darks; with fewer than 3 darks the median cannot
    reject a zinger, so the dark itself is cleaned."""
    dark = (np.median(dk, axis=0) if dk.shape[0] > 1 else dk[0]).astype(out_dtype)
    if dk.shape[0] < 3 and zinger_sigma is not None:
        dark, _ = remove_zingers(dark, None, sigma=zinger_sigma)
        dark = dark.astype(out_dtype, copy=False)
    return dark


class _Cleaner:
    """Zinger removal of frames and flats against one dark (a copy in ``out_dtype``;
    the input as it is when ``zinger_sigma`` is None)."""

    def __init__(self, dark, out_dtype, zinger_sigma):
        self.dark, self.out_dtype, self.zinger_sigma = dark, out_dtype, zinger_sigma

    def __call__(self, img):
        img = np.asarray(img)
        if self.zinger_sigma is None:
            return img.astype(self.out_dtype, copy=False)
        out = np.empty(img.shape, self.out_dtype)
        _zinger_kernel(img, self.dark, float(self.zinger_sigma), out)
        return out

    def flat(self, flat, index):
        """A cleaned flat, checked to be above the dark somewhere (``index``: which of
        the per-frame flats, None for the combined one)."""
        flat = self(flat)
        if not np.any(flat - self.dark > 0):
            if index is None:
                raise ValueError(
                    "flat field is not above the dark in any pixel (all-zero or missing flats?): "
                    f"flat range {np.nanmin(flat):g} to {np.nanmax(flat):g}, dark median {np.median(self.dark):g}"
                )
            raise ValueError(
                f"flat {index} is not above the dark in any pixel (all-zero flat?): "
                f"flat range {np.nanmin(flat):g} to {np.nanmax(flat):g}"
            )
        return flat


def _warn_unusable(valid, n_saturated: int, saturation_counts) -> None:
    """Say how many pixels are NaN, saturated ones apart from the others."""
    if n_saturated:
        warnings.warn(
            f"{n_saturated} of {valid.size} pixels set to NaN: the flat or the frame is saturated "
            f"(>= {saturation_counts:g} counts), so their absorbance cannot be measured",
            SaturationWarning,
            stacklevel=3,
        )
    n_bad = int(valid.size - np.count_nonzero(valid)) - n_saturated
    if n_bad:
        warnings.warn(
            f"{n_bad} of {valid.size} pixels set to NaN (flat or sample not above the "
            f"dark, or non-finite input)",
            FlatDarkWarning,
            stacklevel=3,
        )


def transmission_to_absorbance(transmission, *, dtype=None):
    """Absorbance ``-ln(T)`` of normalized transmission ``T = (I - D) / (F - D)``.

    Parameters
    ----------
    transmission : array_like
        Normalized transmission, e.g. FXI's exported ``img_xanes``. Not modified.
    dtype : numpy dtype, optional
        Output float dtype; default float64 for float64 input, else float32.

    Returns
    -------
    ndarray
        Absorbance; NaN where ``T`` is not positive and finite (FXI writes 0 for pixels
        it could not normalize: those are invalid, never full absorption).
    """
    t = np.asarray(transmission)
    out_dtype = np.dtype(dtype) if dtype is not None else (
        np.dtype(np.float64) if t.dtype == np.float64 else np.dtype(np.float32))
    if out_dtype.kind != "f":
        raise ValueError(f"dtype must be a float dtype; got {out_dtype}")
    t = t.astype(out_dtype, copy=False)
    valid = np.isfinite(t) & (t > 0)
    out = np.full(t.shape, np.nan, dtype=out_dtype)
    np.negative(np.log(t, where=valid, out=out), where=valid, out=out)
    return out
