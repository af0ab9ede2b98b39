"""Simulated ophyd devices of the TXM, wired to the physics in :mod:`simulators.model`.

The devices only connect parts (the ophyd-async habit): motors hold positions and advance
the shared :class:`~simulators.timing.SimClock`; the detector asks :class:`SimTXM` for a
frame at the current positions and writes it to an HDF5 file that the document stream
references. The component names match the EPICS classes in :mod:`txm_live.devices.txm`,
so plans cannot tell them apart.
"""
from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np
from ophyd import Component as Cpt
from ophyd import Device, Signal
from ophyd.signal import SignalRO
from ophyd.sim import SynAxis
from ophyd.status import DeviceStatus, MoveStatus
from ophyd.utils import ReadOnlyError

from txm_live.devices.energy import FocusTrackingMixin
from txm_live.devices.potentiostat import CRateSignal, ElapseSignal
from txm_live.devices.potentiostat_protocol import check_mode
from txm_live.devices.rotation import FlyableRotationMixin, FlyRotationInfo
from txm_live.devices.shutter import SoftShutter

from .electrochem import CellControl, NMCCell, OperandoSample
from .frame_writer import FRAME_TYPES, HDF5FrameFile
from .timing import SimClock


class SimMotor(SynAxis):
    """A simulated axis that takes beamline time to move.

    Parameters
    ----------
    clock : SimClock
        Shared simulated time; a move schedules ``|Δ| / speed + settle_s`` on it (and sleeps
        that long when the clock is realistic).
    speed : float
        Units per second (eV/s, mm/s, µm/s, deg/s as ``egu`` says).
    settle_s : float
        Settling time after any non-zero move, s.
    """

    def __init__(self, *, name, clock: SimClock, speed: float = 1.0, settle_s: float = 0.0, **kwargs):
        super().__init__(name=name, **kwargs)
        self.clock = clock
        self.speed = float(speed)
        self.settle_s = float(settle_s)

    def set(self, value):
        distance = abs(float(value) - float(self.sim_state["setpoint"]))
        duration = distance / self.speed + self.settle_s if distance > 0 else 0.0
        self.clock.schedule(duration)
        self.delay = self.clock.wait_time(duration)
        return super().set(float(value))


class _Trajectory:
    """Position (deg) against simulated time of one move on a trapezoidal velocity profile.

    The stage accelerates at ``velocity / accel_s`` to ``velocity``, cruises, and slows down
    the same way (a triangle when the move is too short to reach the velocity); at rest
    before ``t0_s`` and after :attr:`end_s`.
    """

    def __init__(self, start: float, end: float, t0_s: float, velocity: float, accel_s: float):
        self.start, self.end, self.t0_s = float(start), float(end), float(t0_s)
        distance = abs(self.end - self.start)
        self.sign = 1.0 if self.end >= self.start else -1.0
        v, ta = float(velocity), max(float(accel_s), 0.0)
        if ta > 0 and distance < v * ta:  # never reaches v: triangle
            self.accel_s = math.sqrt(distance * ta / v)
            self.velocity = v * self.accel_s / ta
            self.cruise_s = 0.0
        else:
            self.accel_s, self.velocity = ta, v
            self.cruise_s = distance / v - ta if distance > 0 else 0.0
        self.duration_s = 2.0 * self.accel_s + self.cruise_s if distance > 0 else 0.0

    @classmethod
    def at_rest(cls, position: float, t_s: float) -> "_Trajectory":
        return cls(position, position, t_s, 1.0, 0.0)

    @property
    def end_s(self) -> float:
        return self.t0_s + self.duration_s

    def position(self, t_s: float) -> float:
        t = min(max(float(t_s) - self.t0_s, 0.0), self.duration_s)
        ta, v = self.accel_s, self.velocity
        a = v / ta if ta > 0 else math.inf
        d_acc = 0.5 * v * ta
        if t <= ta:
            travelled = 0.5 * a * t * t if ta > 0 else 0.0
        elif t <= ta + self.cruise_s:
            travelled = d_acc + v * (t - ta)
        else:
            left = self.duration_s - t
            travelled = abs(self.end - self.start) - (0.5 * a * left * left if ta > 0 else 0.0)
        return self.start + self.sign * travelled


