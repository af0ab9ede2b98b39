"""RunEngine with persistent metadata, and where data go.

Environment:
  TXM_LIVE_DATA     folder for the catalog, detector files and metadata (default ~/txm-live-data)
"""
import os
import sys
from pathlib import Path

from bluesky import RunEngine
from bluesky.utils import PersistentDict, ProgressBarManager

DATA_DIR = Path(os.environ.get("TXM_LIVE_DATA", "~/txm-live-data")).expanduser().resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)

RE = RunEngine({})
# Metadata set with RE.md["proposal"] = ... survives restarts of IPython.
RE.md = PersistentDict(str(DATA_DIR / "runengine-metadata"))
RE.md.setdefault("beamline_id", "TXM (txm-live)")
if sys.stdout.isatty():
    RE.waiting_hook = ProgressBarManager()  # progress bars for moves
