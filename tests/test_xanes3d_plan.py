"""The ``xanes_3d`` plan on the simulated TXM with a real RunEngine: documents, focus
tracking, validation, and a group cut short (abort) with the live analysis attached.

A small detector (16 × 32, 24 projections) keeps these cheap; the accuracy of the
analysis is ``tests/test_xanes3d_live.py``.
"""
from __future__ import annotations

import threading
import time
import warnings

import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.utils import RunEngineInterrupted

from simulators.beamline import make_sim_beamline
from simulators.model import SimConfig
from simulators.xanes3d import make_xanes3d_sim
from txm_live.callbacks import LiveAnalysis
from txm_live.energies import xanes_energy_list
from txm_live.plans import xanes_3d
from txm_live.plans.xanes3d import XANES3D_GROUP_KEYS

DETECTOR = (16, 32)
N_PROJECTIONS = 24
#: 10 energies, about the fewest ``fit_xanes`` takes (2 pre-edge, 3 across the edge, 3 in
#: the whiteline range, post-edge to +50 eV)
ENERGIES = xanes_energy_list(8333.0, pre_edge_ev=(-28, -10), pre_edge_step_ev=9, near_edge_ev=(-10, 14),
                             near_edge_step_ev=8.0, post_edge_ev=(14, 50), post_edge_step_ev=9)


def _beamline(tmp_path, *, focus_mode="zp_and_detector"):
    cfg = SimConfig(shape=DETECTOR, sensor_shape=(16 * DETECTOR[0], 16 * DETECTOR[1]),
                    rotation_axis_offset_um=0.4, seed=5)
    bl = make_sim_beamline(tmp_path, model=make_xanes3d_sim(cfg, n_angles=N_PROJECTIONS + 12),
                           energy_ev=float(ENERGIES.max()))
    bl.energy.focus_mode.put(focus_mode)
    bl.sample_stage.r.acceleration.put(0.1)
    return bl


def _plan(bl, energies=ENERGIES, **kwargs):
    options = dict(shutter=bl.shutter, sample_stage=bl.sample_stage, n_projections=N_PROJECTIONS, n_darks=2,
                   n_flats=2)
    options.update(kwargs)
    return xanes_3d(bl.detector, bl.sample_stage.r, bl.energy, energies, **options)


@pytest.fixture(scope="module")
def group(tmp_path_factory):
    """One scan, with a live analysis attached that fails at every energy (its store's
    folder is a file): the scan must not notice."""
    folder = tmp_path_factory.mktemp("frames")
    bl = _beamline(folder)
    blocker = folder / "not_a_folder"
    blocker.write_text("a file where the store's folder should be")
    RE = RunEngine({}, call_returns_result=False)
    docs, analysis_docs = [], []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    live = LiveAnalysis(None, sinks=[lambda name, doc: analysis_docs.append((name, doc))], xanes3d_dir=blocker)
    RE.subscribe(live)
    bl.sample_stage.x.set(3.0).wait(5)
    uids = RE(_plan(bl, md={"sample": "NMC811"}))
    assert live.wait(120)
    return bl, uids, docs, analysis_docs


def test_one_complete_tomography_run_per_energy_tied_by_a_group_uid(group):
    bl, uids, docs, _ = group
    starts = [d for n, d in docs if n == "start"]
    stops = [d for n, d in docs if n == "stop"]
    assert [s["uid"] for s in starts] == list(uids) and len(uids) == ENERGIES.size
    assert {s["xanes3d_uid"] for s in starts} == {starts[0]["xanes3d_uid"]}
    descending = np.sort(ENERGIES)[::-1]  # FXI order: high -> low
    for i, (start, stop) in enumerate(zip(starts, stops)):
        assert set(XANES3D_GROUP_KEYS) <= set(start)
        assert start["plan_name"] == "xanes_3d" and start["scan_type"] == "tomo"
        assert start["xanes3d_index"] == i and start["xanes3d_n_energies"] == ENERGIES.size
        assert start["xanes3d_energies_ev"] == descending.tolist()
        assert start["energy_ev"] == descending[i] and start["energies_ev"] == [descending[i]]
        assert start["sample"] == "NMC811" and start["element"] == "Ni" and start["focus_mode"] == "zp_and_detector"
        assert stop["exit_status"] == "success" and stop["num_events"]["dark"] == 2
        assert stop["num_events"]["flat"] == 2  # flats at every energy (FXI's fly_scan)
        assert stop["num_events"]["primary"] == start["n_projections"] >= N_PROJECTIONS
    # every run ends with the shutter closed and the stage where it was
    assert bl.shutter.state.get() == "close" and bl.sample_stage.r.position == pytest.approx(0.0)
    assert bl.sample_stage.x.position == pytest.approx(3.0)


