"""Tiled: the facility server when TXM_LIVE_TILED_URI is set, else an embedded one.

Environment:
  TXM_LIVE_TILED_URI   e.g. http://tiled.example:8000/api/v1?api_key=...  (facility server)
"""
import atexit
import os

from txm_live.store import EmbeddedTiled, subscribe_tiled_writer

FRAMES_DIR = DATA_DIR / "frames"  # noqa: F821 (defined by 00-base.py)
_tiled_uri = os.environ.get("TXM_LIVE_TILED_URI")
if _tiled_uri:
    from tiled.client import from_uri

    tiled_client = from_uri(_tiled_uri)
    tiled_server = None
else:
    tiled_server = EmbeddedTiled(DATA_DIR / "tiled", readable_storage=[FRAMES_DIR])  # noqa: F821
    atexit.register(tiled_server.close)
    tiled_client = tiled_server.client()
    print(f"txm-live: embedded Tiled server at {tiled_server.uri.split('?')[0]}")

tiled_writer = subscribe_tiled_writer(RE, tiled_client, backup_directory=DATA_DIR / "tiled-backup")  # noqa: F821
