"""Benchmark: 3D XANES — registration accuracy, per-voxel fit throughput in process and on
Dask, the out-of-core fit against a plain read of the stack, reconstruction per slice.

Parts (``--parts``; each prints its figures side by side, measured in the same run):

``registration``
    A simulated 3D XANES scan (30 energies × 128³, 180 angles, drift between energies):
    the pipeline's projection registration vs reconstructing every energy about its own
    centre (``find_center``) and registering the volumes in 3D (``register_volumes``):
    RMS error against the simulator's true drift, and the whiteline volume's correlation
    with the true oxidation state and RMS error after each.
``fit``
    ``fit_store`` on a zarr store of ``--fit-shape`` (energies, nz, ny, nx) float32:
    in process (dask threads) vs a ``LocalCluster`` of 1 worker × 2 threads (overhead
    ratio), and 1 vs 2 workers × 1 thread (speedup); GB/s of stack; the maps compared.
    Beside it ``fit_xanes`` on the same stack in memory (the kernel alone).
``ooc``
    A ``--ooc-gb`` GB stack on disk (default 16): the time to read every chunk of it
    (dask, the fit's chunks) and the time of ``fit_store`` on it, side by side.
``recon``
    ``reconstruct`` (NUFFT, one thread per slab, as the pipeline runs it) on
    ``--recon-width``-px projections: seconds per slice, for sizing a 1024³ scan.

Usage::

    python benchmarks/bench_xanes3d.py --parts registration fit recon
    python benchmarks/bench_xanes3d.py --parts ooc --ooc-gb 16 --workdir /work/tmp [--ooc-keep]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

N_ANGLES = 180


def _energies():
    from txm_live.energies import xanes_energy_list

    return xanes_energy_list(8333.0, pre_edge_ev=(-40, -10), pre_edge_step_ev=10, near_edge_ev=(-10, 20),
                             near_edge_step_ev=1.25, post_edge_ev=(20, 60), post_edge_step_ev=20)


def _scores(wl, fitted, truth):
    m = truth.mask & fitted
    r = np.corrcoef(wl[m], truth.oxidation_state[m])[0, 1]
    return r, float(np.sqrt(np.mean((wl[m] - truth.whiteline_ev[m]) ** 2)))


def part_registration(workdir: Path):
    from scipy import ndimage

    from simulators.xanes3d import make_xanes3d_sim, simulate_xanes3d_scan, voxel_truth
    from txm_live.analysis import find_center, fit_xanes, normalize_projections, reconstruct, register_volumes
    from txm_live.pipelines import RECONSTRUCTION_DEFAULTS, Xanes3DStore, run_xanes3d

    sim = make_xanes3d_sim(n_angles=N_ANGLES)
    xscan = simulate_xanes3d_scan(sim, _energies()[::-1], N_ANGLES)
    truth = voxel_truth(sim, shift_px=xscan.scans[0].object_shift_px)
    t0 = time.perf_counter()
    run_xanes3d(xscan, workdir / "reg.zarr", overwrite=True)
    t_a = time.perf_counter() - t0
    store = Xanes3DStore.open(workdir / "reg.zarr", mode="r")
    true_rel = xscan.drift_px - xscan.drift_px[0]
    err_a = -store.registration()["shift_px"] - true_rel
    res = store.results()
    r_a, rms_a = _scores(res["whiteline"][:], res["mask"][:], truth)
    # B: every energy about its own centre, then 3D phase correlation to the reference
    t0 = time.perf_counter()
    vols, centres = [], []
    for s in xscan.scans:
        a = normalize_projections(s.projections, s.flats, s.darks)
        centres.append(find_center(a, s.theta_rad, ncore=1))
        vols.append(reconstruct(a, s.theta_rad, centres[-1], **RECONSTRUCTION_DEFAULTS))
    obj = xscan.object_shift_px  # (dy, dx, dz) of each scan's object in its reconstruction
    err_b, aligned = [], [vols[0]]
    for k in range(1, len(vols)):
        est = np.array(register_volumes(vols[0], vols[k]))
        d = obj[k] - obj[0]
        expected = np.array([-d[0], d[2], -d[1]])  # volume axes (z=j, row=−z, col=x)
        err_b.append(est - expected)
        aligned.append(ndimage.shift(vols[k], est, order=3, mode="nearest"))
    t_b = time.perf_counter() - t0
    fit_b = fit_xanes(np.stack(aligned), xscan.energies_ev)
    r_b, rms_b = _scores(fit_b.whiteline, fit_b.mask, truth)
    centre_err = np.array(centres) - xscan.center_px
    print("registration between energies (30 energies x 128³, 180 angles; truth: simulator drift)")
    print(f"  no registration          : drift RMS {np.sqrt(np.mean(true_rel[1:] ** 2)):.3f} px")
    print(f"  projections (pipeline)   : error RMS {np.sqrt(np.mean(err_a[1:] ** 2)):.4f} px, "
          f"whiteline r {r_a:.3f}, RMS {rms_a:.3f} eV  ({t_a:.0f} s incl. fit)")
    print(f"  volumes (3D phase corr.) : error RMS {np.sqrt(np.mean(np.square(err_b))):.4f} voxel, centre "
          f"error RMS {np.sqrt(np.mean(centre_err ** 2)):.3f} px, whiteline r {r_b:.3f}, RMS {rms_b:.3f} eV "
          f"({t_b:.0f} s without fit)")


def _write_synthetic_store(path: Path, shape4, slab=None, *, repeat_slab: bool = False):
    """A store filled with analytic spectra (smooth per-voxel edge shift), slab by slab.

    ``repeat_slab``: compute the first slab's spectra once and write them at every slab
    position (the out-of-core stack: its writing is not what is measured).
    """
    from txm_live.analysis._synthetic import analytic_spectrum, default_energies
    from txm_live.pipelines import Xanes3DStore

    n_e, nz, ny, nx = shape4
    E = default_energies(n=n_e)
    store = Xanes3DStore.create(path, E, (nz, nx), slab=slab, overwrite=True)
    assert ny == nx, "volumes are (ny_det, nx, nx)"
    sampler = store.sampler()
    rng = np.random.default_rng(0)
    yy, xx = np.meshgrid(np.linspace(-1, 1, ny), np.linspace(-1, 1, nx), indexing="ij")
    first = None
    for z0 in range(0, nz, store.slab):
        z1 = min(nz, z0 + store.slab)
        if first is None or not repeat_slab:
            zz = np.linspace(-1, 1, nz)[z0:z1, None, None]
            shift = (1.5 * np.sin(3 * zz) * np.cos(2 * yy + xx)).astype(np.float32)
            vols = np.stack([(0.3 + 0.6 * analytic_spectrum(e, shift) + rng.normal(0, 0.01, shift.shape))
                             for e in E]).astype(np.float32)
            first = vols
        vols = first[:, : z1 - z0]
        for i in range(n_e):
            store.volumes[i, z0:z1] = vols[i]
            sampler.add(i, vols[i], start=z0)
    return store


def _workers_cpu_s(runner) -> float:
    """CPU seconds used so far by the runner's worker processes (0 in process)."""
    if runner is None or runner.client is None:
        return 0.0
    return float(sum(runner.client.run(time.process_time).values()))


