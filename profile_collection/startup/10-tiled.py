"""Tiled: the facility server when TXM_LIVE_TILED_URI is set, else an embedded one.

Environment:
  TXM_LIVE_TILED_URI   e.g. http://tiled.example:8000/api/v1?api_key=...  (facility server)

Every document is spooled in $TXM_LIVE_DATA/spool until Tiled is checked to hold its run:
a server that is down at start-up or goes away mid-scan costs no scan, and the runs are
delivered (each document once) when it answers again. `txm-live spool list|flush` shows
and delivers what is waiting. The embedded server listens on 127.0.0.1 only and requires
the API key kept in $TXM_LIVE_DATA/tiled/api-key (the same one `txm-live serve` uses).
"""
import atexit
import os

from txm_live.store import (
    EmbeddedTiled,
    TiledUnavailable,
    catalog_api_key,
    connect,
    subscribe_tiled_writer,
)

FRAMES_DIR = DATA_DIR / "frames"  # noqa: F821 (defined by 00-base.py)
SPOOL_DIR = DATA_DIR / "spool"  # noqa: F821
_tiled_uri = os.environ.get("TXM_LIVE_TILED_URI")
if _tiled_uri:
    tiled_server = None
    try:
        tiled_client = connect(_tiled_uri)
    except TiledUnavailable as _exc:
        tiled_client = None
        print(f"txm-live: {_exc}\n  scans go on; documents wait in {SPOOL_DIR} until the server answers")
    _tiled_target = lambda: connect(_tiled_uri)  # noqa: E731 (reconnects after outages)
else:
    tiled_server = EmbeddedTiled(DATA_DIR / "tiled", readable_storage=[FRAMES_DIR],  # noqa: F821
                                 api_key=catalog_api_key(DATA_DIR / "tiled"))  # noqa: F821
    atexit.register(tiled_server.close)
    tiled_client = tiled_server.client()
    _tiled_target = tiled_client
    print(f"txm-live: embedded Tiled server at {tiled_server.uri.split('?')[0]} (127.0.0.1 only, API key required)")

tiled_writer = subscribe_tiled_writer(RE, _tiled_target, spool_directory=SPOOL_DIR)  # noqa: F821
