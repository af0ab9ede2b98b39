"""Input checks shared by the analysis modules (private)."""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass

import numpy as np

#: Energies closer than this (eV) are treated as duplicates (Larch uses 5e-4 eV).
DUPLICATE_ENERGY_TOL_EV = 1e-3


class XanesInputWarning(UserWarning):
    """Input was cleaned before fitting (frames dropped, duplicates averaged)."""


def float_dtype(*arrays: np.ndarray) -> np.dtype:
    """Float dtype that keeps the input precision: float64 if any input is
    float64, otherwise float32 (integers and float16 become float32)."""
    for a in arrays:
        if a is not None and np.asarray(a).dtype == np.float64:
            return np.dtype(np.float64)
    return np.dtype(np.float32)


def check_stack(stack, name: str = "stack") -> np.ndarray:
    """Return ``stack`` as a 3-D real array ``(n_energies, ny, nx)``."""
    arr = np.asarray(stack)
    if arr.ndim != 3:
        raise ValueError(
            f"{name} must be 3-D (n_energies, ny, nx); got shape {arr.shape}"
        )
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"{name} must be a real numeric array; got dtype {arr.dtype}")
    return arr


def check_spectral_stack(stack, name: str = "stack"):
    """Return ``stack`` as a real array ``(n_energies, *spatial)`` with at least
    one spatial axis: a numpy array, or a dask array left as it is."""
    arr = stack if is_dask_array(stack) else np.asarray(stack)
    if arr.ndim < 2:
        raise ValueError(
            f"{name} must have shape (n_energies, *spatial) with at least one spatial "
            f"axis, e.g. (n_energies, ny, nx); got shape {arr.shape}"
        )
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"{name} must be a real numeric array; got dtype {arr.dtype}")
    return arr


def is_dask_array(x) -> bool:
    """True for a ``dask.array.Array`` (without importing dask when unused)."""
    da = sys.modules.get("dask.array")
    return da is not None and isinstance(x, da.Array)


@dataclass(frozen=True)
class EnergyGroups:
    """Sorted, de-duplicated energies and the frames that make up each.

    ``energies[j]`` is the mean of the energies of frames
    ``index[ptr[j]:ptr[j + 1]]`` (indices into the caller's stack).
    """

    energies: np.ndarray  # (n_unique,) float64, strictly increasing
    index: np.ndarray  # (n_used,) int64
    ptr: np.ndarray  # (n_unique + 1,) int64


def group_energies(
    energies,
    n_frames: int,
    *,
    frame_ok: np.ndarray | None = None,
    stacklevel: int = 3,
) -> EnergyGroups:
    """Validate energies and group frames by energy.

    Non-finite energies and frames flagged bad in ``frame_ok`` are dropped with
    an :class:`XanesInputWarning`; duplicate energies (closer than
    :data:`DUPLICATE_ENERGY_TOL_EV`) are averaged with a warning.
    """
    e = np.asarray(energies, dtype=np.float64)
    if e.ndim != 1:
        raise ValueError(f"energies must be 1-D; got shape {e.shape}")
    if e.size != n_frames:
        raise ValueError(
            f"energies has {e.size} values but the stack has {n_frames} frames "
            f"(stack.shape[0]); they must match"
        )
    keep = np.isfinite(e)
    if not keep.all():
        warnings.warn(
            f"dropping {int((~keep).sum())} frame(s) with non-finite energy at "
            f"index {np.flatnonzero(~keep).tolist()}",
            XanesInputWarning,
            stacklevel=stacklevel,
        )
    if frame_ok is not None:
        bad = keep & ~frame_ok
        if bad.any():
            warnings.warn(
                f"dropping {int(bad.sum())} frame(s) with no finite pixel at index "
                f"{np.flatnonzero(bad).tolist()}",
                XanesInputWarning,
                stacklevel=stacklevel,
            )
        keep &= frame_ok
    idx = np.flatnonzero(keep)
    if idx.size and np.nanmedian(e[idx]) < 100.0:
        raise ValueError(
            f"energies must be in eV; got values from {e[idx].min():g} to "
            f"{e[idx].max():g} (keV?)"
        )
    order = idx[np.argsort(e[idx], kind="stable")]
    es = e[order]
    if es.size == 0:
        return EnergyGroups(np.empty(0), order.astype(np.int64), np.zeros(1, np.int64))
    new = np.concatenate(([True], np.diff(es) > DUPLICATE_ENERGY_TOL_EV))
    ptr = np.concatenate((np.flatnonzero(new), [es.size])).astype(np.int64)
    counts = np.diff(ptr)
    if (counts > 1).any():
        dup = es[ptr[:-1][counts > 1]]
        warnings.warn(
            f"{int((counts > 1).sum())} duplicate energies averaged frame by frame "
            f"(e.g. {dup[:5].round(3).tolist()} eV)",
            XanesInputWarning,
            stacklevel=stacklevel,
        )
    uniq = np.add.reduceat(es, ptr[:-1]) / counts
    return EnergyGroups(uniq, order.astype(np.int64), ptr)
