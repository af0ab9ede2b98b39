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


@njit(cache=True, inline="always")
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
    """Index in [lo, hi) of E nearest to e (E increasing)."""
    best = lo
    bd = abs(E[lo] - e)
    for j in range(lo + 1, hi):
        d = abs(E[j] - e)
        if d < bd:
            bd = d
            best = j
    return best


@njit(parallel=True, cache=True)
def fit_kernel(
    stack, gidx, gptr, E, t,
    pre_lo, pre_hi, wa, wb, post_lo, post_hi, ws, t_e0,
    ks0, ks1, wl_start, wl_len, wl_W, wl_order, wl_hw,
    ed_start, ed_len, ed_W, ed_hw,
    jump_min, jump_snr, tie, user_mask, use_user_mask,
    out_wl, out_edge, out_jump, out_pre, out_height, out_noise, out_status,
    norm_out, write_norm,
):
    ny = stack.shape[1]
    nx = stack.shape[2]
    nu = E.shape[0]
    ntx = (nx + TILE - 1) // TILE
    ntiles = ny * ntx
    for tile in prange(ntiles):
        y = tile // ntx
        x0 = (tile % ntx) * TILE
        x1 = min(nx, x0 + TILE)
        w = x1 - x0
        buf = np.zeros((w, nu))
        for j in range(nu):
            g0 = gptr[j]
            g1 = gptr[j + 1]
            for g in range(g0, g1):
                f = gidx[g]
                for x in range(x0, x1):
                    buf[x - x0, j] += stack[f, y, x]
            if g1 - g0 > 1:
                inv = 1.0 / (g1 - g0)
                for x in range(w):
                    buf[x, j] *= inv
        n = np.empty(nu)
        s = np.empty(nu)
        coef = np.zeros(4)
        for xi in range(w):
            x = x0 + xi
            u = buf[xi]
            status = OK
            if use_user_mask and not user_mask[y, x]:
                status = USER_MASKED
            finite = True
            for j in range(nu):
                if not np.isfinite(u[j]):
                    finite = False
                    break
            wl = np.nan
            edge = np.nan
            step = np.nan
            pre_e0 = np.nan
            height = np.nan
            noise = np.nan
            if not finite:
                status = NONFINITE
            else:
                # pre-edge line a + b t
                a = 0.0
                b = 0.0
                for j in range(pre_lo, pre_hi):
                    a += wa[j] * u[j]
                    b += wb[j] * u[j]
                pre_e0 = a + b * t_e0
                if pre_hi - pre_lo > 2:
                    r2 = 0.0
                    for j in range(pre_lo, pre_hi):
                        r = u[j] - a - b * t[j]
                        r2 += r * r
                    noise = np.sqrt(r2 / (pre_hi - pre_lo - 2))
                step = 0.0
                for j in range(post_lo, post_hi):
                    step += ws[j] * (u[j] - a - b * t[j])
                if step > 0.0:
                    inv = 1.0 / step
                    for j in range(nu):
                        n[j] = (u[j] - a - b * t[j]) * inv
                    if write_norm:
                        for j in range(nu):
                            norm_out[j, y, x] = n[j]
                elif write_norm:
                    for j in range(nu):
                        norm_out[j, y, x] = np.nan
                if status == OK:
                    if not (step > jump_min) or (noise == noise and step < jump_snr * noise):
                        status = SMALL_JUMP
                if status == OK:
                    # smoothed spectrum over the whiteline search range
                    kg = ks0
                    for k in range(ks0, ks1):
                        _poly_fit(n, wl_start, wl_len, wl_W, k, wl_order, coef)
                        s[k] = coef[0]
                        if s[k] > s[kg]:
                            kg = k
                    if kg == ks0 or kg == ks1 - 1:
                        status = NO_WHITELINE
                    else:
                        # tie rule: a separate lower-energy peak within `tie`
                        # of the highest one wins
                        kc = kg
                        smin = s[kg]
                        for k in range(kg - 1, ks0, -1):
                            if s[k] < smin:
                                smin = s[k]
                            if (s[k] >= s[k - 1] and s[k] >= s[k + 1]
                                    and s[k] >= s[kg] - tie and smin < s[k] - tie):
                                kc = k
                        k = kc
                        tv = np.nan
                        for _it in range(6):
                            _poly_fit(n, wl_start, wl_len, wl_W, k, wl_order, coef)
                            tv = _vertex(coef, wl_order, wl_hw)
                            if np.isnan(tv):
                                break
                            kn = _nearest(E, ks0, ks1, E[k] + tv)
                            if kn == k:
                                break
                            k = kn
                        if np.isnan(tv) or abs(tv) > 2.0 * wl_hw:
                            wl = E[k]
                            height = s[k]
                        else:
                            wl = E[k] + tv
                            height = _poly_eval(coef, wl_order, tv)
                        # edge: first crossing of 0.5 below the whiteline
                        jc = -1
                        for j in range(k - 1, -1, -1):
                            if n[j] < 0.5:
                                jc = j
                                break
                        if jc < 0 or jc + 1 >= nu:
                            status = NO_EDGE
                        else:
                            ec = E[jc] + (0.5 - n[jc]) * (E[jc + 1] - E[jc]) / (n[jc + 1] - n[jc])
                            edge = ec
                            kk = _nearest(E, 0, nu, ec)
                            for _it in range(3):
                                _poly_fit(n, ed_start, ed_len, ed_W, kk, 1, coef)
                                if coef[1] <= 0.0:
                                    break
                                te = (0.5 - coef[0]) / coef[1]
                                if abs(te) > 2.0 * ed_hw:
                                    break
                                edge = E[kk] + te
                                kn = _nearest(E, 0, nu, edge)
                                if kn == kk:
                                    break
                                kk = kn
            out_wl[y, x] = wl
            out_edge[y, x] = edge
            out_jump[y, x] = step
            out_pre[y, x] = pre_e0
            out_height[y, x] = height
            out_noise[y, x] = noise
            out_status[y, x] = status