class _TrajectoryReadback(Signal):
    """Readback of a :class:`SimRotationAxis`: where its trajectory is at the clock's time."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._metadata.update(connected=True, write_access=False)

    def get(self, **kwargs):
        self._readback = self.parent.position_at(self.parent.clock.now())
        return self._readback

    def describe(self):
        description = super().describe()
        for key in description:
            description[key]["precision"] = self.parent.precision
        return description

    def put(self, value, **kwargs):
        raise ReadOnlyError(f"The signal {self.name} is read-only.")

    def set(self, value, **kwargs):
        raise ReadOnlyError(f"The signal {self.name} is read-only.")


class SimRotationAxis(FlyableRotationMixin, SimMotor):
    """Rotation stage (deg) that moves at ``velocity`` (deg/s), accelerating over
    ``acceleration`` (s to reach it), as an EPICS motor record's VELO and ACCL.

    Two kinds of move, as at the beamline:

    * a plain ``set`` (step scans, moves to a position): the simulated clock waits for the
      move, so the next frame is taken with the stage at rest at its target;
    * the first ``set`` after ``prepare(FlyRotationInfo)`` is a fly: the stage turns
      while frames are taken — the clock does not wait for it, the readback and the
      frames follow the trajectory in simulated time (:meth:`position_at`), and the
      move's status finishes when it would end (at once when the clock is not
      realistic).

    ``stop()`` (the RunEngine stops moved devices on a pause or abort) halts a fly where
    the stage is.
    """

    readback = Cpt(_TrajectoryReadback, value=0.0, kind="hinted")

    def __init__(self, *, name, clock: SimClock, speed: float = 30.0, accel_s: float = 0.5, value: float = 0.0,
                 **kwargs):
        super().__init__(name=name, clock=clock, speed=speed, value=value, **kwargs)
        self.readback.name = self.name
        self.velocity.put(float(speed))
        self.acceleration.put(float(accel_s))
        self._trajectory = _Trajectory.at_rest(float(value), 0.0)
        self._fly_armed = False
        self._lock = threading.Lock()

    def position_at(self, t_s: float) -> float:
        """Stage angle (deg) at simulated time ``t_s`` on the current move."""
        with self._lock:
            return self._trajectory.position(t_s)

    def prepare(self, value: FlyRotationInfo):
        status = super().prepare(value)
        self._fly_armed = True  # the next set is the fly move
        return status

    def set(self, value):
        target = float(value)
        with self._lock:
            fly, self._fly_armed = self._fly_armed, False
        # A fly starts once the moves the plan waited for (to the taxi position) are over;
        # a plain move runs in parallel with others, as any simulated motor's.
        now = self.clock.settle() if fly else self.clock.now()
        with self._lock:
            here = self._trajectory.position(now)
            move = _Trajectory(here, target, now, float(self.velocity.get()), float(self.acceleration.get()))
            self._trajectory = move if fly else _Trajectory.at_rest(target, now)
        self.sim_state["setpoint"] = target
        status = MoveStatus(positioner=self, target=target)
        if fly:
            wait_s = self.clock.wait_time(move.duration_s)
        else:  # the clock waits for it, as for any simulated motor
            duration = move.duration_s + (self.settle_s if move.duration_s > 0 else 0.0)
            self.clock.schedule(duration)
            wait_s = self.clock.wait_time(duration)
        if wait_s > 0:
            threading.Timer(wait_s, status.set_finished).start()
        else:
            status.set_finished()
        return status

    def stop(self, *, success: bool = False):
        now = self.clock.now()
        with self._lock:
            self._trajectory = _Trajectory.at_rest(self._trajectory.position(now), now)
            self._fly_armed = False


class SimEnergy(FocusTrackingMixin, SimMotor):
    """Monochromator energy (eV) with zone-plate/detector focus tracking."""


class SimStage(Device):
    """A stage of simulated motors that share one clock."""

    def __init__(self, *args, clock: SimClock, **kwargs):
        super().__init__(*args, **kwargs)
        self.clock = clock
        for name in self.component_names:
            child = getattr(self, name)
            if isinstance(child, SimMotor):
                child.clock = clock


def _axis(egu: str, speed: float, settle_s: float = 0.0, value: float = 0.0) -> Cpt:
    # The clock is handed over by SimStage.__init__ (Cpt kwargs are fixed at class level).
    return Cpt(SimMotor, clock=None, speed=speed, settle_s=settle_s, egu=egu, value=value)


class SimZonePlate(SimStage):
    """Zone-plate stage: ``z`` is the sample → zone-plate distance (mm)."""

    x = _axis("mm", 1.0)
    y = _axis("mm", 1.0)
    z = _axis("mm", 2.0, 0.1)


class SimCondenser(SimStage):
    """Capillary condenser stage (mm); the simulation keeps it aligned."""

    x = _axis("mm", 1.0)
    y = _axis("mm", 1.0)
    z = _axis("mm", 1.0)


class SimDetectorStage(SimStage):
    """Detector stage: ``z`` is the sample → detector distance (mm)."""

    z = _axis("mm", 20.0, 0.2)


class SimSampleStage(SimStage):
    """Sample stage: ``x``, ``y``, ``z`` in µm, rotation ``r`` in degrees about the vertical axis."""

    x = _axis("um", 500.0, 0.2)
    y = _axis("um", 500.0, 0.2)
    z = _axis("um", 500.0, 0.2)
    r = Cpt(SimRotationAxis, clock=None, speed=30.0, accel_s=0.5, egu="deg", value=0.0)


class SimShutter(SoftShutter):
    """Photon shutter; opening or closing takes a fraction of a second."""

    def __init__(self, *args, clock: SimClock, **kwargs):
        super().__init__(*args, **kwargs)
        self.clock = clock

    def set(self, value):
        if value != self.state.get():
            self.clock.schedule(0.5)
        return super().set(value)


class SimTXMDetector(Device):
    """Area detector of the simulated TXM, writing frames to HDF5.

    On ``trigger`` it reads where every motor is, asks the physics model for the frame
    (drift, focus, illumination, noise), appends it to the run's HDF5 file under the
    current ``frame_type`` and queues the ``stream_resource``/``stream_datum`` documents
    that reference it. The frame itself never travels in an event.

    Parameters
    ----------
    model : simulators.model.SimTXM
        The physics.
    data_dir : Path
        Where the run's HDF5 files go (a folder the Tiled server may read).
    energy, zone_plate, detector_stage, sample_stage, shutter
        The devices whose positions define the frame.
    clock : SimClock
    """

    exposure_time = Cpt(Signal, value=0.05, kind="config")
    frame_type = Cpt(Signal, value="sample", kind="config")
    mean_counts = Cpt(Signal, value=0.0, kind="hinted")
    pixel_size_nm = Cpt(Signal, value=0.0, kind="config")
    magnification = Cpt(Signal, value=0.0, kind="config")
    binning = Cpt(SignalRO, value=1, kind="config")

    readout_s = 0.02  # camera readout, s (Andor Neo / Kinetix class)

    def __init__(self, *args, model, data_dir, energy, zone_plate, detector_stage, sample_stage, shutter,
                 clock: SimClock, **kwargs):
        super().__init__(*args, **kwargs)
        self.model = model
        self.data_dir = Path(data_dir)
        self.energy = energy
        self.zone_plate = zone_plate
        self.detector_stage = detector_stage
        self.sample_stage = sample_stage
        self.shutter = shutter
        self.clock = clock
        self._file: HDF5FrameFile | None = None
        self._rewrite: set[str] = set()  # frame types whose last row a re-take overwrites
        self.pixel_size_nm.put(float(model.pixel_size_nm))
        self.binning._readback = int(model.binning)  # fixed by the model's image shape
        self.magnification.put(float(model.config.optics.magnification))
        #: Ground truth of every row written, in order: dicts with frame_type, index, truth
        #: (a row overwritten by a re-take holds the re-take's truth).
        self.truth_log: list[dict] = []
        #: Rows overwritten by frames re-taken after a pause or suspension.
        self.n_rewritten = 0

    @property
    def image_key(self) -> str:
        return f"{self.name}_image"

    @property
    def frame_shape(self) -> tuple[int, int]:
        return tuple(self.model.config.shape)

    @property
    def file_path(self) -> Path | None:
        return None if self._file is None else self._file.path

    def stage(self):
        self._file = HDF5FrameFile(self.data_dir, self.image_key, self.frame_shape)
        self.truth_log = []
        self.n_rewritten = 0
        self._rewrite = set()
        return super().stage()

    def pause(self):
        """The RunEngine is pausing or suspending: note frames whose event was dropped.

        The RunEngine will re-take them from the last checkpoint; each re-take overwrites
        its dropped first take, so the file holds one row per emitted event (Tiled
        reads rows ``0 … n-1`` of the dataset as the stream's frames).
        """
        super().pause()
        if self._file is not None:
            self._rewrite = {t for t in FRAME_TYPES if self._file.last_dropped(t)}

    def unstage(self):
        try:
            return super().unstage()
        finally:
            if self._file is not None:
                self._file.close()
                self._file = None

    def describe(self):
        description = super().describe()
        description[self.image_key] = {
            "source": f"SIM:{self.name}",
            "shape": list(self.frame_shape),
            "dtype": "array",
            "dtype_numpy": np.dtype(np.uint16).str,
            "external": "STREAM:",
        }
        return description

    def trigger(self):
        if self._file is None:
            raise RuntimeError(f"{self.name} must be staged before it is triggered (no file is open)")
        frame_type = self.frame_type.get()
        if frame_type not in FRAME_TYPES:
            raise ValueError(f"{self.name}.frame_type must be one of {FRAME_TYPES}, got {frame_type!r}")
        exposure_s = float(self.exposure_time.get())
        start_s = self.clock.settle()
        theta_deg = self._rotation_deg(start_s + 0.5 * exposure_s)
        frame = self.model.acquire(
            energy_ev=float(self.energy.position),
            zp_z_mm=float(self.zone_plate.z.position),
            det_z_mm=float(self.detector_stage.z.position),
            sample_x_um=float(self.sample_stage.x.position),
            sample_y_um=float(self.sample_stage.y.position),
            theta_rad=math.radians(theta_deg),
            shutter_open=bool(self.shutter.is_open),
            exposure_s=exposure_s,
            time_s=start_s,
        )
        self.clock.advance(exposure_s + self.readout_s)
        self._record(frame_type, frame)
        self.mean_counts.put(float(frame.image.mean()))

        status = DeviceStatus(self)
        wait_s = self.clock.wait_time(exposure_s + self.readout_s)
        if wait_s > 0:
            threading.Timer(wait_s, status.set_finished).start()
        else:
            status.set_finished()
        return status

    def _rotation_deg(self, t_s: float) -> float:
        """The rotation stage's angle at simulated time ``t_s`` (mid-exposure), degrees:
        during a fly the stage turns while the frame is exposed."""
        rotation = self.sample_stage.r
        position_at = getattr(rotation, "position_at", None)
        return float(position_at(t_s)) if position_at is not None else float(rotation.position)

    def _record(self, frame_type, frame) -> None:
        rewrite = frame_type in self._rewrite
        self._rewrite.discard(frame_type)
        index = self._file.append(frame_type, frame.image, replace_last=rewrite)
        entry = {"frame_type": frame_type, "index": index, "truth": frame.truth}
        if rewrite:
            self.n_rewritten += 1
            self.truth_log = [e for e in self.truth_log if (e["frame_type"], e["index"]) != (frame_type, index)]
        self.truth_log.append(entry)

    def collect_asset_docs(self):
        if self._file is not None:
            yield from self._file.collect_asset_docs()

    def truth_for(self, frame_type: str) -> list:
        """Ground truth (``FrameTruth``) of this run's frames of one type, in file (row) order."""
        rows = sorted(((rec["index"], rec["truth"]) for rec in self.truth_log if rec["frame_type"] == frame_type),
                      key=lambda row: row[0])
        return [truth for _, truth in rows]


# ---------------------------------------------------------------------- potentiostat
class _SimModeSignal(Signal):
    """Writing a mode starts a step on the simulated cell; reads give the mode in force."""

    def put(self, value, **kwargs):
        self.parent._start_step(check_mode(self.name, value))


class _SimElapse(ElapseSignal):
    """Cell time passes on the simulated clock (instantly unless the clock is realistic)."""

    def _run(self, duration_s, status):
        wait_s = self.parent._elapse(duration_s)
        if wait_s > 0:
            threading.Timer(wait_s, status.set_finished).start()
        else:
            status.set_finished()


class _SimClearFault(Signal):
    def put(self, value, **kwargs):
        if value:
            self.parent._clear_fault()


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def _setting(value, kind="config") -> Cpt:
    return Cpt(Signal, value=value, kind=kind)


def _readback(value, kind="normal") -> Cpt:
    return Cpt(SignalRO, value=value, kind=kind)


class SimPotentiostat(Device):
    """A potentiostat on the simulated cell (:class:`simulators.electrochem.NMCCell`).

    Same components and behaviour as :class:`txm_live.devices.potentiostat.EpicsPotentiostat`
    (the protocol is documented there). The cell follows the shared :class:`SimClock`:
    every read, trigger and step start first brings the cell to the clock's time, and
    ``elapse`` advances the clock (hours in milliseconds). Readbacks update whenever the
    cell changes, including while the TXM detector takes frames of a sample fed by
    :meth:`sample_source`, so a suspender on ``fault`` trips in the middle of a scan.

    Parameters
    ----------
    cell : NMCCell
        The cell; build it with ``start_time_s=clock.now()``.
    clock : SimClock
    """

    mode = Cpt(_SimModeSignal, value="rest", kind="normal")
    current_setpoint_a = _setting(0.0)
    c_rate = Cpt(CRateSignal, derived_from="current_setpoint_a", kind="config")
    voltage_setpoint_v = _setting(4.3)
    voltage_max_v = _setting(4.3)
    voltage_min_v = _setting(3.0)
    current_limit_a = _setting(math.inf)
    end_current_a = _setting(0.0)
    on_limit = _setting("rest")
    nominal_capacity_mah = _setting(1.0)

    voltage_v = _readback(0.0, "hinted")
    current_a = _readback(0.0, "hinted")
    capacity_mah = _readback(0.0)
    time_s = _readback(0.0)
    step_time_s = _readback(0.0)
    limit_reached = _readback(0)
    fault = _readback(0)
    fault_message = _readback("ok")

    elapse = Cpt(_SimElapse, value=0.0, kind="omitted")
    clear_fault = Cpt(_SimClearFault, value=0, kind="omitted")

    def __init__(self, *args, cell, clock: SimClock, **kwargs):
        super().__init__(*args, **kwargs)
        self.cell = cell
        self.clock = clock
        self._t0_s = cell.time_s
        self.nominal_capacity_mah.put(float(cell.params.nominal_capacity_mah))
        cell.add_observer(self._publish)
        self._publish(cell.state())

    # -------------------------------------------------------------- cell → signals
    def _publish(self, state) -> None:
        values = {
            self.mode: state.mode, self.voltage_v: state.voltage_v, self.current_a: state.current_a,
            self.capacity_mah: state.capacity_mah, self.time_s: state.time_s - self._t0_s,
            self.step_time_s: state.step_time_s, self.limit_reached: int(state.limit_reached),
            self.fault: int(state.fault), self.fault_message: state.fault_message,
        }
        for signal, value in values.items():
            if not _same(signal.get(), value):  # subscribers (suspenders) hear changes only
                Signal.put(signal, value, force=True)

    def sync(self):
        """Bring the cell to the clock's present time; returns its :class:`CellState`."""
        return self.cell.advance_to(self.clock.now())

    def trigger(self):
        self.sync()
        status = DeviceStatus(self)
        status.set_finished()
        return status

    def read(self):
        self.sync()
        return super().read()

    # -------------------------------------------------------------- commands
    def _start_step(self, mode: str) -> None:
        self.sync()
        control = CellControl(
            mode=mode, current_a=float(self.current_setpoint_a.get()),
            voltage_v=float(self.voltage_setpoint_v.get()),
            voltage_max_v=float(self.voltage_max_v.get()), voltage_min_v=float(self.voltage_min_v.get()),
            current_limit_a=float(self.current_limit_a.get()), end_current_a=float(self.end_current_a.get()),
            on_limit=self.on_limit.get(),
        )
        self.cell.apply(control)

    def _elapse(self, duration_s: float) -> float:
        """Let ``duration_s`` of cell time pass (less if the step ends); returns real seconds to wait."""
        now = self.clock.settle()
        state = self.cell.advance_to(now)
        if state.limit_reached or state.fault:
            return 0.0
        state = self.cell.advance_to(now + duration_s, stop_on_step_end=True)
        passed = state.time_s - now
        self.clock.advance(passed)
        return self.clock.wait_time(passed)

    def _clear_fault(self) -> None:
        self.sync()
        self.cell.clear_fault()

    def inject_fault(self, kind: str, *, at_time_s: float | None = None) -> None:
        """Simulate a fault now or at clock time ``at_time_s`` ('disconnect', 'high_impedance')."""
        self.sync()
        self.cell.inject_fault(kind, at_time_s=at_time_s)

    def sample_source(self, base, *, soc_tolerance: float = 0.005) -> OperandoSample:
        """A ``SimTXM.sample_source`` showing ``base``'s particles in this cell's state."""
        return OperandoSample(self.cell, base, soc_tolerance=soc_tolerance)


def make_sim_potentiostat(model, clock: SimClock, *, params=None, inactive=None, initial_soc=0.0,
                          seed=0, soc_tolerance=0.005, name="pstat") -> SimPotentiostat:
    """A simulated potentiostat on a cell made of ``model``'s sample, feeding it back.

    The cell's visible particles are the phantom's (``model.sample``); the microscope then
    shows them in the cell's state at every frame (``model.sample_source``).

    Parameters
    ----------
    model : SimTXM
        The simulated microscope (e.g. ``make_sim_beamline(...).model``).
    clock : SimClock
        The beamline's clock; the cell starts at its present time.
    params, inactive, initial_soc, seed
        Passed to :class:`simulators.electrochem.NMCCell`.
    soc_tolerance : float
        See :class:`simulators.electrochem.OperandoSample`.
    name : str
        Device name (the profile's ``pstat``).
    """
    base = model.sample
    cell = NMCCell.from_phantom(base, params=params, inactive=inactive, initial_soc=initial_soc,
                                seed=seed, start_time_s=clock.now())
    device = SimPotentiostat(name=name, cell=cell, clock=clock)
    model.sample_source = device.sample_source(base, soc_tolerance=soc_tolerance)
    return device
