"""The two steps of a XANES fit: global *prepare*, per-block *apply* (private).

:func:`prepare_xanes` computes everything that depends on the whole stack, in
this order, and returns it as a :class:`XanesPlan`:

1. read a sample of the stack (:class:`StackSample`): finite sums of every
   4th row (the mean spectrum) and the spectra of up to
   :data:`BIAS_CANDIDATES` pixels at positions fixed by the spatial shape
   alone (the whiteline bias correction);
2. group frames by energy and average the sampled rows: the mean spectrum;
3. e0 from the mean spectrum (or the caller's), Larch's normalization ranges,
   and the check that the energies span the edge;
4. the whiteline search range from the mean spectrum (or the caller's);
5. the kernel's weights (:func:`build_weights`, the one place they are built);
6. the whiteline bias table, from the sampled pixels' own fits.

:meth:`XanesPlan.fit_block` is the apply step: the kernel on any block of
pixels (all energies), then the bias correction. Every pixel's numbers
depend only on its own spectrum and the plan, so a numpy stack fitted in one
block and a dask array fitted block by block give the same maps, whatever
the chunks. Reading the sample is the only step that differs between numpy
(:class:`NumpyStack`, here) and dask (:mod:`._xanes_dask`).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass

import numba
import numpy as np

from . import _xanes_kernel as _k
from ._validate import EnergyGroups, group_energies
from ._xanes_energy import find_e0, local_tables, lstsq_rows, normalization_parameters

#: The mean spectrum reads every MEAN_ROW_STRIDE-th row (axis -2) of images
#: with at least MIN_ROWS_FOR_STRIDE rows (all rows of smaller ones).
MEAN_ROW_STRIDE = 4
MIN_ROWS_FOR_STRIDE = 4 * MEAN_ROW_STRIDE
#: Fewest distinct energies fit_xanes accepts.
MIN_ENERGIES = 8
#: The energies span the edge if at least two lie this far below e0 and two
#: this far above it (eV).
SPAN_BELOW_EV = 5.0
SPAN_ABOVE_EV = 15.0
#: Default whiteline search: the mean spectrum's whiteline is sought in
#: e0 .. e0 + WHITELINE_SEARCH_EV; pixels are searched within
#: +-WHITELINE_WINDOW_EV of it (not below e0).
WHITELINE_SEARCH_EV = 40.0
WHITELINE_WINDOW_EV = 10.0
#: Fewest energies in a whiteline search range.
MIN_WHITELINE_POINTS = 3
#: Whiteline bias correction: up to BIAS_BINS bins of at least BIAS_MIN_PIXELS
#: fitted pixels, from at most BIAS_MAX_PIXELS of them, drawn (seed
#: BIAS_SEED) from BIAS_CANDIDATES pixel positions; the spline maximum is
#: sought on a BIAS_GRID_EV grid.
BIAS_BINS = 8
BIAS_MIN_PIXELS = 30
BIAS_MAX_PIXELS = 20000
BIAS_CANDIDATES = 2 * BIAS_MAX_PIXELS
BIAS_SEED = 0
BIAS_GRID_EV = 0.002

# Numba's default ('workqueue') threading layer must not be entered from two
# threads at once, and two parallel kernels at once only oversubscribe the
# cores: one parallel kernel at a time per process (dask's threads queue here).
_KERNEL_LOCK = threading.Lock()


@contextmanager
def kernel_threads(n_threads: int | None):
    """Hold the kernel lock, with ``n_threads`` numba threads (None: all)."""
    with _KERNEL_LOCK:
        before = numba.get_num_threads()
        if n_threads is not None:
            numba.set_num_threads(int(n_threads))
        try:
            yield
        finally:
            numba.set_num_threads(before)


# --------------------------------------------------------------------------
# options
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class XanesOptions:
    """The keyword options of :func:`fit_xanes`, checked before any work."""

    e0: float | None = None
    pre1: float | None = None
    pre2: float | None = None
    norm1: float | None = None
    norm2: float | None = None
    nnorm: int | None = None
    whiteline_range: tuple[float, float] | None = None
    whiteline_halfwidth: float = 3.0
    whiteline_order: int = 2
    whiteline_tie: float = 0.05
    edge_halfwidth: float = 1.5
    edge_jump_min: float = 0.0
    edge_jump_snr: float = 5.0
    whiteline_bias_correction: bool = True
    return_normalized: bool = False
    n_threads: int | None = None

    def __post_init__(self):
        if self.whiteline_order not in (2, 3):
            raise ValueError(f"whiteline_order must be 2 or 3; got {self.whiteline_order!r}")
        for name in ("whiteline_halfwidth", "edge_halfwidth"):
            val = getattr(self, name)
            if not val > 0:
                raise ValueError(f"{name} must be > 0 eV; got {val!r}")
        if self.whiteline_range is not None:
            wr = tuple(float(v) for v in self.whiteline_range)
            if len(wr) != 2 or not wr[0] < wr[1]:
                raise ValueError(
                    f"whiteline_range must be (low, high) with low < high; "
                    f"got {self.whiteline_range!r}"
                )
            object.__setattr__(self, "whiteline_range", wr)
        if self.n_threads is not None and not int(self.n_threads) >= 1:
            raise ValueError(f"n_threads must be >= 1 or None; got {self.n_threads!r}")


# --------------------------------------------------------------------------
# step 1: what is read from the whole stack
# --------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class StackSample:
    """What the prepare step reads from the stack (numpy or dask alike)."""

    line_sums: np.ndarray  #: (n_frames, n_lines) float64, finite sum of each sampled row
    line_counts: np.ndarray  #: (n_frames, n_lines) float64, its number of finite values
    candidates: np.ndarray  #: (n_cand,) int64 sorted flat spatial indices
    spectra: np.ndarray  #: (n_frames, n_cand) the candidates' spectra, stack dtype
    user_mask: np.ndarray  #: (n_cand,) bool, the user mask there


def sampled_rows(spatial_shape: tuple[int, ...]) -> tuple:
    """Index into the spatial axes selecting the rows the mean spectrum reads:
    every MEAN_ROW_STRIDE-th row (axis -2) if there are at least
    MIN_ROWS_FOR_STRIDE of them, otherwise everything."""
    rank = len(spatial_shape)
    if rank >= 2 and spatial_shape[-2] >= MIN_ROWS_FOR_STRIDE:
        return (slice(None),) * (rank - 2) + (slice(None, None, MEAN_ROW_STRIDE), slice(None))
    return (slice(None),) * rank


def lines_block(block: np.ndarray) -> np.ndarray:
    """Finite sum and count of every line (last axis) of ``block``.

    ``block`` is ``(n_frames, *lead, nx)`` holding whole lines. Returns
    ``(n_frames, *lead, 2)`` float64: ``[..., 0]`` sums, ``[..., 1]`` counts.
    """
    nf, lead, nx = block.shape[0], block.shape[1:-1], block.shape[-1]
    rows = lead[-1] if lead else 1
    view = block.reshape(nf, -1, rows, nx)
    with kernel_threads(None):
        sums, counts = _k.line_sums(view)
    return np.stack([sums.reshape((nf,) + lead), counts.reshape((nf,) + lead)], axis=-1)


def bias_candidates(n_pixels: int) -> np.ndarray:
    """Sorted flat indices of the pixels sampled for the bias correction:
    all of them up to BIAS_CANDIDATES, else a fixed random subset (seed
    BIAS_SEED) -- a function of the image size only, never of the chunks."""
    if n_pixels <= BIAS_CANDIDATES:
        return np.arange(n_pixels, dtype=np.int64)
    rng = np.random.default_rng(BIAS_SEED)
    return np.sort(rng.choice(n_pixels, BIAS_CANDIDATES, replace=False)).astype(np.int64)


def as_3d(block: np.ndarray) -> np.ndarray:
    """(n_frames, *spatial) -> (n_frames, rows, nx) for the kernel (a view
    when the spatial axes are contiguous)."""
    if block.ndim == 3:
        return block
    if block.ndim == 2:
        return block.reshape(block.shape[0], 1, block.shape[1])
    return block.reshape(block.shape[0], -1, block.shape[-1])


class NumpyStack:
    """An in-memory ``(n_frames, *spatial)`` stack: the numpy side of the
    prepare and apply steps (see :class:`._xanes_dask.DaskStack`)."""

    def __init__(self, arr: np.ndarray):
        self.arr = arr
        self.arr3 = as_3d(arr)  # a copy only for volumes whose spatial axes are not contiguous
        self.spatial_shape = arr.shape[1:]
        self.n_frames = arr.shape[0]
        self.dtype = arr.dtype

    def sample(self, candidates: np.ndarray, user_mask: np.ndarray | None) -> StackSample:
        lines = lines_block(self.arr[(slice(None),) + sampled_rows(self.spatial_shape)])
        rows, cols = np.unravel_index(candidates, self.arr3.shape[1:])
        with kernel_threads(None):
            spectra = _k.gather_pixels(self.arr3, rows, cols)
        coords = np.unravel_index(candidates, self.spatial_shape)
        um = np.ones(candidates.size, bool) if user_mask is None else user_mask[coords]
        return StackSample(
            line_sums=np.ascontiguousarray(lines[..., 0].reshape(self.n_frames, -1)),
            line_counts=np.ascontiguousarray(lines[..., 1].reshape(self.n_frames, -1)),
            candidates=candidates, spectra=spectra, user_mask=um,
        )

    def frame_lines(self, frames: np.ndarray) -> np.ndarray:
        """Line sums and counts of whole frames: (len(frames), n_lines, 2)."""
        lines = lines_block(self.arr[frames])
        return lines.reshape(len(frames), -1, 2)

    def fit(self, plan: "XanesPlan", user_mask: np.ndarray | None) -> dict:
        """The apply step on the whole stack as one block."""
        maps = plan.fit_block(self.arr3, user_mask)  # maps of arr3's (rows, nx)
        for name, value in maps.items():
            if value is not None:
                lead = value.shape[:-2]  # (nu,) for the normalized stack
                maps[name] = value.reshape(lead + self.spatial_shape)
        return maps


# --------------------------------------------------------------------------
# steps 2-3: mean spectrum, e0, normalization ranges
# --------------------------------------------------------------------------
def mean_spectrum(source, sample: StackSample, energies, *, stacklevel: int):
    """Group frames by energy and average the sampled rows per energy.

    A frame with no finite value in the sampled rows is summed in full; it
    is dropped (with a warning) only if it has no finite value at all.
    Returns ``(EnergyGroups, mean)``, mean float64.
    """
    sums = sample.line_sums.sum(axis=1)
    counts = sample.line_counts.sum(axis=1)
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        full = source.frame_lines(empty)
        sums[empty] = np.ascontiguousarray(full[..., 0]).sum(axis=1)
        counts[empty] = np.ascontiguousarray(full[..., 1]).sum(axis=1)
    groups: EnergyGroups = group_energies(
        energies, source.n_frames, frame_ok=counts > 0, stacklevel=stacklevel + 1
    )
    E = groups.energies
    if E.size < MIN_ENERGIES:
        raise ValueError(f"fit_xanes needs at least {MIN_ENERGIES} distinct energies; got {E.size}")
    per_frame = sums / np.maximum(counts, 1)
    mean = np.array(
        [per_frame[groups.index[groups.ptr[j]:groups.ptr[j + 1]]].mean() for j in range(E.size)]
    )
    return groups, mean


def resolve_e0(E: np.ndarray, mean: np.ndarray, e0: float | None) -> float:
    """The caller's e0 (checked to lie inside the energies) or find_e0 of the mean."""
    if e0 is None:
        return find_e0(E, mean)
    e0 = float(e0)
    if not (E[1] <= e0 <= E[-2]):
        raise ValueError(
            f"e0={e0:g} eV is outside the energies ({E[1]:g} to {E[-2]:g} eV, ends excluded)"
        )
    return e0


