"""The simulated TXM's Channel Access IOC through the real EPICS device classes.

A real IOC subprocess (caproto) on 127.0.0.1, real ophyd devices over pyepics (one test
over caproto's client), real HDF5 files written by the IOC. Ground truth: the
simulator itself (frames replayed with :class:`simulators.model.SimTXM`), the optics
relations, and the per-frame NDAttributes the IOC records.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest
from ophyd import EpicsSignal
from ophyd.utils import LimitError

from simulators.ioc import IOCProcess, probe_pv
from simulators.ioc.axes import BEAMLINE_AXES, READOUT_S, SHUTTER_MOVE_S
from simulators.model import SimConfig, SimTXM
from txm_live.devices.pv_names import STAGE_AXES
from txm_live.devices.txm import STAGE_CLASSES, connect_epics_txm, make_epics_txm

ENERGY_PV = "XF:18IDA-OP{Mono:DCM-Ax:En}Mtr"


@contextlib.contextmanager
def staged(camera):
    camera.stage()
    try:
        yield camera
    finally:
        camera.unstage()


def take(camera, frame_type: str) -> None:
    camera.frame_type.put(frame_type)
    camera.trigger().wait(30)
    list(camera.collect_asset_docs())  # checks NumCaptured_RBV, as the RunEngine would


def written(camera, frame_type: str) -> tuple[np.ndarray, dict]:
    """Frames and NDAttributes of the (closed) file the plugin of ``frame_type`` wrote last."""
    path = getattr(camera, f"hdf_{frame_type}").full_file_name.get(use_monitor=False)
    with h5py.File(path, "r") as f:
        attributes = {k: v[()] for k, v in f["/entry/instrument/NDAttributes"].items()}
        return f["/entry/data/data"][()], attributes


def wait_until(predicate, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_axis_table_and_device_classes_match_the_simulated_beamline(tmp_path):
    """Same speeds and settle times as the simulated devices (same beamline time per move),
    same axes in the IOC and the ophyd classes."""
    from simulators.beamline import make_sim_beamline
    from simulators.devices import SimTXMDetector

    bl = make_sim_beamline(tmp_path)
    sim_axes = {"energy": bl.energy, "zone_plate.z": bl.zone_plate.z, "detector_stage.z": bl.detector_stage.z,
                **{f"zone_plate.{a}": getattr(bl.zone_plate, a) for a in "xy"},
                **{f"condenser.{a}": getattr(bl.condenser, a) for a in "xyz"},
                **{f"sample_stage.{a}": getattr(bl.sample_stage, a) for a in "xyzr"}}
    assert set(sim_axes) == set(BEAMLINE_AXES)
    for axis, motor in sim_axes.items():
        spec = BEAMLINE_AXES[axis]
        assert (spec.velocity, spec.settle_s) == (motor.speed, motor.settle_s), axis
    assert READOUT_S == SimTXMDetector.readout_s and SHUTTER_MOVE_S == 0.5
    for stage, cls in STAGE_CLASSES.items():
        assert [getattr(cls, name).suffix for name in cls.component_names] == list(STAGE_AXES[stage])


def test_a_move_runs_at_velo_and_costs_its_beamline_time(epics_txm):
    x, camera = epics_txm["sample_stage"].x, epics_txm["txm_det"]
    x.velocity.set(2.0).wait(5)  # µm/s: 100 µm take 50 s of beamline time (0.25 s of wall time)
    dmov, rbv = [], []
    x.motor_done_move.subscribe(lambda value, **kw: dmov.append(int(value)), run=False)
    x.user_readback.subscribe(lambda value, **kw: rbv.append(float(value)), run=False)
    with staged(camera):
        take(camera, "sample")
        x.move(100.0, wait=True, timeout=30)
        take(camera, "sample")
    assert dmov[dmov.index(0):] == [0, 1]  # DMOV drops once and rises when the move is done
    inner = [v for v in rbv if 0.0 < v < 100.0]
    assert len(inner) >= 2 and inner == sorted(inner)  # the readback travels
    assert rbv[-1] == 100.0 == x.position
    _, attrs = written(camera, "sample")
    assert attrs["sample_x_um"].tolist() == [0.0, 100.0]
    exposure_s = float(camera.exposure_time.get())
    # the physics saw the move: |Δ| / VELO + DLY of beamline time between the frames
    assert np.diff(attrs["NDArrayTimeStamp"])[0] == pytest.approx(exposure_s + READOUT_S + 100.0 / 2.0 + 0.2,
                                                                  rel=1e-12)


def test_soft_limits_refuse_a_move_in_ophyd_and_in_the_ioc(epics_txm):
    x = epics_txm["sample_stage"].x
    assert x.limits == (-10000.0, 10000.0)  # HLM/LLM, served as .VAL's control limits
    with pytest.raises(LimitError, match="20000"):
        x.move(20000.0)
    x.high_limit_travel.set(50.0).wait(5)
    assert wait_until(lambda: x.limits == (-10000.0, 50.0))
    with pytest.raises(LimitError, match="80"):
        x.move(80.0)
    raw = EpicsSignal(x.prefix + ".VAL", name="raw_val")  # a client that skips the check ...
    lvio = EpicsSignal(x.prefix + ".LVIO", name="lvio")
    raw.put(80.0, wait=True)
    assert wait_until(lambda: lvio.get() == 1)  # ... is refused by the IOC as by a motor record
    assert x.position == 0.0 and x.user_setpoint.get(use_monitor=False) == 0.0 and x.motor_done_move.get() == 1


def test_stop_ends_a_move_where_the_motor_is(epics_txm):
    x = epics_txm["sample_stage"].x
    x.velocity.set(1.0).wait(5)  # 1000 µm at 1 µm/s: 5 s of wall time at the IOC's time scale
    status = x.move(1000.0, wait=False)
    assert wait_until(lambda: x.position > 10.0)
    x.stop()
    assert wait_until(lambda: status.done and x.motor_done_move.get() == 1)
    stopped = x.position
    assert 10.0 < stopped < 1000.0
    assert x.user_setpoint.get(use_monitor=False) == pytest.approx(stopped)  # .VAL follows .RBV on STOP
    time.sleep(0.2)
    assert x.position == stopped  # and it stays there


def test_frames_are_the_simulators_at_the_iocs_positions_shutter_and_exposure(epics_txm):
    """Dark, flat and sample frames, each the bit-exact output of SimTXM.acquire with what
    the IOC's motors, shutter and AcquireTime said at the time (replayed here)."""
    d = epics_txm
    camera, energy, shutter, x = d["txm_det"], d["energy"], d["shutter"], d["sample_stage"].x
    exposure_before = camera.exposure_time.get()
    with staged(camera):
        camera.exposure_time.set(0.03).wait(5)
        shutter.set("close").wait(10)
        take(camera, "dark")
        shutter.set("open").wait(10)
        energy.set(8350.0).wait(30)
        take(camera, "sample")
        x.set(100.0).wait(30)
        take(camera, "flat")
        x.set(0.0).wait(30)
    assert camera.exposure_time.get() == exposure_before  # unstage put the IOC's exposure back
    frames = {t: written(camera, t) for t in ("dark", "sample", "flat")}
    dark_attrs, sample_attrs, flat_attrs = (frames[t][1] for t in ("dark", "sample", "flat"))
    assert dark_attrs["shutter_open"].tolist() == [0.0] and sample_attrs["shutter_open"].tolist() == [1.0]
    assert flat_attrs["sample_x_um"].tolist() == [100.0] and flat_attrs["truth_sample_in_beam"].tolist() == [0.0]
    zp_z_mm, det_z_mm = energy.optics.focus_positions(8350.0)  # focus tracked over Channel Access
    assert (sample_attrs["zp_z_mm"][0], sample_attrs["det_z_mm"][0]) == (zp_z_mm, det_z_mm)
    for _, attrs in frames.values():
        assert attrs["exposure_s"].tolist() == [0.03]  # the plan's exposure reached the camera

    model = SimTXM(SimConfig(shape=(128, 128), seed=1))  # the IOC's physics, replayed here
    for frame_type in ("dark", "sample", "flat"):  # in the order they were taken
        image, attrs = frames[frame_type]
        replayed = model.acquire(
            energy_ev=attrs["energy_ev"][0], zp_z_mm=attrs["zp_z_mm"][0], det_z_mm=attrs["det_z_mm"][0],
            sample_x_um=attrs["sample_x_um"][0], sample_y_um=attrs["sample_y_um"][0],
            theta_rad=math.radians(attrs["theta_deg"][0]), shutter_open=bool(attrs["shutter_open"][0]),
            exposure_s=attrs["exposure_s"][0], time_s=attrs["NDArrayTimeStamp"][0])
        np.testing.assert_array_equal(image[0], replayed.image, err_msg=frame_type)
        assert attrs["truth_drift_x_px"][0] == replayed.truth.drift_px[1]
    # negative control: the exposure the IOC had before would have given other counts
    other = SimTXM(SimConfig(shape=(128, 128), seed=1)).acquire(
        energy_ev=8333.0, zp_z_mm=dark_attrs["zp_z_mm"][0], det_z_mm=dark_attrs["det_z_mm"][0],
        shutter_open=False, exposure_s=0.05, time_s=dark_attrs["NDArrayTimeStamp"][0])
    assert not np.array_equal(frames["dark"][0][0], other.image)


