"""An operando session end to end: plan, live analysis, session analysis in Tiled, replay.

Real parts: a RunEngine, the simulated TXM writing HDF5, the simulated potentiostat on
an NMC811 cell whose particles feed the microscope's sample frame by frame, the live 2D
XANES analysis, the session callback, and a Tiled server over HTTP on 127.0.0.1.

The session: a pristine 30-particle electrode (6 particles without contact: seed 0 of
the cell), charged at 1C to 4.3 V; a 2D XANES (128², 29 energies) every 800 s of cell
time: 4 measurements. Truth: the cell's per-particle mean SOC at the middle of each
measurement, its inactive flags, and the phantom's label map at the drift of each
measurement's first frame (the analysis' reference).
"""
from __future__ import annotations

import numpy as np
import pytest
from bluesky import RunEngine
from scipy.stats import spearmanr

from simulators.beamline import make_sim_beamline
from simulators.devices import make_sim_potentiostat
from simulators.model import SimConfig, SimTXM
from simulators.phantom import make_nmc_phantom
from txm_live.analysis import SocCalibration
from txm_live.callbacks import subscribe_live_analysis, subscribe_operando_session
from txm_live.energies import xanes_energy_list
from txm_live.operando_replay import find_session_runs, replay_session, session_analysis_runs
from txm_live.plans import CyclingStep, operando
from txm_live.store import subscribe_tiled_writer

SEED = 0
ENERGIES = xanes_energy_list(8333.0, pre_edge_step_ev=25.0, near_edge_step_ev=1.5, post_edge_step_ev=32.0)
MEASURE_EVERY_S = 800.0
RECORD_EVERY_S = 120.0


def _electrode():
    phantom = make_nmc_phantom(n_particles=30, radius_range_um=(1.5, 3.0), seed=SEED, state_of_charge=0.0)
    inactive = np.random.default_rng(SEED).random(len(phantom.particles)) < 0.15  # 6 of 30
    return phantom, inactive


class _Truth:
    """At each measurement's stop: the cell's per-particle SOC mid-scan, the reference drift."""

    def __init__(self, bl, pstat):
        self.bl, self.history, self.rows = bl, [], []
        pstat.cell.add_observer(self.history.append)

    def __call__(self, name, doc):
        if name == "start":
            self.scan_type = doc.get("scan_type")
        if name == "stop" and self.scan_type == "xanes2d":
            frames = self.bl.detector.truth_for("sample")
            middle = np.mean([f.time_s for f in frames])
            state = min(self.history, key=lambda s: abs(s.time_s - middle))
            self.rows.append({"drift_px": frames[0].drift_px, "state": state})
            self.history.clear()


@pytest.fixture(scope="module")
def session(tiled_server):
    phantom, inactive = _electrode()
    model = SimTXM(SimConfig(shape=(128, 128), seed=SEED), sample=phantom)
    bl = make_sim_beamline(tiled_server.frames_dir, model=model)
    pstat = make_sim_potentiostat(bl.model, bl.clock, inactive=inactive, seed=SEED)
    calibration = SocCalibration.from_references(ENERGIES, model.spectra.mu_per_um(ENERGIES, 2.0),
                                                 model.spectra.mu_per_um(ENERGIES, 4.0))
    RE = RunEngine({}, call_returns_result=False)
    client = tiled_server.client()
    writer = subscribe_tiled_writer(RE, client, batch_size=50)
    live = subscribe_live_analysis(RE, client, writer=writer)
    callback = subscribe_operando_session(RE, live, calibration=calibration)
    truth = _Truth(bl, pstat)
    RE.subscribe(truth)
    RE(operando(bl.detector, bl.energy, ENERGIES, potentiostat=pstat, shutter=bl.shutter,
                sample_stage=bl.sample_stage, protocol=[CyclingStep.charge(1.0, voltage_max_v=4.3)],
                measure_every_s=MEASURE_EVERY_S, record_every_s=RECORD_EVERY_S,
                xanes_options={"n_darks": 2}, md={"sample": "NMC811 (simulated)"}))
    assert live.wait(300) and callback.wait(300) and writer.flush(300)
    assert live.failures == [] and callback.failures == [] and writer.failures == []
    (uid,) = callback.analysis_uids
    return {"uid": uid, "client": client, "calibration": calibration, "truth": truth.rows,
            "phantom": phantom, "inactive": inactive, "model": model, "callback": callback}


def _table(run, stream):
    return run[stream].read()


