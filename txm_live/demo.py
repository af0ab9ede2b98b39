"""``txm-live demo``: a simulated 2D XANES beamtime, stored in Tiled, with maps and previews.

What it does, in order:

1. starts the embedded Tiled server (catalog in ``OUTPUT/tiled``, detector files in
   ``OUTPUT/frames``) and subscribes the Tiled writer and the live analysis to a RunEngine;
2. runs ``xanes_2d`` on the simulated TXM (a charged NMC electrode at the Ni K edge);
3. exports the stored run in FXI's HDF5 layout (``txm-live export``, raw frames kept in
   ``/txm_live/raw``) and runs the batch analysis on it (``txm-live analyze``: the same
   pipeline as the live analysis, so the same maps);
4. compares the maps with the live ones and with the simulator's truth, and leaves PNG
   previews in ``OUTPUT/previews`` (estimate and truth on one colour scale, error map);
5. runs a fly-scan tomography (``tomo_fly``) of the simulated cathode, its axis off the
   detector centre: the live analysis writes centre slices to Tiled during the scan and
   the volume after it; the demo compares the centre and the volume with the truth
   (``--tomo-projections 0`` skips it).
6. runs a short operando session (:mod:`txm_live.demo_operando`; ``--no-operando`` skips it).
7. runs a short 3D XANES scan (``xanes_3d``, one tomography run per energy) analysed live:
   per-voxel whiteline vs the truth, PNGs of a slice (:mod:`txm_live.demo_xanes3d`;
   ``--no-xanes3d`` skips it).

The catalog stays on disk: ``txm-live serve OUTPUT`` serves it again.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Colour limits of the map previews: these percentiles of the truth inside the sample.
_PREVIEW_PERCENTILES = (1, 99)


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", type=Path, default=Path("demo-output"), help="output folder")
    parser.add_argument("--size", type=int, default=256, help="image size in pixels (128, 256, 512, 1024, 2048)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the simulated sample and noise")
    parser.add_argument("--state-of-charge", type=float, default=0.6, help="0 (pristine, Ni2+) … 1 (charged)")
    parser.add_argument("--tomo-projections", type=int, default=120,
                        help="projections of the tomography scan over 180° (0: no tomography; default 120)")
    parser.add_argument("--realistic-timing", action="store_true",
                        help="motors and exposures take beamline time (a scan takes minutes)")
    parser.add_argument("--no-operando", action="store_true",
                        help="skip the short operando session (txm_live.demo_operando)")
    parser.add_argument("--no-xanes3d", action="store_true",
                        help="skip the short 3D XANES scan (txm_live.demo_xanes3d)")


@dataclass
class _Session:
    """What the demo set up: the store, the RunEngine and what listens to it."""

    out: Path
    server: object
    RE: object
    writer: object
    live: object


def _start(out: Path) -> _Session:
    from bluesky import RunEngine

    from .callbacks import subscribe_live_analysis
    from .store import EmbeddedTiled, subscribe_tiled_writer

    server = EmbeddedTiled(out / "tiled", readable_storage=[out / "frames"])
    print(f"  Tiled server at {server.uri.split('?')[0]} (catalog {out / 'tiled'})")
    print(f"  watch it in a browser: txm-live view --tiled {out / 'tiled'}  → http://127.0.0.1:5006/")
    RE = RunEngine({})
    writer = subscribe_tiled_writer(RE, server.client(), spool_directory=out / "tiled-backup")
    # One writer for raw and analysis documents: two writers appending to the embedded
    # SQLite catalog at once collide.
    live = subscribe_live_analysis(RE, server.client(), preview_dir=out / "previews", writer=writer)
    print("  live analysis subscribed (previews update in previews/)")
    return _Session(out, server, RE, writer, live)


def _beamline(args, out: Path):
    from simulators.beamline import make_sim_beamline
    from simulators.model import SimConfig, SimTXM
    from simulators.phantom import make_nmc_phantom

    config = SimConfig(shape=(args.size, args.size), seed=args.seed)
    model = SimTXM(config, sample=make_nmc_phantom(state_of_charge=args.state_of_charge, seed=args.seed))
    return make_sim_beamline(out / "frames", model=model, realistic_timing=args.realistic_timing)


def _scan(session: _Session, bl, args) -> str:
    from .energies import xanes_energy_list
    from .plans import xanes_2d

    energies = xanes_energy_list(8333.0)
    print(f"  2D XANES: {len(energies)} energies {energies.min():.0f}–{energies.max():.0f} eV, "
          f"{args.size}² px of {bl.model.pixel_size_nm:.0f} nm, Ni K edge, state of charge {args.state_of_charge}")
    t0 = time.perf_counter()
    (uid,) = session.RE(xanes_2d(bl.detector, bl.energy, energies, shutter=bl.shutter,
                                 sample_stage=bl.sample_stage, n_darks=10,
                                 md={"sample": "NMC811 electrode (simulated)", "operator": "demo"}))
    print(f"  scan {uid[:8]} done in {time.perf_counter() - t0:.1f} s "
          f"(simulated beam time {bl.clock.now() / 60:.1f} min)")
    if not session.writer.flush(600):
        print("  warning: Tiled writer still busy after 600 s", file=sys.stderr)
    if session.writer.failures:
        print(f"  warning: Tiled writer reported {len(session.writer.failures)} failures; see tiled-backup/",
              file=sys.stderr)
    session.live.wait(600)
    return uid


def _export_fxi(session: _Session, uid: str) -> Path:
    """The stored run in FXI's layout (``txm-live export``), raw frames kept in ``/txm_live/raw``."""
    from .export import export_run

    return export_run(session.server.client(), uid, session.out, with_raw=True, overwrite=True)


