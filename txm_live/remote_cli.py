"""``txm-live serve-analysis`` and ``txm-live zmq-proxy`` (see :mod:`txm_live.remote`)."""
from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from .remote import DEFAULT_IN_PORT, DEFAULT_OUT_PORT, LOOPBACK

__all__ = ["add_serve_analysis_arguments", "run_serve_analysis", "add_proxy_arguments", "run_proxy"]

#: Seconds serve-analysis waits, when stopped, for queued analysis and writes
SHUTDOWN_WAIT_S = 120.0


def add_serve_analysis_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--zmq", default=f"{LOOPBACK}:{DEFAULT_OUT_PORT}",
                        help=f"the 0MQ proxy's output, host:port (default: {LOOPBACK}:{DEFAULT_OUT_PORT})")
    parser.add_argument("--tiled", required=True,
                        help="Tiled URI, or the folder of a server started by `txm-live serve` "
                             "(analysis runs are written there)")
    parser.add_argument("--spool", default=None,
                        help="spool folder for analysis documents while Tiled is away (default: 'spool' beside "
                             "the catalog folder, or ./txm-live-spool for a URI)")
    parser.add_argument("--previews", default=None, help="folder for PNG previews (default: none)")
    parser.add_argument("--prefix", default="", help="only documents published with this prefix")


def _default_spool(tiled: str) -> Path:
    if tiled.startswith(("http://", "https://")):
        return Path("txm-live-spool")
    return Path(tiled).resolve().parent / "spool"


def run_serve_analysis(args) -> int:
    """Analyse every run published to ``--zmq`` until Ctrl-C / SIGTERM."""
    from .callbacks import LiveAnalysis
    from .remote import AnalysisService
    from .store import SafeTiledWriter, connect

    connect(args.tiled)  # fail fast on a wrong address; later outages are spooled
    spool = Path(args.spool) if args.spool else _default_spool(args.tiled)
    writer = SafeTiledWriter(lambda: connect(args.tiled), spool_directory=spool)
    analysis = LiveAnalysis(None, writer=writer, preview_dir=args.previews)
    service = AnalysisService(args.zmq, analysis, tiled_hint=args.tiled, prefix=args.prefix.encode())

    def stop(signum, frame):
        service.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    ready = (lambda: print(f"serve-analysis: listening to {service.address}, analysis runs to {args.tiled}, "
                           f"spool {spool.resolve()}", flush=True))
    try:
        service.run(ready=ready)
    finally:
        done = analysis.wait(SHUTDOWN_WAIT_S) and writer.wait_delivered(SHUTDOWN_WAIT_S)
        analysis.close()
        writer.close()
    print(f"serve-analysis: stopped; {len(service.finished)} run(s) ended, {len(service.missed)} missed, "
          f"{len(service.closed_unfinished)} closed without a stop document"
          + ("" if done else f"; analysis or writes still pending, kept in {spool}"), flush=True)
    for failure in analysis.failures + writer.failures:
        print(f"  {failure}", file=sys.stderr)
    return 0 if done else 1


def add_proxy_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--in-port", type=int, default=DEFAULT_IN_PORT,
                        help=f"port publishers connect to (default {DEFAULT_IN_PORT}; 0: any free port)")
    parser.add_argument("--out-port", type=int, default=DEFAULT_OUT_PORT,
                        help=f"port subscribers connect to (default {DEFAULT_OUT_PORT}; 0: any free port)")


def run_proxy(args) -> int:
    """Forward documents on 127.0.0.1 until Ctrl-C / SIGTERM."""
    from .remote import ZmqProxy

    try:
        proxy = ZmqProxy(args.in_port, args.out_port)
    except OSError as exc:
        print(f"txm-live zmq-proxy: {exc}", file=sys.stderr)
        return 2

    def stop(signum, frame):
        proxy.stop()

    proxy.start()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"0MQ proxy: publishers -> {proxy.in_address}, subscribers -> {proxy.out_address}", flush=True)
    proxy.wait()
    return 0
