"""``txm-live serve`` and ``txm-live spool list|flush``: the catalog server and the spool."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

__all__ = ["add_serve_arguments", "run_serve", "add_spool_arguments", "run_spool", "flush_spool", "DEFAULT_SPOOL"]

#: The spool folder commands use when none is given (the profile's is $TXM_LIVE_DATA/spool)
DEFAULT_SPOOL = "txm-live-data/spool"
#: Environment variable holding the served catalog's API key (else DIR/tiled/api-key)
API_KEY_ENV = "TXM_LIVE_TILED_API_KEY"


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", nargs="?", default="txm-live-data",
                        help="folder holding the catalog (DIR/tiled) and the detector files (DIR/frames) "
                             "(default: txm-live-data)")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free port)")
    parser.add_argument("--create", action="store_true",
                        help="start a new, empty catalog when DIR holds none (without it, a folder without "
                             "a catalog is refused: a mistyped path would serve an empty catalog)")
    parser.add_argument("--api-key", default=None,
                        help=f"API key clients must send (default: ${API_KEY_ENV}, else the key kept in "
                             "DIR/tiled/api-key, created on first use, owner-only)")


def _stop_on_sigterm() -> None:
    def handler(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, handler)


def run_serve(args) -> int:
    """Serve DIR's catalog on 127.0.0.1 until Ctrl-C / SIGTERM; 2 on a refused request."""
    from .store import EmbeddedTiled, catalog_api_key, catalog_exists

    root = Path(args.directory)
    catalog = root / "tiled"
    if not catalog_exists(catalog) and not args.create:
        print(f"txm-live serve: no catalog in {str(root)!r} ({catalog / 'catalog.db'} does not exist). "
              f"Check the path, or start a new, empty catalog there with: txm-live serve {root} --create",
              file=sys.stderr)
        return 2
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or catalog_api_key(catalog)
    try:
        server = EmbeddedTiled(catalog, readable_storage=[root / "frames"], port=args.port, api_key=api_key)
    except (OSError, RuntimeError) as exc:
        print(f"txm-live serve: {exc}", file=sys.stderr)
        return 2
    _stop_on_sigterm()
    base = server.uri.split("?")[0]
    print(f"Tiled server for {root.resolve()} at {base} (API key required)", flush=True)
    print(f"Other processes: txm_live.store.connect({str(catalog.resolve())!r}), or --tiled {catalog}. "
          "Ctrl-C stops it.", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0


# ---- spool ------------------------------------------------------------------------------
def add_spool_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("list", "flush"),
                        help="list: the runs waiting; flush: deliver those no running session holds")
    parser.add_argument("spool", nargs="?", default=DEFAULT_SPOOL, help=f"spool folder (default: {DEFAULT_SPOOL})")
    parser.add_argument("--tiled", default=None,
                        help="for flush: Tiled URI, or the folder of a server started by `txm-live serve`")


def _describe(entry) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.start_time)) if entry.start_time else "?"
    what = f"analysis of {entry.parent_uid[:8]}" if entry.parent_uid else (entry.plan_name or "?")
    state = entry.exit_status if entry.has_stop else "open"
    owner = "held by a running session" if entry.held else "orphaned"
    return (f"{entry.uid}  {when}  {what:<24} {entry.n_documents:>6} docs  {state:<8} {owner}  "
            f"{entry.size_bytes / 1e6:.2f} MB")


def flush_spool(directory, client, *, out=print) -> tuple[list, list]:
    """Deliver every run of a spool folder that no running process holds.

    Runs without a stop document are closed first (``exit_status='abort'``; their writer
    has gone). Returns ``(delivered, failed)``: lists of ``(uid, what happened)``.
    """
    from .spool import Spool, close_orphan, tally_documents
    from .store_delivery import deliver_run, stored_problems

    spool = Spool(directory)
    delivered, failed = [], []
    try:
        for uid in spool.adopt_orphans():
            documents = spool.documents(uid)
            stop = close_orphan(documents, closed_by=f"txm-live spool flush (pid {os.getpid()})")
            if stop is not None:
                spool.append(*stop)
                documents.append(stop)
            try:
                delivery = deliver_run(client, documents)
                problems = stored_problems(client, tally_documents(documents))
            except Exception as exc:
                failed.append((uid, f"not delivered: {exc!r}"))
                out(f"{uid}: not delivered ({exc!r}); it stays in the spool")
                spool.release(uid)
                continue
            if problems:
                failed.append((uid, "; ".join(problems)))
                out(f"{uid}: Tiled does not hold it completely ({'; '.join(problems)}); it stays in the spool")
                spool.release(uid)
                continue
            closed = " (closed: it had no stop document)" if stop is not None else ""
            delivered.append((uid, delivery.action))
            out(f"{uid}: {delivery.action}, {len(documents)} documents{closed}")
            spool.discard(uid)
    finally:
        spool.close()
    return delivered, failed


def run_spool(args) -> int:
    """``txm-live spool list|flush``: 0 when nothing is left undelivered by the flush."""
    from .spool import list_spool
    from .store import connect

    try:
        entries = list_spool(args.spool)
    except FileNotFoundError as exc:
        print(f"txm-live spool: {exc}", file=sys.stderr)
        return 2
    if args.action == "list":
        print(f"{len(entries)} run(s) waiting in {Path(args.spool).resolve()}")
        for entry in entries:
            print(_describe(entry))
        return 0
    if args.tiled is None:
        print("txm-live spool flush: give --tiled URI_OR_DIR (where to deliver the runs)", file=sys.stderr)
        return 2
    held = [e for e in entries if e.held]
    for entry in held:
        print(f"{entry.uid}: held by a running session, which delivers it itself when Tiled answers")
    client = connect(args.tiled)
    delivered, failed = flush_spool(args.spool, client)
    print(f"delivered {len(delivered)} run(s); {len(failed)} failed; {len(held)} held by running sessions")
    return 1 if failed else 0