def test_every_run_of_the_session_is_linked_and_stored(session):
    client, uid = session["client"], session["uid"]
    measurements = find_session_runs(client, uid, scan_type="xanes2d")
    starts = [r.metadata["start"] for r in measurements.values()]
    assert [s["operando_index"] for s in starts] == [0, 1, 2, 3]
    assert [s["step_index"] for s in starts] == [-1, 0, 0, 0]  # the first before any current
    times = np.array([s["cell_time_s"] for s in starts])
    np.testing.assert_allclose(np.diff(times), MEASURE_EVERY_S, atol=1e-6)  # measured on schedule
    soc = np.array([s["counted_soc"] for s in starts])
    assert soc[0] == 0.0 and 0 < soc[1] < MEASURE_EVERY_S / 3600.0  # the charge began after measurement 0
    # then 1C all along: counted SOC rises by 800 s / 3600 s per interval (coulomb counting)
    np.testing.assert_allclose(np.diff(soc[1:]), MEASURE_EVERY_S / 3600.0, rtol=1e-9)
    assert all(r.metadata["stop"]["exit_status"] == "success" for r in measurements.values())
    baseline = next(iter(measurements.values()))["baseline"].read()
    assert len(baseline["pstat_voltage_v"]) == 2  # the potentiostat at the run's start and end
    cycling = find_session_runs(client, uid, scan_type="operando_cycling")
    # three gaps between measurements, the charge after the last one up to its cutoff, the closing reading
    assert len(cycling) == 5
    to_cutoff = list(cycling.values())[3]["primary"].read()
    assert to_cutoff["pstat_limit_reached"].values[-1] == 1  # the charge ended at 4.3 V
    assert np.all(np.diff(to_cutoff["pstat_voltage_v"].values[:-1]) > 0)  # rising while charging
    gap = next(iter(cycling.values()))["primary"].read()
    steps = np.diff(np.asarray(gap["pstat_time_s"]))
    # a steady rate (the first reading waits for the monochromator to settle: + 0.5 s)
    np.testing.assert_allclose(steps[:-1], RECORD_EVERY_S, atol=0.5 + 1e-6)
    assert list(cycling.values())[-1].metadata["start"]["operando_complete"] is True
    (analysis,) = session_analysis_runs(client, uid).values()
    assert analysis.metadata["stop"]["exit_status"] == "success"
    assert "4 of 4 measurements analysed" in analysis.metadata["stop"]["reason"]
    rows = _table(analysis, "measurements")
    assert list(rows["raw_uid"]) == list(measurements)
    assert list(rows["problem"]) == [""] * 4


def _truth_particle_per_track(session, analysis):
    """For each (measurement, track) row: the truth particle most of its pixels image."""
    phantom, model = session["phantom"], session["model"]
    px_um = model.pixel_size_nm / 1e3
    maps = analysis["particle_map"].read()
    out = {}
    for k, track_map in enumerate(np.asarray(maps["track_map"])):
        dy, dx = session["truth"][k]["drift_px"]
        truth = phantom.label_map(model.shape, px_um, origin_um=(-dy * px_um, -dx * px_um))
        for track in np.unique(track_map[track_map > 0]):
            counts = np.bincount(truth[track_map == track], minlength=len(phantom.particles) + 1)
            counts[0] = 0
            out[(k, int(track))] = int(np.argmax(counts)) - 1 if counts.max() else -1
    return out


def test_per_particle_soc_follows_the_cells_particles(session):
    (analysis,) = session_analysis_runs(session["client"], session["uid"]).values()
    rows = _table(analysis, "particles")
    owner = _truth_particle_per_track(session, analysis)
    est, true, mean = [], [], []
    mean_soc = np.asarray(_table(analysis, "measurements")["mean_soc"])
    for k, track, soc in zip(rows["operando_index"].values, rows["track_id"].values, rows["soc"].values):
        particle = owner[(int(k), int(track))]
        if particle >= 0 and np.isfinite(soc):
            est.append(soc)
            true.append(session["truth"][int(k)]["state"].particle_soc[particle])
            mean.append(mean_soc[int(k)])
    assert len(est) >= 100  # 4 measurements of ~30 particles
    rho = spearmanr(est, true)[0]
    assert rho >= 0.9  # achieved 0.932 (the acceptance: 0.9)
    rmse = float(np.sqrt(np.mean((np.array(est) - np.array(true)) ** 2)))
    assert rmse <= 0.08  # achieved 0.058
    # negative control: the session mean given to every particle follows the charge, not
    # the particles
    assert spearmanr(mean, true)[0] < 0.8  # achieved 0.62


def test_inactive_particles_are_flagged(session):
    (analysis,) = session_analysis_runs(session["client"], session["uid"]).values()
    tracks = _table(analysis, "tracks")
    owner = _truth_particle_per_track(session, analysis)
    first = {}
    for (k, track), particle in sorted(owner.items()):
        first.setdefault(track, particle)
    last = tracks["operando_index"].values == tracks["operando_index"].values.max()
    flagged = {first[int(t)] for t, flag in zip(tracks["track_id"].values[last], tracks["inactive"].values[last])
               if flag}
    truly = set(np.flatnonzero(session["inactive"]).tolist())
    assert len(flagged & truly) / len(truly) >= 0.9  # achieved 6/6
    assert flagged <= truly  # no active particle flagged
    # negative control: after the first measurement (no charge passed yet) nothing is judged
    at_first = tracks["operando_index"].values == 0
    assert np.all(np.isnan(tracks["activity"].values[at_first]))
    assert not tracks["inactive"].values[at_first].any()


def _rows_by_stream(docs) -> dict:
    """``{stream: {key: list of values}}`` of an analysis run's documents."""
    import event_model

    names, out = {}, {}
    for name, doc in docs:
        if name == "descriptor":
            names[doc["uid"]] = doc["name"]
        events = event_model.unpack_event_page(doc) if name == "event_page" else [doc] if name == "event" else []
        for event in events:
            table = out.setdefault(names[event["descriptor"]], {})
            for key, value in event["data"].items():
                table.setdefault(key, []).append(value)
    return out


def test_replaying_the_session_from_tiled_gives_the_same_rows(session):
    client, uid = session["client"], session["uid"]
    docs = []
    replay_session(uid, client, results_client=False, sinks=[lambda name, doc: docs.append((name, doc))],
                   calibration=session["calibration"])
    assert docs[0][1]["replay"] is True and docs[-1][1]["exit_status"] == "success"
    (live,) = session_analysis_runs(client, uid).values()
    again = _rows_by_stream(docs)
    for stream in ("measurements", "particles", "tracks", "particle_map"):
        stored = live[stream].read()
        assert set(again[stream]) == set(stored) - {"time", "seq_num"}
        for key, values in again[stream].items():
            np.testing.assert_array_equal(np.asarray(values), np.asarray(stored[key]), err_msg=f"{stream}.{key}")
