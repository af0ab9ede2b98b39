"""The ``txm-live`` command: ``demo``, ``serve``, ``analyze``, ``analyze3d``, ``export``, ``replay``.

Each sub-command lives in its own module; this file only parses and dispatches.
"""
from __future__ import annotations

import argparse
import sys


def _add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", nargs="?", default="txm-live-data",
                        help="folder holding the catalog and the detector files (default: txm-live-data)")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free port)")


def _run_serve(args) -> int:
    import time
    from pathlib import Path

    from .store import EmbeddedTiled

    root = Path(args.directory)
    server = EmbeddedTiled(root / "tiled", readable_storage=[root / "frames"], port=args.port)
    print(f"Tiled server for {root.resolve()} at {server.uri}")
    print(f"Other processes: txm_live.store.connect({str((root / 'tiled').resolve())!r}). Ctrl-C stops it.")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0


def _run_replay(args) -> int:
    from .replay import run_replay

    return run_replay(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="txm-live", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    from .demo import add_demo_arguments, run_demo

    demo = sub.add_parser("demo", help="simulated beamtime with live analysis, results in Tiled + PNGs")
    add_demo_arguments(demo)
    demo.set_defaults(func=run_demo)

    serve = sub.add_parser("serve", help="run the embedded Tiled server on 127.0.0.1 until Ctrl-C")
    _add_serve_arguments(serve)
    serve.set_defaults(func=_run_serve)

    from .batch import add_analyze_arguments, run_analyze

    analyze = sub.add_parser("analyze", help="XANES maps from an FXI-style HDF5 file (HDF5 + PNG)")
    add_analyze_arguments(analyze)
    analyze.set_defaults(func=run_analyze)

    from .pipelines.xanes3d_cli import add_analyze3d_arguments, run_analyze3d

    analyze3d = sub.add_parser("analyze3d", help="3D XANES (FXI fly scans, one per energy) → per-voxel "
                                                 "whiteline/edge volumes, in process or on Dask")
    add_analyze3d_arguments(analyze3d)
    analyze3d.set_defaults(func=run_analyze3d)

    from .export import add_export_arguments, run_export

    export = sub.add_parser("export", help="stored runs as FXI's own export files (2D XANES, fly scan)")
    add_export_arguments(export)
    export.set_defaults(func=run_export)

    try:
        from .replay import add_replay_arguments
    except ImportError:  # the replay module arrives with the live-analysis work
        add_replay_arguments = None
    if add_replay_arguments is not None:
        replay = sub.add_parser("replay", help="feed a stored run through the live analysis again")
        add_replay_arguments(replay)
        replay.set_defaults(func=_run_replay)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
