"""Acceptance: ``txm-live analyze`` on the demo's FXI export gives the live run's maps.

The demo (128²) runs a simulated scan with the live analysis into Tiled and exports the
stored run in FXI's layout; the CLI's batch analysis of that file must give the maps of
the live analysis run read back from Tiled — bit-identical, because both feed the same
frames through the same :class:`txm_live.analysis.Xanes2DPipeline`.
"""
from __future__ import annotations

import h5py
import numpy as np

from txm_live.cli import main
from txm_live.replay import find_analysis_runs
from txm_live.store import EmbeddedTiled


def test_analyze_on_the_demo_export_gives_the_live_maps(tmp_path, capsys):
    demo = tmp_path / "demo"
    assert main(["demo", "--size", "128", "--no-operando", "--tomo-projections", "0", "--no-xanes3d",
                 "--output", str(demo)]) == 0
    assert "maps in Tiled: bit-identical" in capsys.readouterr().out
    (fxi,) = demo.glob("xanes_*.h5")
    assert main(["analyze", str(fxi), "-o", str(tmp_path / "cli"), "--no-progress"]) == 0
    (maps_file,) = (tmp_path / "cli").glob("*_maps.h5")
    with h5py.File(maps_file, "r") as f:
        batch = {k: f[k][()] for k in ("whiteline", "edge", "edge_jump", "mask")}

    server = EmbeddedTiled(demo / "tiled", readable_storage=[demo / "frames"])
    try:
        client = server.client()
        (raw_uid,) = [uid for uid, run in client.items() if "parent_uid" not in run.metadata["start"]]
        (analysis,) = find_analysis_runs(client, raw_uid).values()
        live = {k: analysis["maps"][k].read()[-1] for k in batch}
        assert bool(analysis["maps"]["final"].read()[-1])
    finally:
        server.close()
    for name in ("whiteline", "edge", "edge_jump"):
        assert batch[name].dtype == live[name].dtype == np.float32
        np.testing.assert_array_equal(batch[name], live[name])
    np.testing.assert_array_equal(batch["mask"], live["mask"].astype(bool))
    assert batch["mask"].sum() > 1000  # real maps, not empty ones that agree trivially
