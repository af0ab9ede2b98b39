"""Live 2D XANES analysis: real RunEngine, simulated beamline writing HDF5, Tiled over HTTP.

One module-scoped scan (88 energies across the Ni K edge, 128², FXI order high → low) is
analysed live; its analysis run is checked against the simulator's ground truth, found
from the raw run in Tiled, and replayed from Tiled to the same maps. Failure injection and
abort use short scans of their own.
"""
from __future__ import annotations

import threading
import warnings

import numpy as np
import pytest
from bluesky import RunEngine
from scipy import ndimage
from tiled.queries import Key

from simulators.beamline import make_sim_beamline
from simulators.model import SimConfig
from txm_live.analysis import FlatDarkWarning, fit_xanes, flat_dark_correct
from txm_live.callbacks import subscribe_live_analysis
from txm_live.energies import xanes_energy_list
from txm_live.plans import xanes_2d
from txm_live.replay import find_analysis_runs, replay
from txm_live.store import subscribe_tiled_writer

MIN_JUMP = 0.2
N_ENERGIES = 88  # xanes_energy_list(8333.0)


def _rms(a):
    return float(np.sqrt(np.mean(np.square(a))))


def _scan(RE, bl, energies, **kwargs):
    kwargs.setdefault("n_darks", 5)
    return RE(xanes_2d(bl.detector, bl.energy, energies, shutter=bl.shutter, sample_stage=bl.sample_stage,
                       **kwargs))


@pytest.fixture(scope="module")
def live_scan(tiled_server, tmp_path_factory):
    """A full edge scan with the live analysis subscribed; raw and analysis runs in Tiled."""
    RE = RunEngine({}, call_returns_result=False)
    client = tiled_server.client()
    writer = subscribe_tiled_writer(RE, client, batch_size=100)
    previews = tmp_path_factory.mktemp("previews")
    call_threads, emit_threads = [], []  # which thread ran the callback / emitted analysis docs
    live = subscribe_live_analysis(RE, client, preview_dir=previews, writer=writer,
                                   sinks=[lambda name, doc: emit_threads.append(threading.current_thread())])
    RE.unsubscribe(live.token)

    def recorded(name, doc):  # the same callback, its thread recorded
        call_threads.append(threading.current_thread())
        live(name, doc)

    RE.subscribe(recorded)
    bl = make_sim_beamline(tiled_server.frames_dir, config=SimConfig(shape=(128, 128), seed=1))
    (uid,) = _scan(RE, bl, xanes_energy_list(8333.0))
    assert live.wait(300) and writer.flush(300)
    return {"uid": uid, "live": live, "writer": writer, "bl": bl, "client": client, "previews": previews,
            "call_threads": call_threads, "emit_threads": emit_threads}


def test_analysis_run_is_found_from_the_raw_run(live_scan):
    client, uid, live = live_scan["client"], live_scan["uid"], live_scan["live"]
    assert live.failures == [] and live_scan["writer"].failures == []
    found = client.search(Key("start.parent_uid") == uid)
    assert list(found) == live.analysis_uids[uid]
    run = found[live.analysis_uids[uid][0]]
    start, stop = run.metadata["start"], run.metadata["stop"]
    assert start["analysis"] == "xanes2d_live" and start["scan_type"] == "xanes2d"
    assert start["analysis_parameters"]["registration_mode"] == "running_mean"
    assert stop["exit_status"] == "success" and "PARTIAL" not in stop["reason"]
    assert {"drift", "spectrum", "maps", "status"} <= set(run)
    assert len(run["drift"]["drift_y_px"].read()) == N_ENERGIES
    assert len(run["spectrum"]["mean_absorbance"].read()) == N_ENERGIES
    final = run["maps"]["final"].read()
    assert bool(final[-1]) and not final[:-1].any()  # partial maps while scanning, then the final ones
    # a preview whiteline map once the peak was passed, long before the pre-edge (high -> low)
    n_energies = run["maps"]["n_energies"].read()
    assert len(final) >= 2 and n_energies[0] <= 50
    assert np.isfinite(run["maps"]["whiteline"].read()[0]).sum() > 1000
    status = run["status"].read()
    assert status["raw_exit_status"].values[0] == "success" and not status["partial"].values[0]
    # the PNG preview (Agg, from the worker) was written
    assert any(p.suffix == ".png" for p in live_scan["previews"].iterdir())


