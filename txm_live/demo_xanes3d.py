"""The demo's 3D XANES section: ``xanes_3d`` on the simulated TXM, analysed live into Tiled.

13 energies across the Ni K edge (high → low, as FXI scans), a fly tomography of 60
projections at each on a 32 × 96 detector (32 slices of 96², 320 nm pixels), the sample
drifting between energies. Each energy is its own raw run; the live analysis
(:class:`txm_live.callbacks.Xanes3DAnalysis`) reconstructs and registers each energy as
its run ends, previews the whiteline on three slices, fits every voxel after the last
energy and writes the result volumes to Tiled. The demo compares them with the
simulator's truth and leaves PNGs of a whiteline slice beside the truth in ``previews/``.
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np

__all__ = ["run_xanes3d_demo"]

#: Detector rows × columns of the demo's 3D XANES (32 slices of 96²).
DEMO_DETECTOR = (32, 96)
DEMO_PROJECTIONS = 60
#: Raw events per Tiled write during the 3D XANES scan.
RAW_BATCH_SIZE = 100


def _energies():
    """13 energies: 2 pre-edge, 8 across edge and whiteline (3 eV apart), 3 post-edge."""
    from .energies import xanes_energy_list

    return xanes_energy_list(8333.0, pre_edge_ev=(-30, -10), pre_edge_step_ev=10, near_edge_ev=(-10, 14),
                             near_edge_step_ev=3.0, post_edge_ev=(14, 50), post_edge_step_ev=18)


def _scan_truth(truth_log, shape):
    from simulators.tomography import TomoScan

    theta = np.array([t.theta_rad for t in truth_log])
    empty = np.empty((0, *shape), np.uint16)
    return TomoScan(empty, empty, empty, theta, theta, theta[:0], theta[:0], list(truth_log))


def _figures(analysis, truth, voxels) -> dict:
    """Whiteline r / RMS over particle voxels, registration RMS vs the true drift."""
    volumes = analysis["volumes"]
    whiteline = np.asarray(volumes["whiteline"].read())[0]
    fitted = np.asarray(volumes["mask"].read())[0].astype(bool)
    m = voxels.mask & fitted
    r = float(np.corrcoef(whiteline[m], voxels.oxidation_state[m])[0, 1])
    rms = float(np.sqrt(np.mean((whiteline[m] - voxels.whiteline_ev[m]) ** 2)))
    energies = analysis["energies"]
    shift = np.stack([np.asarray(energies["shift_y_px"].read()), np.asarray(energies["shift_x_px"].read())], 1)
    drift = np.array([t.drift_px.mean(axis=0) for t in truth])
    rel = drift - drift[0]
    return {"whiteline": whiteline, "r": r, "rms_ev": rms, "n_voxels": int(m.sum()),
            "registration_px": float(np.sqrt(np.mean((-shift - rel)[1:] ** 2))),
            "drift_px": float(np.sqrt(np.mean(rel[1:] ** 2)))}


def _pngs(previews: Path, whiteline, voxels, tag: str) -> list[str]:
    from .demo import _save_png

    z = whiteline.shape[0] // 2
    truth = np.where(voxels.mask[z], voxels.whiteline_ev[z], np.nan)
    estimate = np.where(voxels.mask[z], whiteline[z], np.nan)
    finite = truth[np.isfinite(truth)]
    limits = tuple(np.percentile(finite, (1, 99))) if finite.size else (None, None)
    names = [f"{tag}_whiteline_slice.png", f"{tag}_whiteline_truth.png"]
    _save_png(previews / names[0], estimate, f"3D XANES whiteline, slice {z} (live)", "eV", limits=limits)
    _save_png(previews / names[1], truth, f"whiteline, slice {z} (simulator truth)", "eV", limits=limits)
    return names


def run_xanes3d_demo(session, args) -> None:
    """Run the 3D XANES section on the demo's session (its RunEngine, Tiled and live analysis)."""
    from simulators.beamline import make_sim_beamline
    from simulators.model import SimConfig
    from simulators.xanes3d import make_xanes3d_sim, voxel_truth

    from .plans import xanes_3d

    energies = _energies()
    ny, nx = DEMO_DETECTOR
    config = SimConfig(shape=DEMO_DETECTOR, sensor_shape=(16 * ny, 16 * nx), rotation_axis_offset_um=0.8,
                       seed=args.seed, drift_rate_nm_per_s=(3.0, 5.0), drift_walk_nm_per_sqrt_s=5.0,
                       mono_jump_nm=100.0)
    bl = make_sim_beamline(session.out / "frames", model=make_xanes3d_sim(config, n_angles=DEMO_PROJECTIONS + 8),
                           energy_ev=float(energies.max()), realistic_timing=args.realistic_timing)
    bl.sample_stage.r.acceleration.put(0.1)
    print(f"  3D XANES: {energies.size} energies {energies.min():.0f}–{energies.max():.0f} eV × fly tomography of "
          f"{DEMO_PROJECTIONS} projections, {ny} slices of {nx}² px, one run per energy")
    truth = []
    token = session.RE.subscribe(lambda name, doc: truth.append(_scan_truth(bl.detector.truth_for("sample"),
                                                                            DEMO_DETECTOR)) if name == "stop" else None)
    # ~1000 raw frames: their events go to Tiled in pages of 100 (each write is an HTTP
    # round trip), the analysis rows one by one as they come; the writer reads its batch
    # sizes at each run's start document
    writer = session.writer
    batch_sizes = writer.batch_size, writer.analysis_batch_size
    writer.batch_size, writer.analysis_batch_size = RAW_BATCH_SIZE, 1
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # dead pixels: NaN absorbance, reported in the analysis
            uids = session.RE(xanes_3d(bl.detector, bl.sample_stage.r, bl.energy, energies, shutter=bl.shutter,
                                       sample_stage=bl.sample_stage, n_projections=DEMO_PROJECTIONS, n_darks=5,
                                       n_flats=5, md={"sample": "NMC811 particles (simulated)", "operator": "demo"}))
            session.live.wait(600)
    finally:
        session.RE.unsubscribe(token)
        writer.batch_size, writer.analysis_batch_size = batch_sizes
    wall = time.perf_counter() - t0
    (analysis_uid,) = {a for u in uids for a in session.live.analysis_uids.get(u, [])}
    analysis = session.server.client()[analysis_uid]
    voxels = voxel_truth(bl.model, shift_px=truth[0].object_shift_px)
    fig = _figures(analysis, truth, voxels)
    names = _pngs(session.out / "previews", fig["whiteline"], voxels, analysis_uid[:8])
    print(f"  3D XANES done in {wall:.1f} s ({len(uids)} raw runs, analysis run {analysis_uid[:8]}: "
          f"{analysis.metadata['stop']['exit_status']}): whiteline vs the true oxidation state r {fig['r']:.3f}, "
          f"RMS {fig['rms_ev']:.3f} eV over {fig['n_voxels']} particle voxels; registration "
          f"{fig['registration_px']:.3f} px RMS vs the true drift ({fig['drift_px']:.2f} px RMS); "
          f"previews/{names[0]}, previews/{names[1]}")
