"""The parts of the 3D XANES pipeline: the sampled fit, registration, the per-voxel
truth, the Dask runner, the out-of-core fit's memory, Tiled and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
from scipy import ndimage

from simulators.model import SimConfig
from simulators.xanes3d import make_xanes3d_sim, simulate_xanes3d_scan, voxel_truth
from txm_live.analysis import (
    XanesSampler,
    estimate_projection_drift,
    fit_xanes,
    fit_xanes_sampled,
    register_volumes,
)
from txm_live.analysis._synthetic import analytic_spectrum, default_energies
from txm_live.pipelines import RESULT_MAPS, Xanes3DStore, fit_store, run_xanes3d
from txm_live.scale import SCHEDULER_ENV, dask_runner


def _synthetic_volume_stack(n_e=20, shape=(12, 24, 20), seed=3):
    rng = np.random.default_rng(seed)
    E = default_energies(n=n_e)
    shift = rng.uniform(-1.5, 1.5, shape)
    stack = 0.2 + 0.5 * analytic_spectrum(E[:, None, None, None], shift[None])
    stack += rng.normal(0, 0.01, stack.shape)
    stack[:, 0, 0, :3] = np.nan  # a few bad voxels
    return stack.astype(np.float32), E


def test_sampled_fit_is_bit_identical_to_fit_xanes():
    stack, E = _synthetic_volume_stack()
    ref = fit_xanes(stack, E)
    sampler = XanesSampler(len(E), stack.shape[1:])
    with pytest.raises(ValueError, match=r"has not seen frames \[0, 1, 2"):
        fit_xanes_sampled(stack, E, sampler)
    rng = np.random.default_rng(0)
    for i in rng.permutation(len(E)):  # energies in any order, volumes by slabs of 5 slices
        for z0 in (5, 0, 10):
            sampler.add(i, stack[i, z0:z0 + 5], start=z0)
    res = fit_xanes_sampled(stack, E, sampler)
    for name in ("whiteline", "edge", "edge_jump", "noise", "status"):
        np.testing.assert_array_equal(getattr(res, name), getattr(ref, name))
    assert res.params == ref.params
    with pytest.raises(ValueError, match=r"slab of shape \(5, 24, 20\) at 10 does not fit"):
        sampler.add(0, stack[0, :5], start=10)
    with pytest.raises(TypeError, match="unexpected keyword argument 'whiteline_width'"):
        fit_xanes_sampled(stack, E, sampler, whiteline_width=2.0)


def test_register_volumes_recovers_a_known_shift():
    rng = np.random.default_rng(1)
    vol = ndimage.gaussian_filter(rng.random((40, 48, 48)), 2.0, mode="wrap").astype(np.float32)
    moved = ndimage.shift(vol, (1.3, -2.45, 0.7), order=3, mode="grid-wrap")  # periodic shift
    dz, dy, dx = register_volumes(vol, moved)
    # upsampling 20: a 0.05-voxel grid; achieved the grid point of the true shift
    assert (dz, dy, dx) == pytest.approx((-1.3, 2.45, -0.7), abs=0.03)
    with pytest.raises(ValueError, match="3-D of one shape"):
        register_volumes(vol, moved[:-1])


def test_projection_drift_needs_matching_angles():
    ref = np.zeros((10, 16, 16), np.float32)
    with pytest.raises(ValueError, match="within 0.5 angle steps"):
        estimate_projection_drift(ref, np.linspace(0, 1, 10), ref, np.linspace(2, 3, 10))
    with pytest.raises(ValueError, match="one angle per projection: 9 angles for 10"):
        estimate_projection_drift(ref, np.linspace(0, 1, 9), ref, np.linspace(0, 1, 10))


def test_voxel_truth_matches_the_phantom():
    cfg = SimConfig(shape=(64, 64), rotation_axis_offset_um=0.8, seed=4)
    sim = make_xanes3d_sim(cfg, n_angles=8)
    truth = voxel_truth(sim, supersample=1)
    p_um = sim.pixel_size_nm / 1e3
    ny, nx = sim.shape
    part = max(sim.sample.particles, key=lambda q: q.radius_um)
    cx, cy, cz = part.center_um
    # voxel whose centre is nearest the particle centre (tomography module's grid)
    j = int(round(cy / p_um + (ny - 1) / 2))
    row, col = int(round(nx // 2 - cz / p_um)), int(round(cx / p_um + nx // 2))
    y, z, x = (j - (ny - 1) / 2) * p_um, (nx // 2 - row) * p_um, (col - nx // 2) * p_um
    r = np.sqrt((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2)
    if truth.occupancy[j, row, col] == 1:  # not in a void
        assert truth.oxidation_state[j, row, col] == pytest.approx(part.valence_at(r), abs=1e-5)
    # whiteline rises with valence (1.25 eV per unit), over every full voxel
    m = truth.mask
    assert np.corrcoef(truth.whiteline_ev[m], truth.oxidation_state[m])[0, 1] > 0.99
    assert np.all(np.isnan(truth.oxidation_state[truth.occupancy == 0]))


def test_dask_runner_choices(monkeypatch):
    monkeypatch.setenv(SCHEDULER_ENV, "sync")
    with dask_runner() as runner:
        assert runner.scheduler == "sync" and not runner.distributed
        assert runner.map(abs, [-1, 2]) == [1, 2]
    monkeypatch.delenv(SCHEDULER_ENV)
    assert dask_runner().scheduler == "threads"
    with pytest.raises(ValueError, match=r"unknown scheduler 'cluster'.*tcp://host:8786"):
        dask_runner("cluster")
    with pytest.raises(ValueError, match="expected 'local:N'"):
        dask_runner("local:two")


OUT_OF_CORE_SCRIPT = textwrap.dedent("""
    import json, sys, warnings
    warnings.simplefilter("ignore")
    from txm_live.analysis import fit_xanes
    from txm_live.pipelines import fit_store
    from txm_live.analysis._synthetic import synthetic_xanes_stack

    def status_kib(field):
        with open("/proc/self/status") as f:
            return int(next(l for l in f if l.startswith(field + ":")).split()[1])

    s, E, _ = synthetic_xanes_stack((8, 8))
    fit_xanes(s, E)  # compile (or load) the kernels before the baseline
    del s
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # Linux: reset the peak resident set (VmHWM) to the current one
    base = status_kib("VmRSS")
    fit = fit_store(sys.argv[1], chunk_slices=2)
    print(json.dumps({"base_kib": base, "peak_kib": status_kib("VmHWM"), "chunks": fit.chunks[1]}))