def test_focus_follows_the_energy_in_every_frame(group):
    bl, uids, docs, _ = group
    descriptors = {d["uid"]: d["name"] for n, d in docs if n == "descriptor"}
    rows = [d["data"] for n, d in docs if n == "event" and descriptors[d["descriptor"]] == "primary"]
    optics = bl.energy.optics
    errors = []
    for data in rows:
        zp, det = optics.focus_positions(data["energy"])
        errors.append(max(abs(data["zp_z"] - zp), abs(data["det_stage_z"] - det)))
    assert max(errors) < 1e-9  # zone plate and detector at the energy's focus in every projection
    # negative control: the focus of the first energy is off by more than the depth of focus at the last
    zp0, _ = optics.focus_positions(float(ENERGIES.max()))
    zp1, _ = optics.focus_positions(float(ENERGIES.min()))
    assert abs(zp1 - zp0) * 1e3 > optics.zone_plate.depth_of_focus_um(float(ENERGIES.min()))


@pytest.mark.parametrize("kwargs, match", [
    ({"energies": ENERGIES[:7]}, "has 7 energies; a 3D XANES fit needs at least 8"),
    ({"energies": np.r_[ENERGIES, ENERGIES[:1]]}, "repeats energies"),
    ({"energies": np.r_[ENERGIES[:-1], 40000.0]}, "outside the range the optics support"),
    ({"energies": np.r_[ENERGIES[:-1], np.nan]}, "non-finite"),
    ({"scan_order": "downwards"}, "scan_order must be one of"),
    ({"md": {"xanes3d_uid": "mine"}}, r"md may not set \['xanes3d_uid'\]"),
    ({"angle_range_deg": (0, 90)}, "at least a half turn"),
    ({"n_projections": 3}, "n_projections must be an integer >= "),
    ({"velocity_deg_s": 10.0}, "exactly one of n_projections and velocity_deg_s"),
    ({"n_flats": 0}, "n_flats must be an integer >= 1"),
    ({"sample_out_um": (0, 0)}, "non-zero"),
])
def test_bad_arguments_are_refused_before_anything_moves(tmp_path, kwargs, match):
    bl = _beamline(tmp_path)
    RE = RunEngine({}, call_returns_result=False)
    docs = []
    RE.subscribe(lambda name, doc: docs.append(name))
    energy0, zp0 = bl.energy.position, bl.zone_plate.z.position
    with pytest.raises(ValueError, match=match):
        RE(_plan(bl, **kwargs))
    assert docs == [] and bl.energy.position == energy0 and bl.zone_plate.z.position == zp0


def _pause_at_energy(RE, bl, index: int, after_frames: int):
    """Request a pause from another thread once energy ``index`` has taken ``after_frames`` projections."""
    seen = {"run": -1, "n": 0}
    original = bl.detector.trigger

    def note(name, doc):
        if name == "start":
            seen["run"], seen["n"] = doc["xanes3d_index"], 0

    def trigger():
        status = original()
        if seen["run"] == index and bl.detector.frame_type.get() == "sample":
            seen["n"] += 1
            if seen["n"] == after_frames:
                threading.Thread(target=RE.request_pause, kwargs={"defer": False}).start()
                time.sleep(0.05)  # the request reaches the RunEngine's loop before the trigger returns
        return status

    bl.detector.trigger = trigger
    RE.subscribe(note)


