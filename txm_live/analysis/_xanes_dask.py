"""The dask side of the XANES prepare and apply steps (private).

:class:`DaskStack` offers what :class:`._xanes_plan.NumpyStack` offers, on a
dask array ``(n_frames, *spatial)`` chunked over space (energy axis in one
chunk):

- :meth:`DaskStack.sample` reads the mean-spectrum rows and the bias
  candidates in one ``dask.compute`` (each chunk is loaded once), with the
  same per-line arithmetic as numpy, so the global quantities agree bit for
  bit whatever the chunks;
- :meth:`DaskStack.fit` maps :meth:`XanesPlan.fit_block` over the blocks and
  returns dask-backed maps: nothing is computed until the caller asks.

Only imported when a dask array is passed to :func:`fit_xanes`.
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np

from ._xanes_kernel import gather_pixels
from ._xanes_plan import StackSample, XanesPlan, as_3d, kernel_threads, lines_block, sampled_rows


def _take(block, local, lead):
    """Values of ``block`` at spatial positions ``local`` (a tuple of index
    arrays): (n_frames, n) for a stack block (lead 1), (n,) for a mask block."""
    block = np.asarray(block)
    if lead == 0:
        return block[local]
    b3 = as_3d(block)
    rows, cols = np.unravel_index(np.ravel_multi_index(local, block.shape[1:]), b3.shape[1:])
    with kernel_threads(None):
        return gather_pixels(b3, rows, cols)


def _gather_tasks(arr, candidates: np.ndarray, lead: int):
    """Delayed gathers of the spatial positions ``candidates`` (flat indices)
    from ``arr``, one per block holding any: a list of (positions, delayed)."""
    chunks = arr.chunks[lead:]
    spatial_shape = arr.shape[lead:]
    coords = np.unravel_index(candidates, spatial_shape)
    bounds = [np.cumsum(c) for c in chunks]
    starts = [b - np.asarray(c) for b, c in zip(bounds, chunks)]
    block_idx = [np.searchsorted(b, co, side="right") for b, co in zip(bounds, coords)]
    nblocks = tuple(len(c) for c in chunks)
    flat_block = np.ravel_multi_index(block_idx, nblocks) if candidates.size else candidates
    blocks = arr.to_delayed(optimize_graph=False)  # original keys: chunks shared with the row sums
    tasks = []
    for fb in np.unique(flat_block):
        pos = np.flatnonzero(flat_block == fb)
        bi = np.unravel_index(fb, nblocks)
        local = tuple(co[pos] - s[b] for co, s, b in zip(coords, starts, bi))
        tasks.append((pos, dask.delayed(_take)(blocks[(0,) * lead + bi], local, lead)))
    return tasks


def _line_sums(arr):
    """Lazy :func:`lines_block` over ``arr`` (whole lines per block)."""
    if len(arr.chunks[-1]) > 1:
        arr = arr.rechunk({arr.ndim - 1: -1})
    return arr.map_blocks(lines_block, dtype=np.float64, chunks=arr.chunks[:-1] + ((2,),))


def _fit_block(block, mask=None, *, plan):
    return plan.fit_block(block, mask)


def _pick(maps, *, field):
    return maps[field]


class DaskStack:
    """A dask array ``(n_frames, *spatial)`` with the energy axis in one chunk."""

    def __init__(self, arr):
        if len(arr.chunks[0]) > 1:
            raise ValueError(
                f"the energy axis of a dask stack must be one chunk (each block holds "
                f"whole spectra); got chunks {arr.chunks[0]} along axis 0: use "
                f"stack.rechunk({{0: -1}})"
            )
        self.arr = arr
        self.spatial_shape = arr.shape[1:]
        self.n_frames = arr.shape[0]
        self.dtype = arr.dtype

    def sample(self, candidates: np.ndarray, user_mask) -> StackSample:
        lines = _line_sums(self.arr[(slice(None),) + sampled_rows(self.spatial_shape)])
        tasks = _gather_tasks(self.arr, candidates, lead=1)
        mask_tasks = []
        if isinstance(user_mask, da.Array):
            mask_tasks = _gather_tasks(user_mask, candidates, lead=0)
        # unoptimized: fusing the row slices into the chunk loads would rename
        # the loads, and the gathers would load every chunk a second time
        lines, values, mask_values = dask.compute(
            lines, [d for _, d in tasks], [d for _, d in mask_tasks], optimize_graph=False
        )
        spectra = np.empty((self.n_frames, candidates.size), dtype=self.dtype)
        for (pos, _), v in zip(tasks, values):
            spectra[:, pos] = v
        if user_mask is None:
            um = np.ones(candidates.size, bool)
        elif mask_tasks:
            um = np.empty(candidates.size, bool)
            for (pos, _), v in zip(mask_tasks, mask_values):
                um[pos] = v
        else:
            um = np.asarray(user_mask)[np.unravel_index(candidates, self.spatial_shape)]
        return StackSample(
            line_sums=np.ascontiguousarray(lines[..., 0].reshape(self.n_frames, -1)),
            line_counts=np.ascontiguousarray(lines[..., 1].reshape(self.n_frames, -1)),
            candidates=candidates, spectra=spectra, user_mask=um,
        )

    def frame_lines(self, frames: np.ndarray) -> np.ndarray:
        """Line sums and counts of whole frames: (len(frames), n_lines, 2)."""
        lines = _line_sums(self.arr[np.asarray(frames)]).compute()
        return lines.reshape(len(frames), -1, 2)

    def fit(self, plan: XanesPlan, user_mask) -> dict:
        """Dask-backed maps: one kernel task per block, fields picked lazily."""
        spatial_chunks = self.arr.chunks[1:]
        args = [self.arr]
        if user_mask is not None:
            args.append(da.asarray(user_mask).rechunk(spatial_chunks))
        nd = len(self.spatial_shape)
        raw = da.map_blocks(_fit_block, *args, plan=plan, drop_axis=0, dtype=object,
                            meta=np.empty((0,) * nd, dtype=object))
        maps = {}
        for field in plan.MAP_NAMES + ("status",):
            dt = np.uint8 if field == "status" else plan.out_dtype
            maps[field] = raw.map_blocks(_pick, field=field, dtype=dt,
                                         meta=np.empty((0,) * nd, dtype=dt))
        maps["normalized"] = None
        if plan.return_normalized:
            nu = plan.energies.size
            maps["normalized"] = raw.map_blocks(
                _pick, field="normalized", new_axis=0, chunks=((nu,),) + raw.chunks,
                dtype=plan.out_dtype, meta=np.empty((0,) * (nd + 1), dtype=plan.out_dtype),
            )
        return maps
