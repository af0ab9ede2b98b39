"""``txm-live demo``: a simulated 2D XANES beamtime, stored in Tiled, with maps and previews.

What it does, in order:

1. starts the embedded Tiled server (catalog in ``OUTPUT/tiled``, detector files in
   ``OUTPUT/frames``) and subscribes the Tiled writer to a RunEngine;
2. subscribes the live analysis when it is installed (``txm_live.callbacks``);
3. runs ``xanes_2d`` on the simulated TXM (a charged NMC electrode at the Ni K edge);
4. exports the stored run in FXI's HDF5 layout and runs the batch analysis on it
   (``txm-live analyze``), comparing the whiteline map with the simulator's truth;
5. leaves PNG previews in ``OUTPUT/previews``.

The catalog stays on disk: ``txm-live serve OUTPUT`` serves it again.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", type=Path, default=Path("demo-output"), help="output folder")
    parser.add_argument("--size", type=int, default=256, help="image size in pixels (128, 256, 512, 1024, 2048)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the simulated sample and noise")
    parser.add_argument("--state-of-charge", type=float, default=0.6, help="0 (pristine, Ni2+) … 1 (charged)")
    parser.add_argument("--realistic-timing", action="store_true",
                        help="motors and exposures take beamline time (a scan takes minutes)")


def _save_png(path: Path, image, title: str, label: str, cmap: str = "viridis") -> Path:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 4.2), dpi=100)
    ax = fig.add_subplot()
    finite = np.asarray(image, dtype=float)[np.isfinite(image)]
    # Robust colour limits: a few outlier pixels must not wash out the map.
    vmin, vmax = np.percentile(finite, [1, 99]) if finite.size else (None, None)
    shown = ax.imshow(image, cmap=cmap, vmin=vmin, vmax=vmax)
    fig.colorbar(shown, ax=ax, label=label)
    ax.set_title(title)
    ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path)
    return path


def run_demo(args) -> int:
    from bluesky import RunEngine

    from simulators.beamline import make_sim_beamline
    from simulators.model import SimConfig, SimTXM
    from simulators.phantom import make_nmc_phantom

    from .batch import analyze_fxi_file
    from .energies import xanes_energy_list
    from .io.fxi import write_fxi_xanes
    from .plans import xanes_2d
    from .store import EmbeddedTiled, subscribe_tiled_writer

    out = args.output.resolve()
    previews = out / "previews"
    previews.mkdir(parents=True, exist_ok=True)
    print(f"txm-live demo → {out}")

    server = EmbeddedTiled(out / "tiled", readable_storage=[out / "frames"])
    print(f"  Tiled server at {server.uri.split('?')[0]} (catalog {out / 'tiled'})")
    print(f"  watch it in a browser: txm-live view --tiled {out / 'tiled'}  → http://127.0.0.1:5006/")
    try:
        RE = RunEngine({})
        writer = subscribe_tiled_writer(RE, server.client(), backup_directory=out / "tiled-backup")
        live = None
        try:
            from .callbacks import subscribe_live_analysis
        except ImportError:
            subscribe_live_analysis = None
        if subscribe_live_analysis is not None:
            # One writer for raw and analysis documents: two writers appending to the
            # embedded SQLite catalog at once collide.
            live = subscribe_live_analysis(RE, server.client(), preview_dir=previews, writer=writer)
            print("  live analysis subscribed (previews update in previews/)")

        config = SimConfig(shape=(args.size, args.size), seed=args.seed)
        model = SimTXM(config, sample=make_nmc_phantom(state_of_charge=args.state_of_charge, seed=args.seed))
        bl = make_sim_beamline(out / "frames", model=model, realistic_timing=args.realistic_timing)
        energies = xanes_energy_list(8333.0)

        n_done = {"n": 0}

        def count_events(name, doc):
            n_done["n"] += 1

        RE.subscribe(count_events, "event")
        print(f"  2D XANES: {len(energies)} energies {energies.min():.0f}–{energies.max():.0f} eV, "
              f"{args.size}² px of {model.pixel_size_nm:.0f} nm, Ni K edge, state of charge {args.state_of_charge}")
        t0 = time.perf_counter()
        (uid,) = RE(xanes_2d(bl.detector, bl.energy, energies, shutter=bl.shutter, sample_stage=bl.sample_stage,
                             n_darks=10, md={"sample": "NMC811 electrode (simulated)", "operator": "demo"}))
        print(f"  scan {uid[:8]} done in {time.perf_counter() - t0:.1f} s "
              f"({n_done['n']} events, simulated beam time {bl.clock.now() / 60:.1f} min)")
        if not writer.flush(600):
            print("  warning: Tiled writer still busy after 600 s", file=sys.stderr)
        if writer.failures:
            print(f"  warning: Tiled writer reported {len(writer.failures)} failures; see tiled-backup/",
                  file=sys.stderr)
        if live is not None:
            live.wait(600)
            for analysis_uid in live.analysis_uids.get(uid, []):
                print(f"  live analysis run {analysis_uid[:8]} in Tiled (start.parent_uid = {uid[:8]})")

        # Read the run back over HTTP, export it in FXI's layout, analyse it as a user would.
        run = server.client()[uid]
        frames = run["primary"]["txm_det_image"].read()
        flats = run["flat"]["txm_det_image"].read()
        darks = run["dark"]["txm_det_image"].read()
        energy = np.asarray(run["primary"]["energy"].read(), dtype=float)
        fxi_path = write_fxi_xanes(
            out / f"xanes_{uid[:8]}.h5", frames, energy, flats=flats, darks=darks,
            magnification=run.metadata["start"]["magnification"],
            pixel_size_nm=run.metadata["start"]["pixel_size_nm"],
        )
        maps = analyze_fxi_file(fxi_path, out / "maps", progress=False)
        print(f"  FXI-style export {fxi_path.name}; batch maps in maps/")

        import h5py

        with h5py.File(maps["maps"], "r") as f:
            whiteline = f["whiteline"][()]
            mask = f["mask"][()].astype(bool)
            shifts = f["shifts"][()]
        truth = model.truth_maps()
        both = mask & truth.mask
        err = (whiteline - truth.whiteline_ev)[both]
        true_drift = np.array([t.drift_px for t in bl.detector.truth_for("sample")])
        true_rel = -(true_drift - true_drift[np.argmin(energy)])
        print(f"  whiteline vs truth over {both.sum()} sample pixels: RMS {np.sqrt(np.mean(err**2)):.2f} eV, "
              f"bias {err.mean():+.2f} eV; drift estimate vs truth RMS "
              f"{np.sqrt(np.mean((shifts - true_rel) ** 2)):.2f} px")

        _save_png(previews / "raw_frame.png", frames[len(frames) // 2], f"raw frame at {energy[len(energy) // 2]:.1f} eV",
                  "counts", cmap="gray")
        _save_png(previews / "whiteline_map.png", np.where(mask, whiteline, np.nan), "whiteline (batch)", "eV")
        _save_png(previews / "whiteline_truth.png", truth.whiteline_ev, "whiteline (simulator truth)", "eV")
        print(f"  previews: {', '.join(sorted(p.name for p in previews.glob('*.png')))}")
        print(f"Done. Serve the catalog again with: txm-live serve {out}  (runs: {uid})")
    finally:
        server.close()
    return 0
