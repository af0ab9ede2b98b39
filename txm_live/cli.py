"""The ``txm-live`` command: ``demo``, ``serve``, ``analyze``, ``export``, ``replay``, ``view``.

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


def _add_view_arguments(parser: argparse.ArgumentParser) -> None:
    from .viewer._serve import add_view_arguments  # no Panel import until the viewer runs

    add_view_arguments(parser)


def _run_view(args) -> int:
    from .viewer import run_view

    return run_view(args)


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

    view = sub.add_parser("view", help="the live viewer in the browser (follow the scan, browse runs), from Tiled")
    _add_view_arguments(view)
    view.set_defaults(func=_run_view)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
