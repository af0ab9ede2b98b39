"""Fused numba kernels for per-pixel XANES fitting (private).

Everything that depends only on the energies (least-squares weights for the
pre-edge line, the post-edge polynomial, the local polynomials used for the
whiteline and the edge) is precomputed in :mod:`._xanes`; the kernel applies
them pixel by pixel in one pass over the stack, tile by tile so that each
energy row is read contiguously, in parallel over tiles.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

# pixel status codes (see XanesResult.status)
OK = 0
NONFINITE = 1
SMALL_JUMP = 2
NO_WHITELINE = 3
NO_EDGE = 4
USER_MASKED = 5

TILE = 256


@njit(parallel=True, cache=True)
def frame_sums(stack):
    """Per-frame sum and count of finite pixels: (n,) float64, (n,) int64."""
    n, ny, nx = stack.shape
    sums = np.zeros(n)
    counts = np.zeros(n, dtype=np.int64)
    for f in prange(n):
        s = 0.0
        c = 0
        for y in range(ny):
            for x in range(nx):
                v = stack[f, y, x]
                if np.isfinite(v):
                    s += v
                    c += 1
        sums[f] = s
        counts[f] = c
    return sums, counts


@njit(cache=True, inline="always", fastmath={"reassoc", "contract", "arcp"})
def _poly_fit(n, start, length, W, k, order, coef):
    for q in range(order + 1):
        acc = 0.0
        for i in range(length[k]):
            acc += W[k, q, i] * n[start[k] + i]
        coef[q] = acc


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
            if not np.isnan(best) and abs(best) <= 2.0 * hw:
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


_FAST = {"reassoc", "contract", "arcp"}  # no 'nnan'/'ninf': NaN checks must survive


@njit(parallel=True, cache=True, fastmath=_FAST)
def fit_kernel(
    stack, gidx, gptr, E, t,
    pre_lo, pre_hi, wa, wb, post_lo, post_hi, ws, t_e0,
    ks0, ks1, wl_start, wl_len, wl_W, wl_order, wl_hw,
    ed_start, ed_len, ed_W, ed_hw,
    jump_min, jump_snr, tie, user_mask, use_user_mask,
    out_wl, out_edge, out_jump, out_pre, out_height, out_noise, out_status,
    norm_out, write_norm,
):
    """One pass over the stack, in tiles of TILE pixels along x.

    The tile buffers and the linear weights (``wa``, ``wb``, ``ws``, ``t``,
    ``wl_W``) share one float dtype: float32 for float32 stacks (twice the
    SIMD width; rounding ~1e-7 relative, far below any noise), float64
    otherwise; the per-pixel refinements are in float64.

    The linear parts (pre-edge line, edge step, normalization, smoothing and
    the argmax of the smoothed spectrum) run energy-outer / pixel-inner so
    that they vectorize; the rest (two-maxima rule, vertex refinement, edge
    crossing) is scalar per pixel on data already in cache.
    """
    ny = stack.shape[1]
    nx = stack.shape[2]
    nu = E.shape[0]
    nk = ks1 - ks0
    ntx = (nx + TILE - 1) // TILE
    ntiles = ny * ntx
    has_noise = pre_hi - pre_lo > 2
    for tile in prange(ntiles):
        y = tile // ntx
        x0 = (tile % ntx) * TILE
        x1 = min(nx, x0 + TILE)
        w = x1 - x0
        n = np.empty((nu, w), dtype=wa.dtype)
        for j in range(nu):
            g0 = gptr[j]
            g1 = gptr[j + 1]
            nj = n[j]
            src = stack[gidx[g0], y, x0:x1]
            for x in range(w):
                nj[x] = src[x]
            if g1 - g0 > 1:
                for g in range(g0 + 1, g1):
                    src = stack[gidx[g], y, x0:x1]
                    for x in range(w):
                        nj[x] += src[x]
                inv = 1.0 / (g1 - g0)
                for x in range(w):
                    nj[x] *= inv
        bad = np.zeros(w, dtype=wa.dtype)
        a = np.zeros(w, dtype=wa.dtype)
        b = np.zeros(w, dtype=wa.dtype)
        for j in range(nu):
            nj = n[j]
            for x in range(w):
                bad[x] += nj[x] - nj[x]  # NaN/inf -> NaN: the non-finite flag
        for j in range(pre_lo, pre_hi):
            caj = wa[j]
            cbj = wb[j]
            nj = n[j]
            for x in range(w):
                a[x] += caj * nj[x]
                b[x] += cbj * nj[x]
        noise = np.full(w, np.nan, dtype=wa.dtype)
        if has_noise:
            r2 = np.zeros(w, dtype=wa.dtype)
            for j in range(pre_lo, pre_hi):
                tj = t[j]
                nj = n[j]
                for x in range(w):
                    r = nj[x] - a[x] - b[x] * tj
                    r2[x] += r * r
            scale = 1.0 / (pre_hi - pre_lo - 2)
            for x in range(w):
                noise[x] = np.sqrt(r2[x] * scale)
        step = np.zeros(w, dtype=wa.dtype)
        for j in range(post_lo, post_hi):
            wj = ws[j]
            tj = t[j]
            nj = n[j]
            for x in range(w):
                step[x] += wj * (nj[x] - a[x] - b[x] * tj)
        inv = np.empty(w, dtype=wa.dtype)
        for x in range(w):
            inv[x] = 1.0 / step[x] if step[x] > 0.0 else np.nan
        for j in range(nu):
            tj = t[j]
            nj = n[j]
            for x in range(w):
                nj[x] = (nj[x] - a[x] - b[x] * tj) * inv[x]
        if write_norm:
            for j in range(nu):
                nj = n[j]
                dst = norm_out[j, y, x0:x1]
                for x in range(w):
                    dst[x] = nj[x] if bad[x] == 0.0 else np.nan
        # smoothed spectrum over the whiteline search range and its argmax
        s = np.zeros((nk, w), dtype=wa.dtype)
        kg = np.zeros(w, dtype=np.int64)
        smax = np.full(w, -np.inf, dtype=wa.dtype)
        for kk in range(nk):
            k = ks0 + kk
            st0 = wl_start[k]
            sk = s[kk]
            for i in range(wl_len[k]):
                c = wl_W[k, 0, i]
                ni = n[st0 + i]
                for x in range(w):
                    sk[x] += c * ni[x]
            for x in range(w):
                if sk[x] > smax[x]:
                    smax[x] = sk[x]
                    kg[x] = kk
        coef = np.zeros(4)
        for xi in range(w):
            x = x0 + xi
            status = OK
            if use_user_mask and not user_mask[y, x]:
                status = USER_MASKED
            wl = np.nan
            edge = np.nan
            height = np.nan
            st_x = step[xi]
            pre_e0 = a[xi] + b[xi] * t_e0
            if bad[xi] != 0.0:
                status = NONFINITE
                st_x = np.nan
                pre_e0 = np.nan
            elif status == OK:
                nz = noise[xi]
                if not (st_x > jump_min) or (nz == nz and st_x < jump_snr * nz):
                    status = SMALL_JUMP
            if status == OK:
                g = kg[xi]
                if g == 0 or g == nk - 1:
                    status = NO_WHITELINE
                else:
                    # tie rule: a separate lower-energy peak within `tie` of
                    # the highest one wins
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
                    k = ks0 + kc
                    tv = np.nan
                    for _it in range(6):
                        for q in range(wl_order + 1):
                            acc = 0.0
                            st0 = wl_start[k]
                            for i in range(wl_len[k]):
                                acc += wl_W[k, q, i] * n[st0 + i, xi]
                            coef[q] = acc
                        tv = _vertex(coef, wl_order, wl_hw)
                        if np.isnan(tv):
                            break
                        kn = _nearest(E, ks0, ks1, E[k] + tv)
                        if kn == k:
                            break
                        k = kn
                    if np.isnan(tv) or abs(tv) > 2.0 * wl_hw:
                        wl = E[k]
                        height = s[k - ks0, xi]
                    else:
                        wl = E[k] + tv
                        height = _poly_eval(coef, wl_order, tv)
                    # edge: first crossing of 0.5 below the whiteline
                    jc = -1
                    for j in range(k - 1, -1, -1):
                        if n[j, xi] < 0.5:
                            jc = j
                            break
                    if jc < 0 or jc + 1 >= nu:
                        status = NO_EDGE
                    else:
                        n0 = n[jc, xi]
                        n1 = n[jc + 1, xi]
                        ec = E[jc] + (0.5 - n0) * (E[jc + 1] - E[jc]) / (n1 - n0)
                        edge = ec
                        kk2 = _nearest(E, 0, nu, ec)
                        for _it in range(3):
                            c0 = 0.0
                            c1 = 0.0
                            st0 = ed_start[kk2]
                            for i in range(ed_len[kk2]):
                                c0 += ed_W[kk2, 0, i] * n[st0 + i, xi]
                                c1 += ed_W[kk2, 1, i] * n[st0 + i, xi]
                            if c1 <= 0.0:
                                break
                            te = (0.5 - c0) / c1
                            if abs(te) > 2.0 * ed_hw:
                                break
                            edge = E[kk2] + te
                            kn = _nearest(E, 0, nu, edge)
                            if kn == kk2:
                                break
                            kk2 = kn
            out_wl[y, x] = wl
            out_edge[y, x] = edge
            out_jump[y, x] = st_x
            out_pre[y, x] = pre_e0
            out_height[y, x] = height
            out_noise[y, x] = noise[xi]
            out_status[y, x] = status