def _timed(fn, repeat=1, runner=None):
    """Best wall time of ``repeat`` calls, the CPU seconds of that call (this process plus
    the runner's workers) and the last result."""
    best, cpu = np.inf, np.inf
    for _ in range(repeat):
        c0, w0, t0 = time.process_time(), _workers_cpu_s(runner), time.perf_counter()
        out = fn()
        t = time.perf_counter() - t0
        c = time.process_time() - c0 + _workers_cpu_s(runner) - w0
        if t < best:
            best, cpu = t, c
    return best, cpu, out


def part_fit(workdir: Path, shape4, repeat: int):
    """Cluster runs interleaved with in-process runs (the machine is shared: each ratio
    compares runs seconds apart); the median ratio is printed, in wall time and in CPU
    time (this process + the workers: what the work costs, whatever else the machine
    runs). GB/s "on 2 unshared cores" is the stack over CPU time / 2."""
    from txm_live.analysis import fit_xanes
    from txm_live.pipelines import Xanes3DStore, fit_store
    from txm_live.scale import dask_runner

    path = workdir / "fit.zarr"
    store = _write_synthetic_store(path, shape4)
    gb = np.prod(shape4) * 4 / 1e9
    cores = len(os.sched_getaffinity(0))
    stack = store.volumes[:]
    t_mem, c_mem, _ = _timed(lambda: fit_xanes(stack, store.energies_ev), repeat)
    del stack
    fit_store(path)
    ref = Xanes3DStore.open(path, mode="r").results()["whiteline"][:]
    rows = {}
    for label, spec, threads in (("1 worker x 2 threads", "local:1", 2), ("1 worker x 1 thread", "local:1", 1),
                                 ("2 workers x 1 thread", "local:2", 1)):
        with dask_runner(spec, threads_per_worker=threads) as runner:
            fit_store(path, runner=runner)  # warm: workers import and compile once
            pairs = [(_timed(lambda: fit_store(path)), _timed(lambda: fit_store(path, runner=runner),
                                                               runner=runner)) for _ in range(repeat)]
        same = np.array_equal(Xanes3DStore.open(path, mode="r").results()["whiteline"][:], ref, equal_nan=True)
        t_in, c_in = np.array([p[0][:2] for p in pairs]).T
        t_cl, c_cl = np.array([p[1][:2] for p in pairs]).T
        rows[label] = (t_in.min(), t_cl.min(), float(np.median(t_cl / t_in)), float(np.median(c_cl / c_in)),
                       c_in.min(), c_cl.min(), same)
    print(f"per-voxel fit, stack {shape4} float32 = {gb:.2f} GB (best of {repeat}; ratios: median of "
          f"interleaved pairs; load average {os.getloadavg()[0]:.1f} on {cores} cores)")
    print(f"  fit_xanes, stack in memory       : {t_mem:6.2f} s  {gb / t_mem:5.2f} GB/s wall, "
          f"{gb / (c_mem / cores):5.2f} GB/s on {cores} unshared cores (the kernel alone)")
    for label, (t_in, t_cl, ratio, cratio, c_in, c_cl, same) in rows.items():
        print(f"  LocalCluster {label:20s}: {t_cl:6.2f} s  {gb / t_cl:5.2f} GB/s | in process (threads) "
              f"{t_in:5.2f} s {gb / t_in:5.2f} GB/s | {ratio:4.2f}x in-process wall, {cratio:4.2f}x CPU "
              f"(in process {gb / (c_in / cores):4.2f} GB/s on {cores} unshared cores) | "
              f"maps bit-identical: {same}")
    one, two = rows["1 worker x 1 thread"][1], rows["2 workers x 1 thread"][1]
    print(f"  2 workers vs 1 (1 thread each)   : speedup {one / two:.2f}x wall")
    shutil.rmtree(path)


