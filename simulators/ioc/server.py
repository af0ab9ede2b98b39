"""The simulated TXM served over Channel Access: motors, shutter and camera wired to the physics.

:class:`TXMIOC` owns one :class:`~simulators.model.SimTXM` and one
:class:`~simulators.timing.SimClock` (beamline time) and builds the PV groups of
:mod:`simulators.ioc.motor`, :mod:`~simulators.ioc.shutter`, :mod:`~simulators.ioc.camera`
and :mod:`~simulators.ioc.hdf5_plugin` under the names of
:class:`txm_live.devices.pv_names.TXMPrefixes`. :func:`serve` runs them until SIGTERM or
SIGINT, then closes the capture files.

Time: every action takes the *beamline* time it takes in the simulated ophyd devices
(moves at ``.VELO`` plus ``.DLY``, shutter, exposure plus readout), so the same plan
gives the same drift and the same frames whichever devices run it. Wall-clock time is
that times ``time_scale`` (default :data:`DEFAULT_TIME_SCALE`: a 1.5 s monochromator
step takes 30 ms), so tests stay fast and ``.DMOV`` still behaves like a motor's.
"""
from __future__ import annotations

import asyncio
import logging
import math
import os
import signal

import numpy as np
from caproto.asyncio.server import start_server
from caproto.server import PVGroup, pvproperty

from txm_live.devices.pv_names import (
    CAM_SUFFIX,
    HDF5_PLUGIN_SUFFIXES,
    SIM_IOC_PREFIX,
    SIM_READY_SUFFIX,
    STATS_SUFFIX,
    TXMPrefixes,
)

from ..model import SimConfig, SimTXM
from ..timing import SimClock
from ._pvs import readback
from .axes import BEAMLINE_AXES, READOUT_S, axis_pv_prefixes
from .camera import FRAME_ATTRIBUTE_NAMES, CamDriver, StatsPlugin, frame_attributes
from .hdf5_plugin import HDF5FilePlugin
from .motor import MotorRecord
from .shutter import PhotonShutter

__all__ = ["TXMIOC", "serve", "escape_braces", "DEFAULT_TIME_SCALE"]

logger = logging.getLogger(__name__)

#: Wall-clock seconds per second of beamline time.
DEFAULT_TIME_SCALE = 0.02


def escape_braces(pv_prefix: str) -> str:
    """Protect braces (``XF:18IDB-OP{TXM-ZP:1-Ax:X}Mtr``) from caproto's macro expansion."""
    return pv_prefix.replace("{", "{{").replace("}", "}}")


class SimStatus(PVGroup):
    """PVs of the simulated IOC itself (below ``<root>TXMSIM:``)."""

    ready = readback(SIM_READY_SUFFIX, 0, doc="1 once every PV holds its starting value")
    time_rbv = readback("Time_RBV", 0.0, precision=3, units="s", doc="Beamline time of the last frame")
    time_scale_rbv = readback("TimeScale_RBV", 0.0, precision=4, doc="Wall seconds per beamline second")
    seed_rbv = readback("Seed_RBV", 0, doc="Seed of the simulated sample, drift and detector")
    reset = pvproperty(name="Reset", value=0, doc="Write 1: fresh sample state, clock 0, axes home")

    def __init__(self, prefix, *, ioc: TXMIOC, **kwargs):
        super().__init__(prefix, **kwargs)
        self.ioc = ioc

    @ready.startup
    async def ready(self, instance, async_lib):
        await self.ioc.initialize()
        await self.time_scale_rbv.write(self.ioc.time_scale)
        await self.seed_rbv.write(int(self.ioc.model.config.seed))
        await instance.write(1)

    @reset.putter
    async def reset(self, instance, value):
        if value:
            await self.ioc.reset()
        return 0


