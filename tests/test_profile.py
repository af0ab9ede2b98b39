"""The IPython profile loads as a beamline would load it, and runs a scan into Tiled."""
from __future__ import annotations

import os
import runpy
import subprocess
import sys
import textwrap
from pathlib import Path

STARTUP = Path(__file__).resolve().parents[1] / "profile_collection" / "startup"


def test_profile_runs_a_scan_into_its_tiled_store(tmp_path):
    # A fresh interpreter, as IPython would be: the profile starts its own Tiled server.
    code = textwrap.dedent(f"""
        import glob, os
        ns = {{}}
        for path in sorted(glob.glob({str(STARTUP)!r} + "/*.py")):
            exec(compile(open(path).read(), path, "exec"), ns)
        RE, xanes = ns["RE"], ns["xanes"]
        RE.md["proposal"] = "pass-000001"
        uid, = RE(xanes(ns["xanes_energy_list"](8333.0)[::6], n_darks=1))
        ns["tiled_writer"].flush(120)
        if ns["live_analysis"] is not None:
            ns["live_analysis"].wait(120)
        run = ns["tiled_client"][uid]
        print(run.metadata["start"]["scan_type"], run.metadata["start"]["proposal"],
              run["primary"]["txm_det_image"].read().shape[1:])
    """)
    env = {**os.environ, "TXM_LIVE_DATA": str(tmp_path), "TXM_LIVE_SIM_SIZE": "64", "MPLBACKEND": "Agg"}
    env.pop("TXM_LIVE_TILED_URI", None)
    env.pop("TXM_LIVE_DEVICES", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=540, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "xanes2d pass-000001 (64, 64)"
    # metadata persisted for the next session
    assert (tmp_path / "runengine-metadata").exists()


def test_epics_devices_construct_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("TXM_LIVE_DEVICES", "epics-offline")
    ns = {"FRAMES_DIR": tmp_path}
    ns = runpy.run_path(str(STARTUP / "20-devices.py"), init_globals=ns)
    assert ns["energy"].zone_plate_z is ns["zp"].z
    assert ns["txm_det"].frame_type.get() == "sample"
    assert type(ns["sample_stage"]).__name__ == "FakeSampleStage"
