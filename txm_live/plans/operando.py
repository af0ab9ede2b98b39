"""Operando: cycle a battery cell and measure 2D XANES at intervals, each measurement its own run.

The session
-----------
:func:`operando` drives a potentiostat through a protocol of :class:`CyclingStep` (charge,
discharge, rest, constant-voltage hold) repeated ``n_cycles`` times, and measures a 2D
XANES stack (:func:`txm_live.plans.xanes_2d`) every ``measure_every_s`` of cell time. Every
run of the session carries the same ``operando_uid`` in its start document:

* **measurement runs** — ordinary ``xanes_2d`` runs (``scan_type='xanes2d'``, so the live
  2D XANES analysis maps them as any other), with ``operando_index`` (0, 1, … in session
  order), ``cycle``, ``step_index``, ``step_mode`` and the cell's readings when the
  measurement began (``cell_time_s``, ``voltage_v``, ``current_a``, ``capacity_mah``,
  ``counted_soc``) in the start document, and the potentiostat read at the run's start
  and end in its ``baseline`` stream;
* **cycling runs** — ``scan_type='operando_cycling'``, the potentiostat read every
  ``record_every_s`` of cell time between two measurements (stream ``primary``): the
  electrochemistry at a steady rate, stored as it happens. Their ``operando_index`` is
  the index of the measurement that follows them. The session's last run is a cycling
  run of one reading marked ``operando_complete: True`` (a session that ends as planned).

Counted SOC: ``initial_soc + (capacity_mah − capacity at the session start) /
nominal_capacity_mah`` (coulomb counting; the potentiostat's own charge counter).

Interruptions
-------------
Every potentiostat command and every frame begins with a checkpoint, so a pause or a
suspender re-does only what was in flight; runs already closed stay closed (a checkpoint
follows each run). A fault (compliance limit, disconnected cell) turns the potentiostat's
output off; with :func:`potentiostat_suspender` installed, the RunEngine suspends with a
message naming the fault until it is cleared, and the plan then re-applies the step in
force. Without a suspender the plan stops with :class:`PotentiostatFault`. Everything
measured before stays in its runs. A stopped session continues with
``operando(..., resume=OperandoResume(...))`` (same ``operando_uid``, next index, the step
it stopped in); :func:`txm_live.operando_replay.resume_point` reads that from Tiled.
"""
from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from bluesky import plan_stubs as bps
from bluesky import preprocessors as bpp
from bluesky.suspenders import SuspendBoolHigh

from txm_live.devices.potentiostat import check_potentiostat
from txm_live.devices.potentiostat_protocol import FAULT_CODES

from .xanes import xanes_2d

__all__ = ["OPERANDO_KEYS", "CyclingStep", "OperandoResume", "PotentiostatFault", "SuspendOnPotentiostatFault",
           "operando", "potentiostat_suspender", "resume_from_starts"]

#: Modes of a protocol step (the potentiostat's control modes).
STEP_MODES = ("cc", "cv", "rest")
#: Start-document keys the plan sets on every run of a session (a caller's ``md`` may not).
OPERANDO_KEYS = ("operando_uid", "operando_index", "cycle", "step_index", "step_mode", "cell_time_s",
                 "voltage_v", "current_a", "capacity_mah", "counted_soc", "nominal_capacity_mah",
                 "operando_initial_soc", "operando_capacity_at_start_mah", "operando_protocol",
                 "operando_n_cycles", "operando_complete")
#: ``step_index`` of the measurement that opens a session, before any current flows.
BEFORE_PROTOCOL = -1
#: Seconds the plan waits after seeing a fault before it stops, so that an installed
#: suspender (which hears the fault through a subscription) suspends the run first.
FAULT_GRACE_S = 0.5


class PotentiostatFault(RuntimeError):
    """The potentiostat reports a fault and no suspender handled it."""


