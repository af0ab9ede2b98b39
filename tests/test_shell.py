"""`make shell`: IPython with the profile on the simulated beamline (Tiled, live analysis)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_make_shell_starts_ipython_with_the_profile():
    recipe = (ROOT / "Makefile").read_text().split("\nshell:")[1].split("\n\n")[0]
    assert re.search(r"TXM_LIVE_DATA=\S+ .*ipython --profile-dir=profile_collection", recipe)
    assert "mktemp -d" in recipe  # a fresh data folder unless DATA= names one


def test_the_profile_runs_a_live_analysed_scan_in_ipython(tmp_path):
    code = ("uid, = RE(xanes(xanes_energy_list(8333.0)[::6], n_darks=1)); "
            "assert live_analysis.wait(120) and tiled_writer.flush(120); "
            "(a,) = live_analysis.analysis_uids[uid]; "
            "print('RESULT', tiled_client[uid].metadata['start']['scan_type'], "
            "tiled_client[a].metadata['stop']['exit_status'])")
    env = {**os.environ, "TXM_LIVE_DATA": str(tmp_path), "TXM_LIVE_SIM_SIZE": "64", "MPLBACKEND": "Agg",
           "TXM_LIVE_DEVICES": "sim"}
    env.pop("TXM_LIVE_TILED_URI", None)
    out = subprocess.run([sys.executable, "-m", "IPython", "--profile-dir=profile_collection", "--no-banner",
                          "--HistoryManager.enabled=False",
                          "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=540, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "RESULT xanes2d success" in out.stdout
    assert (tmp_path / "tiled").is_dir() and any((tmp_path / "frames").iterdir())
