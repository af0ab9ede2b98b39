"""A photon shutter with NSLS-II-style PVs: ``Pos-Sts``, ``Cmd:Opn-Cmd``, ``Cmd:Cls-Cmd``."""
from __future__ import annotations

import asyncio

from caproto import ChannelType
from caproto.server import PVGroup, pvproperty

from txm_live.devices.pv_names import SHUTTER_STATUS_STRINGS

from ..timing import SimClock
from .axes import SHUTTER_MOVE_S

__all__ = ["PhotonShutter"]

OPEN, NOT_OPEN = SHUTTER_STATUS_STRINGS


class PhotonShutter(PVGroup):
    """Writing 1 to a command PV starts the blades moving; ``Pos-Sts`` follows after
    :data:`~simulators.ioc.axes.SHUTTER_MOVE_S` of beamline time (times ``time_scale``
    of wall time). The shutter starts open, as the simulated ``SimShutter`` does.
    """

    status = pvproperty(name="Pos-Sts", value=OPEN, dtype=ChannelType.ENUM, enum_strings=SHUTTER_STATUS_STRINGS,
                        read_only=True, doc="Shutter position status")
    open_cmd = pvproperty(name="Cmd:Opn-Cmd", value=0, doc="Open command (write 1)")
    close_cmd = pvproperty(name="Cmd:Cls-Cmd", value=0, doc="Close command (write 1)")

    def __init__(self, prefix, *, clock: SimClock, time_scale: float, **kwargs):
        super().__init__(prefix, **kwargs)
        self.clock = clock
        self.time_scale = float(time_scale)
        self._target = OPEN
        self._motion: asyncio.Task | None = None

    @property
    def is_open(self) -> bool:
        return self.status.value == OPEN

    async def initialize(self) -> None:
        """Open, nothing moving (start and reset)."""
        if self._motion is not None and not self._motion.done():
            self._motion.cancel()
        self._target = OPEN
        await self.status.write(OPEN)

    async def _command(self, target: str) -> None:
        if target == self._target:
            return  # already there or on the way
        self._target = target
        self.clock.schedule(SHUTTER_MOVE_S)
        if self._motion is not None and not self._motion.done():
            self._motion.cancel()
        self._motion = asyncio.get_running_loop().create_task(self._settle(target))

    async def _settle(self, target: str) -> None:
        await asyncio.sleep(SHUTTER_MOVE_S * self.time_scale)
        await self.status.write(target)

    @open_cmd.putter
    async def open_cmd(self, instance, value):
        if value:
            await self._command(OPEN)
        return 0  # a command PV processes and resets

    @close_cmd.putter
    async def close_cmd(self, instance, value):
        if value:
            await self._command(NOT_OPEN)
        return 0
