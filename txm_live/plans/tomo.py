"""Tomography: fly scans (continuous rotation) and step scans (FXI style).

Sequence (after FXI's ``fly_scan``): darks with the shutter closed, flats with the sample
moved out (before and/or after the rotation), and the projections with the sample in the
beam while it rotates. Every projection's angle is read from the rotation stage's
readback in its own event (``theta_rad``, radians; :class:`~txm_live.devices.rotation.
FrameAngleSignal`), never assumed from a linspace.

:func:`tomo_fly`
    The stage is taken to a taxi position ``taxi_deg`` before the start angle, given the
    scan's angular velocity (``prepare(FlyRotationInfo)``, the positioner's ``velocity``
    and ``acceleration`` as an EPICS motor record's VELO/ACCL), and sent to ``taxi_deg``
    past the end angle without waiting; the camera takes frames back to back (exposure +
    readout) for as long as the move lasts. The frames taken while the stage speeds up
    and slows down are kept: their angles are recorded like the others, and the
    reconstruction weights every angle by its spacing. A pause during the rotation
    re-takes the whole rotation (one checkpoint before it): every projection keeps its
    label (``repeat`` = its index), so the re-taken ones replace the first takes.
:func:`tomo_step`
    Move, settle, expose at each angle; each projection checkpointed with its move.

Labels (:mod:`txm_live.devices.label`): darks ``('dark', -1, k)``, flats ``('flat', 0, k)``
(numbered on across the groups before and after), projections ``('sample', 0, index)``.
Streams ``dark``, ``flat`` and ``primary``. The start document says ``scan_type='tomo'``,
``energy_ev`` (and ``energies_ev = [energy_ev]``, the label's energy index 0), the
planned number of projections, the angles, exposure and the flats/darks counts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from bluesky import plan_stubs as bps
from bluesky import preprocessors as bpp

from txm_live.analysis import MIN_ANGLES
from txm_live.devices.label import make_frame_label
from txm_live.devices.rotation import THETA_KEY, FlyRotationInfo, FrameAngleSignal

from . import stubs

__all__ = ["tomo_fly", "tomo_step", "FLATS_WHEN", "TOMO_PLAN_KEYS"]

FLATS_WHEN = ("before", "after", "both")
#: The half turn a parallel-beam scan must cover, degrees.
HALF_TURN_DEG = 180.0
#: Extra taxi beyond the distance the stage needs to reach its velocity (fraction of it).
TAXI_MARGIN = 0.1
#: Start-document keys the plans measure or decide; a caller's ``md`` may not set them.
TOMO_PLAN_KEYS = ("plan_name", "scan_type", "energy_ev", "energies_ev", "num_points", "n_projections",
                  "angle_range_deg", "n_darks", "n_flats", "flats_when", "sample_out_um", "exposure_s",
                  "frame_label_keys", "theta_key", "rotation", "velocity_deg_s", "fly_range_deg")
#: The energy index every frame of a tomography scan carries (its one energy).
TOMO_ENERGY_INDEX = 0


def _int_at_least(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _positive(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a positive number, got {value!r}") from exc
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return v


@dataclass(frozen=True)
class _TomoArgs:
    """Validated arguments shared by both plans."""

    start_deg: float
    end_deg: float
    n_darks: int
    n_flats: int
    flats_when: str
    sample_out_um: tuple[float, float]
    exposure_s: float

    @property
    def range_deg(self) -> float:
        return self.end_deg - self.start_deg


def _validate_common(detector, angle_range_deg, *, n_darks, n_flats, flats_when, sample_out_um,
                     exposure_s, md) -> _TomoArgs:
    try:
        start_deg, end_deg = (float(v) for v in angle_range_deg)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"angle_range_deg must be (start, end) in degrees, got {angle_range_deg!r}") from exc
    if not (math.isfinite(start_deg) and math.isfinite(end_deg)):
        raise ValueError(f"angle_range_deg must be finite, got {angle_range_deg!r}")
    if end_deg - start_deg < HALF_TURN_DEG:
        raise ValueError(f"angle_range_deg {angle_range_deg!r} covers {end_deg - start_deg:g}°: a parallel-beam "
                         f"tomography needs at least a half turn ({HALF_TURN_DEG:g}°, end > start)")
    if flats_when not in FLATS_WHEN:
        raise ValueError(f"flats_when must be one of {FLATS_WHEN}, got {flats_when!r}")
    try:
        out_x, out_y = (float(v) for v in sample_out_um)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"sample_out_um must be an (x, y) move in µm, got {sample_out_um!r}") from exc
    if not (math.isfinite(out_x) and math.isfinite(out_y)) or (out_x == 0 and out_y == 0):
        raise ValueError(f"sample_out_um must be a finite, non-zero (x, y) move in µm, got {sample_out_um!r}")
    exposure = float(detector.exposure_time.get()) if exposure_s is None else _positive("exposure_s", exposure_s)
    clashing = sorted(set(md or {}) & set(TOMO_PLAN_KEYS))
    if clashing:
        raise ValueError(f"md may not set {clashing}: the plan records what it measures there")
    return _TomoArgs(start_deg, end_deg, _int_at_least("n_darks", n_darks, 1),
                     _int_at_least("n_flats", n_flats, 1), flats_when, (out_x, out_y), exposure)


def _frame_period_s(detector, exposure_s: float) -> float:
    """Exposure plus the camera's readout (``detector.readout_s``, 0 if it has none)."""
    return exposure_s + float(getattr(detector, "readout_s", 0.0) or 0.0)


