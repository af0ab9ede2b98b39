"""Tomography plans' argument checks and step scan; TomoPipeline's bad-input handling.

The fly scan, live analysis, replay and accuracy against the phantom are in
``tests/test_tomo_live.py``; here the small, fast cases: arguments refused before anything
moves, a step scan's angles read from the stage at rest, and the pipeline's clear errors
(too few angles, angles not covering 180°, NaN or zero flats, missing darks or flats, a
centre outside the detector) on small synthetic frames, plus re-taken projections.
"""
from __future__ import annotations

import numpy as np
import pytest

from simulators.beamline import make_sim_beamline
from simulators.model import SimConfig
from simulators.tomography import make_tomo_sim
from txm_live.analysis import FrameLabel, TomoPipeline
from txm_live.callbacks import LiveAnalysis, subscribe_live_analysis
from txm_live.store import subscribe_tiled_writer
from txm_live.plans import tomo_fly, tomo_step

NX = 32
#: The synthetic phantom: a disc of radius DISC_R px, DISC_OFF px from the axis (it does not
#: cover the axis, so every detector column sees open beam at some angle), 0.05 per px.
DISC_R, DISC_OFF, DISC_MU = 5.0, 8.0, 0.05


@pytest.fixture
def bl(tmp_path):
    sim = make_tomo_sim(SimConfig(shape=(64, 64), seed=4, rotation_axis_offset_um=1.0))
    return make_sim_beamline(tmp_path, model=sim, energy_ev=8400.0)


def _fly(bl, **kwargs):
    return tomo_fly(bl.detector, bl.sample_stage.r, shutter=bl.shutter, sample_stage=bl.sample_stage, **kwargs)


@pytest.mark.parametrize("kwargs, message", [
    ({"angle_range_deg": (0.0, 120.0), "n_projections": 60}, r"covers 120°: a parallel-beam tomography needs at "
                                                              r"least a half turn \(180°"),
    ({"n_projections": 60, "velocity_deg_s": 3.0}, r"give exactly one of n_projections and velocity_deg_s"),
    ({}, r"give exactly one of n_projections and velocity_deg_s; got None and None"),
    ({"n_projections": 5}, r"n_projections must be an integer >= 8, got 5"),
    ({"velocity_deg_s": 500.0}, r"velocity_deg_s=500 gives 5 projections over 180° at 0.07 s per frame"),
    ({"n_projections": 60, "flats_when": "afterwards"}, r"flats_when must be one of \('before', 'after', 'both'\)"),
    ({"n_projections": 60, "n_darks": 0}, r"n_darks must be an integer >= 1, got 0"),
    ({"n_projections": 60, "exposure_s": -0.1}, r"exposure_s must be a positive number, got -0.1"),
    ({"n_projections": 60, "sample_out_um": (0, 0)}, r"sample_out_um must be a finite, non-zero"),
    ({"n_projections": 60, "md": {"energy_ev": 8000.0}}, r"md may not set \['energy_ev'\]"),
])
def test_fly_arguments_are_checked_before_anything_moves(RE, bl, kwargs, message):
    docs = []
    RE.subscribe(lambda name, doc: docs.append(name))
    with pytest.raises(ValueError, match=message):
        RE(_fly(bl, **kwargs))
    assert docs == [] and bl.sample_stage.r.position == 0.0 and bl.clock.now() == 0.0


