"""A motor record, as far as ophyd's ``EpicsMotor`` and a beamline scientist use it.

Served fields: ``.VAL`` (setpoint), ``.RBV`` (readback), ``.DMOV``/``.MOVN`` (done/moving),
``.VELO``, ``.ACCL``, ``.DLY`` (settle time), ``.HLM``/``.LLM`` (soft limits, also the
control limits of ``.VAL``), ``.HLS``/``.LLS``, ``.LVIO``, ``.TDIR``, ``.STOP``, ``.SET``
(use/set), ``.EGU``, ``.PREC``, ``.DESC``; ``.OFF``, ``.DIR``, ``.FOFF``, ``.HOMF``,
``.HOMR`` are served read-only (offsets and homing are not simulated).

A move takes ``|Δ| / VELO + DLY`` seconds of *beamline* time, the time the physics sees
(:class:`~simulators.timing.SimClock`, scheduled when the move is requested, as the
simulated ophyd motors do), and that times ``time_scale`` of wall-clock time, during
which ``.RBV`` runs from start to target at constant speed and ``.DMOV`` is 0. Like the
real record, a new ``.VAL`` during a move retargets it, ``.STOP`` ends it where it is
(``.VAL`` becomes ``.RBV``), and a ``.VAL`` outside ``[LLM, HLM]`` is refused with
``.LVIO = 1``.
"""
from __future__ import annotations

import asyncio

from caproto import ChannelType, SkipWrite
from caproto._data import CannotExceedLimits
from caproto.server import PVGroup, PvpropertyDouble, pvproperty

from ..timing import SimClock
from .axes import AxisSpec

__all__ = ["MotorRecord"]

#: Wall-clock seconds between readback updates during a move.
RBV_UPDATE_S = 0.02


class SetpointData(PvpropertyDouble):
    """``.VAL``, whose control limits are ``.LLM``/``.HLM``: a value outside them is refused
    as the motor record refuses it (``.LVIO = 1``, nothing moves, the put itself succeeds)
    rather than failing the put as caproto would."""

    async def verify_value(self, value):
        try:
            return await super().verify_value(value)
        except CannotExceedLimits:
            await self.group.lvio.write(1)
            raise SkipWrite() from None


def _ro(name: str, value, **kwargs):
    return pvproperty(name=name, value=value, read_only=True, **kwargs)


