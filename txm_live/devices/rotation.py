"""The rotation stage in a fly scan, and the angle every projection records.

Fly scans (FXI's ``fly_scan``): the stage is moved to a taxi position before the start
angle, given the scan's angular velocity, then sent to the end angle *without waiting*
while the camera takes frames. Two pieces make that a device protocol that simulated and
EPICS stages share:

:class:`FlyRotationInfo` / :class:`FlyableRotationMixin`
    ``prepare(FlyRotationInfo(start_deg, end_deg, velocity_deg_s))`` (bluesky's
    ``Preparable``: ``bps.prepare(rotation, info, wait=True)``) moves the stage to
    ``start_deg`` at its own velocity and then sets ``velocity`` (deg/s) to the scan's; the
    plan then starts the move with ``bps.abs_set(rotation, end_deg, group=...)`` and waits
    for it after the last frame. The mixin works on any ophyd positioner with a
    ``velocity`` signal (``ophyd.EpicsMotor``: the motor record's VELO). A simulated stage
    additionally learns from ``prepare`` that the next move is a fly: its simulated clock
    must not wait for it before each frame (:class:`simulators.devices.SimRotationAxis`).

:class:`FrameAngleSignal`
    ``theta_rad`` of each projection, read in the projection's event, from the stage's
    *readback* when the frame is triggered and again when it is read, in radians. Listed
    before the detector in ``trigger_and_read`` (the plan stubs do that:
    :func:`txm_live.plans.stubs.acquire_projection`), its trigger is the start of the
    exposure and its read follows the end of the frame (exposure + readout). Given the
    detector, the angle is interpolated to mid-exposure between the two readbacks
    (constant velocity over one frame: ``start + (end − start) · exposure / (2 (exposure
    + readout))``, the detector's ``exposure_time`` and ``readout_s``); without it, the
    midpoint of the two (``velocity × readout / 2`` late: 0.03° at FXI's 3°/s and a
    20 ms readout). At rest (step scans) it is the readback. Never an angle assumed from
    a linspace.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass

from ophyd.signal import SignalRO
from ophyd.status import DeviceStatus, Status

__all__ = ["FlyRotationInfo", "FlyableRotationMixin", "FrameAngleSignal", "THETA_KEY"]

#: Event data key of the projection angle in radians (the export contract's ``theta_rad``).
THETA_KEY = "theta_rad"


@dataclass(frozen=True)
class FlyRotationInfo:
    """What a fly rotation does: from ``start_deg`` to ``end_deg`` at ``velocity_deg_s``.

    Attributes
    ----------
    start_deg, end_deg : float
        Stage positions, degrees (the taxi positions, outside the scanned range by the
        distance the stage needs to reach its velocity).
    velocity_deg_s : float
        Angular velocity of the move to ``end_deg``, deg/s (> 0).
    """

    start_deg: float
    end_deg: float
    velocity_deg_s: float

    def __post_init__(self):
        for name in ("start_deg", "end_deg", "velocity_deg_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number; got {value!r}")
        if not self.velocity_deg_s > 0:
            raise ValueError(f"velocity_deg_s must be > 0; got {self.velocity_deg_s!r}")
        if self.start_deg == self.end_deg:
            raise ValueError(f"a fly rotation needs end_deg != start_deg; got {self.start_deg} both")


class FlyableRotationMixin:
    """``prepare(FlyRotationInfo)`` for a positioner with a ``velocity`` signal.

    Moves to ``info.start_deg`` (at the velocity in force), then sets ``velocity`` to
    ``info.velocity_deg_s``; the returned status finishes when both are done. Mix in
    before the positioner class, e.g. ``class FlyableEpicsMotor(FlyableRotationMixin,
    EpicsMotor)``.
    """

    def prepare(self, value: FlyRotationInfo) -> DeviceStatus:
        if not isinstance(value, FlyRotationInfo):
            raise TypeError(f"{self.name}.prepare takes a FlyRotationInfo; got {value!r}")
        status = DeviceStatus(self)

        def velocity_set(st):
            if st.success:
                status.set_finished()
            else:
                status.set_exception(st.exception() or RuntimeError(f"{self.name}: velocity not set"))

        def arrived(st):
            if not st.success:
                status.set_exception(st.exception() or RuntimeError(f"{self.name}: move to start failed"))
                return
            self.velocity.set(float(value.velocity_deg_s)).add_callback(velocity_set)

        self.set(float(value.start_deg)).add_callback(arrived)
        return status


class FrameAngleSignal(SignalRO):
    """``theta_rad`` of a frame from a rotation stage's readback (see the module docstring).

    Parameters
    ----------
    rotation : positioner
        The rotation stage, degrees; its ``position`` is its readback.
    detector : device, optional
        The camera whose frames the angles belong to: its ``exposure_time`` (s) and
        ``readout_s`` (s, 0 when it has none) place the angle at mid-exposure.
    name : str
        Data key; :data:`THETA_KEY` by default.
    """

    def __init__(self, rotation, *, detector=None, name: str = THETA_KEY, **kwargs):
        super().__init__(name=name, value=math.nan, **kwargs)
        self._rotation = rotation
        self._detector = detector
        self._start_deg: float | None = None
        self._lock = threading.Lock()

    def _readback_deg(self) -> float:
        return float(self._rotation.position)

    def _mid_exposure_fraction(self) -> float:
        """Where mid-exposure falls between the trigger and the read (0 … 1)."""
        if self._detector is None or not hasattr(self._detector, "exposure_time"):
            return 0.5
        exposure_s = float(self._detector.exposure_time.get())
        readout_s = float(getattr(self._detector, "readout_s", 0.0) or 0.0)
        period_s = exposure_s + readout_s
        return 0.5 * exposure_s / period_s if period_s > 0 else 0.5

    def trigger(self):
        with self._lock:
            self._start_deg = self._readback_deg()
        status = Status(self)
        status.set_finished()
        return status

    def get(self, **kwargs):
        end = self._readback_deg()
        with self._lock:
            start = end if self._start_deg is None else self._start_deg
        self._readback = math.radians(start + (end - start) * self._mid_exposure_fraction())
        return self._readback

    def describe(self):
        description = super().describe()
        description[self.name].update(units="rad", precision=9)
        return description
