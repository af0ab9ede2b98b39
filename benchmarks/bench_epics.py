"""xanes_2d over Channel Access (simulated TXM IOC) against the same plan on the simulated devices.

    .venv/bin/python benchmarks/bench_epics.py [--energies 40] [--size 128] [--time-scale 0.02]

Prints the wall time of each scan and their ratio (same plan, sample, seed; frames are
identical). The EPICS figure is CA round trips, motor-record moves at ``time_scale`` of
their beamline time, and the IOC writing HDF5; the simulated devices do none of that.
Absolute times move 30-50 % with the machine's load; read the ratio.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--energies", type=int, default=40, help="energies across the Ni K edge")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--time-scale", type=float, default=0.02)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)

    from simulators.ioc import IOCProcess, ca_environment, free_port_pair

    ports = free_port_pair()
    os.environ.update(ca_environment(*ports))  # this benchmark's own process: before ophyd starts CA
    import numpy as np
    from bluesky import RunEngine

    from simulators.beamline import make_sim_beamline
    from simulators.model import SimConfig
    from txm_live.devices.txm import connect_epics_txm, make_epics_txm
    from txm_live.plans import xanes_2d

    energies = np.linspace(8273.0, 8453.0, args.energies)
    frames = Path(tempfile.mkdtemp(prefix="bench-epics-"))
    config = SimConfig(shape=(args.size, args.size), seed=1)
    with IOCProcess(size=args.size, seed=1, time_scale=args.time_scale, ports=ports) as ioc:
        epics = make_epics_txm(ioc.prefixes, write_dir=frames)
        connect_epics_txm(epics, timeout_s=30)

        def scan(devices):
            RE = RunEngine({}, call_returns_result=False)
            t0 = time.perf_counter()
            RE(xanes_2d(devices["txm_det"], devices["energy"], energies, shutter=devices["shutter"],
                        sample_stage=devices["sample_stage"], n_darks=5, exposure_s=0.05))
            return time.perf_counter() - t0

        scan(epics)  # warm-up: the IOC's first frame compiles the simulator's kernels
        times = {"epics": [], "sim": []}
        for _ in range(args.repeats):
            ioc.reset()
            times["epics"].append(scan(epics))
            bl = make_sim_beamline(frames, config=config)
            times["sim"].append(scan({"txm_det": bl.detector, "energy": bl.energy, "shutter": bl.shutter,
                                      "sample_stage": bl.sample_stage}))
    n_frames = 5 + 2 * len(energies)
    best = {k: min(v) for k, v in times.items()}
    print(f"{len(energies)} energies, {n_frames} frames of {args.size}², time scale {args.time_scale}")
    for kind, t in best.items():
        print(f"  {kind:5s} {t:6.2f} s  ({t / n_frames * 1e3:5.1f} ms per frame)")
    print(f"  EPICS / simulated devices: {best['epics'] / best['sim']:.1f}x")


if __name__ == "__main__":
    main()
