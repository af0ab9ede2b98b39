"""The photon shutter as a two-state settable device ('open' / 'close')."""
from __future__ import annotations

from ophyd import Component as Cpt
from ophyd import Device, EpicsSignal, EpicsSignalRO, Signal
from ophyd.status import DeviceStatus

SHUTTER_STATES = ("open", "close")


def _check_state(name: str, value) -> str:
    if value not in SHUTTER_STATES:
        raise ValueError(f"{name}: shutter state must be one of {SHUTTER_STATES}, got {value!r}")
    return value


class SoftShutter(Device):
    """A shutter held in software (simulation, or a beamline without one to control)."""

    state = Cpt(Signal, value="open", kind="normal")

    def set(self, value):
        self.state.put(_check_state(self.name, value))
        status = DeviceStatus(self)
        status.set_finished()
        return status

    @property
    def is_open(self) -> bool:
        return self.state.get() == "open"


class EpicsShutter(Device):
    """An EPICS photon shutter with separate open/close command PVs and a status PV.

    PV suffixes follow the NSLS-II photon-shutter convention and can be changed per
    beamline by subclassing; nothing connects until the device is used.
    """

    status_pv = Cpt(EpicsSignalRO, "Pos-Sts", kind="normal")
    open_cmd = Cpt(EpicsSignal, "Cmd:Opn-Cmd", kind="omitted")
    close_cmd = Cpt(EpicsSignal, "Cmd:Cls-Cmd", kind="omitted")

    def set(self, value):
        target = _check_state(self.name, value)
        cmd = self.open_cmd if target == "open" else self.close_cmd
        return cmd.set(1)

    @property
    def is_open(self) -> bool:
        return int(self.status_pv.get()) == 0