def edge_ranges(E: np.ndarray, e0: float, options: XanesOptions) -> dict:
    """Larch's normalization ranges (:func:`normalization_parameters`), checked
    to leave at least two points on each side of the edge."""
    p = normalization_parameters(E, e0, pre1=options.pre1, pre2=options.pre2,
                                 norm1=options.norm1, norm2=options.norm2, nnorm=options.nnorm)
    ps, qs = p["pre_slice"], p["post_slice"]
    n_pre = ps.stop - ps.start
    n_post = qs.stop - qs.start
    n_below = int(np.count_nonzero(E <= e0 - SPAN_BELOW_EV))
    n_above = int(np.count_nonzero(E >= e0 + SPAN_ABOVE_EV))
    if (n_pre < 2 or n_post < 2 or qs.start <= p["ie0"] or ps.stop > p["ie0"] + 1
            or n_below < 2 or n_above < 2):
        raise ValueError(
            f"energies {E[0]:g} to {E[-1]:g} eV do not span the edge at "
            f"e0={e0:g} eV: {n_below} energies at or below e0-{SPAN_BELOW_EV:g} eV, "
            f"{n_above} at or above e0+{SPAN_ABOVE_EV:g} eV, {n_pre} pre-edge point(s) in "
            f"[e0{p['pre1']:+g}, e0{p['pre2']:+g}] and {n_post} post-edge "
            f"point(s) in [e0{p['norm1']:+g}, e0{p['norm2']:+g}] (need >= 2 each)"
        )
    return p


