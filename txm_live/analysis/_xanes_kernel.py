"""Fused numba kernels for per-pixel XANES fitting (private).

Everything that depends only on the energies (least-squares weights for the
pre-edge line, the post-edge polynomial, the local polynomials used for the
whiteline and the edge) is precomputed once by :func:`._xanes_plan.build_weights`
and handed to the kernel as one :class:`KernelWeights`; the kernel applies
them pixel by pixel in one pass over a ``(n_frames, ny, nx)`` stack, tile by
tile so that each energy row is read contiguously, in parallel over tiles,
and writes into one :class:`KernelMaps`.

Reading order: :func:`fit_kernel` (the tile loop) calls, per tile,
:func:`_load_tile` (average the frames of each energy), :func:`_normalize_tile`
(pre-edge line, noise, edge step, normalization), :func:`_smooth_tile` (local
polynomial over the whiteline search range and its argmax), then per pixel
:func:`_whiteline` and :func:`_edge`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit, prange

# pixel status codes (see XanesResult.status)
OK = 0
NONFINITE = 1
SMALL_JUMP = 2
NO_WHITELINE = 3
NO_EDGE = 4
USER_MASKED = 5

#: Pixels per tile along x (one tile = one row segment, all energies).
TILE = 256
#: Re-centring iterations of the whiteline vertex and of the edge line.
_WL_ITERATIONS = 6
_EDGE_ITERATIONS = 3
#: A vertex (or edge line crossing) farther than this many half-widths from
#: its centre is not trusted.
_MAX_HALFWIDTHS = 2.0
#: Normalized level that defines the edge position.
EDGE_LEVEL = 0.5

_FAST = {"reassoc", "contract", "arcp"}  # no 'nnan'/'ninf': NaN checks must survive


class KernelWeights(NamedTuple):
    """Everything :func:`fit_kernel` applies to each pixel, built in one place
    (:func:`._xanes_plan.build_weights`); fields are read by name.

    ``dtype`` below is the kernel's arithmetic dtype (float32 for float32
    stacks, float64 otherwise); ``nu`` the number of distinct energies.
    """

    frame_index: np.ndarray  #: (n_frames_used,) int64 frames of the stack, grouped by energy
    frame_ptr: np.ndarray  #: (nu + 1,) int64: energy j averages frame_index[ptr[j]:ptr[j+1]]
    energy_ev: np.ndarray  #: (nu,) float64 sorted distinct energies
    t_ev: np.ndarray  #: (nu,) dtype: energy - e0
    pre_lo: int  #: pre-edge fit range [pre_lo, pre_hi) (energy indices)
    pre_hi: int
    pre_offset_w: np.ndarray  #: (nu,) dtype: pre-edge line offset at e0 = pre_offset_w @ mu
    pre_slope_w: np.ndarray  #: (nu,) dtype: pre-edge line slope per eV = pre_slope_w @ mu
    post_lo: int  #: post-edge fit range [post_lo, post_hi)
    post_hi: int
    step_w: np.ndarray  #: (nu,) dtype: edge step = step_w @ (mu - pre-edge line)
    t_e0_ev: float  #: grid point nearest e0, minus e0 (eV): where pre_edge is reported
    wl_lo: int  #: whiteline search range [wl_lo, wl_hi) (energy indices)
    wl_hi: int
    wl_start: np.ndarray  #: (nu,) int64 first point of the local polynomial at each energy
    wl_len: np.ndarray  #: (nu,) int64 its number of points
    wl_w: np.ndarray  #: (nu, 4, n) dtype: coefficient q = wl_w[k, q, :len] @ norm[start:]
    wl_order: int  #: 2 or 3
    wl_halfwidth_ev: float
    wl_tie: float  #: normalized-height tolerance of the two-maxima rule
    edge_start: np.ndarray  #: (nu,) int64, as wl_start for the local edge line
    edge_len: np.ndarray
    edge_w: np.ndarray  #: (nu, 4, n) float64
    edge_halfwidth_ev: float
    jump_min: float  #: pixels with edge step <= jump_min are SMALL_JUMP
    jump_snr: float  #: ... and those with edge step < jump_snr * noise


class KernelMaps(NamedTuple):
    """Output arrays :func:`fit_kernel` fills, ``(ny, nx)`` each."""

    whiteline: np.ndarray
    edge: np.ndarray
    edge_jump: np.ndarray
    pre_edge: np.ndarray
    whiteline_height: np.ndarray
    noise: np.ndarray
    status: np.ndarray  #: uint8
    normalized: np.ndarray  #: (nu, ny, nx) when write_normalized, else any 3-D array
    write_normalized: bool


@njit(parallel=True, cache=True)
def line_sums(view):
    """Sum and count of the finite values of every line along the last axis.

    ``view`` is ``(n_frames, n_outer, n_rows, nx)`` (any strides). Returns two
    float64 arrays ``(n_frames, n_outer, n_rows)``. Each line is summed in
    order along x, so the result does not depend on how the caller split the
    data into blocks, as long as every block holds whole lines.
    """
    nf, no, nr, nx = view.shape
    sums = np.zeros((nf, no, nr))
    counts = np.zeros((nf, no, nr))
    for f in prange(nf):
        for o in range(no):
            for r in range(nr):
                s = 0.0
                c = 0
                for x in range(nx):
                    v = view[f, o, r, x]
                    if np.isfinite(v):
                        s += v
                        c += 1
                sums[f, o, r] = s
                counts[f, o, r] = c
    return sums, counts


@njit(parallel=True, cache=True)
def gather_pixels(stack, rows, cols):
    """Spectra of the pixels (rows[i], cols[i]) of ``stack`` (n_frames, ny, nx):
    (n_frames, n) in the stack's dtype, in parallel over frames (sort the
    pixels for locality)."""
    out = np.empty((stack.shape[0], rows.shape[0]), dtype=stack.dtype)
    for f in prange(stack.shape[0]):
        for i in range(rows.shape[0]):
            out[f, i] = stack[f, rows[i], cols[i]]
    return out


@njit(parallel=True, cache=True)
def subtract_interp(values, xp, fp):
    """``values -= np.interp(values, xp, fp)`` in place (values float32 or
    float64; the interpolation in float64, cast to the values' dtype before
    subtracting), in parallel. ``xp`` strictly increasing, at least 2 points.

    Same arithmetic as numpy's ``interp`` (no fused multiply-add: this
    function is compiled without fastmath): ``slope * (x - xp[j]) + fp[j]``,
    ``fp[0]`` / ``fp[-1]`` outside, NaN for NaN.
    """
    flat = values.reshape(-1)
    n = xp.shape[0]
    for i in prange(flat.shape[0]):
        x = np.float64(flat[i])
        if np.isnan(x):
            corr = x
        elif x < xp[0]:
            corr = fp[0]
        elif x >= xp[n - 1]:
            corr = fp[n - 1]
        else:
            lo = 0
            hi = n - 1
            while hi - lo > 1:  # xp[lo] <= x < xp[hi]
                mid = (lo + hi) // 2
                if xp[mid] <= x:
                    lo = mid
                else:
                    hi = mid
            slope = (fp[lo + 1] - fp[lo]) / (xp[lo + 1] - xp[lo])
            corr = slope * (x - xp[lo]) + fp[lo]
        flat[i] = flat[i] - flat.dtype.type(corr)


@njit(cache=True)
def _vertex(coef, order, hw):
    """Position t of the maximum of the local polynomial; NaN if none."""
    c1 = coef[1]
    c2 = coef[2]
    if order >= 3 and coef[3] != 0.0:
        a = 3.0 * coef[3]
        b = 2.0 * c2
        disc = b * b - 4.0 * a * c1
        if disc >= 0.0:
            sq = np.sqrt(disc)
            best = np.nan
            for sgn in (-1.0, 1.0):
                t = (-b + sgn * sq) / (2.0 * a)
                if 2.0 * a * t + b < 0.0:  # second derivative < 0: a maximum
                    if np.isnan(best) or abs(t) < abs(best):
                        best = t
            if not np.isnan(best) and abs(best) <= _MAX_HALFWIDTHS * hw:
                return best
    if c2 < 0.0:
        return -c1 / (2.0 * c2)
    return np.nan


@njit(cache=True)
def _poly_eval(coef, order, t):
    v = 0.0
    for q in range(order, -1, -1):
        v = v * t + coef[q]
    return v


@njit(cache=True)
def _nearest(E, lo, hi, e):
    """Index in [lo, hi) of E nearest to e (E increasing), by bisection."""
    a = lo
    b = hi - 1
    if e <= E[a]:
        return a
    if e >= E[b]:
        return b
    while b - a > 1:
        m = (a + b) // 2
        if E[m] <= e:
            a = m
        else:
            b = m
    return a if e - E[a] <= E[b] - e else b


@njit(cache=True, inline="always", fastmath=_FAST)
def _load_tile(stack, w, y, x0, x1):
    """Spectra of pixels x0:x1 of row y, frames of one energy averaged: (nu, width)."""
    nu = w.energy_ev.shape[0]
    nw = x1 - x0
    n = np.empty((nu, nw), dtype=w.pre_offset_w.dtype)
    for j in range(nu):
        g0 = w.frame_ptr[j]
        g1 = w.frame_ptr[j + 1]
        nj = n[j]
        src = stack[w.frame_index[g0], y, x0:x1]
        for x in range(nw):
            nj[x] = src[x]
        if g1 - g0 > 1:
            for g in range(g0 + 1, g1):
                src = stack[w.frame_index[g], y, x0:x1]
                for x in range(nw):
                    nj[x] += src[x]
            inv = 1.0 / (g1 - g0)
            for x in range(nw):
                nj[x] *= inv
    return n


@njit(cache=True, inline="always", fastmath=_FAST)
def _normalize_tile(n, w):
    """Larch's pre_edge on every column of ``n``, normalizing ``n`` in place.

    Returns per pixel: the non-finite flag (0 where finite), the pre-edge line
    (offset ``a`` and slope ``b`` per eV at e0), the noise and the edge step.
    """
    nu, nw = n.shape
    dt = w.pre_offset_w.dtype
    bad = np.zeros(nw, dtype=dt)
    a = np.zeros(nw, dtype=dt)
    b = np.zeros(nw, dtype=dt)
    for j in range(nu):
        nj = n[j]
        for x in range(nw):
            bad[x] += nj[x] - nj[x]  # NaN/inf -> NaN: the non-finite flag
    for j in range(w.pre_lo, w.pre_hi):
        caj = w.pre_offset_w[j]
        cbj = w.pre_slope_w[j]
        nj = n[j]
        for x in range(nw):
            a[x] += caj * nj[x]
            b[x] += cbj * nj[x]
    noise = np.full(nw, np.nan, dtype=dt)
    if w.pre_hi - w.pre_lo > 2:
        r2 = np.zeros(nw, dtype=dt)
        for j in range(w.pre_lo, w.pre_hi):
            tj = w.t_ev[j]
            nj = n[j]
            for x in range(nw):
                r = nj[x] - a[x] - b[x] * tj
                r2[x] += r * r
        scale = 1.0 / (w.pre_hi - w.pre_lo - 2)
        for x in range(nw):
            noise[x] = np.sqrt(r2[x] * scale)
    step = np.zeros(nw, dtype=dt)
    for j in range(w.post_lo, w.post_hi):
        wj = w.step_w[j]
        tj = w.t_ev[j]
        nj = n[j]
        for x in range(nw):
            step[x] += wj * (nj[x] - a[x] - b[x] * tj)
    inv = np.empty(nw, dtype=dt)
    for x in range(nw):
        inv[x] = 1.0 / step[x] if step[x] > 0.0 else np.nan
    for j in range(nu):
        tj = w.t_ev[j]
        nj = n[j]
        for x in range(nw):
            nj[x] = (nj[x] - a[x] - b[x] * tj) * inv[x]
    return bad, a, b, noise, step


@njit(cache=True, inline="always", fastmath=_FAST)
def _smooth_tile(n, w):
    """Smoothed spectrum over the whiteline search range (nk, width) and the
    index of its maximum per pixel."""
    nw = n.shape[1]
    nk = w.wl_hi - w.wl_lo
    s = np.zeros((nk, nw), dtype=n.dtype)
    kg = np.zeros(nw, dtype=np.int64)
    smax = np.full(nw, -np.inf, dtype=n.dtype)
    for kk in range(nk):
        k = w.wl_lo + kk
        st0 = w.wl_start[k]
        sk = s[kk]
        for i in range(w.wl_len[k]):
            c = w.wl_w[k, 0, i]
            ni = n[st0 + i]
            for x in range(nw):
                sk[x] += c * ni[x]
        for x in range(nw):
            if sk[x] > smax[x]:
                smax[x] = sk[x]
                kg[x] = kk
    return s, kg


@njit(cache=True, inline="always", fastmath=_FAST)
def _whiteline(n, xi, s, g, w, coef):
    """Whiteline of pixel ``xi`` whose smoothed maximum is at ``s[g]``.

    Two-maxima rule, then the vertex of the local polynomial re-centred on
    the nearest grid point. Returns (grid index k, energy eV, height).
    """
    # tie rule: a separate lower-energy peak within `tie` of the highest one wins
    tie = w.wl_tie
    kc = g
    smin = s[g, xi]
    top = s[g, xi]
    for kk in range(g - 1, 0, -1):
        v = s[kk, xi]
        if v < smin:
            smin = v
        if (v >= s[kk - 1, xi] and v >= s[kk + 1, xi]
                and v >= top - tie and smin < v - tie):
            kc = kk
    E = w.energy_ev
    k = w.wl_lo + kc
    tv = np.nan
    for _it in range(_WL_ITERATIONS):
        for q in range(w.wl_order + 1):
            acc = 0.0
            st0 = w.wl_start[k]
            for i in range(w.wl_len[k]):
                acc += w.wl_w[k, q, i] * n[st0 + i, xi]
            coef[q] = acc
        tv = _vertex(coef, w.wl_order, w.wl_halfwidth_ev)
        if np.isnan(tv):
            break
        kn = _nearest(E, w.wl_lo, w.wl_hi, E[k] + tv)
        if kn == k:
            break
        k = kn
    if np.isnan(tv) or abs(tv) > _MAX_HALFWIDTHS * w.wl_halfwidth_ev:
        return k, E[k], s[k - w.wl_lo, xi]
    return k, E[k] + tv, _poly_eval(coef, w.wl_order, tv)


@njit(cache=True, inline="always", fastmath=_FAST)
def _edge(n, xi, k, w):
    """Edge of pixel ``xi`` below the whiteline at grid index ``k``: the first
    crossing of EDGE_LEVEL going down, refined by a local line.

    Returns (found, energy eV); ``found`` is False when no point below the
    whiteline is under EDGE_LEVEL."""
    E = w.energy_ev
    nu = E.shape[0]
    jc = -1
    for j in range(k - 1, -1, -1):
        if n[j, xi] < EDGE_LEVEL:
            jc = j
            break
    if jc < 0 or jc + 1 >= nu:
        return False, np.nan
    n0 = n[jc, xi]
    n1 = n[jc + 1, xi]
    edge = E[jc] + (EDGE_LEVEL - n0) * (E[jc + 1] - E[jc]) / (n1 - n0)
    kk2 = _nearest(E, 0, nu, edge)
    for _it in range(_EDGE_ITERATIONS):
        c0 = 0.0
        c1 = 0.0
        st0 = w.edge_start[kk2]
        for i in range(w.edge_len[kk2]):
            c0 += w.edge_w[kk2, 0, i] * n[st0 + i, xi]
            c1 += w.edge_w[kk2, 1, i] * n[st0 + i, xi]
        if c1 <= 0.0:
            break
        te = (EDGE_LEVEL - c0) / c1
        if abs(te) > _MAX_HALFWIDTHS * w.edge_halfwidth_ev:
            break
        edge = E[kk2] + te
        kn = _nearest(E, 0, nu, edge)
        if kn == kk2:
            break
        kk2 = kn
    return True, edge


@njit(parallel=True, cache=True, fastmath=_FAST)
def fit_kernel(stack, user_mask, w, out):
    """Fit every pixel of ``stack`` (n_frames, ny, nx) into ``out``.

    Parameters
    ----------
    stack : ndarray (n_frames, ny, nx), float32 or float64, any strides
    user_mask : ndarray of bool (ny, nx)
        False: not fitted (USER_MASKED).
    w : KernelWeights
    out : KernelMaps
        Arrays of shape (ny, nx) to fill.

    Notes
    -----
    The tile buffers and the linear weights (``pre_offset_w``,
    ``pre_slope_w``, ``step_w``, ``t_ev``, ``wl_w``) share one float dtype:
    float32 for float32 stacks (twice the SIMD width; rounding ~1e-7
    relative, far below any noise), float64 otherwise; the per-pixel
    refinements are in float64. The linear parts run energy-outer /
    pixel-inner so that they vectorize; the rest (two-maxima rule, vertex
    refinement, edge crossing) is scalar per pixel on data already in cache.
    Each pixel's numbers depend only on its own spectrum, never on where its
    tile starts (tested), so any split of the image into blocks gives the
    same maps.
    """
    ny = stack.shape[1]
    nx = stack.shape[2]
    nk = w.wl_hi - w.wl_lo
    ntx = (nx + TILE - 1) // TILE
    # Numba (0.68) loses writes made through a tuple's array field inside a
    # prange loop: take the output arrays out of the tuple first (tested).
    out_wl, out_edge, out_jump, out_pre = out.whiteline, out.edge, out.edge_jump, out.pre_edge
    out_height, out_noise, out_status = out.whiteline_height, out.noise, out.status
    norm_out, write_norm = out.normalized, out.write_normalized
    for tile in prange(ny * ntx):
        y = tile // ntx
        x0 = (tile % ntx) * TILE
        x1 = min(nx, x0 + TILE)
        n = _load_tile(stack, w, y, x0, x1)
        bad, a, b, noise, step = _normalize_tile(n, w)
        if write_norm:
            for j in range(n.shape[0]):
                nj = n[j]
                dst = norm_out[j, y, x0:x1]
                for x in range(x1 - x0):
                    dst[x] = nj[x] if bad[x] == 0.0 else np.nan
        s, kg = _smooth_tile(n, w)
        coef = np.zeros(4)
        for xi in range(x1 - x0):
            x = x0 + xi
            status = OK if user_mask[y, x] else USER_MASKED
            wl = np.nan
            edge = np.nan
            height = np.nan
            st_x = step[xi]
            pre_e0 = a[xi] + b[xi] * w.t_e0_ev
            if bad[xi] != 0.0:
                status = NONFINITE
                st_x = np.nan
                pre_e0 = np.nan
            elif status == OK:
                nz = noise[xi]
                if not (st_x > w.jump_min) or (nz == nz and st_x < w.jump_snr * nz):
                    status = SMALL_JUMP
            if status == OK:
                g = kg[xi]
                if g == 0 or g == nk - 1:
                    status = NO_WHITELINE
                else:
                    k, wl, height = _whiteline(n, xi, s, g, w, coef)
                    found, edge = _edge(n, xi, k, w)
                    if not found:
                        status = NO_EDGE
            out_wl[y, x] = wl
            out_edge[y, x] = edge
            out_jump[y, x] = st_x
            out_pre[y, x] = pre_e0
            out_height[y, x] = height
            out_noise[y, x] = noise[xi]
            out_status[y, x] = status
