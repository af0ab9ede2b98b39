"""Per-frame time of ``SimTXM.acquire`` at 128², 512² and 2048² (median of several).

A script that prints figures, not a test::

    .venv/bin/python benchmarks/bench_simulator.py [--repeats 7] [--sizes 128 512 2048]

Each size: one warm-up frame (fills the projection cache, as the first frame of a scan
does), then ``repeats`` focus-tracked frames at successive energies across the Ni edge
(each one a mono move, a new contraction, shift, blur and noise draw).
"""

import argparse
import time

import numpy as np

from simulators.model import SimConfig, SimTXM


def bench(size, repeats):
    sim = SimTXM(SimConfig(shape=(size, size)))
    t0 = time.perf_counter()
    p, d = sim.optics.focus_positions(8333.0)
    sim.acquire(energy_ev=8333.0, zp_z_mm=p, det_z_mm=d, time_s=0.0)
    first = time.perf_counter() - t0
    times = []
    for i, energy in enumerate(np.linspace(8330.0, 8350.0, repeats)):
        p, d = sim.optics.focus_positions(energy)
        t0 = time.perf_counter()
        sim.acquire(energy_ev=energy, zp_z_mm=p, det_z_mm=d, time_s=5.0 * (i + 1))
        times.append(time.perf_counter() - t0)
    return first, float(np.median(times)), float(np.min(times))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 512, 2048])
    args = parser.parse_args(argv)
    print(f"{'shape':>10} {'first (s)':>10} {'median (s)':>11} {'min (s)':>9}")
    for size in args.sizes:
        first, med, best = bench(size, args.repeats)
        print(f"{size:>5}x{size:<4} {first:>10.3f} {med:>11.4f} {best:>9.4f}")


if __name__ == "__main__":
    main()
