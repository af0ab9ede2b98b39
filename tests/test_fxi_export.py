"""``txm-live export UID``: runs stored in a real Tiled server (HTTP, 127.0.0.1) written as
FXI's export files and read back: the raw frames equal the run's, the normalized data
equal FXI's normalization of them (float32), units converted once."""
from __future__ import annotations

import argparse
import json

import h5py
import numpy as np
import pytest
from bluesky import plan_stubs as bps
from bluesky import preprocessors as bpp
from bluesky.plans import count

from txm_live.export import add_export_arguments, export_run, run_export
from txm_live.io import read_fxi, read_fxi_fly_scan
from txm_live.plans import xanes_2d
from txm_live.store import EmbeddedTiled, subscribe_tiled_writer

ENERGIES = np.r_[8273.0, 8313.0, np.arange(8328.0, 8345.0, 2.0), 8363.0, 8413.0]  # 13 energies
#: The datasets FXI's export_xanes_scan writes, no more, no less.
FXI_XANES_DATASETS = {"uid", "scan_id", "note", "scan_time", "X_eng", "img_bkg", "img_dark", "img_xanes",
                      "Magnification", "Pixel Size"}
FXI_FLY_DATASETS = {"note", "uid", "scan_id", "scan_time", "X_eng", "img_bkg", "img_dark", "img_bkg_avg",
                    "img_dark_avg", "img_tomo", "angle", "x_ini", "y_ini", "z_ini", "r_ini", "Magnification",
                    "Pixel Size"}


def _args(*argv):
    return add_export_arguments(argparse.ArgumentParser(prog="txm-live export")).parse_args(list(argv))


