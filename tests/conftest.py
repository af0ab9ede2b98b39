"""Shared fixtures: a simulated beamline, a RunEngine and an embedded Tiled server.

Everything is real: ophyd devices, the RunEngine, HDF5 files on disk, a Tiled server
over HTTP on 127.0.0.1.
"""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiled_server(tmp_path_factory):
    """One embedded Tiled server for the whole session (starting one takes ~1 s)."""
    from txm_live.store import EmbeddedTiled

    root = tmp_path_factory.mktemp("tiled-store")
    frames = root / "frames"
    server = EmbeddedTiled(root / "catalog", readable_storage=[frames])
    server.frames_dir = frames
    yield server
    server.close()


@pytest.fixture
def RE():
    from bluesky import RunEngine

    engine = RunEngine({}, call_returns_result=False)
    yield engine
    if engine.state != "idle":
        engine.halt()


@pytest.fixture
def sim_beamline(tiled_server):
    """A 128² simulated TXM (seeded), frames written where the Tiled server can read them."""
    from simulators.beamline import make_sim_beamline
    from simulators.model import SimConfig

    return make_sim_beamline(tiled_server.frames_dir, config=SimConfig(shape=(128, 128), seed=1))
