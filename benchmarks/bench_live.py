"""Benchmark: cost of the live 2D XANES analysis to the RunEngine, and latency of the maps.

Prints, from one run:

- **overhead**: the same simulated 2D XANES scan (default 60 energies, 512², FXI order)
  run without and with the live analysis subscribed; wall time of ``RE(plan)`` each way
  (alternating, ``--repeat`` times, median), their ratio (target ≤ 1.05), and the time
  the RunEngine thread spent inside the callback per document;
- **latency**: a 100-energy 1024² scan; seconds from the stop document (as the RunEngine
  emits it) until the final maps are computed and handed to the writer, and until the
  queued analysis is done (target ≤ 1 s).

Timing of the simulated beamline (``--timing``): ``fast`` (no sleeps: the simulator and
the analysis compete for the CPU, the worst case) or ``realistic`` (the devices sleep for
moves, settling and exposure, like a beamline). Analysis documents go to an in-memory
sink unless ``--tiled`` writes them (and the raw run) to an embedded Tiled server.

Measured here (2 shared cores, in-memory sink, 14:00 UTC 2026-11-25):

- ``--timing realistic`` (the beamline case): overhead 60 E 512²: 105.80 s without,
  105.99 s with, ratio 1.002; callback median 51 µs/doc (max 8.5 ms); latency 100 E 1024²:
  final maps 0.62 s after the stop document.
- ``--timing fast`` (simulator as fast as the CPU allows, worst case): ratio 1.19 (1.32 with
  ``--worker-threads 1``, i.e. noise of ±15 %); latency 39.7 s, because the analysis
  (~0.27 s per 1024² frame: zingers 0.13 s, running-mean registration 0.16 s) cannot keep
  up with a simulator delivering a frame every 0.07 s.

Usage::

    python benchmarks/bench_live.py                                  # full size, ~8 min
    python benchmarks/bench_live.py --timing fast                    # worst case, ~2 min
    python benchmarks/bench_live.py --size 256 --energies 20 --latency-size 256 --latency-energies 30
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def _energies(n):
    """n energies (n >= 21): the standard list's sparse pre-/post-edge points, the rest dense
    across the edge and whiteline (edge - 10 ... edge + 25 eV)."""
    from txm_live.energies import xanes_energy_list

    e = xanes_energy_list(8333.0)
    sparse = e[(e < 8323.0) | (e > 8358.0)]
    if n < len(sparse) + 4:
        raise ValueError(f"need at least {len(sparse) + 4} energies, got {n}")
    dense = np.linspace(8323.0, 8358.0, n - len(sparse))
    return np.sort(np.concatenate([sparse, dense]))


def _scan(root, size, n_energies, *, live: bool, timing: str, tiled=None, seed=1, options=None):
    from bluesky import RunEngine

    from simulators.beamline import make_sim_beamline
    from simulators.model import SimConfig
    from txm_live.callbacks import subscribe_live_analysis
    from txm_live.plans import xanes_2d
    from txm_live.store import subscribe_tiled_writer

    frames = Path(root) / "frames"
    bl = make_sim_beamline(frames, config=SimConfig(shape=(size, size), seed=seed))
    bl.clock.realistic = timing == "realistic"  # after building: focusing at start would sleep too
    RE = RunEngine({}, call_returns_result=False)
    stamps = {}
    RE.subscribe(lambda name, doc: stamps.setdefault("stop", time.perf_counter()), "stop")
    writer = subscribe_tiled_writer(RE, tiled.client()) if tiled is not None else None
    handle = None
    call_s = []
    if live:
        def sink(name, doc):
            if name == "event" and doc["data"].get("final") is True:
                stamps["maps"] = time.perf_counter()

        handle = subscribe_live_analysis(RE, tiled.client() if tiled else None, writer=writer, sinks=[sink],
                                         **(options or {}))
        RE.unsubscribe(handle.token)

        def timed(name, doc):
            t0 = time.perf_counter()
            handle(name, doc)
            call_s.append(time.perf_counter() - t0)

        RE.subscribe(timed)
    plan = xanes_2d(bl.detector, bl.energy, _energies(n_energies), shutter=bl.shutter,
                    sample_stage=bl.sample_stage, n_darks=5)
    t0 = time.perf_counter()
    RE(plan)
    scan_s = time.perf_counter() - t0
    out = {"scan_s": scan_s, "call_s": np.array(call_s)}
    if handle is not None:
        handle.wait(600)
        stamps["done"] = time.perf_counter()
        out["maps_latency_s"] = stamps.get("maps", np.nan) - stamps["stop"]
        out["done_latency_s"] = stamps["done"] - stamps["stop"]
        analysis = next(iter(handle.analyses.values()))
        out["analysis_errors"] = analysis.errors
        out["failures"] = handle.failures
        handle.close()
    elif writer is not None:
        writer.flush(600)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=512, help="overhead scan image size (default 512)")
    p.add_argument("--energies", type=int, default=60, help="overhead scan energies (default 60)")
    p.add_argument("--latency-size", type=int, default=1024, help="latency scan image size (default 1024)")
    p.add_argument("--latency-energies", type=int, default=100, help="latency scan energies (default 100)")
    p.add_argument("--repeat", type=int, default=1, help="overhead pairs (without/with), median reported")
    p.add_argument("--timing", choices=("fast", "realistic"), default="realistic",
                   help="realistic (default): devices sleep like a beamline; fast: no sleeps (worst case)")
    p.add_argument("--tiled", action="store_true", help="write raw and analysis runs to an embedded Tiled")
    p.add_argument("--worker-threads", type=int, default=None, help="numba threads of the analysis worker")
    p.add_argument("--registration-mode", default="running_mean", help="StackAligner mode")
    p.add_argument("--skip-overhead", action="store_true")
    p.add_argument("--skip-latency", action="store_true")
    args = p.parse_args(argv)

    import os

    opts = {"worker_threads": args.worker_threads, "registration_mode": args.registration_mode}
    print(f"bench_live: {os.cpu_count()} CPUs, timing={args.timing}, tiled={args.tiled}, {opts}")
    with tempfile.TemporaryDirectory() as tmp:
        tiled = None
        if args.tiled:
            from txm_live.store import EmbeddedTiled

            tiled = EmbeddedTiled(Path(tmp) / "catalog", readable_storage=[Path(tmp) / "frames"])
        try:
            # warm-up: numba kernels, FFT plans, imports
            _scan(tmp, 64, 30, live=True, timing="fast")
            if not args.skip_overhead:
                without, with_ = [], []
                calls = None
                for _ in range(args.repeat):
                    without.append(_scan(tmp, args.size, args.energies, live=False, timing=args.timing,
                                         tiled=tiled)["scan_s"])
                    r = _scan(tmp, args.size, args.energies, live=True, timing=args.timing, tiled=tiled,
                          options=opts)
                    with_.append(r["scan_s"])
                    calls = r["call_s"]
                a, b = statistics.median(without), statistics.median(with_)
                print(f"overhead: {args.energies} energies, {args.size}²: RE(plan) without live {a:.2f} s, "
                      f"with live {b:.2f} s, ratio {b / a:.3f} (target ≤ 1.05)")
                print(f"  callback on the RunEngine thread: {len(calls)} docs, median "
                      f"{1e6 * np.median(calls):.0f} µs, max {1e3 * calls.max():.2f} ms, "
                      f"total {calls.sum():.3f} s; analysis: worker finished {r['done_latency_s']:.2f} s "
                      f"after the stop document")
            if not args.skip_latency:
                r = _scan(tmp, args.latency_size, args.latency_energies, live=True, timing=args.timing,
                          tiled=tiled, options=opts)
                print(f"latency: {args.latency_energies} energies, {args.latency_size}²: scan {r['scan_s']:.1f} s; "
                      f"final maps {r['maps_latency_s']:.2f} s after the stop document, everything "
                      f"(incl. writes) done after {r['done_latency_s']:.2f} s (target ≤ 1 s)")
                if r["analysis_errors"] or r["failures"]:
                    print("  errors:", r["analysis_errors"], r["failures"])
        finally:
            if tiled is not None:
                tiled.close()


if __name__ == "__main__":
    main()
