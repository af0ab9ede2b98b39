"""The operando part of ``txm-live demo``: a short session over one simulated charge.

A pristine NMC811 electrode (some particles without electrical contact) in the simulated
TXM, on the simulated potentiostat; :func:`txm_live.plans.operando` charges it at 1C to
4.3 V and measures a 2D XANES every ``MEASURE_EVERY_S`` of cell time. The live 2D XANES
analysis maps each measurement, the session callback tracks the particles and writes the
session analysis run to the same Tiled store; the demo then reads that run back from
Tiled (as a viewer would), compares it with the simulator's truth, draws a preview and
replays the session from Tiled.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

#: Cell time between two measurements, s (1C: the SOC moves 0.28 in 1000 s; three
#: measurements before the charge ends at 4.3 V).
MEASURE_EVERY_S = 1000.0
#: Image size of the operando measurements, px (small: the demo stays quick).
OPERANDO_SIZE_PX = 128


def _energies():
    from .energies import xanes_energy_list

    return xanes_energy_list(8333.0, pre_edge_step_ev=25.0, near_edge_step_ev=1.5, post_edge_step_ev=32.0)


def _cell_beamline(out: Path, seed: int):
    from simulators.beamline import make_sim_beamline
    from simulators.devices import make_sim_potentiostat
    from simulators.model import SimConfig, SimTXM
    from simulators.phantom import make_nmc_phantom

    phantom = make_nmc_phantom(n_particles=30, radius_range_um=(1.5, 3.0), seed=seed, state_of_charge=0.0)
    inactive = np.random.default_rng(seed).random(len(phantom.particles)) < 0.15
    model = SimTXM(SimConfig(shape=(OPERANDO_SIZE_PX, OPERANDO_SIZE_PX), seed=seed), sample=phantom)
    bl = make_sim_beamline(out / "frames", model=model)
    pstat = make_sim_potentiostat(bl.model, bl.clock, inactive=inactive, seed=seed)
    return bl, pstat, inactive


def _calibration(model, energies):
    """SOC from the end members' spectra (Ni²⁺ = SOC 0, Ni⁴⁺ = SOC 1), as reference standards give."""
    from .analysis import SocCalibration

    return SocCalibration.from_references(energies, model.spectra.mu_per_um(energies, 2.0),
                                          model.spectra.mu_per_um(energies, 4.0))


def run_operando_demo(session, seed: int) -> str:
    """Run the operando session on ``session`` (the demo's store and RunEngine); return its uid."""
    from .callbacks import subscribe_operando_session
    from .plans import CyclingStep, operando

    bl, pstat, inactive = _cell_beamline(session.out, seed)
    energies = _energies()
    calibration = _calibration(bl.model, energies)
    callback = subscribe_operando_session(session.RE, session.live, calibration=calibration)
    print(f"  operando: {len(bl.model.sample.particles)} NMC811 particles ({int(inactive.sum())} without contact), "
          f"1C charge to 4.3 V, a 2D XANES ({len(energies)} energies, {OPERANDO_SIZE_PX}² px) every "
          f"{MEASURE_EVERY_S:.0f} s of cell time")
    t0 = time.perf_counter()
    session.RE(operando(bl.detector, bl.energy, energies, potentiostat=pstat, shutter=bl.shutter,
                        sample_stage=bl.sample_stage, protocol=[CyclingStep.charge(1.0, voltage_max_v=4.3)],
                        measure_every_s=MEASURE_EVERY_S, xanes_options={"n_darks": 2},
                        md={"sample": "NMC811 half cell (simulated)", "operator": "demo"}))
    measured_s = time.perf_counter() - t0
    session.live.wait(600)
    callback.wait(600)
    session.writer.flush(600)
    session.RE.unsubscribe(callback.token)
    session.live.sinks.remove(callback)
    (uid,) = callback.analysis_uids
    print(f"  operando session {uid[:8]}: measured in {measured_s:.1f} s, analysed and stored "
          f"{time.perf_counter() - t0 - measured_s:.1f} s later (cell time {bl.clock.now() / 60:.0f} min, "
          f"cell SOC {pstat.cell.state().soc:.2f})")
    _report(session, uid, inactive)
    _replay(session, uid, calibration)
    return uid


def _report(session, uid: str, inactive) -> None:
    from .operando_replay import session_analysis_runs

    (run,) = session_analysis_runs(session.server.client(), uid).values()
    rows = run["measurements"].read()
    for k, soc, mean, het in zip(rows["operando_index"].values, rows["counted_soc"].values,
                                 rows["mean_soc"].values, rows["heterogeneity_index"].values):
        print(f"    measurement {k}: cell SOC (coulomb counting) {soc:.2f}, particles' mean SOC {mean:.2f}, "
              f"spread across particles {het:.2f}")
    tracks = run["tracks"].read()
    last = tracks["operando_index"].values == tracks["operando_index"].values.max()
    print(f"    inactive particles flagged: {int(tracks['inactive'].values[last].sum())} "
          f"(the simulated cell has {int(inactive.sum())})")
    path = _preview(run, session.out / "previews" / "operando_session.png")
    print(f"    preview (read back from Tiled): previews/{path.name}")


def _preview(run, path: Path) -> Path:
    """Per-particle SOC vs the cell's counted SOC, and the last particle map, from the Tiled run."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    particles = run["particles"].read()
    track_map = np.asarray(run["particle_map"].read()["track_map"])[-1]
    tracks = run["tracks"].read()
    last = tracks["operando_index"].values == tracks["operando_index"].values.max()
    inactive = set(tracks["track_id"].values[last][tracks["inactive"].values[last]].tolist())
    fig = Figure(figsize=(10, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    ax, ax_map = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    track_ids = particles["track_id"].values
    for track in np.unique(track_ids):
        rows = track_ids == track
        style = dict(color="crimson", lw=1.5) if track in inactive else dict(color="steelblue", lw=0.8, alpha=0.6)
        ax.plot(particles["counted_soc"].values[rows], particles["soc"].values[rows], marker=".", **style)
    ax.plot([0, 1], [0, 1], color="k", ls=":", lw=1)
    ax.set(xlabel="cell SOC (coulomb counting)", ylabel="particle SOC (XANES)",
           title="per-particle SOC (red: flagged inactive)")
    ax_map.imshow(track_map, cmap="nipy_spectral", interpolation="nearest")
    ax_map.set_title("tracked particles, last measurement (colour: track)")
    ax_map.set_axis_off()
    fig.tight_layout()
    fig.savefig(path)
    return path


def _replay(session, uid: str, calibration) -> None:
    from .operando_replay import replay_session, session_analysis_runs

    docs = []
    replay_session(uid, session.server.client(), results_client=False,
                   sinks=[lambda name, doc: docs.append((name, doc))], calibration=calibration)
    (live,) = session_analysis_runs(session.server.client(), uid).values()
    stored = live["particles"].read()["soc"].values
    replayed = [v for name, doc in docs if name == "event_page" and "soc" in doc["data"] for v in doc["data"]["soc"]]
    same = np.array_equal(np.asarray(replayed), stored, equal_nan=True)
    print(f"    session replayed from Tiled: per-particle SOC {'identical' if same else 'DIFFERENT'}")