def test_step_scan_angles_are_the_stage_readbacks_at_rest(RE, tiled_server, monkeypatch):
    """A step scan's angles, and a failure injected into the live analysis's volume step:
    the scan and the raw run carry on, the analysis run says what failed."""
    import txm_live.analysis._tomo_pipeline as tomo_pipeline

    def broken(*args, **kwargs):
        raise RuntimeError("injected centre failure")

    monkeypatch.setattr(tomo_pipeline, "find_center", broken)
    sim = make_tomo_sim(SimConfig(shape=(64, 64), seed=4, rotation_axis_offset_um=1.0))
    bl = make_sim_beamline(tiled_server.frames_dir, model=sim, energy_ev=8400.0)
    client = tiled_server.client()
    writer = subscribe_tiled_writer(RE, client, batch_size=100, analysis_batch_size=1)
    live = subscribe_live_analysis(RE, client, writer=writer, preview_every=9)
    docs = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    (uid,) = RE(tomo_step(bl.detector, bl.sample_stage.r, shutter=bl.shutter, sample_stage=bl.sample_stage,
                          energy=bl.energy, n_projections=9, n_darks=1, n_flats=1, flats_when="both"))
    start = docs[0][1]
    assert start["plan_name"] == "tomo_step" and start["n_projections"] == 9 and start["energy_ev"] == 8400.0
    primary = next(d["uid"] for n, d in docs if n == "descriptor" and d["name"] == "primary")
    events = [d for n, d in docs if n == "event" and d["descriptor"] == primary]
    theta = np.array([e["data"]["theta_rad"] for e in events])
    np.testing.assert_allclose(theta, np.deg2rad(np.linspace(0.0, 180.0, 9)), rtol=0, atol=1e-12)
    truth = [t.theta_rad for t in bl.detector.truth_for("sample")]
    np.testing.assert_allclose(theta, truth, rtol=0, atol=1e-12)
    assert [e["data"]["frame_repeat"] for e in events] == list(range(9))
    flats = [d for n, d in docs if n == "event" and d["data"].get("frame_type") == "flat"]
    assert [f["data"]["frame_repeat"] for f in flats] == [0, 1]  # before and after: numbered on
    assert bl.sample_stage.r.position == 0.0  # back where it started
    assert live.wait(120) and writer.flush(120)
    assert client[uid].metadata["stop"]["exit_status"] == "success"
    (analysis_uid,) = live.analysis_uids[uid]
    analysis = client[analysis_uid]
    stop = analysis.metadata["stop"]
    assert stop["exit_status"] == "fail" and "volume: RuntimeError: injected centre failure" in stop["reason"]
    assert len(analysis["slice"]["final"].read()) == 1  # the preview made during the scan is kept


# ---- the pipeline on small synthetic frames ---------------------------------------------
def _frames(n_angles, *, span_deg=180.0, seed=0):
    """Counts of a disc phantom: darks ~100, flats ~1e4, projections attenuated."""
    rng = np.random.default_rng(seed)
    theta = np.deg2rad(np.linspace(0.0, span_deg, n_angles, endpoint=False))
    x = np.arange(NX) - NX / 2
    chord = 2 * np.sqrt(np.clip(DISC_R**2 - (x[None, :] - DISC_OFF * np.cos(theta)[:, None]) ** 2, 0, None))
    absorb = np.repeat((DISC_MU * chord)[:, None, :], 8, axis=1)
    flat = 1e4 * np.ones((8, NX))
    proj = rng.poisson(flat * np.exp(-absorb)) + 100
    return (theta, proj.astype(np.uint16), (rng.poisson(flat, (3, 8, NX)) + 100).astype(np.uint16),
            np.full((3, 8, NX), 100, np.uint16))


def _pipeline(theta, proj, flats, darks, **options):
    p = TomoPipeline(n_projections=len(theta), n_darks=None if darks is None else len(darks), **options)
    for k, d in enumerate(darks if darks is not None else []):
        p.add_frame(FrameLabel("dark", -1, k), d)
    for i, (image, t) in enumerate(zip(proj, theta)):
        p.add_frame(FrameLabel("sample", 0, i), image, theta_rad=t)
    for k, f in enumerate(flats if flats is not None else []):
        p.add_frame(FrameLabel("flat", 0, k), f)
    return p