""")
#: Memory the out-of-core fit may add to its process: measured 125 MiB peak (VmHWM) over
#: the resident set before it (a few 9 MiB chunks of 32 energies x 2 slices x 192² in
#: flight on dask's 2 threads, their maps, zarr's and dask's own working memory).
OUT_OF_CORE_BOUND_MIB = 170
#: glibc keeps memory that threads freed unless told to trim it; dask.distributed's
#: nannies set this for their workers, and the docs advise it for in-process runs.
TRIM_ENV = {"MALLOC_TRIM_THRESHOLD_": "65536"}


def test_out_of_core_fit_keeps_memory_bounded(tmp_path):
    n_e, shape = 32, (96, 192, 192)  # 32 x 96 x 192 x 192 float32 = 432 MiB on disk
    E = default_energies(n=n_e)
    store = Xanes3DStore.create(tmp_path / "big.zarr", E, shape[:2], slab=8)
    sampler = store.sampler()
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    shift = (1.5 * np.sin(3 * zz) * np.cos(2 * yy + xx)).astype(np.float32)  # eV, smooth
    stack = np.empty((n_e, *shape), np.float32)  # kept here only to check the result
    for i, e in enumerate(E):
        vol = (0.3 + 0.6 * analytic_spectrum(e, shift)).astype(np.float32)
        stack[i] = vol
        for z0 in range(0, shape[0], 8):
            store.volumes[i, z0:z0 + 8] = vol[z0:z0 + 8]
            sampler.add(i, vol[z0:z0 + 8], start=z0)
    assert stack.nbytes >= 2 * OUT_OF_CORE_BOUND_MIB * 2**20
    out = subprocess.run([sys.executable, "-c", OUT_OF_CORE_SCRIPT, str(tmp_path / "big.zarr")],
                         capture_output=True, text=True, timeout=300, env={**os.environ, **TRIM_ENV})
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    added_mib = (report["peak_kib"] - report["base_kib"]) / 1024
    assert added_mib < OUT_OF_CORE_BOUND_MIB, report
    # and the numbers are those of the in-memory fit, bit for bit
    ref = fit_xanes(stack, E)
    res = Xanes3DStore.open(tmp_path / "big.zarr", mode="r").results()
    for name in ("whiteline", "edge", "edge_jump", "status"):
        np.testing.assert_array_equal(res[name][:], getattr(ref, name))
    np.testing.assert_array_equal(res["mask"][:], ref.mask)


# ------------------------------------------------------------------ FXI files, CLI, Tiled
SMALL_ENERGIES = 8333.0 + np.array([-40, -25, -10, -5, -2.5, 0, 2.5, 5, 7.5, 10, 12.5, 15, 20, 30, 45])


@pytest.fixture(scope="module")
def small_scan():
    cfg = SimConfig(shape=(64, 64), rotation_axis_offset_um=0.8, seed=5)
    sim = make_xanes3d_sim(cfg, n_angles=60)
    return simulate_xanes3d_scan(sim, SMALL_ENERGIES[::-1], 60)


def _write_fxi_folder(folder, xscan):
    from fxi_beamline import FlyScan, write_fly_scan_like_fxi

    folder.mkdir()
    for k, s in enumerate(xscan.scans):
        fly = FlyScan(s.projections, np.rad2deg(s.theta_rad), s.flats, s.darks, s.energy_ev,
                      s.rotation_center_px)
        write_fly_scan_like_fxi(folder / f"fly_scan_id_{300 + k}.h5", fly, scan_id=300 + k)


def test_analyze3d_cli_on_fxi_files_writes_the_store_and_a_tiled_run(tmp_path, small_scan, tiled_server,
                                                                      capsys):
    from tiled.queries import Key

    from txm_live.cli import main

    _write_fxi_folder(tmp_path / "fxi", small_scan)
    out = tiled_server.frames_dir / "analyze3d" / "scan.zarr"  # where Tiled may read the volumes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["analyze3d", str(tmp_path / "fxi"), "-o", str(out), "--scheduler", "sync",
                     "--tiled", tiled_server.uri, "--parent-uid", "raw-3d-uid"]) == 0
        ref_path = tmp_path / "ref.zarr"
        run_xanes3d(small_scan, ref_path)  # the same scans straight from the simulator
    printed = capsys.readouterr()
    assert "15 energies 8293.0–8378.0 eV, (64, 64) px" in printed.err
    uid = printed.out.strip().splitlines()[-1].split()[-1]
    a, b = Xanes3DStore.open(out, mode="r"), Xanes3DStore.open(ref_path, mode="r")
    # FXI stores angles in degrees: the round trip moves them by an ulp, nothing more
    np.testing.assert_allclose(a.volumes[:], b.volumes[:], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(a.results()["mask"][:], b.results()["mask"][:])
    client = tiled_server.client()
    runs = client.search(Key("start.parent_uid") == "raw-3d-uid")
    assert list(runs) == [uid]
    run = runs[uid]
    assert run.metadata["start"]["analysis"] == "xanes3d"
    params = run.metadata["start"]["analysis_parameters"]
    assert params["reconstruction"]["filter_name"] == "parzen" and "e0" in params["fit_xanes"]
    wl = run["volumes"]["whiteline"].read()
    np.testing.assert_array_equal(np.asarray(wl)[0], a.results()["whiteline"][:])
    reg = run["registration"].read()
    np.testing.assert_array_equal(np.asarray(reg["shift_x_px"]), a.registration()["shift_px"][:, 1])


def test_analyze3d_cli_refuses_bad_input(tmp_path, capsys):
    from txm_live.cli import main

    assert main(["analyze3d", str(tmp_path)]) == 1
    assert "no fly_scan_id_*.h5 files in" in capsys.readouterr().err


def test_fit_store_needs_every_energy(tmp_path):
    store = Xanes3DStore.create(tmp_path / "s.zarr", np.arange(8330.0, 8340.0), (16, 16))
    store.volumes[0] = 0.0
    with pytest.raises(ValueError, match=r"no volume yet for energies \[0, 1, 2, 3, 4, 5, 6, 7, 8, 9\]"):
        fit_store(tmp_path / "s.zarr")
    assert set(RESULT_MAPS) >= {"whiteline", "edge", "edge_jump", "mask"}


def test_simulated_scan_drifts_and_jumps_between_energies():
    from simulators.xanes3d import ENERGY_CHANGE_S

    cfg = SimConfig(shape=(64, 64), rotation_axis_offset_um=0.8, seed=6, mono_jump_nm=300.0)
    sim = make_xanes3d_sim(cfg, n_angles=8)
    xscan = simulate_xanes3d_scan(sim, [8400.0, 8350.0, 8300.0], 8, n_darks=2, n_flats=2)
    assert sim.drift.n_jumps == 2  # one per monochromator move
    a, b = xscan.scans[:2]
    assert b.dark_times_s[0] == pytest.approx(max(a.flat_times_s[-1], a.times_s[-1]) + ENERGY_CHANGE_S)
    np.testing.assert_allclose(xscan.drift_px[1], b.drift_px.mean(axis=0))
    # 300 nm jumps on 640 nm pixels: the energies' mean drift differs by about half a pixel
    assert np.abs(np.diff(xscan.drift_px, axis=0)).max() > 0.2
    with pytest.raises(ValueError, match="energies_ev must be a 1-D list of finite energies"):
        simulate_xanes3d_scan(sim, [8400.0, np.nan], 8)
