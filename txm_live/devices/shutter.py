"""The photon shutter as a two-state settable device ('open' / 'close')."""
from __future__ import annotations

from ophyd import Component as Cpt
from ophyd import Device, EpicsSignal, EpicsSignalRO, Signal
from ophyd.status import DeviceStatus, SubscriptionStatus

SHUTTER_STATES = ("open", "close")
#: ``Pos-Sts`` value of an open shutter (NSLS-II: 0 = "Open", 1 = "Not Open").
OPEN_STATUS = 0


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

    PV suffixes follow the NSLS-II photon-shutter convention (``Pos-Sts`` 0 = open) and
    can be changed per beamline by subclassing; nothing connects until the device is
    used. ``set('open' | 'close')`` writes the command and finishes when ``Pos-Sts``
    shows the new state (at once if it already does); a shutter that does not get there
    within :attr:`move_timeout_s` fails the status.
    """

    status_pv = Cpt(EpicsSignalRO, "Pos-Sts", kind="normal")
    open_cmd = Cpt(EpicsSignal, "Cmd:Opn-Cmd", kind="omitted")
    close_cmd = Cpt(EpicsSignal, "Cmd:Cls-Cmd", kind="omitted")

    #: Longest time a shutter may take to open or close, s.
    move_timeout_s = 10.0

    def set(self, value):
        want_open = _check_state(self.name, value) == "open"

        def arrived(value, **kwargs):
            return (int(value) == OPEN_STATUS) == want_open

        status = SubscriptionStatus(self.status_pv, arrived, timeout=self.move_timeout_s)
        (self.open_cmd if want_open else self.close_cmd).put(1)
        return status

    @property
    def is_open(self) -> bool:
        return int(self.status_pv.get()) == OPEN_STATUS
