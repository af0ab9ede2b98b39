"""Projection clean-up before reconstruction (private module).

Public names are re-exported by :mod:`txm_live.analysis`:

- :func:`normalize_projections` — raw counts → absorbance with the checks a tomography
  scan needs (missing darks, empty or non-finite flats);
- :func:`remove_stripes` — ring artifacts from detector pixels whose response is off
  (stripes are constant along the angle axis of a sinogram);
- :func:`remove_outliers` — zingers left in absorbance, against the neighbouring angles;
- :func:`estimate_jitter` / :func:`correct_jitter` — sample drift and stage wobble that
  are not a rigid rotation, from the projections' centres of mass.

All return new arrays and keep the input's float precision (float32 unless float64).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ._flatdark import flat_dark_correct
from ._tomo import _check_angles

__all__ = ["normalize_projections", "remove_stripes", "remove_outliers", "estimate_jitter",
           "correct_jitter"]

#: Rows processed at once by the sinogram filters (working memory a few sinograms).
CHUNK_ROWS = 16
#: Default median-filter width (px) across the detector in :func:`remove_stripes`.
STRIPE_SIZE_PX = 9
_STRIPE_METHODS = ("mean", "sorting")
#: Default outlier threshold of :func:`remove_outliers`, in robust standard deviations.
OUTLIER_SIGMA = 6.0
#: 1.4826 · MAD = σ for Gaussian noise.
MAD_TO_SIGMA = 1.4826
#: Fraction of the detector width at each side used as the open-beam background.
BACKGROUND_EDGE_FRACTION = 0.05


def _float_dtype(a):
    return np.float64 if np.asarray(a).dtype == np.float64 else np.float32


def normalize_projections(projections, flats, darks, *, zinger_sigma: float | None = 10.0):
    """Absorbance ``−ln((I − D)/(F − D))`` of a tomography scan.

    Parameters
    ----------
    projections : array_like, shape (n_angles, ny, nx)
        Raw sample-in frames, counts.
    flats : array_like, shape (n_flats, ny, nx)
        Sample-out frames (before and/or after the scan); their per-pixel median is the
        flat of every projection.
    darks : array_like, shape (n_darks, ny, nx)
        Shutter-closed frames; required.
    zinger_sigma : float or None
        Zinger/hot-pixel replacement threshold in Poisson standard deviations, as in
        :func:`flat_dark_correct`; None disables it.

    Returns
    -------
    ndarray, shape (n_angles, ny, nx), float32 (float64 for float64 input)
        Absorbance. Pixels with no usable flat (NaN, or not above the dark: dead
        pixels) are NaN with a ``FlatDarkWarning``; :func:`reconstruct` fills them from
        their row neighbours (and says so).

    Raises
    ------
    ValueError
        No darks, no flats, shapes that disagree, or flats not above the dark anywhere
        (all zero or all NaN).
    """
    proj = np.asarray(projections)
    if proj.ndim != 3:
        raise ValueError(f"projections must be 3-D (n_angles, ny, nx); got shape {proj.shape}")
    for name, frames in (("darks", darks), ("flats", flats)):
        if frames is None or np.size(frames) == 0:
            what = "shutter-closed" if name == "darks" else "sample-out"
            raise ValueError(f"no {name}: a tomography scan needs {what} frames to "
                             f"normalize its projections (got {None if frames is None else np.shape(frames)})")
    return flat_dark_correct(proj, flats, darks, flat_mode="median", zinger_sigma=zinger_sigma)


def _chunks(ny):
    for r0 in range(0, ny, CHUNK_ROWS):
        yield r0, min(ny, r0 + CHUNK_ROWS)


def remove_stripes(tomo, *, method: str = "mean", size: int = STRIPE_SIZE_PX):
    """Remove stripes in the sinograms (ring artifacts in the slices).

    A detector pixel whose response is off by a constant adds the same offset at every
    angle: a stripe along the angle axis of its sinogram, a ring in the slice.

    - ``'mean'`` (default): each column's mean over the angles is compared with the
      median of its ``size`` neighbours across the detector; the difference (the stripe)
      is subtracted from the column. The angular mean of a rotating sample is smooth
      across the detector, so little real structure is touched.
    - ``'sorting'``: Vo, Atwood & Drakopoulos 2018 (doi:10.1364/OE.26.028396,
      algorithm 3, as ``algotom.prep.removal.remove_stripe_based_sorting``): sort each
      column along the angles, median-filter the sorted image across the detector, put
      the values back; also removes stripes that vary with intensity, but smooths real
      structure narrower than ``size``.

    On simulated 128-px scans ``'mean'`` with ``size=5``–``9`` removes most of the ring
    error and changes a stripe-free reconstruction least (``tests/test_analysis_tomo_prep.py``);
    ``size`` should be a few times the widest stripe and below the sample's features.

    Parameters
    ----------
    tomo : array_like, shape (n_angles, ny, nx)
        Absorbance (NaN-free).
    method : {'mean', 'sorting'}
    size : int
        Median width across the detector, px (odd, ≥ 3).

    Returns
    -------
    ndarray, same shape, float32 (float64 for float64 input)
    """
    arr = np.asarray(tomo)
    if arr.ndim != 3:
        raise ValueError(f"tomo must be 3-D (n_angles, ny, nx); got shape {arr.shape}")
    if method not in _STRIPE_METHODS:
        raise ValueError(f"method must be one of {_STRIPE_METHODS}; got {method!r}")
    if int(size) < 3 or int(size) % 2 == 0:
        raise ValueError(f"size must be an odd integer >= 3; got {size!r}")
    dtype = _float_dtype(arr)
    out = np.empty(arr.shape, dtype)
    for r0, r1 in _chunks(arr.shape[1]):
        block = arr[:, r0:r1, :].astype(dtype)  # (n_angles, rows, nx)
        if method == "mean":
            profile = block.mean(axis=0)
            stripe = profile - ndimage.median_filter(profile, size=(1, int(size)), mode="reflect")
            block -= stripe[None]
        else:
            order = np.argsort(block, axis=0, kind="stable")
            ranked = np.take_along_axis(block, order, axis=0)
            smooth = ndimage.median_filter(ranked, size=(1, 1, int(size)), mode="reflect")
            np.put_along_axis(block, order, smooth, axis=0)
        out[:, r0:r1, :] = block
    return out


def remove_outliers(tomo, *, sigma: float = OUTLIER_SIGMA):
    """Replace zingers: pixels outside the range of the same pixel at the neighbouring
    angles by more than ``sigma`` noise standard deviations.

    Consecutive projections of a fine scan differ little, and where they do (an edge
    moving across the pixel) the value lies between its neighbours; a zinger — one
    bright or dark pixel in one frame — lies outside them. The noise level is the robust
    (MAD) spread of each detector row's second difference along the angles. Flagged
    pixels take the median of (previous, this, next), i.e. the nearer neighbour.

    Parameters
    ----------
    tomo : array_like, shape (n_angles, ny, nx)
        Absorbance, in acquisition order (≥ 3 angles).
    sigma : float
        Threshold, robust standard deviations.

    Returns
    -------
    cleaned : ndarray, same shape, float32 (float64 for float64 input)
    n_replaced : int
    """
    arr = np.asarray(tomo)
    if arr.ndim != 3 or arr.shape[0] < 3:
        raise ValueError(f"tomo must be 3-D (n_angles >= 3, ny, nx); got shape {arr.shape}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0; got {sigma!r}")
    dtype = _float_dtype(arr)
    out = np.empty(arr.shape, dtype)
    n_replaced = 0
    for r0, r1 in _chunks(arr.shape[1]):
        block = arr[:, r0:r1, :].astype(dtype)
        prev = np.concatenate([block[1:2], block[:-1]])  # mirrored at the first angle
        nxt = np.concatenate([block[1:], block[-2:-1]])  # and at the last
        lo, hi = np.minimum(prev, nxt), np.maximum(prev, nxt)
        med = np.clip(block, lo, hi)  # = median(prev, this, next)
        # noise σ per row from the second difference along the angles (σ·√1.5 for
        # independent noise), robustly
        second = block - 0.5 * (prev + nxt)
        noise = MAD_TO_SIGMA / np.sqrt(1.5) * np.nanmedian(np.abs(second), axis=(0, 2),
                                                            keepdims=True)
        excess = np.maximum(block - hi, lo - block)
        bad = excess > sigma * np.maximum(noise, np.finfo(dtype).tiny)
        block[bad] = med[bad]
        n_replaced += int(np.count_nonzero(bad))
        out[:, r0:r1, :] = block
    return out, n_replaced


def _centres_of_mass(arr):
    """Background-subtracted (row, column) centre of mass of every projection, (n, 2)."""
    n, ny, nx = arr.shape
    edge = max(1, int(round(BACKGROUND_EDGE_FRACTION * nx)))
    rows, cols = np.arange(ny, dtype=np.float64), np.arange(nx, dtype=np.float64)
    com = np.empty((n, 2))
    for i in range(n):
        p = np.nan_to_num(np.asarray(arr[i], dtype=np.float64))
        background = np.median(np.concatenate([p[:, :edge], p[:, -edge:]], axis=1), axis=1)
        w = np.maximum(p - background[:, None], 0.0)
        total = w.sum()
        if not total > 0:
            raise ValueError(f"projection {i} has no absorbance above its background: "
                             f"cannot locate the sample")
        com[i] = (rows @ w.sum(axis=1) / total, w.sum(axis=0) @ cols / total)
    return com


def estimate_jitter(tomo, theta):
    """Per-projection shift (dy, dx), px, away from a rigid rotation.

    The sample's total absorbance is the same at every angle, so its centre of mass
    moves only by rotation: vertically not at all, horizontally along
    ``c + X cos θ + Z sin θ``. The departures from that (least-squares fit of the three
    terms; vertical about the mean) are drift, random walk and stage wobble
    ("sinogram centre-of-mass" alignment). The sample must stay in the field of view,
    with some open beam at both sides (``BACKGROUND_EDGE_FRACTION`` of the width).

    Parameters
    ----------
    tomo : array_like, shape (n_angles, ny, nx)
        Absorbance.
    theta : array_like, shape (n_angles,)
        Angles, radians.

    Returns
    -------
    ndarray (n_angles, 2)
        (dy, dx) with the CONVENTIONS sign: how far each projection's content moved;
        shift it by the negative to correct (:func:`correct_jitter`).
    """
    arr = np.asarray(tomo) if not hasattr(tomo, "shape") else tomo
    if len(arr.shape) != 3:
        raise ValueError(f"tomo must be 3-D (n_angles, ny, nx); got shape {tuple(arr.shape)}")
    theta = _check_angles(theta, arr.shape[0])
    com = _centres_of_mass(arr)
    design = np.stack([np.ones_like(theta), np.cos(theta), np.sin(theta)], axis=1)
    coef, *_ = np.linalg.lstsq(design, com[:, 1], rcond=None)
    return np.stack([com[:, 0] - com[:, 0].mean(), com[:, 1] - design @ coef], axis=1)


def correct_jitter(tomo, theta, *, jitter_px=None, order: int = 3):
    """Shift every projection back by its jitter.

    Parameters
    ----------
    tomo : array_like, shape (n_angles, ny, nx)
        Absorbance.
    theta : array_like, shape (n_angles,)
        Angles, radians.
    jitter_px : array_like (n_angles, 2), optional
        (dy, dx) per projection; default :func:`estimate_jitter`.
    order : int
        Spline order of the shift (``scipy.ndimage.shift``); edges repeat the border.

    Returns
    -------
    corrected : ndarray, same shape, float32 (float64 for float64 input)
    jitter_px : ndarray (n_angles, 2)
        The jitter removed.
    """
    arr = np.asarray(tomo)
    jitter = estimate_jitter(arr, theta) if jitter_px is None else np.asarray(jitter_px, float)
    if jitter.shape != (arr.shape[0], 2):
        raise ValueError(f"jitter_px must be (n_angles, 2) = ({arr.shape[0]}, 2); got {jitter.shape}")
    dtype = _float_dtype(arr)
    out = np.empty(arr.shape, dtype)
    for i in range(arr.shape[0]):
        ndimage.shift(np.nan_to_num(arr[i].astype(dtype)), -jitter[i], output=out[i],
                      order=order, mode="nearest")
    return out, jitter