def _start_metadata(plan_name, args: _TomoArgs, detector, rotation, label, *, energy_ev, n_projections,
                    plan_args, extra, md) -> dict:
    measured = {
        "plan_name": plan_name, "scan_type": "tomo", "energy_ev": energy_ev,
        "energies_ev": [energy_ev] if energy_ev is not None else [],
        "num_points": int(n_projections), "n_projections": int(n_projections),
        "angle_range_deg": [args.start_deg, args.end_deg], "n_darks": args.n_darks, "n_flats": args.n_flats,
        "flats_when": args.flats_when, "sample_out_um": list(args.sample_out_um), "exposure_s": args.exposure_s,
        "theta_key": THETA_KEY, "rotation": rotation.name,
        "frame_label_keys": {"frame_type": label.type.name, "energy_index": label.energy_index.name,
                             "repeat": label.repeat.name, "energy_ev": label.energy_ev.name},
        **extra,
    }
    _md = {"detectors": [detector.name], "motors": [rotation.name], "plan_args": plan_args,
           "hints": {"dimensions": [([THETA_KEY], "primary")]}}
    for key, attr in (("pixel_size_nm", "pixel_size_nm"), ("magnification", "magnification"),
                      ("binning", "binning")):
        if hasattr(detector, attr):
            _md[key] = getattr(detector, attr).get()
    _md.update(md or {})
    _md.update(measured)  # what the plan measures wins (md may not set it: checked up front)
    return _md


def _calibration(args: _TomoArgs, detector, label, shutter, sample_stage, sample_in, energy_ev, *, when):
    """Darks (``when='before'``, shutter closed, then opened) and the flats due ``when``."""
    energy_ev = math.nan if energy_ev is None else energy_ev
    if when == "before":
        yield from stubs.take_darks(detector, label, shutter, args.n_darks)
        yield from stubs.set_shutter(shutter, "open")
    if args.flats_when in (when, "both"):
        first = args.n_flats if (when == "after" and args.flats_when == "both") else 0
        sample_out = (sample_in[0] + args.sample_out_um[0], sample_in[1] + args.sample_out_um[1])
        yield from stubs.take_flats(detector, label, sample_stage, args.n_flats, sample_in_um=sample_in,
                                    sample_out_um=sample_out, energy_index=TOMO_ENERGY_INDEX,
                                    energy_ev=energy_ev, first_repeat=first)


def _run_tomo(plan_name, args, detector, rotation, *, shutter, sample_stage, energy, label, angle, md_extra,
              plan_args, n_projections, md, rotation_plan, velocity_restore=False, move_energy_ev=None,
              readables=()):
    """Shared skeleton: metadata, stage/run decorators, darks/flats, rotation, cleanup.

    ``move_energy_ev``: move ``energy`` there (focus tracking is the device's) as the
    run's first step, and record it as the run's energy (3D XANES: one run per energy);
    otherwise ``energy`` is only read. ``readables``: also read with every frame.
    """
    if move_energy_ev is not None:
        energy_ev = float(move_energy_ev)
    else:
        energy_ev = None if energy is None else float((yield from bps.rd(energy)))
    _md = _start_metadata(plan_name, args, detector, rotation, label, energy_ev=energy_ev,
                          n_projections=n_projections, plan_args=plan_args, extra=md_extra, md=md)
    start_x = yield from bps.rd(sample_stage.x)
    start_y = yield from bps.rd(sample_stage.y)
    start_r = yield from bps.rd(rotation)
    velocity0 = (yield from bps.rd(rotation.velocity)) if velocity_restore else None
    sample_in = (start_x, start_y)
    readables = [rotation] + ([energy] if energy is not None else []) + list(readables)

    def measure():
        if move_energy_ev is not None:
            yield from stubs.move_energy(energy, energy_ev)
        yield from bps.mv(detector.exposure_time, args.exposure_s)
        yield from _calibration(args, detector, label, shutter, sample_stage, sample_in, energy_ev, when="before")
        yield from rotation_plan(energy_ev=math.nan if energy_ev is None else energy_ev, readables=readables)
        yield from _calibration(args, detector, label, shutter, sample_stage, sample_in, energy_ev, when="after")

    def cleanup():
        # Runs on success, abort and failure: beam off, sample back, stage where it was.
        yield from bps.mv(shutter, "close")
        yield from bps.mv(detector.frame_type, "sample")
        yield from bps.mv(sample_stage.x, start_x, sample_stage.y, start_y)
        if velocity0 is not None:
            yield from bps.mv(rotation.velocity, velocity0)
        yield from bps.mv(rotation, start_r)

    @bpp.stage_decorator([detector])
    @bpp.run_decorator(md=_md)
    def run():
        return (yield from bpp.finalize_wrapper(measure(), cleanup()))

    return (yield from run())


