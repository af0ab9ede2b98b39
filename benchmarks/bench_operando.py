"""Benchmark: per-measurement operando analysis of a 2D XANES vs the time the cell gives it.

Simulates a few 2D XANES measurements (default 1024², 60 energies) of a charging NMC811
cell on the simulated TXM (the particles' oxidation state follows the cell at 1C), then
times, per measurement, what a live operando session does with each:

    flat/dark correction → stack alignment → per-pixel XANES fit
    → particle segmentation → tracking → per-particle statistics → session statistics
    (the last three together are ``OperandoSession.add``, also timed)

and compares the total with the time budget at 1C: the cell's SOC moves 1/3600 per
second, so a 0.05 step in SOC (about the per-particle SOC accuracy of the tests, 0.03-0.05)
takes 180 s; a measurement every 180 s is the most a 1C session can use, and the FXI
2D XANES itself takes 5-10 min. Peer figures, measured side by side on the same maps:
the textbook scikit-image segmentation (Otsu, distance transform, ``peak_local_max``
markers, watershed) and per-particle means with ``skimage.measure.regionprops_table``.

Usage::

    python benchmarks/bench_operando.py                  # 1024², 60 energies, 3 measurements
    python benchmarks/bench_operando.py --size 512 --energies 40
"""
from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.filters import threshold_otsu
from skimage.measure import regionprops_table
from skimage.segmentation import watershed

from simulators.electrochem import CellControl, NMCCell, OperandoSample
from simulators.model import SimConfig, SimTXM
from simulators.phantom import make_nmc_phantom
from simulators.stacks import simulate_xanes_stack
from txm_live.energies import xanes_energy_list
from txm_live.analysis import (
    OperandoSession,
    ParticleTracker,
    align_stack,
    fit_xanes,
    flat_dark_correct,
    particle_statistics,
    segment_particles,
)

#: Seconds for the SOC to move by 0.05 at 1C (1/3600 per second).
BUDGET_S_AT_1C = 0.05 * 3600.0


def energies_for(n):
    """About ``n`` energies across the Ni K edge (dense step chosen to match), high → low."""
    dense_step = 25.0 / max(n - 14, 4)
    return xanes_energy_list(8333.0, near_edge_step_ev=dense_step)[::-1]


def simulate(size, n_energies, n_measurements, interval_s, seed=0):
    phantom = make_nmc_phantom(n_particles=30, radius_range_um=(1.5, 3.0), seed=seed, state_of_charge=0.0)
    sim = SimTXM(SimConfig(shape=(size, size), seed=seed), sample=phantom)
    cell = NMCCell.from_phantom(phantom, seed=seed)
    sim.sample_source = OperandoSample(cell, phantom)
    cell.apply(CellControl(mode="cc", current_a=cell.c_rate_current_a(1.0)))
    energies = energies_for(n_energies)
    rng = np.random.default_rng(seed)
    stacks = []
    for k in range(n_measurements):
        if k:
            sim.displace_sample(*rng.normal(scale=1.0, size=2))
        stacks.append(simulate_xanes_stack(sim, energies, start_time_s=k * interval_s, seconds_per_energy=2.0))
    return stacks, sim.pixel_size_nm


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def textbook_segmentation(edge_jump, min_distance_px):
    """The scikit-image gallery's watershed on a distance transform (the peer)."""
    work = ndi.gaussian_filter(np.nan_to_num(edge_jump), 1.0)
    mask = ndi.binary_fill_holes(work > threshold_otsu(work))
    distance = ndi.distance_transform_edt(mask)
    peaks = peak_local_max(distance, min_distance=min_distance_px, labels=ndi.label(mask)[0])
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-distance, markers, mask=mask)


