"""Live tomography: a fly scan on the simulated TXM with a real RunEngine, analysed live into Tiled.

One module-scoped ``tomo_fly`` scan (128², 72 projections over 180° plus the taxi frames,
flats after the rotation as at FXI; the axis 1.3 µm off the detector centre, stage wobble,
thermal drift and random walk, Poisson noise, zingers, hot and dead pixels) with the live
analysis subscribed. Checked against the simulator's truth: every projection's angle,
the rotation centre, the volume (``simulators.tomography.attenuation_volume``); the slice
is in Tiled before the raw run's stop document reaches the analysis; replay from Tiled and
``txm-live analyze`` on the run exported as an FXI fly-scan file give the same volume.
"""
from __future__ import annotations

import argparse
import warnings

import numpy as np
import pytest
from bluesky import RunEngine

from simulators.beamline import make_sim_beamline
from simulators.model import SimConfig
from simulators.tomography import TomoScan, attenuation_volume, make_tomo_sim
from txm_live.analysis import fov_radius_px, normalize_projections, reconstruct
from txm_live.batch import add_analyze_arguments, run_analyze
from txm_live.callbacks import read_volume, subscribe_live_analysis
from txm_live.export import export_run
from txm_live.plans import tomo_fly
from txm_live.replay import find_analysis_runs, replay
from txm_live.store import subscribe_tiled_writer

N_PROJECTIONS = 48
ENERGY_EV = 8400.0


