"""Aligned absorbance for display: raw windows + the analysis' recorded shifts.

The live analysis stores drift, spectra and maps, not the aligned stack, so the viewer
rebuilds what it shows from the raw frames in Tiled: ``-ln((I-D)/(F-D))`` with
:func:`txm_live.analysis.flat_dark_correct`, then each frame moved by the shift the
analysis recorded for it (``shift_px`` as :func:`txm_live.analysis.estimate_shift` returns
it; bilinear like :func:`txm_live.analysis.apply_shifts`). Pure numpy/scipy on arrays the
adapter read; no Tiled here.
"""
from __future__ import annotations

import warnings

import numpy as np
from scipy import ndimage

from txm_live.analysis import FlatDarkWarning, flat_dark_correct

__all__ = ["absorbance", "shifted_mean", "pixel_values"]

#: Zinger threshold (Poisson sigmas) used for display, as the live analysis uses.
ZINGER_SIGMA = 10.0


def absorbance(frames, flats, darks) -> np.ndarray:
    """Absorbance of ``frames`` (n, h, w) with the median of ``flats`` and ``darks``.

    NaN where the flat or the frame is not above the dark (dead pixels); float32.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FlatDarkWarning)
        return flat_dark_correct(np.asarray(frames), np.asarray(flats), np.asarray(darks),
                                 flat_mode="median", zinger_sigma=ZINGER_SIGMA, dtype=np.float32)


def shifted_mean(images, shifts_px, *, stride: int = 1) -> np.ndarray:
    """Mean of ``images`` (n, h, w), each moved by ``shifts_px[k] / stride`` (bilinear).

    ``shifts_px`` (n, 2) are full-resolution ``(dy, dx)``; ``images`` are sampled every
    ``stride`` pixels, so the shift in samples is divided by it. Pixels no frame covers
    are NaN.
    """
    images = np.asarray(images, dtype=np.float32)
    shifts = np.asarray(shifts_px, dtype=float).reshape(-1, 2)
    if shifts.shape[0] != images.shape[0]:
        raise ValueError(f"need one shift per image; got {shifts.shape[0]} shifts for {images.shape[0]} images")
    out = np.empty_like(images)
    for k in range(images.shape[0]):
        ndimage.shift(np.nan_to_num(images[k], nan=0.0), shifts[k] / stride, output=out[k], order=1,
                      mode="constant", cval=np.nan)
        # keep dead pixels dead: shift their mask the same way
        if not np.isfinite(images[k]).all():
            bad = ndimage.shift(np.isnan(images[k]).astype(np.float32), shifts[k] / stride, order=1,
                                mode="constant", cval=0.0)
            out[k][bad > 0.5] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
        return np.nanmean(out, axis=0) if out.shape[0] > 1 else out[0]


def pixel_values(window, origin, row: float, col: float, shifts_px) -> np.ndarray:
    """Value at aligned pixel ``(row, col)`` in each of ``window`` (n, h, w).

    ``window[k]`` holds frame ``k`` from detector row ``origin[0]`` and column
    ``origin[1]``; frame ``k`` was moved by ``shifts_px[k]`` to align it, so the aligned
    pixel came from detector position ``(row, col) - shifts_px[k]`` (bilinear there).
    """
    window = np.asarray(window, dtype=np.float32)
    shifts = np.asarray(shifts_px, dtype=float).reshape(-1, 2)
    ys = row - shifts[:, 0] - origin[0]
    xs = col - shifts[:, 1] - origin[1]
    out = np.empty(window.shape[0], np.float32)
    for k in range(window.shape[0]):
        out[k] = ndimage.map_coordinates(window[k], [[ys[k]], [xs[k]]], order=1, mode="constant",
                                         cval=np.nan)[0]
    return out
