"""Tomographic reconstruction with tomopy's conventions (private module).

Public names are re-exported by :mod:`txm_live.analysis`.

Geometry (parallel beam, the same as tomopy, algotom and scikit-image's ``radon``)
---------------------------------------------------------------------------------
``tomo[i, j, n]`` is the absorbance at angle ``theta[i]`` (radians), detector row ``j`` and
column ``n``. ``center`` is the detector column (pixel-index units: column ``n`` is at
``n``) on which the rotation axis is imaged; ``nx / 2`` is skimage's ``radon`` axis.
Slice ``recon[j]`` is reconstructed from detector row ``j``; in it the rotation axis is at
``(row, col) = (nx // 2, nx // 2)`` and a point at ``(row, col)`` projects at angle θ onto
detector column

    ``n = center + (col − nx // 2) cos θ − (row − nx // 2) sin θ``.

So at θ = 0 columns map to columns, and the slice's row axis runs against the direction
that projects onto increasing columns at θ = 90°. For a sample rotated by θ about the
vertical axis (``simulators``: x along columns, z along the beam, a point (x, z) moves
to (x cos θ + z sin θ, …)), ``recon[j, row, col]`` is the attenuation at
``x = col − nx // 2``, ``z = nx // 2 − row`` (pixels from the axis); see
:func:`simulators.tomography.attenuation_volume`.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ._tomo_backends import algotom_dfi_backend, algotom_fbp_backend, tomopy_gridrec_backend
from ._tomo_fourier import FILTER_NAMES, nufft_backend
from ._tomo_iterative import cgls_backend

__all__ = [
    "reconstruct",
    "reconstruction_backends",
    "angle_weights",
    "fov_radius_px",
    "TomoInputWarning",
    "MIN_ANGLES",
]

#: Fewest projections any backend is asked to reconstruct from.
MIN_ANGLES = 8
#: The largest gap in the angles (folded onto a half turn) that is still treated as
#: sampling, not a missing wedge: this many times the median step (random angles have
#: gaps up to ~ln(n)/ln(2) median steps: 8 for 300 angles), and at least
#: ``MIN_WEDGE_DEG``.
MAX_GAP_STEPS = 12.0
MIN_WEDGE_DEG = 2.0
#: Folded angles closer than this are one angle seen twice (0° and 180°, repeats).
_SAME_ANGLE_RAD = 1e-9


class TomoInputWarning(UserWarning):
    """Tomography input was cleaned or is marginal (non-finite pixels, few angles)."""


@dataclass(frozen=True)
class _Backend:
    func: Callable
    options: dict  # name -> default
    requires: str | None  # module that must import, None for the core
    summary: str


_BACKENDS = {
    "nufft": _Backend(
        nufft_backend,
        {"filter_name": "hann", "filter_cutoff": 1.0, "eps": 1e-2, "pad_mode": "edge"}, "ducc0",
        "filtered backprojection by NUFFT gridding (ducc0); the fast CPU default",
    ),
    "dfi": _Backend(
        algotom_dfi_backend, {"filter_name": "hann", "pad_rate": 0.25, "pad_mode": "edge"},
        "algotom", "algotom's direct Fourier inversion",
    ),
    "fbp": _Backend(
        algotom_fbp_backend, {"filter_name": "hann", "pad_mode": "edge"}, "algotom",
        "algotom's CPU filtered backprojection (numba)",
    ),
    "cgls": _Backend(
        cgls_backend, {"n_iter": 10, "eps": 1e-4}, "ducc0",
        "least squares by conjugate gradients on NUFFT projectors, for few-angle scans",
    ),
    "gridrec": _Backend(
        tomopy_gridrec_backend, {"filter_name": "shepp", "filter_par": None}, "tomopy",
        "tomopy's gridrec (conda only)",
    ),
}


def reconstruction_backends() -> dict[str, dict]:
    """Registered backends: name → ``{"options": defaults, "available": bool, "summary"}``."""
    out = {}
    for name, b in _BACKENDS.items():
        out[name] = {"options": dict(b.options), "available": _importable(b.requires),
                     "summary": b.summary}
    return out


def _importable(module) -> bool:
    if module is None:
        return True
    import importlib.util  # noqa: PLC0415

    return importlib.util.find_spec(module) is not None


def angle_weights(theta_rad, *, wedge_gap_rad: float | None = None) -> np.ndarray:
    """Quadrature weight of each angle over the half turn, (n_angles,) float64.

    Each angle gets half the gap to its neighbours after folding onto [0, π) (a
    projection at θ + π sees the same lines as at θ, mirrored), so irregular fly-scan
    angles, a repeated 0°/180° pair or a full turn are all weighted correctly; the
    weights sum to π. With ``wedge_gap_rad``, a gap wider than that is a missing wedge
    (a scan still in progress) and counts as one median step: the angles at its edges
    must not stand in for it; the sum is then less than π.
    """
    theta = np.asarray(theta_rad, dtype=np.float64)
    folded = np.mod(theta, np.pi)
    order = np.argsort(folded, kind="stable")
    s = folded[order]
    gaps = np.diff(np.concatenate([s, [s[0] + np.pi]]))  # gap after each sorted angle
    if wedge_gap_rad is not None:
        gaps = np.where(gaps > float(wedge_gap_rad), np.median(gaps), gaps)
    w_sorted = 0.5 * (gaps + np.roll(gaps, 1))
    # angles that coincide once folded (0° and 180°, repeated frames) share their weight
    group = np.concatenate([[0], np.cumsum(np.diff(s) > _SAME_ANGLE_RAD)])
    if s.size > 1 and np.pi - (s[-1] - s[0]) <= _SAME_ANGLE_RAD:
        group[group == group[-1]] = 0  # the last run wraps onto the first
    totals = np.bincount(group, weights=w_sorted)
    counts = np.bincount(group)
    w = np.empty_like(w_sorted)
    w[order] = (totals / counts)[group]
    return w


def fov_radius_px(nx: int, center: float) -> float:
    """Radius (px) of the disc about the axis that every projection sees whole."""
    return float(min(center, nx - 1 - center) + 0.5)


def _gap_limit(gaps):
    """Largest gap (rad) still counted as sampling for these folded-angle gaps."""
    return max(MAX_GAP_STEPS * float(np.median(gaps)), np.deg2rad(MIN_WEDGE_DEG))


def _folded_gaps(theta):
    folded = np.sort(np.mod(theta, np.pi))
    return folded, np.diff(np.concatenate([folded, [folded[0] + np.pi]]))


def _check_angles(theta, n_angles, *, allow_missing_wedge=False):
    theta = np.asarray(theta, dtype=np.float64)
    if theta.ndim != 1 or theta.size != n_angles:
        raise ValueError(f"theta must be 1-D with one angle per projection ({n_angles}); "
                         f"got shape {theta.shape}")
    if not np.all(np.isfinite(theta)):
        raise ValueError(f"theta has {int(np.sum(~np.isfinite(theta)))} non-finite values")
    if n_angles < MIN_ANGLES:
        raise ValueError(f"too few angles: {n_angles} projections, at least {MIN_ANGLES} needed")
    folded, gaps = _folded_gaps(theta)
    big = int(np.argmax(gaps))
    limit = _gap_limit(gaps)
    if gaps[big] > limit and not allow_missing_wedge:
        lo, hi = np.rad2deg(folded[big]), np.rad2deg(folded[big] + gaps[big])
        raise ValueError(
            f"angles do not cover 180°: no projection between {lo:.2f}° and {hi:.2f}° "
            f"(mod 180°), a {np.rad2deg(gaps[big]):.2f}° gap; largest gap allowed "
            f"{np.rad2deg(limit):.2f}°. A parallel-beam scan needs a half turn "
            f"(allow_missing_wedge=True reconstructs a partial scan as a preview)."
        )
    return theta


def _check_center(center, nx):
    if center is None:
        return nx / 2.0
    c = np.asarray(center, dtype=np.float64)
    if c.ndim > 0:
        if c.size == 0 or np.ptp(c) > 0:
            raise ValueError(f"center must be one number for all rows; got shape {c.shape}")
        c = c.ravel()[0]
    c = float(c)
    if not (np.isfinite(c) and 0.0 <= c <= nx - 1):
        raise ValueError(f"center {c!r} is outside the detector: expected 0 <= center <= {nx - 1}")
    return c


def _check_options(algorithm, kwargs):
    if algorithm not in _BACKENDS:
        raise ValueError(f"unknown algorithm {algorithm!r}; expected one of {sorted(_BACKENDS)}")
    backend = _BACKENDS[algorithm]
    unknown = sorted(set(kwargs) - set(backend.options))
    if unknown:
        raise TypeError(f"algorithm {algorithm!r} does not take {unknown}; "
                        f"its options are {sorted(backend.options)}")
    if not _importable(backend.requires):
        raise ImportError(f"algorithm {algorithm!r} needs {backend.requires!r}, which is not "
                          f"installed ({backend.summary})")
    opts = {**backend.options, **kwargs}
    if algorithm == "nufft":
        if opts["filter_name"] not in FILTER_NAMES:
            raise ValueError(f"filter_name must be one of {FILTER_NAMES}; got {opts['filter_name']!r}")
        if not 1e-5 <= float(opts["eps"]) <= 1e-1:
            raise ValueError(f"eps must be in [1e-5, 1e-1] (float32 NUFFT); got {opts['eps']!r}")
        if not 0.0 < float(opts["filter_cutoff"]) <= 1.0:
            raise ValueError(f"filter_cutoff must be in (0, 1] (fraction of Nyquist); got "
                             f"{opts['filter_cutoff']!r}")
        if opts["pad_mode"] not in ("edge", "zero"):
            raise ValueError(f"pad_mode must be 'edge' or 'zero'; got {opts['pad_mode']!r}")
    if algorithm == "cgls":
        if int(opts["n_iter"]) != opts["n_iter"] or opts["n_iter"] < 1:
            raise ValueError(f"n_iter must be an integer >= 1; got {opts['n_iter']!r}")
        if not 1e-6 <= float(opts["eps"]) <= 1e-1:
            raise ValueError(f"eps must be in [1e-6, 1e-1]; got {opts['eps']!r}")
    return backend, opts


def _fill_nonfinite(block):
    """Replace non-finite pixels in place by linear interpolation along the detector row.

    Returns the number replaced. A row with no finite pixel becomes 0.
    """
    bad = ~np.isfinite(block)
    n_bad = int(np.count_nonzero(bad))
    if n_bad == 0:
        return 0
    cols = np.arange(block.shape[-1])
    for i, j in zip(*np.nonzero(bad.any(axis=-1))):
        row, ok = block[i, j], ~bad[i, j]
        row[~ok] = np.interp(cols[~ok], cols[ok], row[ok]) if ok.any() else 0.0
    return n_bad


def _row_chunker(tomo, stats):
    """``row_chunks(n)`` → yields ``(r0, r1, float32 block)``, non-finite pixels filled."""
    ny = tomo.shape[1]

    def row_chunks(n_rows):
        for r0 in range(0, ny, n_rows):
            r1 = min(ny, r0 + n_rows)
            block = np.array(tomo[:, r0:r1, :], dtype=np.float32, order="C")
            stats["n_filled"] += _fill_nonfinite(block)
            yield r0, r1, block

    return row_chunks


def reconstruct(tomo, theta, center=None, *, algorithm: str = "nufft", ncore: int | None = None,
                allow_missing_wedge: bool = False, **kwargs) -> np.ndarray:
    """Reconstruct slices from parallel-beam projections (tomopy's ``recon`` conventions).

    Parameters
    ----------
    tomo : array_like, shape (n_angles, ny, nx)
        Absorbance ``−ln((I − D)/(F − D))``. Not modified; read a few rows at a time (a
        memory-mapped or HDF5-backed array works). Non-finite pixels (dead pixels after
        flat/dark correction) are replaced by linear interpolation along their row, with
        a :class:`TomoInputWarning`.
    theta : array_like, shape (n_angles,)
        Rotation angle of each projection, radians, in any order and spacing (fly-scan
        angles read from the stage are used as they are). They must cover a half turn
        (folded onto [0, π), no gap larger than ``MAX_GAP_STEPS`` median steps and
        ``MIN_WEDGE_DEG``); at least ``MIN_ANGLES`` of them.
    center : float, optional
        Detector column of the rotation axis, pixel-index units (``0 <= center <=
        nx − 1``). Default ``nx / 2`` (tomopy's default; skimage's ``radon`` axis).
    algorithm : str, optional
        ``'nufft'`` (default; filtered backprojection by NUFFT gridding on ducc0,
        installed with txm-live), ``'cgls'`` (least squares on NUFFT projectors, for
        few-angle scans), ``'dfi'`` / ``'fbp'`` (algotom), ``'gridrec'`` (tomopy, conda
        only). See :func:`reconstruction_backends` for each one's options and
        availability.
    ncore : int, optional
        Threads; default all CPUs this process may use.
    allow_missing_wedge : bool, optional
        Reconstruct even when the angles do not cover a half turn (a live preview from
        the projections received so far): no error, and the missing wedge counts as one
        median angle step in the weights (``angle_weights(wedge_gap_rad=...)``) so the
        angles at its edges do not stand in for it. The slice has limited-angle streaks.
    **kwargs
        Backend options, checked against the backend's list. ``'nufft'``:
        ``filter_name`` ('hann' (default, as algotom's), 'parzen' (smoothest), 'hamming',
        'cosine', 'shepp' (tomopy gridrec's default), 'ramlak' (no smoothing: sharpest,
        noisiest)); ``filter_cutoff`` (default 1.0: the window reaches zero at this
        fraction of Nyquist, lower = smoother, as tomopy's ``filter_par``); ``eps`` (NUFFT accuracy bound, default 1e-2: the measured error is
        ~1e-3 of the slice, far below the noise of measured data; NRMSE against the truth
        is the same to four digits as with 1e-5),
        ``pad_mode`` ('edge' (default) or 'zero': how projections are extended beyond the
        detector before filtering). ``'cgls'``: ``n_iter`` (default 10; stopping early
        is its regularization), ``eps`` (default 1e-4).

    Returns
    -------
    ndarray, shape (ny, nx, nx), float32
        Linear attenuation per pixel (``tomo`` units per pixel length), slice ``j`` from
        detector row ``j``, rotation axis at ``(nx // 2, nx // 2)`` (module docstring has
        the full geometry). Outside the disc of radius ``fov_radius_px(nx, center)``
        about the axis the values are not supported by every projection.

    Raises
    ------
    ValueError
        Wrong shapes, too few angles, angles not covering a half turn, a centre outside
        the detector, an unknown algorithm or bad option value.
    TypeError
        An option the chosen backend does not take (the message lists its options).
    ImportError
        The chosen backend's library is not installed.

    Notes
    -----
    Choosing the window: the interpolation is exact (no blur of its own, unlike DFI's
    polar-grid interpolation or a linear-interpolating backprojector), so the window
    alone sets the noise/resolution trade-off. On simulated TXM data (3·10⁴-count flat)
    ``'hann'`` gives the lowest error against the true volume up to ~1024 px; for noisy
    full-resolution data (2048 px, 20 nm pixels) ``'parzen'`` does
    (``benchmarks/bench_tomo.py`` prints both beside algotom's DFI and astra's FBP).

    Memory: the output, plus a few rows' padded sinograms (``CHUNK_ROWS`` of the
    backend) and one NUFFT grid; ``tomo`` is never copied whole.
    """
    arr = tomo if hasattr(tomo, "shape") and hasattr(tomo, "__getitem__") else np.asarray(tomo)
    if len(arr.shape) != 3:
        raise ValueError(f"tomo must be 3-D (n_angles, ny, nx); got shape {tuple(arr.shape)} "
                         f"(a single sinogram s is s[:, None, :])")
    n_angles, ny, nx = (int(s) for s in arr.shape)
    if nx < 2 or ny < 1:
        raise ValueError(f"tomo has an empty detector: shape {tuple(arr.shape)}")
    backend, opts = _check_options(algorithm, kwargs)
    theta = _check_angles(theta, n_angles, allow_missing_wedge=allow_missing_wedge)
    center = _check_center(center, nx)
    ncore = _ncore(ncore)
    wedge = _gap_limit(_folded_gaps(theta)[1]) if allow_missing_wedge else None
    out = np.empty((ny, nx, nx), np.float32)
    stats = {"n_filled": 0}
    backend.func(arr, theta, angle_weights(theta, wedge_gap_rad=wedge), center, out, ncore=ncore,
                 row_chunks=_row_chunker(arr, stats), **opts)
    if stats["n_filled"]:
        warnings.warn(f"{stats['n_filled']} non-finite absorbance pixels replaced by "
                      f"interpolation along their detector row", TomoInputWarning, stacklevel=2)
    return out


def _ncore(ncore):
    if ncore is None:
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                   else (os.cpu_count() or 1))
    if int(ncore) < 1:
        raise ValueError(f"ncore must be >= 1; got {ncore!r}")
    return int(ncore)