def _drop_page_cache() -> bool:
    """Flush and drop Linux's page cache (root only), so a read comes from the disk and not
    from RAM; False where not permitted (the figures then say so)."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
        return True
    except OSError:
        return False


def part_ooc(workdir: Path, target_gb: float, keep: bool = False):
    import dask.array as da

    from txm_live.pipelines import fit_store
    from txm_live.pipelines.xanes3d import FIT_CHUNK_BYTES

    n_e, nx = 60, 408
    nz = int(round(target_gb * 1e9 / (n_e * nx * nx * 4)))
    shape4 = (n_e, nz, nx, nx)
    path = workdir / "ooc.zarr"
    store = _reusable_store(path, shape4) if keep else None
    t_write = math.nan
    if store is None:
        free = shutil.disk_usage(workdir).free / 1e9
        need = np.prod(shape4) * 4 / 1e9 * 1.2
        if free < need + 5:
            raise SystemExit(f"{workdir}: {free:.0f} GB free, the {need:.0f} GB stack needs more")
        t0 = time.perf_counter()
        store = _write_synthetic_store(path, shape4, slab=2, repeat_slab=True)
        t_write = time.perf_counter() - t0
    gb = np.prod(shape4) * 4 / 1e9
    slab = store.slab * int(max(1, FIT_CHUNK_BYTES // (4 * n_e * nx * nx * store.slab)))  # as fit_store
    stack = da.from_zarr(store.volumes, chunks=(n_e, slab, nx, nx))
    dropped = _drop_page_cache()
    t0 = time.perf_counter()
    stack.map_blocks(lambda b: np.zeros((1, 1, 1, 1), np.float32), chunks=(1, 1, 1, 1)).compute()
    t_read = time.perf_counter() - t0
    dropped &= _drop_page_cache()
    t0, c0 = time.perf_counter(), time.process_time()
    fit = fit_store(path)
    t_fit, c_fit = time.perf_counter() - t0, time.process_time() - c0
    dropped &= _drop_page_cache()
    t0 = time.perf_counter()  # the read again: the disk's speed varies between minutes
    stack.map_blocks(lambda b: np.zeros((1, 1, 1, 1), np.float32), chunks=(1, 1, 1, 1)).compute()
    t_read = min(t_read, time.perf_counter() - t0)
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    print(f"out of core: stack {shape4} float32 = {gb:.1f} GB on disk (written in {t_write:.0f} s), "
          f"chunks of {slab} slices; {mem_gb:.0f} GB RAM; load average {os.getloadavg()[0]:.1f}; page cache "
          f"{'dropped before each read and the fit' if dropped else 'NOT dropped (not root): reads may come from RAM'}")
    print(f"  read every chunk (dask threads) : {t_read:7.1f} s (best of 2)  {gb / t_read:5.2f} GB/s")
    print(f"  fit_store (read + fit + write)  : {t_fit:7.1f} s  {gb / t_fit:5.2f} GB/s  "
          f"= {t_fit / t_read:.2f}x the read  ({fit.status_counts.get('ok', 0)} voxels fitted; "
          f"{c_fit:.0f} CPU-s)")
    if not keep:
        shutil.rmtree(path)


def _reusable_store(path: Path, shape4):
    """The stack a previous ``--ooc-keep`` run left at ``path`` when its shape matches."""
    from txm_live.pipelines import Xanes3DStore

    try:
        store = Xanes3DStore.open(path)
    except Exception:  # absent or unreadable: write it anew
        return None
    return store if tuple(store.volumes.shape) == tuple(shape4) and store.done().all() else None


def part_recon(width: int, n_angles: int, rows: int):
    from concurrent.futures import ThreadPoolExecutor

    from txm_live.analysis import reconstruct
    from txm_live.pipelines import RECONSTRUCTION_DEFAULTS

    rng = np.random.default_rng(0)
    theta = np.linspace(0, np.pi, n_angles, endpoint=False)
    tomo = rng.random((n_angles, rows, width), dtype=np.float32)
    n_threads = len(os.sched_getaffinity(0))
    slabs = np.array_split(np.arange(rows), n_threads)

    def one(idx):
        return reconstruct(tomo[:, idx[0]:idx[-1] + 1], theta, width / 2, ncore=1, **RECONSTRUCTION_DEFAULTS)

    with ThreadPoolExecutor(n_threads) as pool:
        list(pool.map(one, slabs))  # warm
        c0, t0 = time.process_time(), time.perf_counter()
        list(pool.map(one, slabs))
        t, cpu = time.perf_counter() - t0, time.process_time() - c0
    t1, _, _ = _timed(lambda: reconstruct(tomo, theta, width / 2, **RECONSTRUCTION_DEFAULTS))
    print(f"reconstruction {width} px, {n_angles} angles, {rows} slices on {n_threads} cores: "
          f"{t / rows * 1e3:.1f} ms/slice (one thread per slab, as the pipeline; CPU {cpu / rows * 1e3:.1f} "
          f"ms per slice: {cpu / rows / n_threads * 1e3:.1f} ms/slice on {n_threads} unshared cores), "
          f"{t1 / rows * 1e3:.1f} ms/slice (ncore={n_threads} on one call)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", nargs="+", default=["registration", "fit", "recon"],
                   choices=["registration", "fit", "ooc", "recon"])
    p.add_argument("--fit-shape", nargs=4, type=int, default=[60, 64, 256, 256])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--ooc-gb", type=float, default=16.0)
    p.add_argument("--ooc-keep", action="store_true",
                   help="keep the out-of-core stack in --workdir and reuse it when it is there")
    p.add_argument("--recon-width", type=int, default=1024)
    p.add_argument("--recon-angles", type=int, default=900)
    p.add_argument("--recon-rows", type=int, default=8)
    p.add_argument("--workdir", type=Path, default=None, help="where stores are written (default: a temp dir)")
    args = p.parse_args(argv)
    if args.ooc_keep and args.workdir is None:
        p.error("--ooc-keep needs --workdir (where the stack stays)")
    warnings.simplefilter("ignore")
    workdir = Path(tempfile.mkdtemp(dir=args.workdir))
    try:
        for part in args.parts:
            if part == "registration":
                part_registration(workdir)
            elif part == "fit":
                part_fit(workdir, tuple(args.fit_shape), args.repeat)
            elif part == "ooc":
                part_ooc(args.workdir if args.ooc_keep else workdir, args.ooc_gb, keep=args.ooc_keep)
            else:
                part_recon(args.recon_width, args.recon_angles, args.recon_rows)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
