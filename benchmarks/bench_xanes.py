"""Benchmark: per-pixel XANES fitting, txm-live vs a PyXAS-style numpy baseline vs Larch.

Prints, from one run on the same synthetic stack (analytic edge + whiteline with a
known per-pixel shift, noise of 1e4 flat counts):

- wall time and peak extra memory (RSS sampled every 2 ms) of
  ``txm_live.analysis.fit_xanes`` and of a vectorized numpy baseline in the
  style of PyXAS (shared normal equations for the pre/post-edge lines, cubic
  fitted near the peak, argmax on a dense energy grid);
- the speed ratio and whiteline/edge accuracy (RMS and bias against truth) of both;
- Larch ``pre_edge`` per pixel on a sample of pixels, extrapolated to the image.

Usage::

    python benchmarks/bench_xanes.py                # 2048 x 2048 x 100 float32 (~1.7 GB)
    python benchmarks/bench_xanes.py --size 512     # quick run
"""

from __future__ import annotations

import argparse
import os
import threading
import time

import numpy as np

from txm_live.analysis import fit_xanes
from txm_live.analysis._synthetic import analytic_spectrum, default_energies, _truth


class PeakRSS:
    """Peak resident memory above the level at entry, sampled in a thread."""

    def __init__(self, interval=0.002):
        self.interval = interval
        self.page = os.sysconf("SC_PAGE_SIZE")

    def _rss(self):
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def __enter__(self):
        self.base = self._rss()
        self.peak = self.base
        self._stop = threading.Event()

        def run():
            while not self._stop.is_set():
                self.peak = max(self.peak, self._rss())
                time.sleep(self.interval)

        self._t = threading.Thread(target=run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._rss())
        self.extra = self.peak - self.base


def make_stack(n, n_e, flat_counts=1e4, seed=0):
    """Synthetic absorbance stack (n_e, n, n) float32 and truth maps."""
    rng = np.random.default_rng(seed)
    E = default_energies(n=n_e)
    e0 = 8333.0
    levels = np.linspace(-1.5, 1.5, 31)
    lev = rng.integers(0, levels.size, (n, n))
    shifts = levels[lev]
    jump, pre_slope, thick = 0.5, -2e-4, 1.0
    stack = np.empty((E.size, n, n), np.float32)
    for i, e in enumerate(E):
        mu = thick + pre_slope * (e - e0) + jump * analytic_spectrum(e, levels)[lev]
        # Gaussian approximation of -ln(Poisson(F e^-mu) / Poisson(F))
        sigma = np.sqrt((np.exp(mu) + 1.0) / flat_counts)
        stack[i] = (mu + sigma * rng.standard_normal((n, n))).astype(np.float32)
    wl_l, edge_l = _truth(E, levels, e0, jump, pre_slope)
    return stack, E, wl_l[lev], edge_l[lev], e0


def pyxas_baseline(stack, E, e0, params, wl_range, chunk=1 << 16):
    """PyXAS-style vectorized numpy: shared normal equations, cubic near the
    peak, dense-grid argmax; edge = linear interpolation at 0.5."""
    nE, ny, nx = stack.shape
    flat = stack.reshape(nE, -1)
    t = E - e0
    pre = (t >= params["pre1"]) & (t <= params["pre2"])
    post = (t >= params["norm1"]) & (t <= params["norm2"])
    Vp = np.vander(t[pre], 2, increasing=True)
    Vq = np.vander(t[post], params["nnorm"] + 1, increasing=True)
    cp = np.linalg.pinv(Vp).astype(np.float32) @ flat[pre]  # (2, npix)
    pre_line = (np.vander(t, 2, increasing=True).astype(np.float32) @ cp)  # (nE, npix)
    cq = np.linalg.pinv(Vq).astype(np.float32) @ (flat[post] - pre_line[post])
    step = cq[0]  # post-edge polynomial at t = 0 (e0)
    norm = (flat - pre_line) / step  # full normalized stack, as PyXAS keeps it
    win = (t >= wl_range[0]) & (t <= wl_range[1])
    Vw = np.vander(t[win], 4, increasing=True)
    Pw = np.linalg.pinv(Vw).astype(np.float32)
    dense = np.arange(t[win][0], t[win][-1], 0.05, dtype=np.float32)
    Vd = np.vander(dense, 4, increasing=True).astype(np.float32)
    wl = np.empty(flat.shape[1], np.float32)
    for s in range(0, flat.shape[1], chunk):
        c = Pw @ norm[win, s:s + chunk]
        wl[s:s + chunk] = dense[np.argmax(Vd @ c, axis=0)] + e0
    # edge: first sample >= 0.5 scanning up from e0 - 10 eV, linear interpolation
    ew = np.flatnonzero((t >= -10) & (t <= wl_range[1]))
    sub = norm[ew]
    j = np.argmax(sub >= 0.5, axis=0)
    j = np.clip(j, 1, ew.size - 1)
    cols = np.arange(sub.shape[1])
    n0, n1 = sub[j - 1, cols], sub[j, cols]
    e_lo, e_hi = E[ew][j - 1], E[ew][j]
    edge = e_lo + (0.5 - n0) * (e_hi - e_lo) / (n1 - n0)
    return wl.reshape(ny, nx), edge.reshape(ny, nx).astype(np.float32)