def _fly_geometry(args: _TomoArgs, rotation, period_s, *, n_projections, velocity_deg_s):
    """Velocity (deg/s), taxi (deg) and the number of frames the move lasts."""
    if (n_projections is None) == (velocity_deg_s is None):
        raise ValueError(f"give exactly one of n_projections and velocity_deg_s; got {n_projections!r} and "
                         f"{velocity_deg_s!r}")
    if n_projections is not None:
        n = _int_at_least("n_projections", n_projections, MIN_ANGLES)
        velocity = args.range_deg / (n * period_s)
    else:
        velocity = _positive("velocity_deg_s", velocity_deg_s)
        n = int(args.range_deg / (velocity * period_s))
        if n < MIN_ANGLES:
            raise ValueError(f"velocity_deg_s={velocity:g} gives {n} projections over {args.range_deg:g}° at "
                             f"{period_s:g} s per frame; at least {MIN_ANGLES} are needed")
    accel_s = float(rotation.acceleration.get()) if hasattr(rotation, "acceleration") else 0.0
    taxi_deg = 0.5 * velocity * accel_s * (1.0 + TAXI_MARGIN)
    duration_s = (args.range_deg + 2 * taxi_deg) / velocity + accel_s  # trapezoidal move
    n_frames = int(math.ceil(duration_s / period_s))
    return velocity, taxi_deg, n_frames


@dataclass(frozen=True)
class FlyRotation:
    """One fly rotation's plan, decided up front (:func:`fly_rotation`).

    ``rotate(*, energy_ev, readables)`` is the rotation plan :func:`_run_tomo` runs; it
    takes ``n_frames`` labelled projections; ``metadata`` is what the start document
    records about it (velocity, the taxi range).
    """

    info: FlyRotationInfo
    n_frames: int
    label: object
    angle: object
    rotate: object
    metadata: dict


def fly_rotation(args: _TomoArgs, detector, rotation, *, n_projections=None, velocity_deg_s=None) -> FlyRotation:
    """Validate the fly geometry and build the rotation plan (shared by :func:`tomo_fly`
    and :func:`txm_live.plans.xanes_3d`, which repeats it at every energy)."""
    period_s = _frame_period_s(detector, args.exposure_s)
    velocity, taxi_deg, n_frames = _fly_geometry(args, rotation, period_s, n_projections=n_projections,
                                                 velocity_deg_s=velocity_deg_s)
    info = FlyRotationInfo(args.start_deg - taxi_deg, args.end_deg + taxi_deg, velocity)
    label = make_frame_label()
    angle = FrameAngleSignal(rotation, detector=detector)

    def rotate(*, energy_ev, readables):
        yield from bps.checkpoint()  # a pause re-takes the whole rotation
        yield from bps.prepare(rotation, info, wait=True)
        yield from bps.abs_set(rotation, info.end_deg, group="fly")
        for index in range(n_frames):
            yield from stubs.acquire_projection(detector, label, angle, index=index,
                                                energy_index=TOMO_ENERGY_INDEX, energy_ev=energy_ev,
                                                readables=readables, checkpoint=False)
        yield from bps.wait(group="fly")

    return FlyRotation(info=info, n_frames=n_frames, label=label, angle=angle, rotate=rotate,
                       metadata={"velocity_deg_s": velocity, "fly_range_deg": [info.start_deg, info.end_deg]})