# --------------------------------------------------------------------------
# step 5 (used by 4 and 6): the kernel's weights, built in one place
# --------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class LocalTables:
    """Local polynomial tables on the energy grid (:func:`local_tables`):
    for the whiteline (degree ``whiteline_order``) and the edge (lines)."""

    wl_start: np.ndarray
    wl_len: np.ndarray
    wl_w: np.ndarray
    edge_start: np.ndarray
    edge_len: np.ndarray
    edge_w: np.ndarray

    @classmethod
    def on(cls, E: np.ndarray, options: XanesOptions) -> "LocalTables":
        wl = local_tables(E, options.whiteline_halfwidth, options.whiteline_order)
        ed = local_tables(E, options.edge_halfwidth, 1)
        return cls(*wl, *ed)


def build_weights(
    E: np.ndarray,
    e0: float,
    ranges: dict,
    tables: LocalTables,
    options: XanesOptions,
    *,
    wl_index: tuple[int, int],
    groups: EnergyGroups | None = None,
    dtype=np.float64,
    pixel_tests: bool = True,
) -> _k.KernelWeights:
    """All the kernel needs besides the pixels, as one :class:`KernelWeights`.

    Parameters
    ----------
    E : ndarray (nu,)
        Sorted distinct energies (eV).
    e0 : float
        Edge energy (eV).
    ranges : dict
        From :func:`edge_ranges`.
    tables : LocalTables
        On ``E``.
    options : XanesOptions
    wl_index : (int, int)
        Whiteline search range as energy indices [lo, hi).
    groups : EnergyGroups or None
        Frames per energy; None: one frame per energy, in order (a stack
        already averaged, such as the mean spectrum).
    dtype : float dtype
        Kernel arithmetic dtype (of the linear weights; the edge table stays
        float64).
    pixel_tests : bool
        Apply the edge-jump tests (``edge_jump_min``, ``edge_jump_snr``);
        False for averaged spectra, which are fitted whatever their jump.
    """
    ps, qs = ranges["pre_slice"], ranges["post_slice"]
    t = E - e0
    wa = np.zeros(E.size)
    wb = np.zeros(E.size)
    if ranges["npre"] == 0:
        wa[ps] = 1.0 / (ps.stop - ps.start)
    else:
        R = lstsq_rows(t[ps], 1)
        wa[ps], wb[ps] = R[0], R[1]
    ws = np.zeros(E.size)
    ws[qs] = (t[ranges["ie0"]] ** np.arange(ranges["nnorm"] + 1)) @ lstsq_rows(t[qs], ranges["nnorm"])
    if groups is None:
        frame_index = np.arange(E.size, dtype=np.int64)
        frame_ptr = np.arange(E.size + 1, dtype=np.int64)
    else:
        frame_index, frame_ptr = groups.index, groups.ptr
    return _k.KernelWeights(
        frame_index=frame_index, frame_ptr=frame_ptr, energy_ev=E, t_ev=t.astype(dtype),
        pre_lo=ps.start, pre_hi=ps.stop, pre_offset_w=wa.astype(dtype),
        pre_slope_w=wb.astype(dtype), post_lo=qs.start, post_hi=qs.stop,
        step_w=ws.astype(dtype), t_e0_ev=float(t[ranges["ie0"]]),
        wl_lo=int(wl_index[0]), wl_hi=int(wl_index[1]), wl_start=tables.wl_start,
        wl_len=tables.wl_len, wl_w=tables.wl_w.astype(dtype), wl_order=int(options.whiteline_order),
        wl_halfwidth_ev=float(options.whiteline_halfwidth), wl_tie=float(options.whiteline_tie),
        edge_start=tables.edge_start, edge_len=tables.edge_len, edge_w=tables.edge_w,
        edge_halfwidth_ev=float(options.edge_halfwidth),
        jump_min=float(options.edge_jump_min) if pixel_tests else -np.inf,
        jump_snr=float(options.edge_jump_snr) if pixel_tests else 0.0,
    )