def nrmse(recon, truth, center, nx=128):
    """Normalized RMSE inside the field of view after a least-squares gain."""
    yy, xx = np.indices((nx, nx))
    r = fov_radius_px(nx, center) - 1.0
    m = (yy - nx // 2) ** 2 + (xx - nx // 2) ** 2 < r * r
    a = np.asarray(recon)[..., m].astype(np.float64).ravel()
    t = np.asarray(truth)[..., m].astype(np.float64).ravel()
    gain = (a @ t) / (a @ a)
    return float(np.sqrt(np.mean((gain * a - t) ** 2)) / np.sqrt(np.mean(t * t)))


@pytest.fixture(scope="module")
def fly(tiled_server, tmp_path_factory):
    RE = RunEngine({}, call_returns_result=False)
    client = tiled_server.client()
    # raw events batched (fast), analysis rows written as they come (live previews)
    writer = subscribe_tiled_writer(RE, client, batch_size=100, analysis_batch_size=1)
    seen = {}

    def at_raw_stop(name, doc):
        """Subscribed before the live analysis: runs before it is handed the stop document."""
        if name != "stop" or doc["run_start"] != seen.get("uid"):
            return
        live.wait(120)  # everything before the stop document analysed and written
        (analysis_uid,) = live.analysis_uids[doc["run_start"]]
        run = client[analysis_uid]
        seen["slice_rows"] = len(run["slice"]["n_projections"].read()) if "slice" in run else 0
        seen["analysis_stopped"] = run.metadata.get("stop") is not None
        seen["last_slice"] = live.analyses[analysis_uid].last_slice

    def note_start(name, doc):
        if name == "start":
            seen["uid"] = doc["uid"]

    RE.subscribe(note_start)
    RE.subscribe(at_raw_stop)
    live = subscribe_live_analysis(RE, client, writer=writer, preview_dir=tmp_path_factory.mktemp("previews"),
                                   preview_every=16)
    cfg = SimConfig(shape=(128, 128), seed=3, rotation_axis_offset_um=1.3, wobble_um=0.3,
                    drift_rate_nm_per_s=(3.0, 5.0), drift_walk_nm_per_sqrt_s=5.0)
    bl = make_sim_beamline(tiled_server.frames_dir, model=make_tomo_sim(cfg), energy_ev=ENERGY_EV)
    (uid,) = RE(tomo_fly(bl.detector, bl.sample_stage.r, shutter=bl.shutter, sample_stage=bl.sample_stage,
                         energy=bl.energy, n_projections=N_PROJECTIONS, n_darks=4, n_flats=4, flats_when="after"))
    assert live.wait(300) and writer.flush(300)
    truth = bl.detector.truth_for("sample")
    theta = np.array([t.theta_rad for t in truth])
    empty = np.empty((0, 128, 128), np.uint16)
    scan = TomoScan(projections=empty, flats=empty, darks=empty, theta_rad=theta, times_s=theta,
                    flat_times_s=theta[:0], dark_times_s=theta[:0], truth=truth, energy_ev=ENERGY_EV)
    (analysis_uid,) = live.analysis_uids[uid]
    return {"uid": uid, "client": client, "live": live, "writer": writer, "bl": bl, "scan": scan,
            "analysis": client[analysis_uid], "seen": seen}


def test_fly_scan_records_every_angle_from_the_stage(fly):
    raw, scan = fly["client"][fly["uid"]], fly["scan"]
    start = raw.metadata["start"]
    assert start["plan_name"] == "tomo_fly" and start["scan_type"] == "tomo" and start["energy_ev"] == ENERGY_EV
    theta = np.asarray(raw["primary"]["theta_rad"].read())
    assert theta.size == start["n_projections"] == len(scan.truth) > N_PROJECTIONS  # + taxi frames
    assert len(raw["dark"]["frame_type"].read()) == 4 and len(raw["flat"]["frame_type"].read()) == 4
    err_deg = np.rad2deg(np.abs(theta - scan.theta_rad))
    # mid-exposure interpolated linearly between the readbacks at trigger and read: exact
    # at constant velocity, off by a·e·(P/2 − e/4)/2 while the stage accelerates at a
    # (exposure e, frame period P): 0.06° here (a = 107°/s²), 0.0006° at FXI's 3°/s
    velocity, accel_s = start["velocity_deg_s"], 0.5
    e, period = 0.05, 0.07
    bound = 0.5 * (velocity / accel_s) * e * (period / 2 - e / 4)
    assert err_deg.max() <= bound * (1 + 1e-6)
    cruise = (np.rad2deg(theta) > 10.0) & (np.rad2deg(theta) < 170.0)
    print(f"angles: max error {err_deg.max():.4f}° (bound {bound:.4f}°), cruise {err_deg[cruise].max():.2e}°")
    assert err_deg[cruise].max() < 1e-9
    # negative control: angles assumed from a linspace over the recorded span are off
    # where the stage accelerates and decelerates
    assumed = np.linspace(theta[0], theta[-1], theta.size)
    assert np.rad2deg(np.abs(assumed - scan.theta_rad)).max() > 1.0
    # the rotation covers the half turn with the taxi on both sides, and the stage is back
    assert theta.min() < 0.0 and theta.max() > np.pi
    assert fly["bl"].sample_stage.r.position == pytest.approx(0.0)


def test_a_slice_is_in_tiled_before_the_stop_document(fly):
    seen, analysis = fly["seen"], fly["analysis"]
    assert seen["slice_rows"] >= 3 and seen["analysis_stopped"] is False
    last = seen["last_slice"]
    assert not last.final and last.n_projections == len(fly["scan"].truth)
    # FXI takes its flats after the rotation: previews use each pixel's brightest value
    # so far as the flat (the stated fallback) and the sinogram's centre of mass
    assert last.flat_source == "brightest_so_far" and last.center_method == "opposite_projections"
    scan = fly["scan"]
    truth = attenuation_volume(fly["bl"].model, ENERGY_EV, rows=slice(64, 65), shift_px=scan.object_shift_px)[0]
    print(f"preview: centre error {last.center_px - scan.center_px:.3f} px, NRMSE "
          f"{nrmse(last.image, truth, last.center_px):.3f}")
    assert abs(last.center_px - scan.center_px) < 0.5  # achieved 0.006 px (opposite projections)
    assert nrmse(last.image, truth, last.center_px) < 0.38  # achieved 0.252 (the volume's slice: 0.18)
    slices = analysis["slice"]
    final = np.asarray(slices["final"].read())
    assert final[-1] and not final[:-1].any()


def test_volume_and_centre_match_the_phantom(fly):
    analysis, scan = fly["analysis"], fly["scan"]
    stop = analysis.metadata["stop"]
    assert stop["exit_status"] == "success" and "PARTIAL" not in stop["reason"]
    center = float(analysis["reconstruction"]["center_px"].read()[0])
    assert abs(center - scan.center_px) < 0.5  # achieved 0.010 px; the issue asks 0.5 px
    assert abs(128 / 2 - scan.center_px) > 1.5  # negative control: the detector centre is 2.9 px off
    volume = read_volume(analysis)
    assert volume.shape == (128, 128, 128) and volume.dtype == np.float32
    truth = attenuation_volume(fly["bl"].model, ENERGY_EV, shift_px=scan.object_shift_px)
    err = nrmse(volume, truth, center)
    print(f"volume: centre error {center - scan.center_px:.3f} px (detector centre "
          f"{64 - scan.center_px:.2f} px), NRMSE {err:.3f}")
    assert err < 0.25  # achieved 0.181 (algotom DFI on such data: see benchmarks/bench_tomo.py)
    # negative control: the same projections at the detector centre
    raw = fly["client"][fly["uid"]]
    rows = slice(48, 80)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dead pixels -> NaN, filled
        absorb = normalize_projections(raw["primary"]["txm_det_image"].read()[:, rows],
                                       raw["flat"]["txm_det_image"].read()[:, rows],
                                       raw["dark"]["txm_det_image"].read()[:, rows])
        off = reconstruct(absorb, np.asarray(raw["primary"]["theta_rad"].read()), 64.0)
    print(f"negative control at the detector centre: NRMSE {nrmse(off, truth[rows], 64.0):.3f}")
    assert nrmse(off, truth[rows], 64.0) > 2 * err  # achieved 0.70


def test_replay_reproduces_the_volume(fly):
    client, uid, analysis = fly["client"], fly["uid"], fly["analysis"]
    (new_uid,) = replay(uid, client, progress=False, timeout=300)
    runs = find_analysis_runs(client, uid)
    assert list(runs) == [analysis.metadata["start"]["uid"], new_uid]
    replayed = runs[new_uid]
    assert replayed.metadata["start"]["replay"] is True and replayed.metadata["stop"]["exit_status"] == "success"
    # the same numbers up to float32 rounding: ducc0's multithreaded gridding may sum in
    # another order (measured: identical, or differences up to 9e-8 on values ~1e-2; 6e-7
    # = 1.8e-5 of the maximum once, under load in two pytest workers); 1e-4 of the maximum
    # stays far below the volume's own error against the phantom (NRMSE 0.18).
    live_volume = read_volume(analysis)
    print(f"replay: max |difference| {np.abs(read_volume(replayed) - live_volume).max():.2e}")
    np.testing.assert_allclose(read_volume(replayed), live_volume, rtol=0,
                               atol=1e-4 * float(np.abs(live_volume).max()))
    # the centre search reconstructs trial slices with the same threaded gridding: measured
    # equal, or 2.1e-5 px apart (a clean clone in two pytest workers); 1e-3 px is 10x below
    # the centre's own error against the truth (0.010 px)
    assert (replayed["reconstruction"]["center_px"].read()[0]
            == pytest.approx(analysis["reconstruction"]["center_px"].read()[0], abs=1e-3))


def test_analyze_an_exported_fly_scan_gives_the_live_volume(fly, tmp_path, capsys):
    import h5py

    path = export_run(fly["client"], fly["uid"], tmp_path)
    args = add_analyze_arguments(argparse.ArgumentParser()).parse_args(
        [str(path), "--no-progress", "-o", str(tmp_path / "out")])
    assert run_analyze(args) == 0
    out = capsys.readouterr().out
    assert "volume:" in out and "slice:" in out
    with h5py.File(tmp_path / "out" / f"{path.stem}_recon.h5", "r") as f:
        volume, center = f["volume"][()], float(f["center_px"][()])
    live_center = float(fly["analysis"]["reconstruction"]["center_px"].read()[0])
    assert abs(center - live_center) < 0.01  # the same frames; angles round-tripped through degrees
    np.testing.assert_allclose(volume, read_volume(fly["analysis"]), atol=2e-3 * float(np.abs(volume).max()))