class MotorRecord(PVGroup):
    """One simulated motor record; the PVGroup prefix is the record name.

    Parameters
    ----------
    prefix : str
        Record name, macro-escaped (see :func:`simulators.ioc.server.escape_braces`).
    spec : AxisSpec
        Units, speed, settle time, limits.
    clock : SimClock
        Beamline time shared with the camera.
    time_scale : float
        Wall-clock seconds per second of beamline time (0: instant, but ``.DMOV`` still
        drops and rises).
    """

    val = pvproperty(name=".VAL", value=0.0, dtype=SetpointData, precision=4, doc="User desired value")
    rbv = _ro(".RBV", 0.0, precision=4, doc="User readback value")
    dmov = _ro(".DMOV", 1, doc="Done moving to value")
    movn = _ro(".MOVN", 0, doc="Motor is moving")
    velo = pvproperty(name=".VELO", value=1.0, precision=4, doc="Velocity (EGU/s)")
    accl = pvproperty(name=".ACCL", value=0.2, precision=3, doc="Seconds to velocity (not simulated)")
    dly = pvproperty(name=".DLY", value=0.0, precision=3, doc="Readback settle time (s)")
    hlm = pvproperty(name=".HLM", value=0.0, precision=4, doc="User high limit")
    llm = pvproperty(name=".LLM", value=0.0, precision=4, doc="User low limit")
    hls = _ro(".HLS", 0, doc="At high limit switch")
    lls = _ro(".LLS", 0, doc="At low limit switch")
    lvio = _ro(".LVIO", 0, doc="Limit violation")
    tdir = _ro(".TDIR", 0, doc="Direction of travel")
    stop = pvproperty(name=".STOP", value=0, doc="Stop")
    set_use = pvproperty(name=".SET", value="Use", dtype=ChannelType.ENUM, enum_strings=("Use", "Set"),
                         doc="Set/Use switch")
    egu = pvproperty(name=".EGU", value="", dtype=ChannelType.STRING, doc="Engineering units")
    prec = pvproperty(name=".PREC", value=4, doc="Display precision")
    desc = pvproperty(name=".DESC", value="", dtype=ChannelType.STRING, doc="Description")
    off = _ro(".OFF", 0.0, doc="User offset (not simulated)")
    user_dir = _ro(".DIR", "Pos", dtype=ChannelType.ENUM, enum_strings=("Pos", "Neg"), doc="User direction")
    foff = _ro(".FOFF", "Variable", dtype=ChannelType.ENUM, enum_strings=("Variable", "Frozen"),
               doc="Offset-freeze switch")
    homf = _ro(".HOMF", 0, doc="Home forward (not simulated)")
    homr = _ro(".HOMR", 0, doc="Home reverse (not simulated)")

    def __init__(self, prefix, *, spec: AxisSpec, clock: SimClock, time_scale: float, description: str = "",
                 **kwargs):
        super().__init__(prefix, **kwargs)
        self.spec = spec
        self.clock = clock
        self.time_scale = float(time_scale)
        self.description = description
        self._motion: asyncio.Task | None = None

    @property
    def position(self) -> float:
        """Current readback, ``egu``."""
        return float(self.rbv.value)

    def halt(self) -> None:
        """End a move at once, without posting (the caller sets the new state: reset)."""
        if self._motion is not None and not self._motion.done():
            self._motion.cancel()

    async def initialize(self, value: float) -> None:
        """Set units, speed, limits and the starting position (before clients use it)."""
        spec = self.spec
        for field in (self.val, self.rbv, self.hlm, self.llm, self.velo):
            await field.write_metadata(units=spec.egu, precision=spec.precision)
        await self.egu.write(spec.egu)
        await self.prec.write(spec.precision)
        await self.desc.write(self.description[:39])
        await self.velo.write(spec.velocity)
        await self.dly.write(spec.settle_s)
        await self.llm.write(spec.low_limit)
        await self.hlm.write(spec.high_limit)
        await self.val.write(float(value), verify_value=False)
        await self.rbv.write(float(value))
        await self.lvio.write(0)
        await self.movn.write(0)
        await self.dmov.write(1)

    # ---- limits ---------------------------------------------------------------------
    async def _publish_limits(self, low: float, high: float) -> None:
        # ophyd's EpicsMotor checks moves against the control limits of .VAL
        await self.val.write_metadata(lower_ctrl_limit=low, upper_ctrl_limit=high,
                                      lower_disp_limit=low, upper_disp_limit=high)

    @hlm.putter
    async def hlm(self, instance, value):
        await self._publish_limits(float(self.llm.value), float(value))
        return value

    @llm.putter
    async def llm(self, instance, value):
        await self._publish_limits(float(value), float(self.hlm.value))
        return value

    @velo.putter
    async def velo(self, instance, value):
        if not value > 0:
            raise ValueError(f"{self.prefix}.VELO must be > 0, got {value}")
        return value

    # ---- moving ---------------------------------------------------------------------
    @val.putter
    async def val(self, instance, value):
        value = float(value)
        if self.set_use.value == "Set":  # redefine the position, nothing moves
            await self.rbv.write(value)
            return value
        await self.lvio.write(0)  # within limits (SetpointData refused anything else)
        if self._motion is not None and not self._motion.done():
            self._motion.cancel()  # retarget, as the motor record does
        self._motion = asyncio.get_running_loop().create_task(self._move(value))
        return value

    def _beamline_duration_s(self, distance: float) -> float:
        if distance == 0:
            return 0.0
        return abs(distance) / float(self.velo.value) + float(self.dly.value)

    async def _move(self, target: float) -> None:
        start = self.position
        distance = target - start
        self.clock.schedule(self._beamline_duration_s(distance))
        await self.dmov.write(0)
        await self.movn.write(1)
        if distance:
            await self.tdir.write(1 if distance > 0 else 0)
        loop = asyncio.get_running_loop()
        travel_s = abs(distance) / float(self.velo.value) * self.time_scale
        t0 = loop.time()
        while (elapsed := loop.time() - t0) < travel_s:
            await self.rbv.write(start + distance * elapsed / travel_s)
            await asyncio.sleep(min(RBV_UPDATE_S, travel_s - elapsed))
        await self.rbv.write(target)
        await self.movn.write(0)
        if distance:
            await asyncio.sleep(float(self.dly.value) * self.time_scale)
        else:
            await asyncio.sleep(0)  # DMOV 0 and 1 reach clients as two updates
        await self.dmov.write(1)

    @stop.putter
    async def stop(self, instance, value):
        if value and self._motion is not None and not self._motion.done():
            self._motion.cancel()
            await self.val.write(self.position, verify_value=False)
            await self.movn.write(0)
            await self.dmov.write(1)
        return 0  # the record resets STOP