def tomo_fly(detector, rotation, *, shutter, sample_stage, energy=None,
             angle_range_deg: tuple[float, float] = (0.0, 180.0), n_projections: int | None = None,
             velocity_deg_s: float | None = None, exposure_s: float | None = None, n_darks: int = 20,
             n_flats: int = 20, flats_when: str = "after", sample_out_um: tuple[float, float] = (100.0, 0.0),
             md: dict | None = None):
    """Fly-scan tomography: continuous rotation with the camera taking frames back to back.

    Parameters
    ----------
    detector : area detector
        Writes frames to files; ``frame_type``, ``exposure_time`` (s); ``readout_s`` (s)
        when the camera has dead time between frames; ``pixel_size_nm``, ``binning``
        recorded when present.
    rotation : positioner (deg) with ``velocity`` (deg/s) and ``prepare(FlyRotationInfo)``
        (:class:`~txm_live.devices.rotation.FlyableRotationMixin`); ``acceleration`` (s to
        full speed) when present sets the taxi.
    shutter, sample_stage
        As for :func:`~txm_live.plans.xanes_2d`.
    energy : positioner, optional
        Read once and recorded (``energy_ev``); the scan does not move it.
    angle_range_deg : (float, float)
        Start and end of the rotation, degrees; at least a half turn.
    n_projections, velocity_deg_s : int or float
        Exactly one: projections over ``angle_range_deg`` (the velocity follows from the
        frame period) or the angular velocity, deg/s (the number follows). Frames taken
        while the stage speeds up and slows down beyond the range are kept (their angles
        are read like all others), so the scan records a few more.
    exposure_s : float, optional
        Exposure per frame, s; the detector's setting when omitted.
    n_darks, n_flats : int
        Darks (shutter closed, first) and flats per group (>= 1 each).
    flats_when : {'after', 'before', 'both'}
        When the flats are taken (FXI: after).
    sample_out_um : (float, float)
        Relative (x, y) move of the sample stage for flats, µm.
    md : dict, optional
        Extra start-document metadata; it may not set :data:`TOMO_PLAN_KEYS`.

    Notes
    -----
    Every argument is checked before anything moves. On exit (success, abort, failure)
    the shutter is closed, the sample put back and the stage returned to its velocity
    and angle.
    """
    args = _validate_common(detector, angle_range_deg, n_darks=n_darks, n_flats=n_flats, flats_when=flats_when,
                            sample_out_um=sample_out_um, exposure_s=exposure_s, md=md)
    fly = fly_rotation(args, detector, rotation, n_projections=n_projections, velocity_deg_s=velocity_deg_s)
    plan_args = {"detector": repr(detector), "rotation": repr(rotation), "angle_range_deg": list(angle_range_deg),
                 "n_projections": n_projections, "velocity_deg_s": velocity_deg_s, "exposure_s": exposure_s,
                 "n_darks": n_darks, "n_flats": n_flats, "flats_when": flats_when,
                 "sample_out_um": list(sample_out_um)}
    return (yield from _run_tomo("tomo_fly", args, detector, rotation, shutter=shutter, sample_stage=sample_stage,
                                 energy=energy, label=fly.label, angle=fly.angle, md_extra=fly.metadata,
                                 plan_args=plan_args, n_projections=fly.n_frames, md=md, rotation_plan=fly.rotate,
                                 velocity_restore=True))


def tomo_step(detector, rotation, *, shutter, sample_stage, energy=None,
              angle_range_deg: tuple[float, float] = (0.0, 180.0), n_projections: int = 181,
              exposure_s: float | None = None, n_darks: int = 20, n_flats: int = 20, flats_when: str = "after",
              sample_out_um: tuple[float, float] = (100.0, 0.0), md: dict | None = None):
    """Step-scan tomography: move, settle and expose at ``n_projections`` angles.

    The angles run from start to end inclusive (as FXI's step scans); each one's
    ``theta_rad`` is the stage's readback at rest. Arguments as :func:`tomo_fly`.
    """
    args = _validate_common(detector, angle_range_deg, n_darks=n_darks, n_flats=n_flats, flats_when=flats_when,
                            sample_out_um=sample_out_um, exposure_s=exposure_s, md=md)
    n = _int_at_least("n_projections", n_projections, MIN_ANGLES)
    targets = np.linspace(args.start_deg, args.end_deg, n)
    label = make_frame_label()
    angle = FrameAngleSignal(rotation, detector=detector)

    def rotate(*, energy_ev, readables):
        for index, target in enumerate(targets):
            yield from bps.checkpoint()  # the move and its frame are re-done together
            yield from bps.mv(rotation, float(target))
            yield from stubs.acquire_projection(detector, label, angle, index=index,
                                                energy_index=TOMO_ENERGY_INDEX, energy_ev=energy_ev,
                                                readables=readables, checkpoint=False)

    plan_args = {"detector": repr(detector), "rotation": repr(rotation), "angle_range_deg": list(angle_range_deg),
                 "n_projections": n_projections, "exposure_s": exposure_s, "n_darks": n_darks, "n_flats": n_flats,
                 "flats_when": flats_when, "sample_out_um": list(sample_out_um)}
    return (yield from _run_tomo("tomo_step", args, detector, rotation, shutter=shutter, sample_stage=sample_stage,
                                 energy=energy, label=label, angle=angle, md_extra={}, plan_args=plan_args,
                                 n_projections=n, md=md, rotation_plan=rotate))
