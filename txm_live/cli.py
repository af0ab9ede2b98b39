"""The ``txm-live`` command: a simulated beamtime, the catalog server, analysis and storage tools.

Sub-commands: ``demo``, ``serve``, ``spool``, ``serve-analysis``, ``zmq-proxy``, ``analyze``,
``analyze3d``, ``export``, ``replay``, ``view``.

Each sub-command lives in its own module; this file only parses and dispatches.
"""
from __future__ import annotations

import argparse
import sys


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

    from .store_cli import add_serve_arguments, add_spool_arguments, run_serve, run_spool

    serve = sub.add_parser("serve", help="serve a catalog on 127.0.0.1 (API key required) until Ctrl-C")
    add_serve_arguments(serve)
    serve.set_defaults(func=run_serve)

    spool = sub.add_parser("spool", help="list the runs waiting for Tiled, or deliver them (flush)")
    add_spool_arguments(spool)
    spool.set_defaults(func=run_spool)

    from .remote_cli import add_proxy_arguments, add_serve_analysis_arguments, run_proxy, run_serve_analysis

    serve_analysis = sub.add_parser("serve-analysis",
                                    help="analyse the runs published over 0MQ, analysis runs to Tiled")
    add_serve_analysis_arguments(serve_analysis)
    serve_analysis.set_defaults(func=run_serve_analysis)

    proxy = sub.add_parser("zmq-proxy", help="forward published documents on 127.0.0.1 (0MQ) until Ctrl-C")
    add_proxy_arguments(proxy)
    proxy.set_defaults(func=run_proxy)

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

    view = sub.add_parser("view", help="the live viewer in the browser (follow the scan, browse runs), from Tiled")
    _add_view_arguments(view)
    view.set_defaults(func=_run_view)
    return parser


def main(argv=None) -> int:
    from .store_delivery import TiledUnavailable

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (TiledUnavailable, FileNotFoundError) as exc:  # a wrong address: say so, no traceback
        print(f"txm-live {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