@dataclass(frozen=True)
class CyclingStep:
    """One step of a cycling protocol.

    Parameters
    ----------
    mode : {'cc', 'cv', 'rest'}
        Constant current, constant voltage, open circuit.
    c_rate : float
        CC current as a C-rate, 1/h; > 0 charges (delithiates the cathode), < 0 discharges.
    voltage_v : float
        CV setpoint, V.
    voltage_max_v, voltage_min_v : float
        CC cutoffs: a charge ends at ``voltage_max_v``, a discharge at ``voltage_min_v``, V.
    current_limit_a : float
        CV current limit, A.
    end_current_a : float
        CV: the step ends once |I| falls below this, A (0: only ``max_duration_s`` ends it).
    max_duration_s : float
        The step ends after this much cell time at most, s (a rest needs it finite).
    """

    mode: str
    c_rate: float = 0.0
    voltage_v: float = math.nan
    voltage_max_v: float = 4.3
    voltage_min_v: float = 3.0
    current_limit_a: float = math.inf
    end_current_a: float = 0.0
    max_duration_s: float = math.inf

    def __post_init__(self):
        if self.mode not in STEP_MODES:
            raise ValueError(f"CyclingStep.mode must be one of {STEP_MODES}, got {self.mode!r}")
        if not self.max_duration_s > 0:
            raise ValueError(f"CyclingStep.max_duration_s must be > 0 s, got {self.max_duration_s}")
        if self.mode == "cc" and not (math.isfinite(self.c_rate) and self.c_rate != 0):
            raise ValueError(f"a CC step needs a finite, non-zero c_rate (1/h), got {self.c_rate}")
        if self.mode == "cv" and not math.isfinite(self.voltage_v):
            raise ValueError(f"a CV step needs a finite voltage_v (V), got {self.voltage_v}")
        if self.mode == "cv" and not (self.end_current_a > 0 or math.isfinite(self.max_duration_s)):
            raise ValueError("a CV step needs end_current_a > 0 or a finite max_duration_s to end")
        if self.mode == "rest" and not math.isfinite(self.max_duration_s):
            raise ValueError("a rest step needs a finite max_duration_s (s)")
        if not self.voltage_min_v < self.voltage_max_v:
            raise ValueError(f"voltage_min_v ({self.voltage_min_v}) must be below voltage_max_v "
                             f"({self.voltage_max_v})")

    @classmethod
    def charge(cls, c_rate: float, *, voltage_max_v: float = 4.3, **kwargs) -> CyclingStep:
        """CC charge at ``c_rate`` (> 0, 1/h) to ``voltage_max_v``."""
        return cls("cc", c_rate=abs(float(c_rate)), voltage_max_v=voltage_max_v, **kwargs)

    @classmethod
    def discharge(cls, c_rate: float, *, voltage_min_v: float = 3.0, **kwargs) -> CyclingStep:
        """CC discharge at ``c_rate`` (given > 0, 1/h) to ``voltage_min_v``."""
        return cls("cc", c_rate=-abs(float(c_rate)), voltage_min_v=voltage_min_v, **kwargs)

    @classmethod
    def rest(cls, duration_s: float) -> CyclingStep:
        """Open circuit for ``duration_s`` of cell time."""
        return cls("rest", max_duration_s=duration_s)

    @classmethod
    def hold(cls, voltage_v: float, *, end_current_a: float = 0.0, max_duration_s: float = math.inf,
             **kwargs) -> CyclingStep:
        """CV hold at ``voltage_v`` until |I| < ``end_current_a`` or ``max_duration_s``."""
        return cls("cv", voltage_v=voltage_v, end_current_a=end_current_a, max_duration_s=max_duration_s,
                   **kwargs)

    def as_dict(self) -> dict:
        """JSON-ready description (infinite values as None)."""
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in vars(self).items()}


@dataclass(frozen=True)
class OperandoResume:
    """Where a stopped session continues.

    Parameters
    ----------
    operando_uid : str
        The session's uid.
    next_index : int
        ``operando_index`` of the next measurement.
    cycle, step_index : int
        The protocol step to (re)start: it starts afresh (the potentiostat's step is
        applied again).
    capacity_at_start_mah : float
        The potentiostat's ``capacity_mah`` when the session first started, so counted
        SOC continues.
    initial_soc : float
        The session's SOC at its start.
    """

    operando_uid: str
    next_index: int
    cycle: int = 0
    step_index: int = 0
    capacity_at_start_mah: float = 0.0
    initial_soc: float = 0.0