def fit_spectra(spectra: np.ndarray, weights: _k.KernelWeights, user_mask=None,
                out_dtype=np.float64) -> _k.KernelMaps:
    """Kernel on a few spectra ``(n_frames, n)``: maps of shape (1, n)."""
    n = spectra.shape[1]
    out = _k.KernelMaps(
        *[np.empty((1, n), dtype=out_dtype) for _ in range(6)],
        status=np.empty((1, n), np.uint8), normalized=np.empty((1, 1, 1), out_dtype),
        write_normalized=False,
    )
    mask = np.ones((1, n), np.bool_) if user_mask is None else user_mask.reshape(1, n)
    with kernel_threads(None):
        _k.fit_kernel(np.ascontiguousarray(spectra.reshape(spectra.shape[0], 1, n)), mask,
                      weights, out)
    return out


# --------------------------------------------------------------------------
# step 4: whiteline search range
# --------------------------------------------------------------------------
def whiteline_search_range(E, mean, e0, ranges, tables, options) -> tuple[float, float]:
    """+-WHITELINE_WINDOW_EV around the mean spectrum's whiteline (found in
    e0 .. e0 + WHITELINE_SEARCH_EV), not below e0; (0, WHITELINE_SEARCH_EV)
    if it has none. Relative to e0, eV."""
    wide = (0.0, WHITELINE_SEARCH_EV)
    if not np.all(np.isfinite(mean)):
        return wide
    ks0 = int(np.searchsorted(E, e0, side="left"))
    ks1 = int(np.searchsorted(E, e0 + WHITELINE_SEARCH_EV, side="right"))
    if ks1 - ks0 < MIN_WHITELINE_POINTS:
        return wide
    weights = build_weights(E, e0, ranges, tables, options, wl_index=(ks0, ks1),
                            pixel_tests=False)
    out = fit_spectra(mean.reshape(-1, 1), weights)
    w = float(out.whiteline[0, 0])
    if out.status[0, 0] != _k.OK or not np.isfinite(w):
        return wide
    return (max(0.0, w - e0 - WHITELINE_WINDOW_EV), w - e0 + WHITELINE_WINDOW_EV)