def test_whiteline_and_drift_match_the_truth(live_scan):
    bl, live, client, uid = live_scan["bl"], live_scan["live"], live_scan["client"], live_scan["uid"]
    run = client[live.analysis_uids[uid][0]]
    truth_drift = np.array([t.drift_px for t in bl.detector.truth_for("sample")])
    measured = np.column_stack([run["drift"]["drift_y_px"].read(), run["drift"]["drift_x_px"].read()])
    relative = truth_drift - truth_drift[0]
    err = measured - relative
    assert _rms(np.hypot(err[:, 0], err[:, 1])) <= 0.11  # achieved 0.076 px
    # negative control: with no drift correction the error is the drift itself, 0.49 px
    assert _rms(np.hypot(relative[:, 0], relative[:, 1])) > 0.11

    whiteline = run["maps"]["whiteline"].read()[-1]
    mask = run["maps"]["mask"].read()[-1].astype(bool)
    jump = run["maps"]["edge_jump"].read()[-1]
    # the maps are aligned to the first frame; put the truth there too
    t = bl.model.truth_maps()
    d0 = truth_drift[0]
    wl_true = ndimage.shift(np.nan_to_num(t.whiteline_ev), d0, order=1, mode="nearest")
    inside = ndimage.binary_erosion(ndimage.shift(t.mask.astype(float), d0, order=0) > 0.5, iterations=2)
    sel = inside & mask & (jump >= MIN_JUMP)
    assert sel.sum() > 0.5 * inside.sum()  # achieved 2513 of 2577
    assert _rms((whiteline - wl_true)[sel]) <= 0.2  # achieved 0.134 eV
    # negative control: the same raw run, flat/dark corrected and fitted without
    # registration, misses the truth by 0.456 eV rms
    raw = client[uid]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FlatDarkWarning)  # dead pixels -> NaN, reported
        absorbance = flat_dark_correct(raw["primary"]["txm_det_image"].read(),
                                       raw["flat"]["txm_det_image"].read(),
                                       raw["dark"]["txm_det_image"].read())
    unaligned = fit_xanes(absorbance, np.asarray(raw["primary"]["energy"].read()))
    sel_u = inside & unaligned.mask & (unaligned.edge_jump >= MIN_JUMP)
    assert _rms((unaligned.whiteline - wl_true)[sel_u]) > 0.2


def test_replay_from_tiled_gives_identical_maps(live_scan):
    client, uid, live = live_scan["client"], live_scan["uid"], live_scan["live"]
    (new_uid,) = replay(uid, client, progress=False, timeout=300)
    runs = find_analysis_runs(client, uid)
    assert list(runs) == [live.analysis_uids[uid][0], new_uid]
    live_run, replayed = runs[live.analysis_uids[uid][0]], runs[new_uid]
    assert replayed.metadata["start"]["replay"] is True
    assert replayed.metadata["stop"]["exit_status"] == "success"
    for field in ("whiteline", "edge", "edge_jump", "mask"):
        np.testing.assert_array_equal(replayed["maps"][field].read()[-1], live_run["maps"][field].read()[-1])
    for field in ("drift_y_px", "drift_x_px"):
        np.testing.assert_array_equal(replayed["drift"][field].read(), live_run["drift"][field].read())
    np.testing.assert_array_equal(replayed["spectrum"]["mean_absorbance"].read(),
                                  live_run["spectrum"]["mean_absorbance"].read())


def test_the_runengine_thread_only_enqueues(live_scan):
    """The analysis never runs on the RunEngine's thread: every analysis document is
    emitted by the worker. (How fast the callback returns is a benchmark figure:
    ``benchmarks/bench_live.py`` reports the callback time per document.)"""
    calls, emits = live_scan["call_threads"], live_scan["emit_threads"]
    assert len(calls) > 200 and len(emits) > 10
    assert not set(emits) & set(calls)
    assert {t.name for t in emits} == {"txm-live-analysis"}