def test_pipeline_reconstructs_the_synthetic_disc():
    theta, proj, flats, darks = _frames(60)
    volume = _pipeline(theta, proj, flats, darks, preview_every=0).reconstruct_volume()
    assert volume.volume.shape == (8, NX, NX) and abs(volume.center_px - NX / 2) < 0.3
    yy, xx = np.indices((NX, NX))
    disc = ((xx - NX // 2 - DISC_OFF) ** 2 + (yy - NX // 2) ** 2 < (DISC_R - 1.5) ** 2)
    inside = float(volume.volume[4][disc].mean())
    print(f"disc attenuation {inside:.4f} per px (true {DISC_MU})")
    assert abs(inside - DISC_MU) < 0.001  # achieved 0.0003 (0.6 %)


@pytest.mark.parametrize("case, message", [
    ("few", r"too few angles: 7 projections, at least 8 needed"),
    ("wedge", r"angles do not cover 180°: no projection between"),
    ("nan_flats", r"the flats are not above the dark in any pixel \(zero or NaN flats\?\): flat median range all NaN"),
    ("zero_flats", r"the flats are not above the dark in any pixel \(zero or NaN flats\?\): flat median range 0 to 0"),
    ("no_darks", r"no darks: a tomography scan needs shutter-closed darks and sample-out flats"),
    ("no_flats", r"no flats: a tomography scan needs"),
    ("centre", r"center 40.0 is outside the detector: expected 0 <= center <= 31"),
])
def test_pipeline_bad_input_gets_a_clear_error(case, message):
    theta, proj, flats, darks = _frames(7 if case == "few" else 40, span_deg=120.0 if case == "wedge" else 180.0)
    if case == "nan_flats":
        flats = np.full(flats.shape, np.nan, np.float32)
    if case == "zero_flats":
        flats = np.zeros_like(flats)
    p = _pipeline(theta, proj, None if case == "no_flats" else flats, None if case == "no_darks" else darks,
                  center_px=40.0 if case == "centre" else None, preview_every=0)
    with pytest.raises(ValueError, match=message):
        p.reconstruct_volume()


def test_pipeline_options_are_checked():
    with pytest.raises(ValueError, match=r"unknown algorithm 'fpb'; expected one of"):
        TomoPipeline(algorithm="fpb")
    with pytest.raises(TypeError, match=r"algorithm 'nufft' does not take \['n_iter'\]"):
        TomoPipeline(algorithm_options={"n_iter": 3})
    with pytest.raises(ValueError, match=r"stripe_method must be one of \(None, 'mean', 'sorting'\); got 'mea'"):
        TomoPipeline(stripe_method="mea")
    with pytest.raises(TypeError, match=r"no live analysis takes the options \['stripe_metod'\]"):
        LiveAnalysis(stripe_metod="mean")


def test_a_retaken_projection_replaces_the_first_take():
    theta, proj, flats, darks = _frames(40)
    good = _pipeline(theta, proj, flats, darks, preview_every=0)
    bad = proj.copy()
    bad[10] = 50  # a first take ruined (e.g. the beam dropped), re-taken under the same label
    retaken = _pipeline(theta, bad, flats, darks, preview_every=0)
    retaken.add_frame(FrameLabel("sample", 0, 10), proj[10], theta_rad=theta[10])
    assert retaken.n_retaken == 1 and retaken.n_projections == 40
    np.testing.assert_array_equal(retaken.sinogram(4), good.sinogram(4))
    # negative control: without the re-take the sinogram differs at that projection
    ruined = _pipeline(theta, bad, flats, darks, preview_every=0)
    assert not np.allclose(ruined.sinogram(4)[10], good.sinogram(4)[10])


def test_previews_before_the_flats_use_the_brightest_values_so_far():
    theta, proj, flats, darks = _frames(40)
    p = TomoPipeline(n_projections=40, n_darks=3, preview_every=20)
    for k, d in enumerate(darks):
        p.add_frame(FrameLabel("dark", -1, k), d)
    previews = []
    for i, (image, t) in enumerate(zip(proj, theta)):
        previews += p.add_frame(FrameLabel("sample", 0, i), image, theta_rad=t)
    assert [s.n_projections for s in previews] == [20, 40]
    assert all(s.flat_source == "brightest_so_far" for s in previews)
    for k, f in enumerate(flats):
        p.add_frame(FrameLabel("flat", 0, k), f)
    final = p.reconstruct_volume().volume[4]
    # every column sees open beam at some angle, so the stand-in flat is the true one
    # biased up by the brightest of the noisy draws (a near-constant absorbance offset):
    # the preview shows what the volume shows
    yy, xx = np.indices((NX, NX))
    fov = (yy - NX // 2) ** 2 + (xx - NX // 2) ** 2 < (NX // 2 - 2) ** 2
    disc = ((xx - NX // 2 - DISC_OFF) ** 2 + (yy - NX // 2) ** 2 < (DISC_R - 1.5) ** 2)
    preview = previews[-1].image
    contrast = float(preview[disc].mean() - preview[fov & ~disc].mean())
    truth = float(final[disc].mean() - final[fov & ~disc].mean())
    print(f"disc contrast: preview {contrast:.4f}, final {truth:.4f}")
    assert previews[-1].center_method == "opposite_projections"
    assert abs(contrast - truth) < 0.02 * truth  # achieved 0.6 %


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_zinger_median_equals_scipy(dtype):
    """The vectorized 3×3 median used for zingers is scipy's median filter to the bit."""
    from scipy import ndimage

    from txm_live.analysis._tomo_pipeline import _median3x3, _zingers_removed

    rng = np.random.default_rng(1)
    frames = rng.poisson(1e3, (3, 17, 23)).astype(dtype)
    np.testing.assert_array_equal(_median3x3(frames), ndimage.median_filter(frames, size=(1, 3, 3), mode="nearest"))
    frame = frames[0].copy()
    frame[5, 7] = 60000 if dtype == np.uint16 else 6e4  # a zinger
    cleaned = _zingers_removed(frame, np.zeros(frame.shape, np.float32), 10.0)
    assert cleaned.dtype == frame.dtype and cleaned[5, 7] < 1200 and np.sum(cleaned != frame) <= 3