def whiteline_index_range(E, e0, wr) -> tuple[int, int]:
    """Energy indices [lo, hi) of the whiteline range ``wr`` (relative to e0)."""
    ks0 = int(np.searchsorted(E, e0 + wr[0], side="left"))
    ks1 = int(np.searchsorted(E, e0 + wr[1], side="right"))
    if ks1 - ks0 < MIN_WHITELINE_POINTS:
        raise ValueError(
            f"whiteline_range e0{wr[0]:+g} to e0{wr[1]:+g} eV holds {ks1 - ks0} "
            f"energies; need at least {MIN_WHITELINE_POINTS}"
        )
    return ks0, ks1


# --------------------------------------------------------------------------
# step 6: whiteline bias table
# --------------------------------------------------------------------------
def _bias_pixels(sample: StackSample, weights, groups: EnergyGroups, out_dtype):
    """Fitted sampled pixels (at most BIAS_MAX_PIXELS): their energy-averaged
    spectra (nu, n) float64 and uncorrected whiteline estimates (n,) float64."""
    est = fit_spectra(sample.spectra, weights, sample.user_mask, out_dtype)
    pos = np.flatnonzero(est.status[0] == _k.OK)
    if pos.size < BIAS_MIN_PIXELS:
        return None, None
    if pos.size > BIAS_MAX_PIXELS:
        idx = sample.candidates[pos]
        pick = np.random.default_rng(BIAS_SEED).choice(idx, BIAS_MAX_PIXELS, replace=False)
        pos = np.searchsorted(sample.candidates, np.sort(pick))
    spectra = sample.spectra[:, pos]
    u = np.empty((groups.energies.size, pos.size))
    for j in range(groups.energies.size):
        u[j] = np.mean(spectra[groups.index[groups.ptr[j]:groups.ptr[j + 1]]], axis=0)
    return u, est.whiteline[0, pos].astype(np.float64)


