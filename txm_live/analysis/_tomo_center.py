"""Rotation-centre finding and centre sweeps (private module).

Public names are re-exported by :mod:`txm_live.analysis`. Conventions are those of
:func:`txm_live.analysis.reconstruct`: ``center`` is the detector column of the axis.

:func:`find_center` works in two steps:

1. **Opposite projections.** A projection at θ + π is the one at θ mirrored about the
   axis: phase correlation of ``p(θ)`` with ``fliplr(p(θ + π))`` (2-D, so vertical
   jitter does not matter) gives ``2 center − (nx − 1)``. Pairs are taken wherever the
   scan has them (a 0–180° fly scan: its first and last frames, half a step short of
   π apart). The once-per-turn wobble cancels between the two frames of a pair and a
   linear drift averages to its mid-scan value, which is the centre a reconstruction of
   the whole scan needs.
2. **Slice sharpness.** Trial slices of the rows with the most signal are reconstructed
   for centres around that estimate (all projections, so noise and jitter average out),
   scored by the entropy of their histogram (Donath et al. 2006: a wrong centre smears
   every edge into arcs, which spreads the histogram), and the minimum is located to a
   fraction of the step by a parabola.

Without opposite projections step 1 is skipped and step 2 searches the central half of
the detector.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from skimage.registration import phase_cross_correlation

from ._tomo import _check_angles, _ncore, _row_chunker, angle_weights
from ._tomo_fourier import FILTER_NAMES, FourierBackprojector

__all__ = ["find_center", "center_sweep", "CenterSweep", "slice_entropy"]

#: Opposite-projection pairs used at most (spread over the scan), and how far from π
#: apart (in median angle steps) two frames may be to count as a pair.
MAX_PAIRS = 8
PAIR_TOLERANCE_STEPS = 1.5
#: Sub-pixel resolution of the pair correlation, 1/px.
PAIR_UPSAMPLE = 20
#: Half-width (px) and step (px) of the slice-sharpness refinement around the pair
#: estimate; a pair estimate is trusted to within ``REFINE_HALF_WIDTH_PX``.
REFINE_HALF_WIDTH_PX = 3.0
REFINE_STEP_PX = 0.25
#: Rows reconstructed for the sharpness metric (those with the most absorbance): more
#: on narrow detectors, where a row is cheap and holds few pixels.
METRIC_ROWS = 8
METRIC_ROWS_WIDE = 2
WIDE_PX = 512
#: The sharpness sweep uses at most this many projections (evenly picked): enough to
#: see a centre error, and the sweep stays a few seconds at 2048 px.
METRIC_MAX_ANGLES = 720
#: Histogram bins of the entropy metric.
ENTROPY_BINS = 128
#: Widths above this are binned for the coarse search without opposite projections.
COARSE_MAX_WIDTH = 512


@dataclass(frozen=True)
class CenterSweep:
    """Trial slices of one set of rows at several centres.

    Attributes
    ----------
    centers : ndarray (n_centers,)
        Trial centres, detector columns.
    slices : ndarray (n_centers, n_rows, nx, nx) float32
        ``slices[i]`` reconstructed with ``centers[i]``.
    rows : ndarray (n_rows,) int
        Detector rows reconstructed.
    entropy : ndarray (n_centers,)
        Histogram entropy of each trial (lower = sharper), summed over the rows.
    best : float
        Centre at the entropy minimum, parabola-refined.
    """

    centers: np.ndarray
    slices: np.ndarray
    rows: np.ndarray
    entropy: np.ndarray
    best: float

    def montage(self, row_index: int = 0, *, columns: int | None = None) -> np.ndarray:
        """The trial slices of one row tiled in a grid (centres in reading order), for
        viewing; ``columns`` defaults to about √n_centers. Float32, NaN between tiles."""
        n, nx = self.slices.shape[0], self.slices.shape[-1]
        cols = int(np.ceil(np.sqrt(n))) if columns is None else int(columns)
        grid_rows = int(np.ceil(n / cols))
        gap = max(1, nx // 32)
        tile = np.full((grid_rows * (nx + gap) - gap, cols * (nx + gap) - gap), np.nan, np.float32)
        for i in range(n):
            r, c = divmod(i, cols)
            tile[r * (nx + gap) : r * (nx + gap) + nx, c * (nx + gap) : c * (nx + gap) + nx] = \
                self.slices[i, row_index]
        return tile


def slice_entropy(image, *, bins: int = ENTROPY_BINS, mask=None) -> float:
    """Shannon entropy (nats) of an image's histogram between its 0.1 and 99.9 percentiles.

    Parameters
    ----------
    image : ndarray
    bins : int
    mask : ndarray of bool, optional
        Pixels to use (e.g. the field of view); default all finite pixels.
    """
    v = np.asarray(image, dtype=np.float64)
    v = v[mask] if mask is not None else v.ravel()
    v = v[np.isfinite(v)]
    lo, hi = np.percentile(v, [0.1, 99.9])
    if not hi > lo:
        return 0.0
    hist, _ = np.histogram(v, bins=bins, range=(lo, hi))
    p = hist[hist > 0] / hist.sum()
    return float(-(p * np.log(p)).sum())


def _pick_rows(tomo, n_rows):
    """The ``n_rows`` detector rows with the largest summed |absorbance| (sorted)."""
    ny = tomo.shape[1]
    if ny <= n_rows:
        return np.arange(ny)
    step = max(1, tomo.shape[0] // 64)  # a subset of angles is enough to rank rows
    signal = np.nansum(np.abs(np.asarray(tomo[::step], dtype=np.float32)), axis=(0, 2))
    return np.sort(np.argsort(signal)[-n_rows:])


def _opposite_pairs(theta):
    """Index pairs (i, j) with theta[j] − theta[i] ≈ π, at most ``MAX_PAIRS``."""
    step = float(np.median(np.abs(np.diff(np.sort(theta))))) if theta.size > 1 else 0.0
    tol = max(PAIR_TOLERANCE_STEPS * step, 1e-9)
    order = np.argsort(theta)
    ts = theta[order]
    pairs = []
    for a, ia in enumerate(order):
        b = int(np.searchsorted(ts, ts[a] + np.pi))
        cands = [c for c in (b - 1, b) if 0 <= c < ts.size]
        if not cands:
            continue
        c = min(cands, key=lambda c: abs(ts[c] - ts[a] - np.pi))
        if abs(ts[c] - ts[a] - np.pi) <= tol and c != a:
            pairs.append((int(ia), int(order[c]), abs(ts[c] - ts[a] - np.pi)))
    if not pairs:
        return []
    pairs.sort(key=lambda p: p[2])
    pick = np.linspace(0, len(pairs) - 1, min(MAX_PAIRS, len(pairs))).round().astype(int)
    return [pairs[k][:2] for k in np.unique(pick)]


def _rows_block(tomo, rows):
    """float32 copy of ``tomo[:, rows, :]`` with NaN → 0 (works on HDF5 datasets too)."""
    block = np.stack([np.asarray(tomo[:, int(r), :], dtype=np.float32) for r in rows], axis=1)
    return np.nan_to_num(block, copy=False)


def _pair_center(tomo, theta):
    """Median centre from opposite-projection pairs, or None without pairs."""
    nx = tomo.shape[2]
    estimates = []
    for i, j in _opposite_pairs(theta):
        a = np.nan_to_num(np.asarray(tomo[i], dtype=np.float32))
        b = np.nan_to_num(np.asarray(tomo[j], dtype=np.float32))[:, ::-1]
        shift, _, _ = phase_cross_correlation(a, b, upsample_factor=PAIR_UPSAMPLE,
                                              normalization=None)
        estimates.append((nx - 1 + shift[1]) / 2.0)
    return float(np.median(estimates)) if estimates else None


def _sweep(tomo, theta, centers, rows, *, ncore, filter_name, keep_slices):
    """Entropy of each trial centre (and the slices if ``keep_slices``)."""
    nx = tomo.shape[2]
    bp = FourierBackprojector(theta, angle_weights(theta), nx, ncore=ncore,
                              filter_name=filter_name)
    q = bp.filtered(_rows_block(tomo, rows))
    yy, xx = np.indices((nx, nx))
    entropy = np.empty(len(centers))
    slices = np.empty((len(centers), len(rows), nx, nx), np.float32) if keep_slices else None
    for k, c in enumerate(centers):
        res = bp.backproject(q, c)
        sl = np.empty((len(rows), nx, nx), np.float32)
        sl[0::2] = res.real[: (len(rows) + 1) // 2]
        sl[1::2] = res.imag[: len(rows) // 2]
        radius = min(c, nx - 1 - c) + 0.5
        mask = (yy - nx // 2) ** 2 + (xx - nx // 2) ** 2 < radius**2
        entropy[k] = sum(slice_entropy(s, mask=mask) for s in sl)
        if keep_slices:
            slices[k] = sl
    return entropy, slices


def _parabola_min(x, y):
    """Abscissa of the minimum of ``y(x)`` refined by a parabola through its neighbours."""
    i = int(np.argmin(y))
    if 0 < i < len(y) - 1:
        y0, y1, y2 = y[i - 1], y[i], y[i + 1]
        den = y0 - 2 * y1 + y2
        if den > 0:
            return float(x[i] + 0.5 * (y0 - y2) / den * (x[i + 1] - x[i]))
    return float(x[i])


def center_sweep(tomo, theta, centers, *, rows=None, filter_name: str = "shepp",
                 ncore: int | None = None) -> CenterSweep:
    """Reconstruct a few rows at each trial centre, as a user checks a centre by eye.

    Parameters
    ----------
    tomo : array_like, shape (n_angles, ny, nx)
        Absorbance.
    theta : array_like, shape (n_angles,)
        Angles, radians.
    centers : array_like
        Trial centres, detector columns, each within ``[0, nx − 1]``.
    rows : int or sequence of int, optional
        Detector rows; default the row with the most absorbance.
    filter_name : str
        Ramp-filter window of the ``'nufft'`` backend.
    ncore : int, optional

    Returns
    -------
    CenterSweep
        Slices, their entropy and the sharpest centre; ``montage()`` tiles them.
    """
    n_angles, ny, nx = _check_shape(tomo)
    theta = _check_angles(theta, n_angles)
    centers = np.asarray(centers, dtype=np.float64).ravel()
    if centers.size == 0 or not np.all((centers >= 0) & (centers <= nx - 1)):
        raise ValueError(f"centers must be non-empty and within [0, {nx - 1}]; got "
                         f"{centers.min() if centers.size else 'none'} … "
                         f"{centers.max() if centers.size else ''}")
    if filter_name not in FILTER_NAMES:
        raise ValueError(f"filter_name must be one of {FILTER_NAMES}; got {filter_name!r}")
    rows = _pick_rows(tomo, 1) if rows is None else np.atleast_1d(np.asarray(rows, dtype=int))
    if rows.size == 0 or rows.min() < 0 or rows.max() >= ny:
        raise ValueError(f"rows must be within [0, {ny - 1}]; got {rows}")
    entropy, slices = _sweep(tomo, theta, centers, rows, ncore=_ncore(ncore),
                             filter_name=filter_name, keep_slices=True)
    return CenterSweep(centers=centers, slices=slices, rows=rows, entropy=entropy,
                       best=_parabola_min(centers, entropy))


def _check_shape(tomo):
    shape = tuple(int(s) for s in np.shape(tomo))
    if len(shape) != 3:
        raise ValueError(f"tomo must be 3-D (n_angles, ny, nx); got shape {shape}")
    if shape[2] < 8:
        raise ValueError(f"detector too narrow to find a centre: nx = {shape[2]}")
    return shape


def find_center(tomo, theta, *, rows=None, ncore: int | None = None,
                filter_name: str = "shepp") -> float:
    """Detector column of the rotation axis (the ``center`` of :func:`reconstruct`).

    Parameters
    ----------
    tomo : array_like, shape (n_angles, ny, nx)
        Absorbance (jitter-corrected or not; NaN pixels count as 0).
    theta : array_like, shape (n_angles,)
        Angles, radians; a half turn or more.
    rows : sequence of int, optional
        Rows used by the sharpness step; default the ``METRIC_ROWS`` with the most
        absorbance.
    ncore : int, optional
    filter_name : str
        Ramp-filter window of the trial slices.

    Returns
    -------
    float
        Centre, pixel-index units, sub-pixel (module docstring has the method). On
        simulated 128-px fly and step scans with noise, drift, random walk and wobble it
        is within 0.06 px of the truth (``tests/test_analysis_tomo_center.py``).
    """
    n_angles, ny, nx = _check_shape(tomo)
    theta = _check_angles(theta, n_angles)
    ncore = _ncore(ncore)
    if rows is None:
        rows = _pick_rows(tomo, METRIC_ROWS if nx <= WIDE_PX else METRIC_ROWS_WIDE)
    rows = np.atleast_1d(np.asarray(rows, int))
    guess = _pair_center(tomo, theta)
    pick = np.unique(np.linspace(0, n_angles - 1, min(n_angles, METRIC_MAX_ANGLES)).round()
                     .astype(int))
    sub = _Subset(tomo, pick)
    if guess is None:
        guess = _coarse_center(sub, theta[pick], rows, ncore=ncore, filter_name=filter_name)
    lo = max(0.0, guess - REFINE_HALF_WIDTH_PX)
    hi = min(nx - 1.0, guess + REFINE_HALF_WIDTH_PX)
    centers = np.arange(lo, hi + 1e-9, REFINE_STEP_PX)
    entropy, _ = _sweep(sub, theta[pick], centers, rows, ncore=ncore,
                        filter_name=filter_name, keep_slices=False)
    return _parabola_min(centers, entropy)


class _Subset:
    """``tomo`` restricted to the projections ``pick`` (indexed lazily, rows on demand)."""

    def __init__(self, tomo, pick):
        self._tomo, self._pick = tomo, pick
        self.shape = (pick.size, *tomo.shape[1:])

    def __getitem__(self, key):
        angles, *rest = key if isinstance(key, tuple) else (key,)
        rows = np.asarray(self._tomo[(slice(None), *rest)])
        return rows[self._pick][angles]


def _coarse_center(tomo, theta, rows, *, ncore, filter_name):
    """Whole-pixel search over the central half of the detector (binned when wide)."""
    nx = tomo.shape[2]
    binning = max(1, int(np.ceil(nx / COARSE_MAX_WIDTH)))
    block = _rows_block(tomo, rows)
    nb = nx // binning
    if binning > 1:
        block = block[:, :, : nb * binning].reshape(block.shape[0], len(rows), nb, binning).mean(-1)
    centers_b = np.arange(nb // 4, nb - nb // 4, 1.0)
    entropy, _ = _sweep(block, theta, centers_b, np.arange(len(rows)), ncore=ncore,
                        filter_name=filter_name, keep_slices=False)
    best_b = _parabola_min(centers_b, entropy)
    return (best_b + 0.5) * binning - 0.5
