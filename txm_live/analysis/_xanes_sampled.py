"""fit_xanes on a stack that arrives energy by energy (private module).

Public names are re-exported by :mod:`txm_live.analysis`.

:func:`fit_xanes` first reads what it needs from the whole stack (the *prepare* step:
line sums of every 4th row for the mean spectrum, the spectra of up to 40 000 fixed
pixels for the whiteline bias table), then fits block by block. On a stack on disk that
is a full extra read. A 3D XANES stack is made one energy at a time, so
:class:`XanesSampler` collects exactly those quantities as each energy's volume (or each
slab of it) passes through memory, with the same per-line arithmetic, and
:func:`fit_xanes_sampled` runs the fit from them: the stack is then read once, by the
fit itself, and the maps are bit-identical to ``fit_xanes`` on the whole stack.
"""

from __future__ import annotations

import numpy as np

from ._xanes import _resolve_stack, _result
from ._xanes_plan import (
    StackSample,
    XanesOptions,
    bias_candidates,
    lines_block,
    prepare_xanes,
    sampled_rows,
)

__all__ = ["XanesSampler", "fit_xanes_sampled", "prepare_xanes_sampled"]


class XanesSampler:
    """What :func:`fit_xanes`'s prepare step reads from a stack, collected frame by frame.

    Parameters
    ----------
    n_frames : int
        Frames (energies) of the stack.
    spatial_shape : tuple of int
        ``(nz, ny, nx)`` of each frame (a volume; slabs are ranges of ``z``).
    dtype : numpy dtype
        The stack's float dtype (float32 or float64).

    Attributes
    ----------
    line_sums, line_counts : ndarray (n_frames, n_lines) float64
        Finite sum and count of each sampled line (every 4th row of axis −2).
    spectra : ndarray (n_frames, n_candidates)
        Values at the bias-correction pixels (:data:`candidates`, flat indices).
    done : ndarray (n_frames, n_slabs0) bool
        Which leading-axis positions of which frame have been added.

    Notes
    -----
    The arrays can live anywhere that supports numpy indexing (a zarr group, so that
    workers in other processes fill their own rows): pass them to :meth:`from_arrays`.
    """

    def __init__(self, n_frames: int, spatial_shape, *, dtype=np.float32):
        spatial = tuple(int(s) for s in spatial_shape)
        if len(spatial) != 3:
            raise ValueError(f"spatial_shape must be (nz, ny, nx); got {spatial}")
        n_lines, cand = self.layout(spatial)
        self.spatial_shape = spatial
        self.dtype = np.dtype(dtype)
        self.candidates = cand
        self.line_sums = np.zeros((int(n_frames), n_lines))
        self.line_counts = np.zeros((int(n_frames), n_lines))
        self.spectra = np.zeros((int(n_frames), cand.size), self.dtype)
        self.done = np.zeros((int(n_frames), spatial[0]), bool)

    @staticmethod
    def layout(spatial_shape) -> tuple:
        """``(n_lines, candidates)`` for a stack of volumes of this shape."""
        nz, ny, nx = (int(s) for s in spatial_shape)
        rows = sampled_rows((nz, ny, nx))[1]
        return nz * len(range(ny)[rows]), bias_candidates(nz * ny * nx)

    @classmethod
    def from_arrays(cls, spatial_shape, *, line_sums, line_counts, spectra, done, dtype):
        """A sampler over existing arrays (e.g. zarr arrays on disk)."""
        self = cls.__new__(cls)
        self.spatial_shape = tuple(int(s) for s in spatial_shape)
        self.dtype = np.dtype(dtype)
        self.candidates = cls.layout(self.spatial_shape)[1]
        self.line_sums, self.line_counts, self.spectra, self.done = line_sums, line_counts, spectra, done
        return self

    @property
    def n_frames(self) -> int:
        return int(self.line_sums.shape[0])

    def slab_rows(self, index: int, start: int, slab) -> dict:
        """The sampled rows of ``slab`` (frame ``index``, leading positions ``start`` …
        ``start + len(slab)``): ``{'lines': (sums, counts) with their column slice,
        'spectra': (values, column slice)}``; :meth:`add` stores them."""
        block = np.asarray(slab)
        spatial = self.spatial_shape
        if block.shape[1:] != spatial[1:] or not 0 <= start <= spatial[0] - block.shape[0]:
            raise ValueError(f"slab of shape {block.shape} at {start} does not fit a frame of "
                             f"shape {spatial}")
        if block.dtype != self.dtype:
            block = block.astype(self.dtype)
        stop = start + block.shape[0]
        lines = lines_block(block[None][(slice(None),) + sampled_rows(spatial)])[0]
        per_slice = lines.shape[1]  # sampled lines per z position
        cols = slice(start * per_slice, stop * per_slice)
        plane = spatial[1] * spatial[2]
        c0, c1 = np.searchsorted(self.candidates, [start * plane, stop * plane])
        local = self.candidates[c0:c1] - start * plane
        values = block.reshape(-1)[local]
        return {"sums": lines[..., 0].reshape(-1), "counts": lines[..., 1].reshape(-1),
                "line_cols": cols, "values": values, "cand_cols": slice(int(c0), int(c1)),
                "rows": slice(start, stop)}

    def store(self, index: int, rows: dict) -> None:
        """Write what :meth:`slab_rows` returned into the arrays (row ``index``)."""
        self.line_sums[index, rows["line_cols"]] = rows["sums"]
        self.line_counts[index, rows["line_cols"]] = rows["counts"]
        self.spectra[index, rows["cand_cols"]] = rows["values"]
        done = np.asarray(self.done[index])
        done[rows["rows"]] = True
        self.done[index] = done

    def add(self, index: int, slab, *, start: int = 0) -> None:
        """Collect frame ``index``'s slab ``slab`` (leading positions from ``start``;
        the whole frame by default)."""
        if not 0 <= int(index) < self.n_frames:
            raise IndexError(f"frame index {index} outside 0..{self.n_frames - 1}")
        self.store(int(index), self.slab_rows(int(index), int(start), slab))

    def missing(self) -> np.ndarray:
        """Indices of frames not (wholly) added yet."""
        return np.flatnonzero(~np.asarray(self.done[:]).all(axis=1))

    def sample(self, candidates: np.ndarray, user_mask) -> StackSample:
        """The :class:`StackSample` the prepare step asks for."""
        pos = np.searchsorted(self.candidates, candidates)
        if candidates.size and not np.array_equal(self.candidates[pos], candidates):
            raise ValueError("the sampler's pixels are not those the fit asks for")
        coords = np.unravel_index(candidates, self.spatial_shape)
        um = np.ones(candidates.size, bool) if user_mask is None else np.asarray(user_mask)[coords]
        spectra = np.asarray(self.spectra[:])[:, pos] if candidates.size else np.empty(
            (self.n_frames, 0), self.dtype)
        return StackSample(line_sums=np.asarray(self.line_sums[:], float),
                           line_counts=np.asarray(self.line_counts[:], float),
                           candidates=candidates, spectra=spectra, user_mask=um)