def _bias_bins(u: np.ndarray, west: np.ndarray):
    """Bin pixels by whiteline estimate: each bin's median estimate and mean spectrum."""
    n_b = max(1, min(BIAS_BINS, west.size // BIAS_MIN_PIXELS))
    edges = np.quantile(west, np.linspace(0, 1, n_b + 1))
    which = np.clip(np.searchsorted(edges, west, side="right") - 1, 0, n_b - 1)
    centres, means = [], []
    for b in range(n_b):
        sel = which == b
        if sel.sum() >= BIAS_MIN_PIXELS // 2:
            means.append(u[:, sel].mean(axis=1))
            centres.append(np.median(west[sel]))
    return centres, means


def whiteline_bias_table(sample, groups, weights, E, e0, ranges, tables, options, out_dtype):
    """Bias of the whiteline estimator as a function of the estimate.

    The sampled pixels that fit (at most BIAS_MAX_PIXELS) are binned by their
    whiteline estimate; in each bin the mean spectrum (noise averaged away)
    gives both the estimator's answer and the maximum of a cubic spline
    through it. Returns sorted bin centres and biases (eV; empty arrays when
    there are too few pixels).
    """
    from scipy.interpolate import CubicSpline

    none = (np.empty(0), np.empty(0))
    u, west = _bias_pixels(sample, weights, groups, out_dtype)
    if u is None:
        return none
    centres, means = _bias_bins(u, west)
    if not means:
        return none
    ks0, ks1 = weights.wl_lo, weights.wl_hi
    w64 = build_weights(E, e0, ranges, tables, options, wl_index=(ks0, ks1), pixel_tests=False)
    est = fit_spectra(np.array(means).T, w64)
    hw = options.whiteline_halfwidth
    lo, hi = max(0, ks0 - 2), min(E.size, ks1 + 2)
    cs_out, bias_out = [], []
    for i, m in enumerate(means):
        wl = float(est.whiteline[0, i])
        if est.status[0, i] != _k.OK or not np.isfinite(wl):
            continue
        dense = np.arange(wl - 2 * hw, wl + 2 * hw, BIAS_GRID_EV)
        dense = dense[(dense >= E[ks0]) & (dense <= E[ks1 - 1])]
        if dense.size < 3:
            continue
        b = wl - float(dense[np.argmax(CubicSpline(E[lo:hi], m[lo:hi])(dense))])
        if abs(b) < hw:
            cs_out.append(centres[i])
            bias_out.append(b)
    order = np.argsort(cs_out)
    return np.asarray(cs_out)[order], np.asarray(bias_out)[order]


# --------------------------------------------------------------------------
# the plan and the apply step
# --------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class XanesPlan:
    """Everything global about one fit: the same for every block of pixels."""

    spatial_shape: tuple[int, ...]
    energies: np.ndarray  #: (nu,) float64
    mean_spectrum: np.ndarray  #: (nu,) float64
    params: dict  #: parameters used (XanesResult.params)
    weights: _k.KernelWeights
    out_dtype: np.dtype
    bias_centres: np.ndarray  #: whiteline estimates (eV) where the bias was measured
    bias_values: np.ndarray  #: bias (eV) there
    return_normalized: bool
    n_threads: int | None

    MAP_NAMES = ("whiteline", "edge", "edge_jump", "pre_edge", "whiteline_height", "noise")

    def _correct_bias(self, whiteline: np.ndarray) -> None:
        """Subtract the bias table, linearly interpolated at each estimate, in place."""
        xp, fp = self.bias_centres, self.bias_values
        if xp.size >= 2 and np.all(np.diff(xp) > 0):
            with kernel_threads(self.n_threads):
                _k.subtract_interp(whiteline, xp, fp)  # == np.interp, in parallel
        elif xp.size:
            whiteline -= np.interp(whiteline, xp, fp).astype(whiteline.dtype)

    def fit_block(self, block: np.ndarray, user_mask: np.ndarray | None = None) -> dict:
        """The apply step: fit a block ``(n_frames, *spatial)`` (all frames,
        any spatial part), bias-correct its whiteline. Returns a dict of the
        maps (spatial shape of the block), ``status`` and ``normalized``
        (``(nu, *spatial)`` or None)."""
        if block.dtype != self.out_dtype:  # fit_xanes converts first; a caller may not
            block = block.astype(self.out_dtype)
        spatial = block.shape[1:]
        b3 = as_3d(block)
        shape2 = b3.shape[1:]
        mask = (np.ones(shape2, np.bool_) if user_mask is None
                else np.ascontiguousarray(user_mask, dtype=np.bool_).reshape(shape2))
        nu = self.energies.size
        out = _k.KernelMaps(
            *[np.empty(shape2, dtype=self.out_dtype) for _ in self.MAP_NAMES],
            status=np.empty(shape2, dtype=np.uint8),
            normalized=np.empty((nu,) + shape2 if self.return_normalized else (1, 1, 1),
                                dtype=self.out_dtype),
            write_normalized=bool(self.return_normalized),
        )
        with kernel_threads(self.n_threads):
            _k.fit_kernel(b3, mask, self.weights, out)
        self._correct_bias(out.whiteline)
        maps = {name: getattr(out, name).reshape(spatial) for name in self.MAP_NAMES}
        maps["status"] = out.status.reshape(spatial)
        maps["normalized"] = (out.normalized.reshape((nu,) + spatial)
                              if self.return_normalized else None)
        return maps


def prepare_xanes(source, energies, options: XanesOptions, user_mask, *, stacklevel: int
                  ) -> XanesPlan:
    """The prepare step (module docstring, steps 1-6) on a NumpyStack or DaskStack."""
    n_pixels = int(np.prod(source.spatial_shape))
    candidates = (bias_candidates(n_pixels) if options.whiteline_bias_correction
                  else np.empty(0, np.int64))
    sample = source.sample(candidates, user_mask)
    groups, mean = mean_spectrum(source, sample, energies, stacklevel=stacklevel + 1)
    E = groups.energies
    e0 = resolve_e0(E, mean, options.e0)
    ranges = edge_ranges(E, e0, options)
    tables = LocalTables.on(E, options)
    wr = options.whiteline_range or whiteline_search_range(E, mean, e0, ranges, tables, options)
    out_dtype = np.dtype(np.float64) if source.dtype == np.float64 else np.dtype(np.float32)
    weights = build_weights(E, e0, ranges, tables, options,
                            wl_index=whiteline_index_range(E, e0, wr), groups=groups,
                            dtype=out_dtype)
    bias_centres = bias_values = np.empty(0)
    if options.whiteline_bias_correction:
        bias_centres, bias_values = whiteline_bias_table(sample, groups, weights, E, e0, ranges,
                                                         tables, options, out_dtype)
    params = {k: ranges[k] for k in ("e0", "pre1", "pre2", "norm1", "norm2", "nnorm")}
    params.update(
        whiteline_range=wr, whiteline_halfwidth=float(options.whiteline_halfwidth),
        whiteline_order=int(options.whiteline_order), whiteline_tie=float(options.whiteline_tie),
        edge_halfwidth=float(options.edge_halfwidth), edge_jump_min=float(options.edge_jump_min),
        edge_jump_snr=float(options.edge_jump_snr),
        whiteline_bias_correction=bool(options.whiteline_bias_correction),
        whiteline_bias_ev=[(float(c), float(v)) for c, v in zip(bias_centres, bias_values)],
    )
    return XanesPlan(
        spatial_shape=tuple(source.spatial_shape), energies=E, mean_spectrum=mean, params=params,
        weights=weights, out_dtype=out_dtype, bias_centres=bias_centres, bias_values=bias_values,
        return_normalized=bool(options.return_normalized), n_threads=options.n_threads,
    )