def test_an_aborted_group_closes_the_shutter_and_the_analysis_says_what_it_could_do(tmp_path):
    bl = _beamline(tmp_path / "frames")
    RE = RunEngine({}, call_returns_result=False)
    analysis_docs = []
    live = LiveAnalysis(None, sinks=[lambda name, doc: analysis_docs.append((name, doc))])
    RE.subscribe(live)
    raw = []
    RE.subscribe(lambda name, doc: raw.append((name, doc)))
    _pause_at_energy(RE, bl, index=2, after_frames=10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dead pixels: NaN absorbance, reported
        with pytest.raises(RunEngineInterrupted):
            RE(_plan(bl))
        RE.abort("operator abort")
        assert live.wait(120)
    stops = [d for n, d in raw if n == "stop"]
    assert [s["exit_status"] for s in stops] == ["success", "success", "abort"]
    assert bl.shutter.state.get() == "close" and bl.sample_stage.r.position == pytest.approx(0.0)
    assert bl.sample_stage.x.position == pytest.approx(0.0)
    starts = [d for n, d in analysis_docs if n == "start"]
    (stop,) = [d for n, d in analysis_docs if n == "stop"]
    assert len(starts) == 1 and starts[0]["analysis"] == "xanes3d_live"
    assert stop["exit_status"] == "abort"
    assert "Could: reconstructed and registered energies [0, 1]" in stop["reason"]
    assert f"Could not: the per-voxel fit of the volume, which needs every energy (missing {list(range(2, ENERGIES.size))})" \
        in stop["reason"]
    descriptors = {d["uid"]: d["name"] for n, d in analysis_docs if n == "descriptor"}
    rows = [d["data"] for n, d in analysis_docs if n == "event" and descriptors[d["descriptor"]] == "energies"]
    assert [r["used"] for r in rows] == [True, True, False] and "raw run abort" in rows[2]["problem"]
    assert "volumes" not in descriptors.values()
    (status,) = [d["data"] for n, d in analysis_docs if n == "event" and descriptors[d["descriptor"]] == "status"]
    assert status["partial"] and not status["fitted"] and status["n_energies_used"] == 2
    assert live.failures == []


def test_an_analysis_failure_never_stops_the_scan(group):
    _, uids, docs, analysis_docs = group
    assert len(uids) == ENERGIES.size  # every energy measured, every run a success
    assert [d["exit_status"] for n, d in docs if n == "stop"] == ["success"] * ENERGIES.size
    (stop,) = [d for n, d in analysis_docs if n == "stop"]
    assert stop["exit_status"] == "fail" and "PARTIAL" in stop["reason"]
    assert "energy 0: " in stop["reason"] and "not_a_folder" in stop["reason"]
    assert f"missing {list(range(ENERGIES.size))}" in stop["reason"]


def test_a_pause_during_a_rotation_retakes_it_and_the_group_completes(tmp_path):
    bl = _beamline(tmp_path / "frames")
    RE = RunEngine({}, call_returns_result=False)
    analysis_docs = []
    live = LiveAnalysis(None, sinks=[lambda name, doc: analysis_docs.append((name, doc))])
    RE.subscribe(live)
    raw = []
    RE.subscribe(lambda name, doc: raw.append((name, doc)))
    _pause_at_energy(RE, bl, index=1, after_frames=10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RunEngineInterrupted):
            RE(_plan(bl))
        assert RE.state == "paused"
        uids = RE.resume()
        assert live.wait(120)
    assert len(uids) == ENERGIES.size
    starts = [d for n, d in raw if n == "start"]
    stops = [d for n, d in raw if n == "stop"]
    assert [s["exit_status"] for s in stops] == ["success"] * ENERGIES.size
    # the paused energy re-took its rotation from the checkpoint before it: every projection
    # once more under its own label, the file's rows overwritten by the re-takes
    descriptors = {d["uid"]: d for n, d in raw if n == "descriptor"}
    paused_primary = [d for n, d in raw if n == "event" and descriptors[d["descriptor"]]["name"] == "primary"
                      and descriptors[d["descriptor"]]["run_start"] == starts[1]["uid"]]
    n = starts[1]["n_projections"]
    assert n < len(paused_primary) <= n + 10 and stops[1]["num_events"]["primary"] == n
    assert sorted({e["data"]["frame_repeat"] for e in paused_primary}) == list(range(n))
    (stop,) = [d for n_, d in analysis_docs if n_ == "stop"]
    assert stop["exit_status"] == "success", stop["reason"]
    assert f"{ENERGIES.size}/{ENERGIES.size} energies; volume fitted" \
        in stop["reason"]
    assert live.failures == []