def test_focus_tracking_holds_focus_over_channel_access_and_its_absence_blurs(epics_txm):
    d = epics_txm
    camera, energy = d["txm_det"], d["energy"]
    with staged(camera):
        for e in (8333.0, 8433.0):
            energy.set(e).wait(30)
            take(camera, "sample")
        energy.focus_mode.put("off")  # the monochromator alone: zone plate and detector stay
        energy.set(8533.0).wait(30)
        take(camera, "sample")
    energy.focus_mode.put("zp_and_detector")
    _, attrs = written(camera, "sample")
    assert attrs["energy_ev"].tolist() == [8333.0, 8433.0, 8533.0]
    assert attrs["zp_z_mm"][2] == attrs["zp_z_mm"][1] and attrs["det_z_mm"][2] == attrs["det_z_mm"][1]
    blur = attrs["truth_blur_sigma_px"]
    assert blur[:2].max() < 0.5 and blur[2] > 2.0  # tracked: ZP-limited; 100 eV untracked: 2.4 px
    assert np.ptp(attrs["truth_magnification"][:2]) < 1e-9


def test_staging_sets_what_a_scan_needs_and_unstaging_restores_the_iocs_settings(epics_txm):
    camera = epics_txm["txm_det"]
    cam, flat = camera.cam, camera.hdf_flat
    settings = {cam.acquire_time: 0.2, cam.image_mode: "Multiple", cam.num_images: 7,
                flat.file_write_mode: "Single", flat.num_capture: 3, flat.enable: "Enable",
                flat.file_name: "keep_me", flat.file_path: "/somewhere/else/", flat.file_template: "%s%s_%3.3d.h5"}
    original = {sig: sig.get() for sig in settings}
    try:
        for sig, value in settings.items():
            sig.set(value).wait(5)
        camera.stage()
        try:
            during = {sig.name: sig.get() for sig in (cam.image_mode, cam.num_images, flat.file_write_mode,
                                                      flat.num_capture, flat.capture, flat.swmr_mode)}
            camera.exposure_time.set(0.03).wait(5)
            take(camera, "flat")
        finally:
            camera.unstage()
        after = {sig: sig.get() for sig in settings}
        _, attrs = written(camera, "flat")
    finally:
        for sig, value in original.items():
            sig.set(value).wait(5)
    assert during == {cam.image_mode.name: "Single", cam.num_images.name: 1, flat.file_write_mode.name: "Stream",
                      flat.num_capture.name: 0, flat.capture.name: "Capture", flat.swmr_mode.name: "On"}
    assert attrs["exposure_s"].tolist() == [0.03]  # the plan's exposure was the camera's during the scan
    assert after == settings  # ... and the IOC's own settings are back, exposure included
    assert all(p.capture.get() == "Done" for p in camera.plugins.values())  # files closed