def measure(stacks):
    """Time every step per measurement; the particle steps once more through OperandoSession."""
    session = OperandoSession()
    tracker = ParticleTracker()
    rows = []
    for stack in stacks:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            absorbance, t_fd = timed(flat_dark_correct, stack.frames, stack.flats, stack.darks)
        aligned, t_al = timed(align_stack, absorbance, mode="running_mean", order=np.argsort(stack.energies_ev))
        result, t_fit = timed(fit_xanes, aligned.aligned, stack.energies_ev)
        labels, t_seg = timed(segment_particles, result.edge_jump)
        _, t_track = timed(tracker.update, labels, result.edge_jump)
        _, t_stats = timed(particle_statistics, labels, result.whiteline, edge_ev=result.edge,
                           weights=result.edge_jump, valid=result.mask)
        summary, t_session = timed(session.add_result, result)
        _, t_series = timed(session.statistics)
        rows.append(dict(flat_dark=t_fd, align=t_al, fit=t_fit, segment=t_seg, track=t_track,
                         particle_stats=t_stats, session_add=t_session, session_stats=t_series,
                         n_particles=summary.n_particles, result=result))
    return rows, session


def peers(result, min_distance_px):
    labels = segment_particles(result.edge_jump)
    _, t_ours = timed(segment_particles, result.edge_jump)
    _, t_peer = timed(textbook_segmentation, result.edge_jump, min_distance_px)
    wl = np.where(result.mask, result.whiteline, np.nan)
    _, t_stats = timed(particle_statistics, labels, result.whiteline, edge_ev=result.edge,
                       weights=result.edge_jump, valid=result.mask)
    _, t_rp = timed(regionprops_table, labels.labels, intensity_image=np.nan_to_num(wl),
                    properties=("label", "area", "centroid", "intensity_mean", "intensity_std"))
    return t_ours, t_peer, t_stats, t_rp


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--energies", type=int, default=60)
    parser.add_argument("--measurements", type=int, default=3)
    parser.add_argument("--interval-s", type=float, default=360.0)
    args = parser.parse_args()
    t0 = time.perf_counter()
    stacks, pixel_size_nm = simulate(args.size, args.energies, args.measurements, args.interval_s)
    n_e = stacks[0].energies_ev.size
    print(f"simulated {args.measurements} measurements of {args.size}² × {n_e} energies "
          f"in {time.perf_counter() - t0:.1f} s (not part of the timings)")
    rows, session = measure(stacks)
    steps = ("flat_dark", "align", "fit", "segment", "track", "particle_stats", "session_stats")
    print(f"{'measurement':>11} " + " ".join(f"{s:>14}" for s in steps) + f" {'total':>8} {'particles':>9}"
          f" {'session.add':>11}")
    for k, r in enumerate(rows):
        total = sum(r[s] for s in steps)
        print(f"{k:>11} " + " ".join(f"{r[s]:>13.3f}s" for s in steps) + f" {total:>7.2f}s {r['n_particles']:>9}"
              f" {r['session_add']:>10.3f}s")
    later = rows[1:] or rows
    per = float(np.median([sum(r[s] for s in steps) for r in later]))
    print(f"per measurement (median after the first): {per:.2f} s; budget at 1C (ΔSOC 0.05): "
          f"{BUDGET_S_AT_1C:.0f} s → {per / BUDGET_S_AT_1C:.3f} of it "
          f"({BUDGET_S_AT_1C / per:.0f}× headroom); a {args.interval_s:.0f} s measurement cadence: "
          f"{per / args.interval_s:.3f}")
    print(f"session memory after {len(rows)} measurements: {session.nbytes} bytes of per-particle rows")
    smallest_radius_px = 1.5e3 / pixel_size_nm  # the phantom's smallest particle, 1.5 µm
    t_ours, t_peer, t_stats, t_rp = peers(rows[-1]["result"], max(3, int(smallest_radius_px)))
    print(f"segmentation: txm-live (h-maxima markers) {t_ours:.3f} s, skimage textbook (peak_local_max) "
          f"{t_peer:.3f} s, ratio {t_ours / t_peer:.2f}")
    print(f"per-particle statistics: txm-live (whiteline + edge, weighted, bincount) {t_stats:.3f} s, "
          f"skimage regionprops_table (whiteline mean/std) {t_rp:.3f} s, ratio {t_stats / t_rp:.2f}")


if __name__ == "__main__":
    main()