def _live_maps(session: _Session, uid: str) -> dict:
    from .replay import find_analysis_runs

    (analysis,) = find_analysis_runs(session.server.client(), uid).values()
    return {f: analysis["maps"][f].read()[-1] for f in ("whiteline", "edge", "edge_jump", "mask")}


def _batch_maps(path: Path) -> dict:
    import h5py

    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in ("whiteline", "edge", "edge_jump", "mask", "shifts")}


def _truth_at_first_frame(bl) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Truth whiteline and mask moved to where the first frame saw the sample, and that drift."""
    from scipy import ndimage

    truth = bl.model.truth_maps()
    sample = bl.detector.truth_for("sample")
    d0 = np.asarray(sample[0].drift_px)
    whiteline = ndimage.shift(np.nan_to_num(truth.whiteline_ev), d0, order=1, mode="nearest")
    # a pixel away from the particles' rims, where the interpolation mixes in no background
    mask = ndimage.binary_erosion(ndimage.shift(truth.mask.astype(float), d0, order=0) > 0.5, iterations=2)
    drift = np.array([t.drift_px for t in sample])
    return np.where(mask, whiteline, np.nan), mask, -(drift - d0)


def _report(batch: dict, live: dict, bl) -> dict:
    same = all(np.array_equal(batch[f], live[f].astype(batch[f].dtype), equal_nan=True)
               for f in ("whiteline", "edge", "edge_jump", "mask"))
    print(f"  batch maps vs the live analysis run's maps in Tiled: {'bit-identical' if same else 'DIFFERENT'}")
    truth_wl, truth_mask, true_shifts = _truth_at_first_frame(bl)
    both = batch["mask"].astype(bool) & truth_mask
    err = (batch["whiteline"] - truth_wl)[both]
    drift_rms = np.sqrt(np.mean(np.sum((batch["shifts"] - true_shifts) ** 2, axis=1)))
    print(f"  whiteline vs truth over {both.sum()} sample pixels: RMS {np.sqrt(np.mean(err**2)):.2f} eV, "
          f"bias {err.mean():+.2f} eV; drift estimate vs truth RMS {drift_rms:.2f} px")
    return {"truth": truth_wl, "estimate": np.where(both, batch["whiteline"], np.nan)}


def _save_png(path: Path, image, title: str, label: str, *, cmap: str = "viridis", limits=None) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if limits is None:
        finite = np.asarray(image, dtype=float)[np.isfinite(image)]
        # Robust colour limits: a few outlier pixels must not wash out the map.
        limits = np.percentile(finite, _PREVIEW_PERCENTILES) if finite.size else (None, None)
    shown = ax.imshow(image, cmap=cmap, vmin=limits[0], vmax=limits[1])
    fig.colorbar(shown, ax=ax, label=label)
    ax.set_title(title)
    ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path)
    return path


def _previews(previews: Path, maps: dict, raw_frame, raw_energy_ev: float) -> None:
    """Estimate and truth on one colour scale (the truth's), and the error map."""
    truth, estimate = maps["truth"], maps["estimate"]
    finite = truth[np.isfinite(truth)]
    limits = tuple(np.percentile(finite, _PREVIEW_PERCENTILES)) if finite.size else (None, None)
    _save_png(previews / "raw_frame.png", raw_frame, f"raw frame at {raw_energy_ev:.1f} eV", "counts", cmap="gray")
    _save_png(previews / "whiteline_map.png", estimate, "whiteline (analysis)", "eV", limits=limits)
    _save_png(previews / "whiteline_truth.png", truth, "whiteline (simulator truth)", "eV", limits=limits)
    error = estimate - truth
    span = float(np.nanpercentile(np.abs(error), 99)) if np.isfinite(error).any() else 1.0
    _save_png(previews / "whiteline_error.png", error, "whiteline error (analysis − truth)", "eV",
              cmap="RdBu_r", limits=(-span, span))
    print(f"  previews: {', '.join(sorted(p.name for p in previews.glob('*.png')))}")


def _tomography(session: _Session, args, out: Path) -> None:
    """A fly scan of the cathode (128² or the demo size if smaller), analysed live."""
    from simulators.beamline import make_sim_beamline
    from simulators.model import SimConfig
    from simulators.tomography import TomoScan, attenuation_volume, make_tomo_sim

    from .analysis import fov_radius_px
    from .callbacks import read_volume
    from .plans import tomo_fly

    size = min(args.size, 128)
    config = SimConfig(shape=(size, size), seed=args.seed, rotation_axis_offset_um=1.3, wobble_um=0.1)
    bl = make_sim_beamline(out / "frames", model=make_tomo_sim(config), energy_ev=8400.0,
                           realistic_timing=args.realistic_timing)
    print(f"  tomography: fly scan, {args.tomo_projections} projections over 180° at 8400 eV, {size}² px")
    t0 = time.perf_counter()
    (uid,) = session.RE(tomo_fly(bl.detector, bl.sample_stage.r, shutter=bl.shutter, sample_stage=bl.sample_stage,
                                 energy=bl.energy, n_projections=args.tomo_projections, n_darks=10, n_flats=10,
                                 md={"sample": "NMC811 particles (simulated)", "operator": "demo"}))
    session.live.wait(600)
    (analysis_uid,) = session.live.analysis_uids[uid]
    analysis = session.server.client()[analysis_uid]
    n_slices = len(analysis["slice"]["final"].read())
    center = float(analysis["reconstruction"]["center_px"].read()[0])
    truth = bl.detector.truth_for("sample")
    theta = np.array([t.theta_rad for t in truth])
    empty = np.empty((0, size, size), np.uint16)
    scan = TomoScan(empty, empty, empty, theta, theta, theta[:0], theta[:0], truth)
    volume = read_volume(analysis)
    true_volume = attenuation_volume(bl.model, 8400.0, shift_px=scan.object_shift_px)
    yy, xx = np.indices((size, size))
    fov = (yy - size // 2) ** 2 + (xx - size // 2) ** 2 < (fov_radius_px(size, center) - 1) ** 2
    a, t = volume[:, fov].astype(float).ravel(), true_volume[:, fov].astype(float).ravel()
    nrmse = np.sqrt(np.mean(((a @ t) / (a @ a) * a - t) ** 2)) / np.sqrt(np.mean(t * t))
    print(f"  tomography {uid[:8]} done in {time.perf_counter() - t0:.1f} s: {n_slices} centre slices in Tiled, "
          f"centre {center:.2f} px (truth {scan.center_px:.2f}), volume NRMSE vs the phantom {nrmse:.3f}; "
          f"analysis run {analysis_uid[:8]}, preview previews/{uid[:8]}_tomo.png")


def run_demo(args) -> int:
    from .batch import analyze_fxi_file

    out = args.output.resolve()
    (out / "previews").mkdir(parents=True, exist_ok=True)
    print(f"txm-live demo → {out}")
    session = _start(out)
    try:
        bl = _beamline(args, out)
        uid = _scan(session, bl, args)
        for analysis_uid in session.live.analysis_uids.get(uid, []):
            print(f"  live analysis run {analysis_uid[:8]} in Tiled (start.parent_uid = {uid[:8]})")
        fxi_path = _export_fxi(session, uid)
        outputs = analyze_fxi_file(fxi_path, out / "maps", progress=False)
        print(f"  FXI-style export {fxi_path.name}; batch maps (txm-live analyze) in maps/")
        maps = _report(_batch_maps(outputs["maps"]), _live_maps(session, uid), bl)
        run = session.server.client()[uid]
        middle = len(run.metadata["start"]["energies_ev"]) // 2
        _previews(out / "previews", maps, run["primary"]["txm_det_image"][middle],
                  run.metadata["start"]["energies_ev"][middle])
        if args.tomo_projections:
            _tomography(session, args, out)
        if not args.no_operando:
            from .demo_operando import run_operando_demo

            run_operando_demo(session, args.seed)
        if not args.no_xanes3d:
            from .demo_xanes3d import run_xanes3d_demo

            run_xanes3d_demo(session, args)
        print(f"Done. Serve the catalog again with: txm-live serve {out}  (runs: {uid})")
    finally:
        session.server.close()
    return 0
