"""The IPython profile loads as a beamline would load it, and runs a scan into Tiled."""
from __future__ import annotations

import json
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
        import glob, json, os
        import numpy as np
        from scipy import ndimage
        ns = {{}}
        for path in sorted(glob.glob({str(STARTUP)!r} + "/*.py")):
            exec(compile(open(path).read(), path, "exec"), ns)
        RE, xanes = ns["RE"], ns["xanes"]
        RE.md["proposal"] = "pass-000001"
        uid, = RE(xanes(ns["xanes_energy_list"](8333.0, near_edge_step_ev=1.0), n_darks=1))
        live = ns["live_analysis"]
        assert live is not None, "the profile subscribed no live analysis"
        assert live.wait(120) and ns["tiled_writer"].flush(120)
        # the analysis run, as stored: its whiteline map against the simulator's truth
        (analysis_uid,) = live.analysis_uids[uid]
        analysis = ns["tiled_client"][analysis_uid]
        whiteline = analysis["maps"]["whiteline"].read()[-1]
        truth = ns["sim"].model.truth_maps()
        d0 = ns["sim"].detector.truth_for("sample")[0].drift_px  # maps align to frame 0
        wl_true = ndimage.shift(np.nan_to_num(truth.whiteline_ev), d0, order=1, mode="nearest")
        inside = ndimage.binary_erosion(ndimage.shift(truth.mask.astype(float), d0, order=0) > 0.5,
                                        iterations=2)
        sel = inside & np.isfinite(whiteline)
        print(json.dumps(dict(parent=analysis.metadata["start"]["parent_uid"] == uid,
                              exit_status=analysis.metadata["stop"]["exit_status"],
                              failures=live.failures, fitted=int(sel.sum()), inside=int(inside.sum()),
                              rms=float(np.sqrt(np.mean((whiteline - wl_true)[sel] ** 2))))))
        run = ns["tiled_client"][uid]
        print(run.metadata["start"]["scan_type"], run.metadata["start"]["proposal"],
              run["primary"]["txm_det_image"].read().shape[1:])
    """)
    env = {**os.environ, "TXM_LIVE_DATA": str(tmp_path), "TXM_LIVE_SIM_SIZE": "64", "MPLBACKEND": "Agg"}
    env.pop("TXM_LIVE_TILED_URI", None)
    env.pop("TXM_LIVE_DEVICES", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=540, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert lines[-1] == "xanes2d pass-000001 (64, 64)"
    analysis = json.loads(lines[-2])
    assert analysis["parent"] and analysis["exit_status"] == "success" and analysis["failures"] == []
    # 53 energies (1 eV steps across the edge), 64²: achieved 422 of 422 pixels,
    # whiteline 0.211 eV rms (every 6th energy of the 0.5 eV list: 0.93 eV)
    assert analysis["inside"] > 300 and analysis["fitted"] >= 0.9 * analysis["inside"]
    assert analysis["rms"] <= 0.32
    # metadata persisted for the next session
    assert (tmp_path / "runengine-metadata").exists()


def test_epics_devices_construct_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("TXM_LIVE_DEVICES", "epics-offline")
    ns = {"FRAMES_DIR": tmp_path}
    ns = runpy.run_path(str(STARTUP / "20-devices.py"), init_globals=ns)
    assert ns["energy"].zone_plate_z is ns["zp"].z
    assert ns["txm_det"].frame_type.get() == "sample"
    assert type(ns["sample_stage"]).__name__ == "FakeSampleStage"
