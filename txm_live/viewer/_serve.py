"""Serving the viewer: ``txm-live view`` and :func:`serve_viewer`.

Panel's server (Bokeh's tornado server) runs on 127.0.0.1 by default; each browser tab
gets its own :class:`~txm_live.viewer.ViewerApp` (own worker thread, own Tiled client).
A page whose app starts from a cached first view gets its whiteline map as a static PNG
in the HTML (:func:`~txm_live.viewer._preview.add_preview`).
"""
from __future__ import annotations

import argparse
import logging
import os
import socket

logger = logging.getLogger(__name__)

__all__ = ["serve_viewer", "add_view_arguments", "run_view", "DEFAULT_PORT"]

#: Bokeh's customary port.
DEFAULT_PORT = 5006
LOOPBACK = ("127.0.0.1", "localhost", "::1")
#: Seconds a threaded server may take to start listening.
START_TIMEOUT_S = 30.0


def _free_port(address: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def serve_viewer(tiled, *, port: int = DEFAULT_PORT, address: str = "127.0.0.1", api_key: str | None = None,
                 threaded: bool = False, poll_interval_s: float | None = None):
    """Serve the viewer page for the runs in ``tiled``.

    Parameters
    ----------
    tiled : str or path
        Tiled URI (may carry ``?api_key=``) or the folder of an embedded server.
    port : int
        TCP port; 0 picks a free one.
    address : str
        Interface to listen on; the default serves this machine only.
    api_key : str, optional
        Tiled API key (else the URI's, else ``TILED_API_KEY``).
    threaded : bool
        Serve from a background thread and return at once (tests, the demo).

    Returns
    -------
    (url, server)
        The page's address and Panel's server (``.stop()`` ends a threaded one).
    """
    import panel as pn

    from ._app import POLL_INTERVAL_S, ViewerApp
    from ._first_view import warm_first_view
    from ._preview import add_preview
    from ._runs import TiledSource

    if not isinstance(port, int) or not 0 <= port < 65536:
        raise ValueError(f"port must be an integer in 0..65535; got {port!r}")
    port = port or _free_port(address)
    interval = POLL_INTERVAL_S if poll_interval_s is None else poll_interval_s
    key = api_key or os.environ.get("TILED_API_KEY") or None

    def page():
        # the run list's table is built when the browse tab is first opened; its JavaScript
        # must come with the page (a model the browser cannot build breaks the whole tab)
        pn.extension("tabulator")
        args = pn.state.session_args or {}
        run = (args.get("run") or [b""])[0].decode(errors="replace") or None
        app = ViewerApp(str(tiled), api_key=key, run=run, poll_interval_s=interval)
        add_preview(pn.state.curdoc, app.first_view)  # the map as a PNG in the HTML, until drawn
        return app.layout

    warm_source = TiledSource(str(tiled), api_key=key)  # the first page's maps, read while nobody waits
    warm_first_view(warm_source, warm_source.cache_key)
    host = f"[{address}]" if ":" in address else address
    url = f"http://{host}:{port}/"
    origins = [f"{host}:{port}"] + ([f"localhost:{port}", f"127.0.0.1:{port}"] if address in LOOPBACK else [])
    server = pn.serve({"/": page}, port=port, address=address, show=False, threaded=threaded,
                      websocket_origin=origins, title="txm-live viewer", print_url=False)
    if threaded:
        _wait_listening(address, port, server)
    return url, server


def _wait_listening(address: str, port: int, server) -> None:
    """Return once the threaded server accepts connections (it starts asynchronously)."""
    import time

    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((address, port), timeout=0.5):
                return
        except OSError:
            if not server.is_alive():
                break
            time.sleep(0.05)
    raise RuntimeError(f"the viewer did not start listening on {address}:{port} within {START_TIMEOUT_S} s")


def add_view_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tiled", default="txm-live-data/tiled",
                        help="Tiled URI (…/api/v1?api_key=…), or the folder of an embedded server started by "
                             "`txm-live serve` or the demo (default: txm-live-data/tiled)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any free)")
    parser.add_argument("--address", default="127.0.0.1",
                        help="interface to serve on (default 127.0.0.1: this machine only)")
    parser.add_argument("--api-key", default=None, help="Tiled API key (default: the URI's, or $TILED_API_KEY)")


def run_view(args) -> int:
    """CLI entry: serve until Ctrl-C."""
    if args.address not in LOOPBACK:
        print(f"note: serving on {args.address}: whoever reaches it reads the runs with this viewer's Tiled "
              "credentials")
    url, server = serve_viewer(args.tiled, port=args.port, address=args.address, api_key=args.api_key,
                               threaded=True)
    print(f"txm-live viewer at {url} (runs from Tiled at {str(args.tiled).split('?')[0]}). Ctrl-C stops it.",
          flush=True)
    try:
        server.join()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0