class _Presampled:
    """A NumpyStack/DaskStack whose prepare-step reads come from a XanesSampler."""

    def __init__(self, source, sampler: XanesSampler):
        self._source = source
        self._sampler = sampler
        self.spatial_shape = source.spatial_shape
        self.n_frames = source.n_frames
        self.dtype = source.dtype

    def sample(self, candidates, user_mask):
        return self._sampler.sample(candidates, user_mask)

    def frame_lines(self, frames):  # only for frames whose sampled rows are all NaN
        return self._source.frame_lines(frames)


def prepare_xanes_sampled(stack, energies, sampler: XanesSampler, *, mask=None, **options):
    """The global step of :func:`fit_xanes_sampled`.

    Returns ``(plan, source, user_mask)``: ``plan.fit_block(block)`` fits any block
    ``(n_energies, nz_part, ny, nx)`` of ``stack`` (all energies, any slices) exactly as
    the whole fit does, for pipelines that load, fit and write each chunk in one task.
    Arguments as for :func:`fit_xanes_sampled`; ``stack`` itself is read only if a
    frame's sampled rows are all non-finite.
    """
    opts = XanesOptions(**options)
    source = _resolve_stack(stack)
    if tuple(source.spatial_shape) != sampler.spatial_shape or source.n_frames != sampler.n_frames:
        raise ValueError(f"stack {(source.n_frames, *source.spatial_shape)} does not match the "
                         f"sampler's {(sampler.n_frames, *sampler.spatial_shape)}")
    if np.dtype(source.dtype) != sampler.dtype:
        raise ValueError(f"stack dtype {source.dtype} differs from the sampler's {sampler.dtype}")
    missing = sampler.missing()
    if missing.size:
        raise ValueError(f"the sampler has not seen frames {missing.tolist()} (or only part of them)")
    user_mask = None if mask is None else np.asarray(mask, dtype=bool)
    if user_mask is not None and user_mask.shape != tuple(source.spatial_shape):
        raise ValueError(f"mask shape {user_mask.shape} does not match {tuple(source.spatial_shape)}")
    plan = prepare_xanes(_Presampled(source, sampler), energies, opts, user_mask, stacklevel=4)
    return plan, source, user_mask


def fit_xanes_sampled(stack, energies, sampler: XanesSampler, *, mask=None, **options):
    """:func:`fit_xanes` of ``stack`` with the prepare step's reads from ``sampler``.

    Parameters
    ----------
    stack : ndarray or dask array, shape (n_energies, *spatial)
        The stack the sampler saw, e.g. ``dask.array.from_zarr`` of the on-disk stack
        chunked over space (energy axis in one chunk).
    energies : array_like (n_energies,)
        eV.
    sampler : XanesSampler
        Filled with every frame of ``stack`` (each frame once, as it was written).
    mask : array_like of bool, optional
        As for :func:`fit_xanes`.
    **options
        The keyword options of :func:`fit_xanes` (``e0``, ``whiteline_halfwidth`` …).

    Returns
    -------
    XanesResult
        Bit-identical to ``fit_xanes(stack, energies, **options)``; dask-backed maps for
        a dask stack.

    Raises
    ------
    ValueError
        A frame the sampler has not seen, or a sampler of another shape or dtype.
    TypeError
        An option ``fit_xanes`` does not take.
    """
    plan, source, user_mask = prepare_xanes_sampled(stack, energies, sampler, mask=mask, **options)
    return _result(plan, source.fit(plan, user_mask))
