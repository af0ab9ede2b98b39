"""Potentiostat devices: the protocol the operando plan uses, and the EPICS class.

The device protocol
-------------------
Every potentiostat txm-live drives (the EPICS class here, the simulated one in
:mod:`simulators.devices`) has these components, with these names and units. A plan
written against them runs on either.

Settings (written before a step starts; kind ``config``)

=========================  ======  ==========================================================
``current_setpoint_a``     A       CC current; > 0 charges the cathode (delithiation)
``c_rate``                 1/h     the same, as a C-rate: writes ``current_setpoint_a`` =
                                   ``c_rate · nominal_capacity_mah / 1000``
``voltage_setpoint_v``     V       CV setpoint (vs the reference: Li/Li⁺ in a half cell)
``voltage_max_v``          V       CC cutoffs: a charge ends at ``voltage_max_v``, a
``voltage_min_v``          V       discharge at ``voltage_min_v``
``current_limit_a``        A       CV: the current is held within ±this
``end_current_a``          A       CV: the step ends when |I| falls below this (0: never)
``on_limit``               str     after a CC cutoff: ``'rest'``, or ``'cv'`` (hold the cutoff)
``nominal_capacity_mah``   mAh     what 1C means for this cell
=========================  ======  ==========================================================

Starting a step: writing ``mode`` (``'rest'`` | ``'cc'`` | ``'cv'``) applies the settings
as they are at that moment and starts a new step (``step_time_s`` → 0,
``limit_reached`` → 0). Settings written during a step take effect at the next write of
``mode``.

Readbacks (read with every event; kind ``hinted``/``normal``)

=========================  ======  ==========================================================
``mode``                   str     the mode in force: ``'rest'`` after a cutoff that rests or
                                   after a fault
``voltage_v``              V       terminal voltage (NaN while the cell is disconnected)
``current_a``              A       current, > 0 charge
``capacity_mah``           mAh     net charge passed since the potentiostat was started
``time_s``                 s       time since the potentiostat was started
``step_time_s``            s       time since the step started
``limit_reached``          0/1     the step ended at its cutoff (CC voltage, CV end current)
``fault``                  int     :data:`FAULT_CODES`; 0 = none. A bluesky suspender
                                   watches it: ``SuspendBoolHigh(pstat.fault)``
``fault_message``          str     what the fault is, in words
=========================  ======  ==========================================================

Commands

- ``elapse.set(duration_s)`` → a Status that finishes after ``duration_s`` of cell time,
  or earlier when the step reaches its cutoff or a fault occurs; in a plan:
  ``yield from bps.mv(pstat.elapse, 600)``. On the real instrument cell time is wall
  time; on the simulated beamline it is the simulated clock (hours in milliseconds).
- ``clear_fault.put(1)`` → clears a fault. The output stays at rest after a fault and
  after clearing it: a plan re-applies its step (write ``mode`` again) after resuming.

Faults turn the output off (``mode`` reads ``'rest'``) and set ``fault`` (1 voltage
compliance, 2 current compliance, 3 cell disconnected).

A constant-current charge to 4.3 V with measurements every 10 minutes::

    yield from bps.mv(pstat.c_rate, 1.0, pstat.voltage_max_v, 4.3, pstat.on_limit, "rest")
    yield from bps.mv(pstat.mode, "cc")                   # the step starts
    while not (yield from bps.rd(pstat.limit_reached)):
        yield from bps.mv(pstat.elapse, 600)              # 10 min of cell time (or less)
        ...                                               # measure; the cell keeps charging

PV names
--------
The EPICS class reads the PVs below its prefix (NSLS-II style; examples, not promises: a
beamline maps its IOC's records by subclassing):

``Mode-Sel``/``Mode-RB`` (enum ``rest``/``cc``/``cv``), ``I:SP-SP``, ``E:SP-SP``,
``E:Hi-SP``, ``E:Lo-SP``, ``I:Lim-SP``, ``I:End-SP``, ``OnLim-Sel``, ``Cap:Nom-SP``;
readbacks ``E-I``, ``I-I``, ``Q-I`` (mAh), ``T-I``, ``StepT-I`` (s), ``LimReached-Sts``,
``Fault-Sts``, ``FaultMsg-I``; command ``Cmd:ClrFault-Cmd``.
"""
from __future__ import annotations

import math
import threading

from ophyd import Component as Cpt
from ophyd import Device, EpicsSignal, EpicsSignalRO, Signal
from ophyd.signal import DerivedSignal
from ophyd.status import DeviceStatus

from .potentiostat_protocol import (
    CONTROL_MODES,
    FAULT_CODES,
    LIMIT_ACTIONS,
    MAH_PER_AH,
    POTENTIOSTAT_COMPONENTS,
    check_mode,
    current_from_c_rate_a,
)

__all__ = [
    "CONTROL_MODES", "CRateSignal", "EpicsPotentiostat", "ElapseSignal", "FAULT_CODES",
    "LIMIT_ACTIONS", "MAH_PER_AH", "POTENTIOSTAT_COMPONENTS", "check_mode", "check_potentiostat",
    "make_epics_potentiostat",
]



def check_potentiostat(device) -> None:
    """Raise ``TypeError`` naming what is missing if ``device`` lacks the protocol's components."""
    missing = [name for names in POTENTIOSTAT_COMPONENTS.values() for name in names
               if not hasattr(device, name)]
    if missing:
        raise TypeError(f"{getattr(device, 'name', device)!r} is not a potentiostat of the txm-live "
                        f"protocol: missing {missing}")