def test_a_pv_that_never_connects_is_named_in_the_error(txm_ioc):
    devices = make_epics_txm(txm_ioc.prefixes.with_root("NOSUCH:"))
    with pytest.raises(ConnectionError, match=r"PVs did not connect within 1\.0 s: NOSUCH:.*"
                                              r"EPICS_CA_ADDR_LIST=127\.0\.0\.1"):
        connect_epics_txm(devices, timeout_s=1.0)
    # one device wrong among good ones: only its PVs are named
    from dataclasses import replace

    devices = make_epics_txm(replace(txm_ioc.prefixes, shutter="XF:18IDB-PPS{Sh:TYPO}"))
    with pytest.raises(ConnectionError, match=r"^3 PVs did not connect within 2\.0 s: XF:18IDB-PPS\{Sh:TYPO\}"):
        connect_epics_txm(devices, timeout_s=2.0)


def test_a_file_the_ioc_cannot_create_fails_staging_with_its_reason(txm_ioc, tmp_path):
    txm_ioc.reset()
    (tmp_path / "a_file").write_text("not a folder")
    devices = make_epics_txm(txm_ioc.prefixes, write_dir=tmp_path / "a_file" / "frames")
    camera = devices["txm_det"]
    connect_epics_txm({"txm_det": camera}, timeout_s=30.0)
    camera.capture_timeout_s = 2.0
    with pytest.raises(RuntimeError, match=r"txm_det_hdf_dark could not open .*a_file/frames/.*_dark: "
                                           r"cannot capture: .*(File exists|Not a directory)"):
        camera.stage()
    assert all(p.capture.get() == "Done" for p in camera.plugins.values())