def resume_from_starts(starts) -> OperandoResume:
    """Where a stopped session continues, from the start documents of its runs.

    The next measurement index follows the highest one begun (an interrupted measurement
    keeps its index); the step is the one the latest run was in (restarted afresh).

    Raises
    ------
    ValueError
        No run of a session among ``starts``, runs of several sessions, or a session
        that completed.
    """
    starts = [s for s in starts if s.get("operando_uid") is not None and s.get("analysis") is None]
    uids = {s["operando_uid"] for s in starts}
    if len(uids) != 1:
        raise ValueError(f"need the runs of one operando session; got sessions {sorted(uids)}")
    latest = max(starts, key=lambda s: s["time"])
    if latest.get("operando_complete"):
        raise ValueError(f"operando session {latest['operando_uid']} completed; nothing to resume")
    measured = [int(s["operando_index"]) for s in starts if s.get("scan_type") == "xanes2d"]
    step_index = int(latest["step_index"])
    return OperandoResume(
        operando_uid=latest["operando_uid"], next_index=max(measured, default=-1) + 1,
        cycle=int(latest["cycle"]), step_index=max(step_index, 0),
        capacity_at_start_mah=float(latest["operando_capacity_at_start_mah"]),
        initial_soc=float(latest["operando_initial_soc"]))


class SuspendOnPotentiostatFault(SuspendBoolHigh):
    """``SuspendBoolHigh`` on the potentiostat's ``fault``, saying which fault it is."""

    def __init__(self, potentiostat, **kwargs):
        self._pstat = potentiostat
        kwargs.setdefault("tripped_message", "the potentiostat's output is off; the session waits until "
                          "the fault is cleared (pstat.clear_fault.put(1)), then re-applies its step")
        super().__init__(potentiostat.fault, **kwargs)

    def _get_justification(self):
        if not self.tripped:
            return ""
        code = int(self._pstat.fault.get())
        # the code is authoritative: the message signal may update a moment after it
        message = FAULT_CODES.get(code) or self._pstat.fault_message.get() or "unknown fault"
        return f"potentiostat {self._pstat.name} fault {code} ({message}): {self._tripped_message}"


def potentiostat_suspender(potentiostat, *, sleep_s: float = 5.0) -> SuspendOnPotentiostatFault:
    """A suspender for ``RE.install_suspender``: suspends while ``potentiostat.fault`` is set.

    ``sleep_s`` is how long to wait after the fault clears before resuming (s).
    """
    return SuspendOnPotentiostatFault(potentiostat, sleep=sleep_s)


@dataclass(frozen=True)
class _Session:
    """Validated arguments and identity of one :func:`operando` call."""

    uid: str
    protocol: tuple
    n_cycles: int
    measure_every_s: float
    record_every_s: float
    initial_soc: float
    resume: OperandoResume | None


