"""Soak benchmark: a long operando session through the RunEngine, memory and time per measurement.

Runs :func:`txm_live.plans.operando` on the simulated TXM (default 64², 10 energies, a
12-particle electrode) with the live 2D XANES analysis and the session callback
subscribed (no Tiled: the store is measured in ``tests/``), charging and discharging at
1C with a measurement every ``--every`` seconds of cell time until ``--measurements``
measurements are done. Prints, every 10 measurements, the Python memory the process
holds (``tracemalloc``, after a garbage collection) and the wall time per measurement,
so a leak shows as a steady rise. There is no peer library for this; the figure to read
is the growth per measurement between the 10th and the last, against what one
measurement's raw frames and maps weigh (printed).

Measured (2 shared cores, 64², from the 10th to the 50th measurement): 21 kB per
measurement, against 172 kB of raw frames and 53 kB of maps per measurement. Of it, about 2 kB is the session's
per-particle rows (by design), about 5 kB the simulator's drift random walk (its
history grows with simulated time) and about 5 kB the RunEngine's set of objects seen
in one plan (``xanes_2d`` makes a frame-label device per measurement; released when
the plan ends).

Usage::

    python benchmarks/bench_operando_session.py                    # 50 measurements, 64²
    python benchmarks/bench_operando_session.py --measurements 100 --size 128
"""
from __future__ import annotations

import argparse
import gc
import tempfile
import time
import tracemalloc

from bluesky import RunEngine

from simulators.beamline import make_sim_beamline
from simulators.devices import make_sim_potentiostat
from simulators.model import SimConfig, SimTXM
from simulators.phantom import make_nmc_phantom
from txm_live.callbacks import LiveAnalysis, OperandoSessionCallback
from txm_live.energies import xanes_energy_list
from txm_live.plans import CyclingStep, operando

ENERGIES = xanes_energy_list(8333.0, pre_edge_step_ev=25.0, near_edge_step_ev=7.0, post_edge_step_ev=48.0)
#: Report every this many measurements.
REPORT_EVERY = 10


class Monitor:
    """Counts finished measurements; records memory and time every REPORT_EVERY of them."""

    def __init__(self, live, session):
        self.live, self.session = live, session
        self.n = 0
        self.rows = []
        self.t0 = time.perf_counter()
        self._scan_type = None

    def __call__(self, name, doc):
        if name == "start":
            self._scan_type = doc.get("scan_type")
        if name == "stop" and self._scan_type == "xanes2d":
            self.n += 1
            if self.n % REPORT_EVERY == 0:
                self.live.wait(600)
                self.session.wait(600)
                gc.collect()
                held_mb = tracemalloc.get_traced_memory()[0] / 1e6
                self.rows.append((self.n, held_mb, time.perf_counter() - self.t0))
                print(f"  {self.n:4d} measurements: {held_mb:7.2f} MB held, "
                      f"{(time.perf_counter() - self.t0) / self.n:.2f} s per measurement", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--measurements", type=int, default=50)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--every", type=float, default=300.0, help="cell time between measurements, s")
    args = parser.parse_args()
    phantom = make_nmc_phantom(n_particles=12, radius_range_um=(2.0, 4.0), seed=5, state_of_charge=0.0)
    model = SimTXM(SimConfig(shape=(args.size, args.size), seed=5), sample=phantom)
    with tempfile.TemporaryDirectory() as folder:
        bl = make_sim_beamline(folder, model=model)
        pstat = make_sim_potentiostat(bl.model, bl.clock, seed=5)
        session = OperandoSessionCallback(lambda name, doc: None)
        live = LiveAnalysis(sinks=[session], keep_runs=2)
        monitor = Monitor(live, session)
        RE = RunEngine({}, call_returns_result=False)
        for callback in (session, live, monitor):  # the session callback first (see subscribe_operando_session)
            RE.subscribe(callback)
        cycle_s = 2 * 3600.0  # a 1C charge and discharge
        n_cycles = max(1, round(args.measurements * args.every / cycle_s))  # about that many measurements
        protocol = [CyclingStep.charge(1.0, max_duration_s=3600.0), CyclingStep.discharge(1.0, max_duration_s=3600.0)]
        print(f"operando session: {args.size}² px, {len(ENERGIES)} energies, a measurement every "
              f"{args.every:.0f} s of cell time, {n_cycles} cycles at 1C")
        tracemalloc.start()
        RE(operando(bl.detector, bl.energy, ENERGIES, potentiostat=pstat, shutter=bl.shutter,
                    sample_stage=bl.sample_stage, protocol=protocol, n_cycles=n_cycles,
                    measure_every_s=args.every, xanes_options={"n_darks": 1}))
        live.wait(600)
        session.wait(600)
        tracemalloc.stop()
    frames_mb = (2 * len(ENERGIES) + 1) * args.size**2 * 2 / 1e6
    maps_mb = 13 * args.size**2 / 1e6
    if len(monitor.rows) >= 2:
        (n0, m0, _), (n1, m1, _) = monitor.rows[0], monitor.rows[-1]
        per = (m1 - m0) / (n1 - n0) * 1e3
        print(f"growth from measurement {n0} to {n1}: {per:.1f} kB per measurement "
              f"(one measurement's raw frames weigh {frames_mb * 1e3:.0f} kB, its maps {maps_mb * 1e3:.0f} kB)")
    print(f"{monitor.n} measurements; failures: live {live.failures or 'none'}, session {session.failures or 'none'}")


if __name__ == "__main__":
    main()