def test_the_launcher_kills_and_restarts_an_ioc_on_its_ports(tmp_path):
    """A second IOC on ports of its own, checked with the launcher's CA probe (this
    process's pyepics stays on the session's ports)."""
    ioc = IOCProcess(size=64, seed=2, log_path=tmp_path / "ioc.log").start()
    try:
        port = ioc.server_port
        assert probe_pv(ENERGY_PV + ".RBV", port=port) == 8333.0
        assert probe_pv("TXMSIM:Seed_RBV", port=port) == 2
        ioc.kill()
        assert not ioc.running
        with pytest.raises(TimeoutError, match="TXMSIM:Ready"):
            probe_pv("TXMSIM:Ready", port=port, timeout_s=0.5)
        ioc.start()  # same ports, fresh state
        assert probe_pv("TXMSIM:Ready", port=port) == 1 and probe_pv(ENERGY_PV + ".DMOV", port=port) == 1
    finally:
        assert ioc.stop() in (0, None)  # SIGTERM: a clean exit
    assert "simulated TXM IOC" in (tmp_path / "ioc.log").read_text()


def test_the_plan_runs_over_caprotos_client_with_the_same_frames(txm_ioc, tiled_server, tmp_path, RE):
    """OPHYD_CONTROL_LAYER=caproto in a fresh interpreter; the frames equal those the same
    plan gets from the simulated devices."""
    from simulators.beamline import make_sim_beamline
    from txm_live.plans import xanes_2d

    txm_ioc.reset()
    energies = [8340.0, 8350.0]
    code = textwrap.dedent(f"""
        import json, ophyd
        from bluesky import RunEngine
        from txm_live.devices.txm import connect_epics_txm, make_epics_txm
        from txm_live.plans import xanes_2d
        d = make_epics_txm(write_dir={str(tiled_server.frames_dir)!r})
        connect_epics_txm(d, timeout_s=30)
        docs = []
        RE = RunEngine({{}})
        RE.subscribe(lambda n, doc: docs.append((n, doc)))
        RE(xanes_2d(d["txm_det"], d["energy"], {energies!r}, shutter=d["shutter"],
                    sample_stage=d["sample_stage"], n_darks=1, exposure_s=0.05))
        print(json.dumps({{"layer": ophyd.cl.name, "exit_status": docs[-1][1]["exit_status"],
                          "files": [doc["uri"][7:] for n, doc in docs if n == "stream_resource"]}}))
    """)
    env = {**os.environ, "OPHYD_CONTROL_LAYER": "caproto"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["layer"] == "caproto" and result["exit_status"] == "success"

    bl = make_sim_beamline(tmp_path, config=SimConfig(shape=(128, 128), seed=1))
    uris = []
    RE.subscribe(lambda name, doc: uris.append(doc["uri"][7:]) if name == "stream_resource" else None)
    RE(xanes_2d(bl.detector, bl.energy, energies, shutter=bl.shutter, sample_stage=bl.sample_stage, n_darks=1,
                exposure_s=0.05))
    with h5py.File(uris[0], "r") as sim:
        for frame_type in ("dark", "sample", "flat"):
            (path,) = [p for p in result["files"] if p.endswith(f"_{frame_type}.h5")]
            with h5py.File(path, "r") as f:
                np.testing.assert_array_equal(f["/entry/data/data"][()], sim[f"/entry/data/{frame_type}"][()])


def test_a_frame_the_physics_refuses_fails_the_trigger_with_the_iocs_reason(epics_txm):
    """Zone plate moved behind the detector: no image can form, and the camera says why."""
    camera, zp_z, det_z = epics_txm["txm_det"], epics_txm["zp"].z, epics_txm["det_stage"].z
    with staged(camera):
        zp_z.set(120.0).wait(60)
        det_z.set(100.0).wait(60)  # detector 100 mm from the sample, zone plate at 120 mm
        with pytest.raises(Exception, match="camera reports an error: ValueError"):
            take(camera, "sample")
    assert camera.cam.detector_state.get(use_monitor=False) == "Error"

