"""Where must a XANES energy list put its points for the edge and whiteline accuracy?

Simulates the 2D XANES test scan (128², 1e4 flat counts, half-charged NMC, FXI order
high → low) on several energy lists and fits each with the analysis a user runs (flat/dark,
running-mean alignment in energy order, ``fit_xanes``); prints whiteline and edge RMS
against the simulator's truth over pixels with an edge jump >= 0.2, mean over seeds.

    .venv/bin/python benchmarks/study_energy_list.py [--seeds 0 1 2]
"""
from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

from simulators.model import SimConfig, SimTXM
from simulators.phantom import make_nmc_phantom
from simulators.stacks import simulate_xanes_stack
from txm_live.analysis import align_stack, apply_shifts, fit_xanes, flat_dark_correct
from txm_live.energies import xanes_energy_list

EDGE = 8333.0
MIN_JUMP = 0.2


def _legacy(edge_ev=EDGE):
    """The simulator's former list (simulators.stacks.edge_energies): 65 energies."""
    pre = np.arange(-60.0, -10.0 + 1e-9, 10.0)
    dense = np.arange(-5.0, 20.0 + 1e-9, 0.5)
    post = np.array([25.0, 30.0, 40.0, 50.0, 65.0, 80.0, 100.0, 120.0])
    return edge_ev + np.unique(np.round(np.concatenate([pre, dense, post]), 6))


def candidates() -> dict:
    L = xanes_energy_list
    return {
        "legacy edge_energies (65)": _legacy(),
        "xanes_energy_list default": L(EDGE),
        "near step 0.5": L(EDGE, near_edge_step_ev=0.5),
        "near -5..20 step 0.5": L(EDGE, pre_edge_ev=(-60.0, -5.0), pre_edge_step_ev=10.0,
                                   near_edge_ev=(-5.0, 20.0), near_edge_step_ev=0.5,
                                   post_edge_ev=(20.0, 120.0), post_edge_step_ev=8.0),
        "near -5..20 0.5, post 25..120 step 12": L(EDGE, pre_edge_ev=(-60.0, -5.0), pre_edge_step_ev=10.0,
                                                   near_edge_ev=(-5.0, 25.0), near_edge_step_ev=0.5,
                                                   post_edge_ev=(25.0, 120.0), post_edge_step_ev=12.0),
        "near step 0.75, post step 12": L(EDGE, post_edge_step_ev=12.0),
        "near step 0.75, post to 80": L(EDGE, post_edge_ev=(25.0, 80.0)),
        "pre 5, near -10..20 0.5, post 10": L(EDGE, pre_edge_ev=(-60.0, -10.0), near_edge_ev=(-10.0, 20.0),
                                             near_edge_step_ev=0.5, post_edge_ev=(20.0, 120.0),
                                             post_edge_step_ev=10.0),
        "pre 10, near -10..20 0.5, post 10": L(EDGE, pre_edge_ev=(-60.0, -10.0), pre_edge_step_ev=10.0,
                                              near_edge_ev=(-10.0, 20.0), near_edge_step_ev=0.5,
                                              post_edge_ev=(20.0, 120.0), post_edge_step_ev=10.0),
        "pre 5, near -15..20 0.5, post 10": L(EDGE, near_edge_ev=(-15.0, 20.0), near_edge_step_ev=0.5,
                                             post_edge_ev=(20.0, 120.0), post_edge_step_ev=10.0),
        **{f"post sweep: step {step:g} from +25": L(EDGE, pre_edge_ev=(-60.0, -10.0), pre_edge_step_ev=10.0,
                                                   near_edge_ev=(-10.0, 25.0), near_edge_step_ev=0.5,
                                                   post_edge_ev=(25.0, 120.0), post_edge_step_ev=step)
           for step in (5.0, 8.0, 12.0, 19.0, 32.0)},
        **{f"pre sweep: near from {lo:g}": L(EDGE, pre_edge_ev=(-60.0, lo), pre_edge_step_ev=10.0,
                                             near_edge_ev=(lo, 25.0), near_edge_step_ev=0.5,
                                             post_edge_ev=(25.0, 120.0), post_edge_step_ev=8.0)
           for lo in (-20.0, -15.0, -5.0)},
    }


def measure(energies, seed):
    sim = SimTXM(SimConfig(shape=(128, 128), flat_counts=1e4, seed=seed),
                 sample=make_nmc_phantom(state_of_charge=0.5, seed=seed))
    st = simulate_xanes_stack(sim, energies[::-1], n_darks=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        absorb = flat_dark_correct(st.frames, st.flats, st.darks)
        res = align_stack(absorb, mode="running_mean", apply=False, order=np.argsort(st.energies_ev))
        r = fit_xanes(apply_shifts(absorb, res.shifts - st.drift_px[0]), st.energies_ev)
    t = st.truth
    sel = t.mask & r.mask & (r.edge_jump >= MIN_JUMP)
    dw = (r.whiteline - t.whiteline_ev)[sel]
    de = (r.edge - t.edge_ev)[sel]
    return np.sqrt(np.mean(dw**2)), np.sqrt(np.mean(de**2)), np.mean(de)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    print(f"{'energy list':42s} {'n':>4s} {'whiteline RMS':>14s} {'edge RMS':>9s} {'edge bias':>9s}")
    parser.add_argument("--only", nargs="*", default=None, help="names (substrings) of the lists to run")
    args = parser.parse_args(argv)
    for name, energies in candidates().items():
        if args.only and not any(o in name for o in args.only):
            continue
        t0 = time.perf_counter()
        rows = np.array([measure(energies, s) for s in args.seeds])
        wl, ed, bias = rows.mean(axis=0)
        print(f"{name:42s} {energies.size:4d} {wl:11.3f} eV {ed:6.3f} eV {bias:+6.3f} eV"
              f"   ({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