class CRateSignal(DerivedSignal):
    """C-rate view of the current setpoint: ``current_a = c_rate · nominal_capacity_mah / 1000``.

    Derived from the sibling ``current_setpoint_a``; the parent's ``nominal_capacity_mah``
    says what 1C is.
    """

    def forward(self, value):
        """C-rate → current setpoint, A."""
        if not math.isfinite(float(value)):
            raise ValueError(f"{self.name}: the C-rate must be finite, got {value}")
        return current_from_c_rate_a(value, float(self.parent.nominal_capacity_mah.get()))

    def inverse(self, value):
        """Current setpoint (A) → C-rate."""
        return float(value) / current_from_c_rate_a(1.0, float(self.parent.nominal_capacity_mah.get()))


class ElapseSignal(Signal):
    """``set(duration_s)`` waits for cell time to pass; the Status ends early at a step's end.

    The base class waits in wall time (a real instrument): it finishes after
    ``duration_s`` seconds, or as soon as the parent's ``limit_reached`` becomes true or
    its ``fault`` non-zero. The simulated potentiostat overrides :meth:`_run` to advance
    the simulated clock instead. The value is the last duration asked for, s.
    """

    def set(self, value, **kwargs):
        duration_s = float(value)
        if not (math.isfinite(duration_s) and duration_s >= 0):
            raise ValueError(f"{self.name}: the time to elapse must be finite and >= 0 s, got {value}")
        super().put(duration_s, **kwargs)
        status = DeviceStatus(self.parent if self.parent is not None else self)
        self._run(duration_s, status)
        return status

    def put(self, value, **kwargs):
        raise TypeError(f"{self.name}: use set(duration_s) (bps.mv), which returns a Status to wait on")

    def _run(self, duration_s: float, status: DeviceStatus) -> None:
        parent = self.parent
        done = threading.Event()

        def finish(*_args, **_kwargs):
            if not done.is_set():
                done.set()
                timer.cancel()
                for signal, token in tokens:
                    signal.unsubscribe(token)
                status.set_finished()

        def check(*, value, **_kwargs):
            if value:
                finish()

        timer = threading.Timer(duration_s, finish)
        tokens = []
        for signal in (parent.limit_reached, parent.fault):
            tokens.append((signal, signal.subscribe(check, run=False)))
        timer.start()
        if parent.limit_reached.get() or parent.fault.get():
            finish()


class EpicsPotentiostat(Device):
    """A beamline potentiostat IOC (see the module docstring for PVs and the protocol).

    Nothing connects on construction; check a profile offline with
    :func:`ophyd.sim.make_fake_device`.
    """

    mode = Cpt(EpicsSignal, "Mode-RB", write_pv="Mode-Sel", string=True, kind="normal")
    current_setpoint_a = Cpt(EpicsSignal, "I:SP-SP", kind="config")
    c_rate = Cpt(CRateSignal, derived_from="current_setpoint_a", kind="config")
    voltage_setpoint_v = Cpt(EpicsSignal, "E:SP-SP", kind="config")
    voltage_max_v = Cpt(EpicsSignal, "E:Hi-SP", kind="config")
    voltage_min_v = Cpt(EpicsSignal, "E:Lo-SP", kind="config")
    current_limit_a = Cpt(EpicsSignal, "I:Lim-SP", kind="config")
    end_current_a = Cpt(EpicsSignal, "I:End-SP", kind="config")
    on_limit = Cpt(EpicsSignal, "OnLim-Sel", string=True, kind="config")
    nominal_capacity_mah = Cpt(EpicsSignal, "Cap:Nom-SP", kind="config")

    voltage_v = Cpt(EpicsSignalRO, "E-I", kind="hinted")
    current_a = Cpt(EpicsSignalRO, "I-I", kind="hinted")
    capacity_mah = Cpt(EpicsSignalRO, "Q-I", kind="normal")
    time_s = Cpt(EpicsSignalRO, "T-I", kind="normal")
    step_time_s = Cpt(EpicsSignalRO, "StepT-I", kind="normal")
    limit_reached = Cpt(EpicsSignalRO, "LimReached-Sts", kind="normal")
    fault = Cpt(EpicsSignalRO, "Fault-Sts", kind="normal")
    fault_message = Cpt(EpicsSignalRO, "FaultMsg-I", string=True, kind="normal")

    elapse = Cpt(ElapseSignal, value=0.0, kind="omitted")
    clear_fault = Cpt(EpicsSignal, "Cmd:ClrFault-Cmd", kind="omitted")

    def start_step(self, mode: str):
        """Write ``mode`` (checked against :data:`CONTROL_MODES` first); returns its Status."""
        return self.mode.set(check_mode(self.name, mode))


def make_epics_potentiostat(prefix: str = "XF:18IDB-ES{Pstat:1}", *, name: str = "pstat",
                            device_factory=None) -> EpicsPotentiostat:
    """Build the EPICS potentiostat (nothing connects yet).

    Parameters
    ----------
    prefix : str
        PV prefix of the IOC (an example default in NSLS-II style).
    name : str
        Device name (``'pstat'``, as the simulated profile names it).
    device_factory : callable, optional
        Applied to the class before instantiation; :func:`ophyd.sim.make_fake_device`
        checks a profile offline.
    """
    make = device_factory or (lambda cls: cls)
    return make(EpicsPotentiostat)(prefix, name=name)
