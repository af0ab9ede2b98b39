"""Shared fixtures: a simulated beamline, a RunEngine, an embedded Tiled server and the
simulated TXM's Channel Access IOC.

Everything is real: ophyd devices, the RunEngine, HDF5 files on disk, a Tiled server
over HTTP on 127.0.0.1, an IOC subprocess serving PVs over Channel Access on 127.0.0.1.
"""
from __future__ import annotations

import os

import pytest


def pytest_configure(config):
    """Channel Access for this session: loopback only, on a free port pair of its own.

    pyepics reads these once, when ophyd first starts its CA context, so they are set
    before any test module is imported; every EPICS test talks to IOCs on these ports
    (one IOC at a time), and no test can reach a beamline's PVs.
    """
    from simulators.ioc.launcher import ca_environment, free_port_pair

    os.environ.update(ca_environment(*free_port_pair()))


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


@pytest.fixture(scope="session")
def txm_ioc(tmp_path_factory):
    """The simulated TXM IOC (128², seed 1, FXI-like PV names) on this session's CA ports.

    Shared by the session (it starts in seconds, clients reconnect slowly after a
    restart); tests that need a fresh simulated state call ``txm_ioc.reset()``.
    """
    from simulators.ioc import IOCProcess, ca_ports_from_environment

    log_path = tmp_path_factory.mktemp("ioc") / "ioc.log"
    # 1 s of beamline time takes 5 ms: DMOV still drops and rises, scans stay quick
    ioc = IOCProcess(size=128, seed=1, time_scale=0.005, ports=ca_ports_from_environment(),
                     log_path=log_path).start()
    yield ioc
    ioc.stop()


@pytest.fixture
def epics_txm(txm_ioc, tiled_server):
    """The EPICS TXM devices, connected to the freshly reset IOC; frames go where Tiled reads."""
    from txm_live.devices.txm import connect_epics_txm, make_epics_txm

    txm_ioc.reset()
    devices = make_epics_txm(txm_ioc.prefixes, write_dir=tiled_server.frames_dir)
    connect_epics_txm(devices, timeout_s=30.0)
    return devices
