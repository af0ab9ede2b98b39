"""``txm-live analyze3d``: a 3D XANES scan (FXI fly-scan files) → per-voxel chemistry.

::

    txm-live analyze3d FOLDER_OR_FILES... [--scan-ids 1200:1260] [-o OUT.zarr]
                       [--scheduler tcp://host:8786 | local | local:4 | threads]
                       [--tiled URI_OR_DIR --parent-uid UID]

The scheduler defaults to ``$TXM_LIVE_DASK_SCHEDULER``, else this process.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_analyze3d_arguments", "run_analyze3d"]


def _scan_ids(text: str):
    start, sep, stop = text.partition(":")
    try:
        return range(int(start), int(stop)) if sep else [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--scan-ids takes START:STOP or a comma list; got {text!r}")


def add_analyze3d_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``txm-live analyze3d`` arguments to ``parser``."""
    parser.add_argument("source", nargs="+", type=Path,
                        help="a folder of FXI fly_scan_id_<n>.h5 files (one per energy), or the files")
    parser.add_argument("--scan-ids", type=_scan_ids, default=None,
                        help="which scans of the folder: START:STOP (stop excluded) or a comma list")
    parser.add_argument("-o", "--output", type=Path, default=None,
                        help="the zarr store to write (default: SOURCE's folder / xanes3d.zarr)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing store")
    parser.add_argument("--scheduler", default=None,
                        help="threads | sync | local | local:N | tcp://HOST:PORT "
                             "(default: $TXM_LIVE_DASK_SCHEDULER, else threads)")
    parser.add_argument("--center", type=float, default=None,
                        help="rotation centre of the first scan, detector px (default: found)")
    parser.add_argument("--tiled", default=None,
                        help="also write the results to Tiled as an analysis run (URI or served folder)")
    parser.add_argument("--parent-uid", default=None, help="the raw run's uid, for the analysis run")
    return parser


def run_analyze3d(args: argparse.Namespace) -> int:
    """Run ``txm-live analyze3d``; returns the exit code (1 bad input, 0 done)."""
    from ..io import FxiLayoutError, open_fxi_xanes3d
    from ..scale import dask_runner
    from .xanes3d import run_xanes3d

    sources = list(args.source)
    target = sources[0] if len(sources) == 1 else sources
    try:
        series = open_fxi_xanes3d(target, scan_ids=args.scan_ids)
        runner = dask_runner(args.scheduler)
    except (FileNotFoundError, FxiLayoutError, ValueError) as exc:
        print(f"txm-live analyze3d: {exc}", file=sys.stderr)
        return 1
    folder = sources[0] if sources[0].is_dir() else sources[0].parent
    out = args.output or folder / "xanes3d.zarr"
    print(f"{len(series)} energies {series.energies_ev.min():.1f}–{series.energies_ev.max():.1f} eV, "
          f"{series.image_shape} px; running on {runner}", file=sys.stderr)
    try:
        with runner:
            reports, fit = run_xanes3d(series, out, runner=runner, center_px=args.center,
                                       overwrite=args.overwrite)
    except (FileExistsError, ValueError) as exc:
        print(f"txm-live analyze3d: {exc}", file=sys.stderr)
        return 1
    print(f"store: {out}")
    print(f"fitted voxels: {fit.status_counts}")
    if args.tiled:
        from ..store import connect
        from .xanes3d_tiled import write_xanes3d_run

        uid = write_xanes3d_run(connect(args.tiled), out, parent_uid=args.parent_uid)
        print(f"analysis run: {uid}")
    return 0