def larch_sample(stack, E, e0, n_pixels=200, seed=0):
    from larch import Group
    from larch.xafs import pre_edge

    rng = np.random.default_rng(seed)
    ny, nx = stack.shape[1:]
    pix = rng.integers(0, ny * nx, n_pixels)
    flat = stack.reshape(stack.shape[0], -1)
    spectra = [flat[:, p].astype(np.float64) for p in pix]
    t0 = time.perf_counter()
    for mu in spectra:
        g = Group(energy=E, mu=mu)
        pre_edge(g, e0=e0)
        _ = E[np.argmax(g.norm)]
    return (time.perf_counter() - t0) / n_pixels


def stats(est, truth, mask=None):
    d = (est - truth)
    if mask is not None:
        d = d[mask]
    d = d[np.isfinite(d)]
    return float(np.sqrt(np.mean(d**2))), float(np.mean(d)), d.size


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=2048, help="image side (default 2048)")
    ap.add_argument("--energies", type=int, default=100, help="number of energies (default 100)")
    ap.add_argument("--repeat", type=int, default=2, help="timed runs of fit_xanes (best is shown)")
    ap.add_argument("--larch-pixels", type=int, default=200)
    ap.add_argument("--no-baseline", action="store_true")
    args = ap.parse_args()

    import numba

    print(f"machine: {os.cpu_count()} CPUs, numba threads {numba.get_num_threads()}")
    t0 = time.perf_counter()
    stack, E, wl_true, edge_true, e0 = make_stack(args.size, args.energies)
    print(f"stack {stack.shape} {stack.dtype} = {stack.nbytes / 1e9:.2f} GB "
          f"(made in {time.perf_counter() - t0:.1f} s)")

    fit_xanes(stack[:, :32, :32], E, e0=e0)  # compile / load the numba cache
    times = []
    for _ in range(args.repeat):
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            r = fit_xanes(stack, E, e0=e0)
            times.append(time.perf_counter() - t0)
    t_fit = min(times)
    print(f"\ntxm-live fit_xanes: {t_fit:.2f} s (runs: {', '.join(f'{x:.2f}' for x in times)}), "
          f"peak extra memory {mem.extra / 1e9:.2f} GB = {mem.extra / stack.nbytes:.2f} x stack")
    m = r.mask
    rms, bias, n = stats(r.whiteline, wl_true, m)
    erms, ebias, _ = stats(r.edge, edge_true, m)
    print(f"  whiteline RMS {rms:.3f} eV, bias {bias:+.3f} eV; edge RMS {erms:.3f} eV, "
          f"bias {ebias:+.3f} eV ({n} px, {m.mean():.1%} fitted)")

    if not args.no_baseline:
        p = r.params
        # cubic over +-5 eV around the mean spectrum's whiteline (PyXAS fits near the peak)
        wl_mean = np.nanmedian(r.whiteline) - e0
        wl_range = (wl_mean - 5.0, wl_mean + 5.0)
        with PeakRSS() as mem_b:
            t0 = time.perf_counter()
            wl_b, edge_b = pyxas_baseline(stack, E, e0, p, wl_range)
            t_base = time.perf_counter() - t0
        brms, bbias, _ = stats(wl_b, wl_true, m)
        berms, bebias, _ = stats(edge_b, edge_true, m)
        print(f"\nPyXAS-style numpy baseline: {t_base:.2f} s, peak extra memory "
              f"{mem_b.extra / 1e9:.2f} GB = {mem_b.extra / stack.nbytes:.2f} x stack")
        print(f"  whiteline RMS {brms:.3f} eV, bias {bbias:+.3f} eV; edge RMS {berms:.3f} eV, "
              f"bias {bebias:+.3f} eV (same pixels)")
        print(f"  speed ratio baseline / txm-live = {t_base / t_fit:.1f}x")

    try:
        per_px = larch_sample(stack, E, e0, args.larch_pixels)
        n_px = args.size**2
        print(f"\nLarch pre_edge per pixel: {per_px * 1e3:.2f} ms/pixel on {args.larch_pixels} pixels "
              f"-> {per_px * n_px:.0f} s ({per_px * n_px / 3600:.2f} h) extrapolated to {n_px} pixels "
              f"= {per_px * n_px / t_fit:.0f}x txm-live")
    except ImportError:
        print("\nLarch not installed: skipped")


if __name__ == "__main__":
    main()