def test_injected_analysis_failure_leaves_the_scan_and_raw_run_intact(RE, sim_beamline, tiled_server, monkeypatch):
    import txm_live.analysis._partial as partial
    import txm_live.analysis._pipeline as pipeline

    def broken_fit(*args, **kwargs):
        raise RuntimeError("injected fit failure")

    monkeypatch.setattr(pipeline, "fit_xanes", broken_fit)  # final maps
    monkeypatch.setattr(partial, "fit_xanes", broken_fit)   # partial maps
    client = tiled_server.client()
    writer = subscribe_tiled_writer(RE, client, batch_size=100)
    live = subscribe_live_analysis(RE, client, writer=writer, partial_every=2, min_partial_energies=2)
    energies = [8300.0, 8320.0, 8333.0, 8336.0, 8340.0, 8350.0, 8380.0, 8420.0]
    (uid,) = _scan(RE, sim_beamline, energies, n_darks=2)
    assert live.wait(120) and writer.flush(120)
    raw = client[uid]
    assert raw.metadata["stop"]["exit_status"] == "success"
    assert raw["primary"]["txm_det_image"].read().shape == (len(energies), 128, 128)
    (analysis,) = find_analysis_runs(client, uid).values()
    stop = analysis.metadata["stop"]
    assert stop["exit_status"] == "fail"
    assert "injected fit failure" in stop["reason"]
    status = analysis["status"].read()
    assert bool(status["failed"].values[0]) and "injected fit failure" in str(status["errors"].values[0])
    assert len(analysis["drift"]["drift_y_px"].read()) == len(energies)  # what worked is kept


def test_abort_half_way_gives_a_partial_analysis_that_says_so(RE, sim_beamline, tiled_server):
    from bluesky.utils import RunEngineInterrupted

    client = tiled_server.client()
    writer = subscribe_tiled_writer(RE, client, batch_size=100)
    live = subscribe_live_analysis(RE, client, writer=writer)
    # 25 energies: pre-edge, edge and whiteline, post-edge; the scan stops after ~22 of them
    energies = np.r_[8273.0, 8293.0, 8313.0, 8323.0, np.arange(8328.0, 8353.0, 1.5), 8363.0, 8383.0, 8413.0, 8453.0]
    seen = {"n": 0, "primary": None}

    def pause_half_way(name, doc):
        if name == "descriptor" and doc["name"] == "primary":
            seen["primary"] = doc["uid"]
        if name == "event" and doc["descriptor"] == seen["primary"]:
            seen["n"] += 1
            if seen["n"] == 22:
                threading.Thread(target=RE.request_pause, kwargs={"defer": False}).start()

    RE.subscribe(pause_half_way)
    with pytest.raises(RunEngineInterrupted):
        _scan(RE, sim_beamline, energies, n_darks=2, scan_order="ascending")
    RE.abort("aborted half way (test)")
    assert live.wait(120) and writer.flush(120)
    uid = next(iter(live.analysis_uids))
    raw_stop = client[uid].metadata["stop"]
    assert raw_stop["exit_status"] == "abort"
    (analysis,) = find_analysis_runs(client, uid).values()
    stop = analysis.metadata["stop"]
    assert stop["exit_status"] == "abort"
    assert "PARTIAL" in stop["reason"] and "raw run abort" in stop["reason"]
    status = analysis["status"].read()
    assert bool(status["partial"].values[0]) and status["raw_exit_status"].values[0] == "abort"
    assert str(status["raw_reason"].values[0]) == raw_stop["reason"]
    n = int(status["n_frames"].values[0])
    assert 22 <= n < len(energies)
    assert len(analysis["drift"]["drift_y_px"].read()) == n
    # the pre-edge and the edge were measured (ascending): the partial maps exist
    final = analysis["maps"]["final"].read()
    assert bool(final[-1]) and int(analysis["maps"]["n_energies"].read()[-1]) == n
    # the partial maps are right, not merely present: against the simulator's truth
    # (aligned to the first frame, as the maps are)
    whiteline = analysis["maps"]["whiteline"].read()[-1]
    mask = analysis["maps"]["mask"].read()[-1].astype(bool)
    jump = analysis["maps"]["edge_jump"].read()[-1]
    t = sim_beamline.model.truth_maps()
    d0 = sim_beamline.detector.truth_for("sample")[0].drift_px
    wl_true = ndimage.shift(np.nan_to_num(t.whiteline_ev), d0, order=1, mode="nearest")
    inside = ndimage.binary_erosion(ndimage.shift(t.mask.astype(float), d0, order=0) > 0.5, iterations=2)
    sel = inside & mask & (jump >= MIN_JUMP)
    assert sel.sum() >= 0.95 * inside.sum()  # achieved 2560 of 2577 (0.993)
    assert _rms((whiteline - wl_true)[sel]) <= 0.38  # achieved 0.251 eV (22 of 25 energies)