def _validate(potentiostat, protocol, *, n_cycles, measure_every_s, record_every_s, initial_soc, resume,
              md) -> _Session:
    check_potentiostat(potentiostat)
    steps = tuple(protocol)
    if not steps or not all(isinstance(s, CyclingStep) for s in steps):
        raise ValueError(f"protocol must be a non-empty sequence of CyclingStep, got {protocol!r}")
    if isinstance(n_cycles, bool) or not isinstance(n_cycles, int) or n_cycles < 1:
        raise ValueError(f"n_cycles must be an integer >= 1, got {n_cycles!r}")
    for name, value in (("measure_every_s", measure_every_s), ("record_every_s", record_every_s)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    if resume is not None and initial_soc is not None and float(initial_soc) != resume.initial_soc:
        raise ValueError(f"initial_soc {initial_soc} differs from the resumed session's {resume.initial_soc}; "
                         "leave it out when resuming")
    initial_soc = (resume.initial_soc if resume is not None else 0.0) if initial_soc is None else initial_soc
    if not 0.0 <= float(initial_soc) <= 1.0:
        raise ValueError(f"initial_soc must be in [0, 1], got {initial_soc!r}")
    clashing = sorted(set(md or {}) & set(OPERANDO_KEYS))
    if clashing:
        raise ValueError(f"md may not set {clashing}: the plan records the session's state there")
    if resume is not None:
        if not isinstance(resume, OperandoResume):
            raise TypeError(f"resume must be an OperandoResume, got {type(resume).__name__}")
        if not (0 <= resume.cycle < n_cycles and 0 <= resume.step_index < len(steps)):
            raise ValueError(f"resume at cycle {resume.cycle}, step {resume.step_index} is outside the "
                             f"protocol ({n_cycles} cycles of {len(steps)} steps)")
    uid = resume.operando_uid if resume is not None else str(uuid.uuid4())
    return _Session(uid, steps, n_cycles, float(measure_every_s), float(record_every_s), float(initial_soc),
                    resume)


class _Cursor:
    """Mutable position of the session: measurement index, step, when the next measurement is due."""

    def __init__(self, session: _Session, capacity_at_start_mah: float):
        self.index = session.resume.next_index if session.resume else 0
        self.cycle, self.step_index = 0, BEFORE_PROTOCOL
        self.step: CyclingStep | None = None  # None: before the protocol's first step
        self.capacity_at_start_mah = capacity_at_start_mah
        self.next_due_s = -math.inf  # measure as soon as the session (re)starts


def _readings(potentiostat):
    """Read the potentiostat's readbacks (messages); returns ``{component name: value}``."""
    names = ("time_s", "voltage_v", "current_a", "capacity_mah", "mode", "limit_reached", "fault",
             "nominal_capacity_mah")
    out = {}
    for name in names:
        out[name] = yield from bps.rd(getattr(potentiostat, name))
    return out


def _run_md(session: _Session, cursor: _Cursor, state: dict, md: dict | None) -> dict:
    nominal = float(state["nominal_capacity_mah"])
    counted = session.initial_soc + (float(state["capacity_mah"]) - cursor.capacity_at_start_mah) / nominal
    out = dict(md or {})
    step_mode = cursor.step.mode if cursor.step is not None else str(state["mode"])
    out.update(operando_uid=session.uid, operando_index=cursor.index, cycle=cursor.cycle,
               step_index=cursor.step_index, step_mode=step_mode, cell_time_s=float(state["time_s"]),
               voltage_v=float(state["voltage_v"]), current_a=float(state["current_a"]),
               capacity_mah=float(state["capacity_mah"]), counted_soc=float(counted), nominal_capacity_mah=nominal,
               operando_initial_soc=session.initial_soc, operando_capacity_at_start_mah=cursor.capacity_at_start_mah,
               operando_protocol=[s.as_dict() for s in session.protocol], operando_n_cycles=session.n_cycles)
    return out


def _apply_step(potentiostat, step: CyclingStep):
    """Checkpoint, write the step's settings, then its mode (which starts it)."""
    yield from bps.checkpoint()
    settings = [potentiostat.voltage_max_v, step.voltage_max_v, potentiostat.voltage_min_v, step.voltage_min_v,
                potentiostat.current_limit_a, step.current_limit_a, potentiostat.end_current_a, step.end_current_a,
                potentiostat.on_limit, "rest"]
    if step.mode == "cc":
        settings += [potentiostat.c_rate, step.c_rate]
    if step.mode == "cv":
        settings += [potentiostat.voltage_setpoint_v, step.voltage_v]
    yield from bps.mv(*settings)
    yield from bps.mv(potentiostat.mode, step.mode)


def _check_fault(potentiostat, state: dict):
    """After a fault: give a suspender the chance to act, then stop if it is still there."""
    if not state["fault"]:
        return state
    yield from bps.checkpoint()
    yield from bps.sleep(FAULT_GRACE_S)  # an installed suspender suspends here, until cleared
    state = yield from _readings(potentiostat)
    if state["fault"]:
        message = yield from bps.rd(potentiostat.fault_message)
        raise PotentiostatFault(
            f"potentiostat {potentiostat.name} reports fault {int(state['fault'])} ({message}) at cell time "
            f"{float(state['time_s']):.0f} s; the session stops (runs already measured are kept). Install "
            "potentiostat_suspender(pstat) to wait for the fault to be cleared instead")
    return state


def _step_over(cursor: _Cursor, state: dict, step_start_s: float) -> bool:
    step = cursor.step
    ended_at_limit = bool(state["limit_reached"]) and state["mode"] == "rest"
    return ended_at_limit or float(state["time_s"]) - step_start_s >= step.max_duration_s * (1 - 1e-12)


def _cycling_run(potentiostat, session: _Session, cursor: _Cursor, until_s: float, md):
    """One run of potentiostat readings every ``record_every_s`` until ``until_s`` or the step ends."""
    state = yield from _readings(potentiostat)
    _md = _run_md(session, cursor, state, md)
    _md.update(plan_name="operando", scan_type="operando_cycling", detectors=[potentiostat.name],
               hints={"dimensions": [([potentiostat.time_s.name], "primary")]})

    @bpp.run_decorator(md=_md)
    def run():
        yield from bps.trigger_and_read([potentiostat])
        while True:
            yield from bps.checkpoint()
            now = yield from _readings(potentiostat)
            now = yield from _check_fault(potentiostat, now)
            if not now["limit_reached"] and now["mode"] != cursor.step.mode:
                yield from bps.mv(potentiostat.mode, cursor.step.mode)  # output off after a fault: re-apply
            left_s = until_s - float(now["time_s"])
            if left_s <= 0 or now["limit_reached"]:
                return
            yield from bps.mv(potentiostat.elapse, min(session.record_every_s, left_s))
            yield from bps.trigger_and_read([potentiostat])

    yield from run()
    yield from bps.checkpoint()  # the closed run is never replayed


def _closing_run(potentiostat, session: _Session, cursor: _Cursor, md):
    """A last reading of the cell, marked ``operando_complete``: the session ended as planned."""
    yield from bps.checkpoint()
    state = yield from _readings(potentiostat)
    _md = _run_md(session, cursor, state, md)
    _md.update(plan_name="operando", scan_type="operando_cycling", operando_complete=True,
               detectors=[potentiostat.name])

    @bpp.run_decorator(md=_md)
    def run():
        yield from bps.trigger_and_read([potentiostat])

    yield from run()


def _measurement(potentiostat, xanes_args: tuple, xanes_kwargs: dict, session: _Session, cursor: _Cursor, md):
    """One 2D XANES run of the session, the potentiostat in its baseline stream."""
    yield from bps.checkpoint()
    state = yield from _readings(potentiostat)
    yield from _check_fault(potentiostat, state)
    run_md = _run_md(session, cursor, state, md)
    plan = xanes_2d(*xanes_args, **xanes_kwargs, md=run_md)
    yield from bpp.baseline_wrapper(plan, [potentiostat])
    yield from bps.checkpoint()  # the closed run is never replayed
    cursor.next_due_s = float(state["time_s"]) + session.measure_every_s
    cursor.index += 1


def _run_step(potentiostat, xanes_args, xanes_kwargs, session: _Session, cursor: _Cursor, md):
    """Apply one protocol step and alternate cycling runs and measurements until it ends."""
    yield from _apply_step(potentiostat, cursor.step)
    state = yield from _readings(potentiostat)
    step_start_s = float(state["time_s"])
    step_end_s = step_start_s + cursor.step.max_duration_s
    while True:
        state = yield from _readings(potentiostat)
        state = yield from _check_fault(potentiostat, state)
        if _step_over(cursor, state, step_start_s):
            return
        if float(state["time_s"]) >= cursor.next_due_s:
            yield from _measurement(potentiostat, xanes_args, xanes_kwargs, session, cursor, md)
        else:
            yield from _cycling_run(potentiostat, session, cursor, min(cursor.next_due_s, step_end_s), md)


def operando(
    detector,
    energy,
    energies_ev: Sequence[float],
    *,
    potentiostat,
    shutter,
    sample_stage,
    protocol: Sequence[CyclingStep],
    measure_every_s: float,
    n_cycles: int = 1,
    record_every_s: float = 60.0,
    initial_soc: float | None = None,
    resume: OperandoResume | None = None,
    xanes_options: dict | None = None,
    md: dict | None = None,
):
    """Cycle a cell through ``protocol`` and measure 2D XANES every ``measure_every_s``.

    Parameters
    ----------
    detector, energy, energies_ev, shutter, sample_stage
        As for :func:`txm_live.plans.xanes_2d` (one measurement).
    potentiostat : potentiostat device
        Of the protocol in :mod:`txm_live.devices.potentiostat` (simulated or EPICS).
    protocol : sequence of CyclingStep
        Steps of one cycle, e.g. ``[CyclingStep.charge(1.0), CyclingStep.rest(600),
        CyclingStep.discharge(1.0)]``.
    measure_every_s : float
        Cell time between the starts of two measurements, s; a measurement also starts
        the session (before the first step is applied: the cell's starting state) and
        each resumed session. A measurement lasting longer than this is followed at once by the next.
    n_cycles : int
        Times the protocol is run.
    record_every_s : float
        Cell time between two potentiostat readings in the cycling runs, s.
    initial_soc : float, optional
        State of charge when the session starts (default 0, a pristine cathode; a resumed
        session keeps its own); counted SOC follows from the charge passed.
    resume : OperandoResume, optional
        Continue a stopped session (see the module docstring).
    xanes_options : dict, optional
        Keyword options of :func:`~txm_live.plans.xanes_2d` (``n_darks``,
        ``frames_per_energy``, ``flat_every``, ``element``, ``sample_out_um`` …).
    md : dict, optional
        Extra start metadata of every run (may not set :data:`OPERANDO_KEYS`).

    Returns
    -------
    str
        The session's ``operando_uid``.

    Notes
    -----
    The session ends after the last step of the last cycle; the potentiostat is then left
    at rest. Each step begins with a checkpoint and applies its settings afresh.
    """
    session = _validate(potentiostat, protocol, n_cycles=n_cycles, measure_every_s=measure_every_s,
                        record_every_s=record_every_s, initial_soc=initial_soc, resume=resume, md=md)
    xanes_kwargs = dict(xanes_options or {})
    reserved = sorted(set(xanes_kwargs) & {"md", "shutter", "sample_stage"})
    if reserved:
        raise ValueError(f"xanes_options may not set {reserved}: operando passes them itself")
    xanes_kwargs.update(shutter=shutter, sample_stage=sample_stage)
    xanes_args = (detector, energy, energies_ev)
    capacity_now = yield from bps.rd(potentiostat.capacity_mah)
    cursor = _Cursor(session, session.resume.capacity_at_start_mah if session.resume else float(capacity_now))
    first = (session.resume.cycle, session.resume.step_index) if session.resume else (0, 0)

    def cycles():
        if session.resume is None:  # the state before any current flows; also checks the XANES options
            yield from _measurement(potentiostat, xanes_args, xanes_kwargs, session, cursor, md)
        for cycle in range(n_cycles):
            for step_index, step in enumerate(session.protocol):
                if (cycle, step_index) < first:
                    continue
                cursor.cycle, cursor.step_index, cursor.step = cycle, step_index, step
                yield from _run_step(potentiostat, xanes_args, xanes_kwargs, session, cursor, md)
        yield from bps.mv(potentiostat.mode, "rest")
        yield from _closing_run(potentiostat, session, cursor, md)

    def rest_at_end():
        yield from bps.mv(potentiostat.mode, "rest")

    yield from bpp.finalize_wrapper(cycles(), rest_at_end())
    return session.uid
