"""Benchmark: per-pixel XANES fitting, txm-live vs a PyXAS-style numpy baseline vs Larch,
on images and on volumes, in process and on dask.

Prints, from one run on the same synthetic stacks (analytic edge + whiteline with a
known per-pixel shift, noise of 1e4 flat counts):

2-D part (``--parts 2d``; images ``(n_energies, size, size)``):

- wall time (best and median of ``--repeat`` runs), CPU time of the process
  (all threads; steadier than wall time on a shared machine) and peak extra
  memory (RSS sampled every 2 ms) of ``txm_live.analysis.fit_xanes``, and the
  same for a vectorized numpy baseline in the style of PyXAS (shared normal
  equations for the pre/post-edge lines, cubic fitted near the peak, argmax on
  a dense energy grid), measured in the same run;
- the speed ratio and whiteline/edge accuracy (RMS and bias against truth) of both;
- Larch ``pre_edge`` per pixel on a sample of pixels, extrapolated to the image.

3-D part (``--parts 3d``; volumes ``(n_energies, nz, ny, nx)``):

- per-voxel fit throughput in GB/s of float32 stack, in process (wall time;
  and the stack size over CPU time / cores, what the cores would do unshared);
- the same data as a dask array chunked over z (``--volume-chunk`` slices per
  chunk), fitted with dask's threaded scheduler in this process: its time
  over the in-process time (the dask overhead), runs interleaved with the
  numpy runs so all see the same load; once with the maps computed into numpy
  arrays (dask concatenates the chunks: a copy of the maps) and once kept in
  chunks (``dask.persist``, as a pipeline writing chunks to zarr would);
  and whether the maps are equal.

Usage::

    python benchmarks/bench_xanes.py                # 2048 x 2048 x 100 and 60 x 64 x 256 x 256
    python benchmarks/bench_xanes.py --size 512     # quick run
    python benchmarks/bench_xanes.py --parts 3d --volume 128 256 256 --volume-energies 60
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


def make_stack(n, n_e, flat_counts=1e4, seed=0, shape=None):
    """Synthetic absorbance stack (n_e, n, n) float32 (or (n_e, *shape)) and truth maps."""
    rng = np.random.default_rng(seed)
    E = default_energies(n=n_e)
    e0 = 8333.0
    levels = np.linspace(-1.5, 1.5, 31)
    shape = (n, n) if shape is None else tuple(shape)
    lev = rng.integers(0, levels.size, shape)
    jump, pre_slope, thick = 0.5, -2e-4, 1.0
    stack = np.empty((E.size,) + shape, np.float32)
    for i, e in enumerate(E):
        mu = thick + pre_slope * (e - e0) + jump * analytic_spectrum(e, levels)[lev]
        # Gaussian approximation of -ln(Poisson(F e^-mu) / Poisson(F))
        sigma = np.sqrt((np.exp(mu) + 1.0) / flat_counts)
        stack[i] = (mu + sigma * rng.standard_normal(shape)).astype(np.float32)
    wl_l, edge_l = _truth(E, levels, e0, jump, pre_slope)
    return stack, E, wl_l[lev], edge_l[lev], e0


def timed(fn, repeat):
    """Run ``fn`` ``repeat`` times: (last result, wall times, CPU times, peak extra RSS)."""
    walls, cpus, peak = [], [], 0
    out = None
    for _ in range(repeat):
        out = None
        with PeakRSS() as mem:
            c0, t0 = time.process_time(), time.perf_counter()
            out = fn()
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
        peak = max(peak, mem.extra)
    return out, walls, cpus, peak


def fmt(times):
    """'best X s, median Y s'."""
    return f"best {min(times):.2f} s, median {float(np.median(times)):.2f} s"


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


def bench_2d(args):
    t0 = time.perf_counter()
    stack, E, wl_true, edge_true, e0 = make_stack(args.size, args.energies)
    print(f"\n== 2-D: stack {stack.shape} {stack.dtype} = {stack.nbytes / 1e9:.2f} GB "
          f"(made in {time.perf_counter() - t0:.1f} s)")

    fit_xanes(stack[:, :32, :32], E, e0=e0)  # compile / load the numba cache
    r, walls, cpus, extra = timed(lambda: fit_xanes(stack, E, e0=e0), args.repeat)
    t_fit, t_med = min(walls), float(np.median(walls))
    print(f"txm-live fit_xanes: wall {fmt(walls)} (runs: {', '.join(f'{x:.2f}' for x in walls)}); "
          f"CPU {fmt(cpus)}; peak extra memory {extra / 1e9:.2f} GB = "
          f"{extra / stack.nbytes:.2f} x stack")
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
        (wl_b, edge_b), b_walls, b_cpus, b_extra = timed(
            lambda: pyxas_baseline(stack, E, e0, p, wl_range), args.baseline_repeat)
        brms, bbias, _ = stats(wl_b, wl_true, m)
        berms, bebias, _ = stats(edge_b, edge_true, m)
        print(f"PyXAS-style numpy baseline: wall {fmt(b_walls)}; CPU {fmt(b_cpus)}; peak extra "
              f"memory {b_extra / 1e9:.2f} GB = {b_extra / stack.nbytes:.2f} x stack")
        print(f"  whiteline RMS {brms:.3f} eV, bias {bbias:+.3f} eV; edge RMS {berms:.3f} eV, "
              f"bias {bebias:+.3f} eV (same pixels)")
        print(f"  speed ratio baseline / txm-live: {min(b_walls) / t_fit:.1f}x best wall, "
              f"{float(np.median(b_walls)) / t_med:.1f}x median wall, "
              f"{float(np.median(b_cpus)) / float(np.median(cpus)):.1f}x median CPU")

    try:
        per_px = larch_sample(stack, E, e0, args.larch_pixels)
        n_px = args.size**2
        print(f"Larch pre_edge per pixel: {per_px * 1e3:.2f} ms/pixel on {args.larch_pixels} pixels "
              f"-> {per_px * n_px:.0f} s ({per_px * n_px / 3600:.2f} h) extrapolated to {n_px} pixels "
              f"= {per_px * n_px / t_fit:.0f}x txm-live")
    except ImportError:
        print("Larch not installed: skipped")


def bench_3d(args):
    import dask
    import dask.array as da
    import numba

    shape = tuple(args.volume)
    t0 = time.perf_counter()
    stack, E, wl_true, edge_true, e0 = make_stack(0, args.volume_energies, shape=shape, seed=1)
    gb = stack.nbytes / 1e9
    print(f"\n== 3-D: stack {stack.shape} {stack.dtype} = {gb:.2f} GB "
          f"(made in {time.perf_counter() - t0:.1f} s)")
    chunks = (-1, args.volume_chunk, -1, -1)
    d = da.from_array(stack, chunks=chunks)
    print(f"dask: {d.numblocks[1]} chunks of {args.volume_chunk} slices "
          f"({stack[:, :args.volume_chunk].nbytes / 1e6:.0f} MB), threaded scheduler in process")

    fit_xanes(stack[:, :2, :32, :32], E, e0=e0)  # compile / load the numba cache
    fit_xanes(d[:, :2, :32, :32], E, e0=e0).compute(scheduler="threads")
    def kept_chunked():
        r = fit_xanes(d, E, e0=e0)
        return dask.persist(r.whiteline, r.edge, r.edge_jump, r.pre_edge, r.whiteline_height,
                            r.noise, r.status)

    runs = {"numpy": ([], []), "compute": ([], []), "persist": ([], [])}
    r_np = r_da = None
    for _ in range(args.repeat):  # interleaved: all see the same load
        r_np, w, c, _ = timed(lambda: fit_xanes(stack, E, e0=e0), 1)
        runs["numpy"][0].extend(w)
        runs["numpy"][1].extend(c)
        with dask.config.set(scheduler="threads"):
            r_da, w, c, _ = timed(lambda: fit_xanes(d, E, e0=e0).compute(), 1)
            runs["compute"][0].extend(w)
            runs["compute"][1].extend(c)
            _, w, c, _ = timed(kept_chunked, 1)
            runs["persist"][0].extend(w)
            runs["persist"][1].extend(c)
    cores = numba.get_num_threads()
    w_np, c_np = runs["numpy"]
    print(f"in process: wall {fmt(w_np)} -> {gb / min(w_np):.2f} GB/s best, "
          f"{gb / float(np.median(w_np)):.2f} GB/s median; CPU {fmt(c_np)} -> "
          f"{gb / (min(c_np) / cores):.2f} GB/s on {cores} unshared cores")
    for key, label in (("compute", "maps as numpy (compute)"),
                       ("persist", "maps kept in chunks (persist)")):
        w_da, c_da = runs[key]
        print(f"dask threads, {label}: wall {fmt(w_da)}; CPU {fmt(c_da)}; overhead dask / "
              f"in-process {min(w_da) / min(w_np):.2f}x best wall, "
              f"{float(np.median(w_da)) / float(np.median(w_np)):.2f}x median wall, "
              f"{float(np.median(c_da)) / float(np.median(c_np)):.2f}x median CPU")
    same = all(np.array_equal(getattr(r_np, f), getattr(r_da, f), equal_nan=True)
               for f in ("whiteline", "edge", "edge_jump", "pre_edge", "status"))
    print(f"  dask maps bit-identical to in-process: {same}")
    m = r_np.mask
    rms, bias, n = stats(r_np.whiteline, wl_true, m)
    erms, ebias, _ = stats(r_np.edge, edge_true, m)
    print(f"  whiteline RMS {rms:.3f} eV, bias {bias:+.3f} eV; edge RMS {erms:.3f} eV, "
          f"bias {ebias:+.3f} eV ({n} voxels, {m.mean():.1%} fitted)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", nargs="+", choices=("2d", "3d"), default=["2d", "3d"],
                    help="which parts to run (default both)")
    ap.add_argument("--size", type=int, default=2048, help="2-D image side (default 2048)")
    ap.add_argument("--energies", type=int, default=100, help="2-D: number of energies (default 100)")
    ap.add_argument("--repeat", type=int, default=5,
                    help="timed runs of fit_xanes (best and median shown; default 5)")
    ap.add_argument("--baseline-repeat", type=int, default=1, help="timed runs of the baseline")
    ap.add_argument("--larch-pixels", type=int, default=200)
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--volume", type=int, nargs=3, default=(64, 256, 256), metavar=("NZ", "NY", "NX"),
                    help="3-D volume shape (default 64 256 256)")
    ap.add_argument("--volume-energies", type=int, default=60, help="3-D: number of energies (default 60)")
    ap.add_argument("--volume-chunk", type=int, default=8, help="3-D: slices per dask chunk (default 8)")
    args = ap.parse_args()

    import numba

    print(f"machine: {os.cpu_count()} CPUs, numba threads {numba.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    if "2d" in args.parts:
        bench_2d(args)
    if "3d" in args.parts:
        bench_3d(args)


if __name__ == "__main__":
    main()
