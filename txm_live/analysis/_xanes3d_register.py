"""Registration between the energies of a 3D XANES scan (private module).

Public names are re-exported by :mod:`txm_live.analysis`.

A 3D XANES scan is a tomography at every energy; between energies the sample drifts on
the detector (thermal drift, a jump each time the monochromator moves). Two ways to
bring the energies' volumes onto one grid:

- **projections** (:func:`estimate_projection_drift`): phase-correlate each energy's
  projections with the reference energy's at the same angles and take the median
  shift. A detector-plane drift ``(dy, dx)`` is then removed exactly: ``dx`` by
  reconstructing about ``center − dx`` (the content and the axis moved together),
  ``dy`` by shifting the detector rows (:func:`shift_rows`) before reconstruction.
- **volumes** (:func:`register_volumes`): reconstruct each energy about its own centre,
  then 3D phase correlation with upsampling between the volumes.

On the simulated scans (``benchmarks/bench_xanes3d.py``, ``tests/test_xanes3d.py``) the
projection route is the more accurate one: it uses every projection's full resolution
and needs no per-energy centre search (a centre error is not a rigid shift of the
volume, so volume registration cannot undo it); the pipeline uses it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ._registration import estimate_shift
from ._tomo import _fill_nonfinite

__all__ = ["ProjectionDrift", "estimate_projection_drift", "register_volumes", "shift_rows",
           "DRIFT_PAIRS"]

#: Projection pairs compared per energy by :func:`estimate_projection_drift`.
DRIFT_PAIRS = 24
#: Largest angle difference (in median angle steps) for two projections to pair.
MAX_PAIR_STEPS = 0.5
#: Default upsampling of :func:`register_volumes` (1/20 voxel).
VOLUME_UPSAMPLE = 20


@dataclass(frozen=True)
class ProjectionDrift:
    """Shift between one energy's projections and the reference energy's.

    Attributes
    ----------
    shift_px : tuple of float
        ``(dy, dx)`` that aligns this energy's projections with the reference's
        (``estimate_shift`` convention: ``−(drift − drift_reference)``), px: the median
        over the pairs.
    spread_px : tuple of float
        Robust spread of the pairs' shifts (1.4826 · MAD) per axis, px; the
        uncertainty of the median is about ``spread / sqrt(n_pairs)``.
    n_pairs : int
        Projection pairs used.
    """

    shift_px: tuple
    spread_px: tuple
    n_pairs: int


def _pair_indices(reference_theta, theta, n_pairs):
    """(reference index, index) of up to ``n_pairs`` projections at matching angles."""
    ref_t = np.asarray(reference_theta, float)
    t = np.asarray(theta, float)
    if ref_t.ndim != 1 or t.ndim != 1 or ref_t.size < 2 or t.size < 2:
        raise ValueError(f"angles must be 1-D with at least 2 entries; got shapes {ref_t.shape} "
                         f"and {t.shape}")
    step = float(np.median(np.abs(np.diff(np.sort(t)))))
    picks = np.unique(np.linspace(0, ref_t.size - 1, min(int(n_pairs), ref_t.size)).round().astype(int))
    order = np.argsort(t)
    pos = np.clip(np.searchsorted(t[order], ref_t[picks]), 1, t.size - 1)
    left, right = order[pos - 1], order[pos]
    near = np.where(np.abs(t[left] - ref_t[picks]) <= np.abs(t[right] - ref_t[picks]), left, right)
    ok = np.abs(t[near] - ref_t[picks]) <= MAX_PAIR_STEPS * step + 1e-12
    if not ok.any():
        raise ValueError(f"no projection of this energy lies within {MAX_PAIR_STEPS} angle steps "
                         f"({np.rad2deg(MAX_PAIR_STEPS * step):.3f}°) of the reference's angles: "
                         f"the scans must cover the same angles")
    return picks[ok], near[ok]


def estimate_projection_drift(reference, reference_theta_rad, tomo, theta_rad, *,
                              n_pairs: int = DRIFT_PAIRS, band: float = 0.25) -> ProjectionDrift:
    """Detector-plane shift of one energy's projections against the reference energy's.

    Parameters
    ----------
    reference : array_like, shape (n_ref, ny, nx)
        Absorbance projections of the reference energy (all of them, or a subset with
        its angles).
    reference_theta_rad : array_like, shape (n_ref,)
        Their angles, radians.
    tomo : array_like, shape (n_angles, ny, nx)
        Absorbance projections of this energy.
    theta_rad : array_like, shape (n_angles,)
        Their angles, radians (the same trajectory; each reference angle is paired with
        this energy's nearest angle within half a step).
    n_pairs : int
        Number of projection pairs, spread evenly over the reference's angles.
    band : float
        Highest spatial frequency used, cycles/px (:func:`estimate_shift`).

    Returns
    -------
    ProjectionDrift

    Notes
    -----
    Each pair is registered by phase correlation (:func:`estimate_shift`), which
    normalizes the spectrum's magnitude and so tolerates the change of contrast across
    the edge (the same particles absorb 2–3× more above it). The median over the pairs
    rejects the odd failed pair (a zinger, a projection where particles overlap).
    """
    ref = np.asarray(reference) if not hasattr(reference, "shape") else reference
    if len(ref.shape) != 3 or len(tomo.shape) != 3 or tuple(ref.shape[1:]) != tuple(tomo.shape[1:]):
        raise ValueError(f"reference and tomo must be (n, ny, nx) with the same image shape; got "
                         f"{tuple(ref.shape)} and {tuple(tomo.shape)}")
    if int(n_pairs) < 1:
        raise ValueError(f"n_pairs must be >= 1; got {n_pairs!r}")
    if len(reference_theta_rad) != ref.shape[0] or len(theta_rad) != tomo.shape[0]:
        raise ValueError(f"one angle per projection: {len(reference_theta_rad)} angles for "
                         f"{ref.shape[0]} reference projections, {len(theta_rad)} for {tomo.shape[0]}")
    ir, it = _pair_indices(reference_theta_rad, theta_rad, n_pairs)
    shifts = np.array([estimate_shift(ref[a], tomo[b], band=band) for a, b in zip(ir, it)])
    median = np.median(shifts, axis=0)
    spread = 1.4826 * np.median(np.abs(shifts - median), axis=0)
    return ProjectionDrift(shift_px=(float(median[0]), float(median[1])),
                           spread_px=(float(spread[0]), float(spread[1])), n_pairs=int(ir.size))


def shift_rows(tomo, dy_px: float, *, order: int = 3) -> np.ndarray:
    """Projections moved by ``dy_px`` detector rows (cubic spline), a new array.

    ``shift_rows(tomo, ProjectionDrift.shift_px[0])`` aligns the rows with the
    reference's. Rows moved in from beyond the detector repeat the edge row. Non-finite
    pixels (dead pixels after flat/dark correction) are first filled by interpolation
    along their row, as :func:`reconstruct` does (a spline would spread them). Keeps
    the float precision (float32 unless float64).
    """
    arr = np.asarray(tomo)
    if arr.ndim != 3:
        raise ValueError(f"tomo must be (n_angles, ny, nx); got shape {arr.shape}")
    dtype = np.float64 if arr.dtype == np.float64 else np.float32
    arr = arr.astype(dtype, copy=True)
    _fill_nonfinite(arr)
    if dy_px == 0:
        return arr
    out = np.empty_like(arr)
    for i in range(arr.shape[0]):  # one projection at a time: 2-D spline, bounded memory
        ndimage.shift(arr[i], (float(dy_px), 0.0), output=out[i], order=order, mode="nearest")
    return out


def register_volumes(reference, volume, *, upsample_factor: int = VOLUME_UPSAMPLE,
                     mask_nonfinite: bool = True) -> tuple:
    """3D sub-voxel shift that aligns ``volume`` with ``reference`` (phase correlation).

    Parameters
    ----------
    reference, volume : array_like, shape (nz, ny, nx)
        Two reconstructions (e.g. two energies).
    upsample_factor : int
        Precision 1/upsample_factor voxel (scikit-image's upsampled DFT,
        Guizar-Sicairos et al. 2008, doi:10.1364/OL.33.000156).
    mask_nonfinite : bool
        Replace non-finite voxels by 0 first.

    Returns
    -------
    tuple of float
        ``(dz, dy, dx)`` for ``scipy.ndimage.shift(volume, ...)``, voxels.
    """
    from skimage.registration import phase_cross_correlation

    ref = np.asarray(reference, dtype=np.float32)
    vol = np.asarray(volume, dtype=np.float32)
    if ref.ndim != 3 or ref.shape != vol.shape:
        raise ValueError(f"reference and volume must be 3-D of one shape; got {ref.shape} and {vol.shape}")
    if int(upsample_factor) < 1:
        raise ValueError(f"upsample_factor must be >= 1; got {upsample_factor!r}")
    if mask_nonfinite:
        ref = np.nan_to_num(ref, nan=0.0, posinf=0.0, neginf=0.0)
        vol = np.nan_to_num(vol, nan=0.0, posinf=0.0, neginf=0.0)
    shift, _, _ = phase_cross_correlation(ref, vol, upsample_factor=int(upsample_factor),
                                          normalization="phase")
    return tuple(float(s) for s in shift)