class TXMIOC:
    """The simulated TXM's PVs and the physics behind them.

    Parameters
    ----------
    config : SimConfig, optional
        Simulated instrument and sample (default ``SimConfig()``); ignored with ``model``.
    model : SimTXM, optional
    prefixes : TXMPrefixes, optional
        PV layout (default: FXI-like names).
    root : str
        Put in front of every PV name, the IOC's own ``TXMSIM:`` PVs included.
    energy_ev : float
        Starting energy; zone plate and detector start in focus for it.
    time_scale : float
        Wall-clock seconds per second of beamline time (≥ 0).
    """

    def __init__(self, *, config: SimConfig | None = None, model: SimTXM | None = None,
                 prefixes: TXMPrefixes | None = None, root: str = "", energy_ev: float = 8333.0,
                 time_scale: float = DEFAULT_TIME_SCALE):
        if not (math.isfinite(time_scale) and time_scale >= 0):
            raise ValueError(f"time_scale must be a finite number >= 0, got {time_scale!r}")
        self.model = model if model is not None else SimTXM(config or SimConfig())
        self.model.optics.focus_positions(energy_ev)  # refuses an energy the optics cannot image
        self.energy_ev = float(energy_ev)
        self.time_scale = float(time_scale)
        self.clock = SimClock()
        self.prefixes = (prefixes or TXMPrefixes()).with_root(root)
        self.status_prefix = root + SIM_IOC_PREFIX
        p = self.prefixes
        self.motors = {
            axis: MotorRecord(escape_braces(pv), spec=BEAMLINE_AXES[axis], clock=self.clock,
                              time_scale=self.time_scale, description=axis)
            for axis, pv in axis_pv_prefixes(p).items()
        }
        self.shutter = PhotonShutter(escape_braces(p.shutter), clock=self.clock, time_scale=self.time_scale)
        self.plugins = {
            frame_type: HDF5FilePlugin(escape_braces(p.camera + suffix), frame_shape=self.model.shape,
                                       dtype=np.uint16, attribute_names=FRAME_ATTRIBUTE_NAMES)
            for frame_type, suffix in HDF5_PLUGIN_SUFFIXES.items()
        }
        self.stats = StatsPlugin(escape_braces(p.camera + STATS_SUFFIX))
        self.camera = CamDriver(escape_braces(p.camera + CAM_SUFFIX), frame_source=self.expose,
                                consumers=[self.stats, *self.plugins.values()], time_scale=self.time_scale)
        self.status = SimStatus(escape_braces(self.status_prefix), ioc=self)

    @property
    def groups(self) -> list[PVGroup]:
        return [*self.motors.values(), self.shutter, self.camera, self.stats, *self.plugins.values(), self.status]

    @property
    def pvdb(self) -> dict:
        """Every PV by name, for ``caproto``'s server."""
        merged = {}
        for group in self.groups:
            merged.update(group.pvdb)
        return merged

    @property
    def ready_pv(self) -> str:
        return self.status_prefix + SIM_READY_SUFFIX

    async def reset(self) -> None:
        """As freshly started, without a restart: physics rebuilt from the same seed, clock at
        0, every axis at its starting position, speed and limits, shutter open, counters 0.

        An acquisition in progress is aborted, moves stop and capture files are closed;
        camera and plugin settings stay as clients left them (configuration).
        """
        await self.camera.abort()
        for motor in self.motors.values():
            motor.halt()
        for plugin in self.plugins.values():
            await plugin.end_capture()
        old = self.model
        self.model = await asyncio.get_running_loop().run_in_executor(
            None, lambda: SimTXM(old.config, sample=old.sample, spectra=old.spectra))
        self.clock.reset()
        await self.initialize()
        await self.camera.reset_counters()
        await self.stats.reset_counters()

    async def initialize(self) -> None:
        """Starting values: energy, focus, limits, camera geometry (before clients use them)."""
        zp_z_mm, det_z_mm = self.model.optics.focus_positions(self.energy_ev)
        starts = {"energy": self.energy_ev, "zone_plate.z": zp_z_mm, "detector_stage.z": det_z_mm}
        for axis, motor in self.motors.items():
            await motor.initialize(starts.get(axis, BEAMLINE_AXES[axis].value))
        await self.shutter.initialize()
        await self.camera.initialize(shape=self.model.shape, binning=self.model.binning)

    def positions(self) -> dict:
        """Where everything is now, in the units of the names (NDAttribute names)."""
        m = self.motors
        return {
            "energy_ev": m["energy"].position,
            "zp_z_mm": m["zone_plate.z"].position,
            "det_z_mm": m["detector_stage.z"].position,
            "sample_x_um": m["sample_stage.x"].position,
            "sample_y_um": m["sample_stage.y"].position,
            "sample_z_um": m["sample_stage.z"].position,
            "theta_deg": m["sample_stage.r"].position,
            "shutter_open": float(self.shutter.is_open),
        }

    async def expose(self, exposure_s: float, unique_id: int):
        """One frame at the current positions: ``(image (ny, nx) uint16, NDAttributes)``."""
        positions = {**self.positions(), "exposure_s": float(exposure_s)}
        frame = await asyncio.get_running_loop().run_in_executor(None, self._acquire, positions)
        await self.status.time_rbv.write(frame.truth.time_s)
        return frame.image, frame_attributes(unique_id, positions, frame.truth)

    def _acquire(self, positions: dict):
        # Beamline time as the simulated detector keeps it: wait for every move, expose, read out.
        start_s = self.clock.settle()
        frame = self.model.acquire(
            energy_ev=positions["energy_ev"], zp_z_mm=positions["zp_z_mm"], det_z_mm=positions["det_z_mm"],
            sample_x_um=positions["sample_x_um"], sample_y_um=positions["sample_y_um"],
            theta_rad=math.radians(positions["theta_deg"]), shutter_open=bool(positions["shutter_open"]),
            exposure_s=positions["exposure_s"], time_s=start_s,
        )
        self.clock.advance(positions["exposure_s"] + READOUT_S)
        return frame

    def close_files(self) -> None:
        for plugin in self.plugins.values():
            plugin.close_file()


#: How often an IOC started with ``exit_with_parent`` checks that its parent lives, s.
PARENT_CHECK_S = 2.0


async def _cancel_when_orphaned(task: asyncio.Future, parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        await asyncio.sleep(PARENT_CHECK_S)
    logger.warning("parent process %d is gone; stopping the IOC", parent_pid)
    task.cancel()


async def serve(ioc: TXMIOC, *, interfaces=("127.0.0.1",), exit_with_parent: bool = False) -> None:
    """Serve ``ioc`` until SIGTERM/SIGINT (or cancellation), then close its capture files.

    The ports come from ``EPICS_CA_SERVER_PORT`` (as for every caproto server). With
    ``exit_with_parent`` the IOC also stops when the process that started it has gone
    (a test session killed outright leaves no IOC behind).
    """
    loop = asyncio.get_running_loop()
    server = asyncio.ensure_future(start_server(ioc.pvdb, interfaces=list(interfaces)))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.cancel)
    watchdog = loop.create_task(_cancel_when_orphaned(server, os.getppid())) if exit_with_parent else None
    try:
        await server
    except asyncio.CancelledError:
        pass
    finally:
        if watchdog is not None:
            watchdog.cancel()
        ioc.close_files()
        logger.info("simulated TXM IOC stopped; capture files closed")