def _fxi_normalization(sample, flats, darks, fpe, flat_rows, n):
    """FXI's (mean sample - mean dark) / (mean flat - mean dark), float64 → float32, computed here."""
    dark = darks.astype(np.float64).mean(axis=0)
    out = np.empty((n, *sample.shape[1:]), np.float32)
    for i in range(n):
        nearest = min(range(len(flat_rows)), key=lambda p: abs(flat_rows[p] - i))
        flat = flats[nearest:nearest + 1].astype(np.float64).mean(axis=0)
        frame = sample[i * fpe:(i + 1) * fpe].astype(np.float64).mean(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[i] = ((frame - dark) / (flat - dark)).astype(np.float32)
    return out


@pytest.fixture
def xanes_run(RE, sim_beamline, tiled_server):
    client = tiled_server.client()
    writer = subscribe_tiled_writer(RE, client, batch_size=100)
    bl = sim_beamline
    (uid,) = RE(xanes_2d(bl.detector, bl.energy, ENERGIES, shutter=bl.shutter, sample_stage=bl.sample_stage,
                         n_darks=3, frames_per_energy=2, flat_every=2, md={"note": "export test"}))
    assert writer.flush(120)
    return client[uid]


def test_exported_2d_xanes_reads_back_as_the_run_in_fxis_layout(xanes_run, tiled_server, tmp_path, capsys):
    run, start = xanes_run, xanes_run.metadata["start"]
    uid = start["uid"]
    assert run_export(_args(uid, "--tiled", tiled_server.uri, "-o", str(tmp_path), "--with-raw")) == 0
    path = tmp_path / f"xanes_2d_id_{start['scan_id']}.h5"
    assert capsys.readouterr().out.strip() == str(path)

    data = read_fxi(path)  # auto: FXI's 2D XANES layout recognised
    assert data.layout == "xanes2d"
    sample, flats, darks = (np.asarray(run[s]["txm_det_image"].read()) for s in ("primary", "flat", "dark"))
    # raw frames: equal, with the energy row of each
    np.testing.assert_array_equal(data.frames, sample)
    np.testing.assert_array_equal(data.flats, flats)
    np.testing.assert_array_equal(data.darks, darks)
    np.testing.assert_array_equal(data.frame_energy_index, np.arange(sample.shape[0]) // 2)
    np.testing.assert_array_equal(data.flat_energy_index, start["flat_energy_indices"])
    # normalized data: FXI's formula on the run's frames, equal in float32
    expected = _fxi_normalization(sample, flats, darks, 2, start["flat_energy_indices"], ENERGIES.size)
    valid = np.isfinite(expected) & (expected != 0)
    np.testing.assert_array_equal(data.valid, valid)
    np.testing.assert_array_equal(data.transmission[valid], expected[valid])
    # units converted once: eV, nm; FXI's total magnification (zone plate x 10x objective)
    np.testing.assert_allclose(data.energies_ev, start["energies_ev"], rtol=0, atol=1e-9)
    assert data.pixel_size_nm == start["pixel_size_nm"]
    assert data.magnification == pytest.approx(10 * start["magnification"])
    assert (data.uid, data.scan_id, data.note, data.scan_time) == (uid, start["scan_id"], "export test",
                                                                    start["time"])
    with h5py.File(path) as f:
        assert json.loads(f["txm_live"].attrs["start"])["energies_ev"] == start["energies_ev"]
        assert f["txm_live"].attrs["source_uid"] == uid and f["X_eng"].attrs["units"] == "keV"

    # by default: exactly FXI's layout, nothing else but the /txm_live group
    path = export_run(tiled_server.client(), uid, tmp_path / "plain")
    with h5py.File(path) as f:
        datasets = {k for k, v in f.items() if isinstance(v, h5py.Dataset)}
        assert datasets == FXI_XANES_DATASETS and set(f) - datasets == {"txm_live"}
        assert "raw" not in f["txm_live"]
        assert (f["img_xanes"].dtype, f["img_bkg"].dtype, f["img_dark"].dtype) == (np.float32,) * 3
        assert f["img_bkg"].shape == (ENERGIES.size, 128, 128) and f["img_dark"].shape == (1, 128, 128)
        assert f["X_eng"].dtype == np.float64 and f["X_eng"][0] == pytest.approx(ENERGIES.max() / 1000)
        assert f["Pixel Size"][()].decode().endswith("nm")
    assert read_fxi(path).frames is None
    # an existing file is not overwritten unless asked
    assert run_export(_args(uid, "--tiled", tiled_server.uri, "-o", str(tmp_path / "plain"))) == 1
    assert "exists; pass overwrite=True (--overwrite)" in capsys.readouterr().err


def _step_tomo(bl, angles_deg, *, n_darks=3, n_flats=2, sample_out_um=1000.0):
    """A tomography run as the plans record one: dark, primary (one event per angle), flat."""
    det, r = bl.detector, bl.sample_stage.r
    md = {"scan_type": "tomo", "plan_name": "step_tomo_test", "energy_ev": float(bl.energy.position),
          "motors": [r.name], "pixel_size_nm": float(det.pixel_size_nm.get()),
          "magnification": float(det.magnification.get())}

    @bpp.stage_decorator([det])
    @bpp.run_decorator(md=md)
    def inner():
        yield from bps.mv(bl.shutter, "close", det.frame_type, "dark")
        for _ in range(n_darks):
            yield from bps.trigger_and_read([det], name="dark")
        yield from bps.mv(bl.shutter, "open", det.frame_type, "sample")
        for angle in angles_deg:
            yield from bps.mv(r, angle)
            yield from bps.trigger_and_read([det, r], name="primary")
        yield from bps.mv(bl.sample_stage.x, sample_out_um, det.frame_type, "flat")
        for _ in range(n_flats):
            yield from bps.trigger_and_read([det], name="flat")
        yield from bps.mv(bl.sample_stage.x, 0.0, bl.shutter, "close")

    return (yield from inner())


def _tomo_run(RE, bl, clients, angles_deg):
    from bluesky.preprocessors import SupplementalData

    RE.preprocessors.append(SupplementalData(baseline=[bl.sample_stage]))
    writers = [subscribe_tiled_writer(RE, client, batch_size=100) for client in clients]
    (uid,) = RE(_step_tomo(bl, angles_deg))
    assert all(writer.flush(120) for writer in writers)
    return uid


def _check_fly_scan(path, run):
    data = read_fxi_fly_scan(path)
    proj, flats, darks = (np.asarray(run[s]["txm_det_image"].read()) for s in ("primary", "flat", "dark"))
    np.testing.assert_array_equal(data.projections, proj)
    np.testing.assert_array_equal(data.flats, flats)
    np.testing.assert_array_equal(data.darks, darks)
    np.testing.assert_array_equal(data.flat_avg, np.median(flats, axis=0, keepdims=True).astype(np.float32))
    np.testing.assert_array_equal(data.dark_avg, np.median(darks, axis=0, keepdims=True).astype(np.float32))
    r_deg = np.asarray(run["primary"]["sample_stage_r"].read())
    np.testing.assert_allclose(data.theta_rad, np.deg2rad(r_deg), rtol=0, atol=1e-15)
    assert data.energy_ev == pytest.approx(run.metadata["start"]["energy_ev"], abs=1e-9)
    assert (data.x_ini_um, data.y_ini_um) == (0.0, 0.0) and data.r_ini_rad == pytest.approx(np.deg2rad(r_deg[0]))
    with h5py.File(path) as f:
        assert {k for k, v in f.items() if isinstance(v, h5py.Dataset)} == FXI_FLY_DATASETS
        assert f["img_tomo"].dtype == np.uint16 and f["angle"].attrs["units"] == "deg"
        np.testing.assert_allclose(f["angle"][()], r_deg, rtol=0, atol=1e-12)
    return data


def test_tomography_run_exports_as_a_fly_scan(RE, sim_beamline, tiled_server, tmp_path):
    angles = np.linspace(0.0, 180.0, 9)
    uid = _tomo_run(RE, sim_beamline, [tiled_server.client()], angles)
    path = export_run(tiled_server.client(), uid, tmp_path)
    run = tiled_server.client()[uid]
    assert path.name == f"fly_scan_id_{run.metadata['start']['scan_id']}.h5"
    data = _check_fly_scan(path, run)
    np.testing.assert_allclose(data.theta_rad, np.deg2rad(angles), atol=1e-12)


def test_frames_come_from_the_detector_files_when_tiled_cannot_serve_them(RE, sim_beamline, tiled_server,
                                                                          tmp_path, caplog):
    """A Tiled server not given the detector folder answers HTTP 500 for the frames; the
    export reads the files the run's stream_resource documents name instead. The same run,
    stored beside it in a server that can read the frames, is the reference."""
    import stamina  # no backoff: Tiled retries an HTTP 500 for ~30 s

    with EmbeddedTiled(tmp_path / "blind-catalog") as blind, stamina.set_testing(True, attempts=3):
        client = blind.client()
        uid = _tomo_run(RE, sim_beamline, [client, tiled_server.client()], np.linspace(0.0, 180.0, 5))
        with pytest.raises(Exception, match="500"):
            client[uid]["primary"]["txm_det_image"].read()
        with caplog.at_level("WARNING", logger="txm_live.export"):
            path = export_run(client, uid, tmp_path / "out")
    assert "Tiled could not serve" in caplog.text
    _check_fly_scan(path, tiled_server.client()[uid])


def test_runs_that_cannot_be_exported_say_why(RE, sim_beamline, tiled_server, tmp_path, capsys):
    client = tiled_server.client()
    writer = subscribe_tiled_writer(RE, client, batch_size=100)
    (uid,) = RE(count([sim_beamline.detector]))
    assert writer.flush(60)
    assert run_export(_args(uid, "no-such-run", "--tiled", tiled_server.uri, "-o", str(tmp_path))) == 2
    err = capsys.readouterr().err
    assert f"run {uid}: run {uid} has scan_type None; export writes ('xanes2d', 'tomo', 'fly_scan')" in err
    assert "no run 'no-such-run'" in err


def test_export_is_a_txm_live_command():
    from txm_live.cli import build_parser

    args = build_parser().parse_args(["export", "uid-1", "uid-2", "--tiled", "http://127.0.0.1:1", "--with-raw"])
    assert args.func is run_export and args.uids == ["uid-1", "uid-2"] and args.with_raw
