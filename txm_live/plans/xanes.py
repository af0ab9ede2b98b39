"""2D XANES: an image stack across an absorption edge, with darks and flats (FXI style).

Sequence (after FXI's ``xanes_scan2``): darks once with the shutter closed, then for each
energy — move the monochromator (zone plate and detector follow to stay in focus), take
``frames_per_energy`` sample frames, and every ``flat_every`` energies move the sample out,
take flats, move it back. Energies are scanned high → low by default, as at FXI, so the
sample sees the most absorbing (highest-dose) energies first, while it is freshest.

Built from :mod:`txm_live.plans.stubs`: every frame and every move is checkpointed, so a
pause or a suspender re-takes exactly what was in flight, and every event carries the
frame's label (``frame_type``, ``frame_energy_index``, ``frame_repeat``,
``frame_energy_ev``; :mod:`txm_live.devices.label`).

Streams: ``dark``, ``flat`` and ``primary`` (sample frames); each event carries the label,
the energy and the zone-plate/detector positions.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from bluesky import plan_stubs as bps
from bluesky import preprocessors as bpp

from txm_live.devices.label import make_frame_label

from . import stubs

SCAN_ORDERS = ("descending", "ascending", "as_given")
#: Start-document keys the plan measures or decides; a caller's ``md`` may not set them
#: (the analysis relies on them).
PLAN_KEYS = ("plan_name", "scan_type", "energies_ev", "num_energies", "frames_per_energy", "n_darks",
             "flats_per_energy", "flat_energy_indices", "scan_order", "sample_out_um", "num_points",
             "frame_label_keys")


def _validate_energies(energies_ev, energy) -> np.ndarray:
    try:
        values = np.asarray(energies_ev, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"energies_ev must be a sequence of numbers (eV), got {energies_ev!r}") from exc
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"energies_ev must be a non-empty 1-D sequence, got shape {values.shape}")
    bad = values[~np.isfinite(values)]
    if bad.size:
        raise ValueError(f"energies_ev contains non-finite values: {bad.tolist()}")
    if np.unique(values).size != values.size:
        uniq, counts = np.unique(values, return_counts=True)
        raise ValueError(f"energies_ev repeats energies {uniq[counts > 1].tolist()} eV")
    check = getattr(energy, "check_energy", None)
    if check is not None:
        for e in values:
            check(float(e))  # raises with the optics range in the message
    return values


def _order(values: np.ndarray, scan_order: str) -> np.ndarray:
    if scan_order not in SCAN_ORDERS:
        raise ValueError(f"scan_order must be one of {SCAN_ORDERS}, got {scan_order!r}")
    if scan_order == "descending":
        return np.sort(values)[::-1]
    if scan_order == "ascending":
        return np.sort(values)
    return values


def _positive_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer ≥ {minimum}, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class _Xanes2DArgs:
    """The validated arguments of one :func:`xanes_2d` call."""

    energies_ev: np.ndarray
    frames_per_energy: int
    n_darks: int
    flats_per_energy: int
    flat_every: int
    scan_order: str
    sample_out_um: tuple[float, float]
    exposure_s: float | None

    @property
    def flat_energy_indices(self) -> list[int]:
        n = len(self.energies_ev)
        return sorted({*range(0, n, self.flat_every), n - 1})


def _validate(energy, energies_ev, *, frames_per_energy, n_darks, flats_per_energy, flat_every,
              scan_order, sample_out_um, exposure_s, md) -> _Xanes2DArgs:
    values = _order(_validate_energies(energies_ev, energy), scan_order)
    try:
        out_x, out_y = (float(v) for v in sample_out_um)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"sample_out_um must be an (x, y) move in µm, got {sample_out_um!r}") from exc
    if not (math.isfinite(out_x) and math.isfinite(out_y)) or (out_x == 0 and out_y == 0):
        raise ValueError(f"sample_out_um must be a finite, non-zero (x, y) move in µm, got {sample_out_um!r}")
    if exposure_s is not None and not (math.isfinite(exposure_s) and exposure_s > 0):
        raise ValueError(f"exposure_s must be a positive number of seconds, got {exposure_s!r}")
    clashing = sorted(set(md or {}) & set(PLAN_KEYS))
    if clashing:
        raise ValueError(f"md may not set {clashing}: the plan records what it measures there")
    return _Xanes2DArgs(
        energies_ev=values,
        frames_per_energy=_positive_int("frames_per_energy", frames_per_energy, 1),
        n_darks=_positive_int("n_darks", n_darks, 0),
        flats_per_energy=_positive_int("flats_per_energy", flats_per_energy, 1),
        flat_every=_positive_int("flat_every", flat_every, 1),
        scan_order=scan_order, sample_out_um=(out_x, out_y), exposure_s=exposure_s,
    )


def _start_metadata(args: _Xanes2DArgs, detector, energy, motors, label, *, element, edge, md) -> dict:
    measured = {
        "plan_name": "xanes_2d",
        "scan_type": "xanes2d",
        "energies_ev": args.energies_ev.tolist(),
        "num_energies": int(args.energies_ev.size),
        "frames_per_energy": args.frames_per_energy,
        "n_darks": args.n_darks,
        "flats_per_energy": args.flats_per_energy,
        "flat_energy_indices": args.flat_energy_indices,
        "scan_order": args.scan_order,
        "sample_out_um": list(args.sample_out_um),
        "num_points": int(args.energies_ev.size * args.frames_per_energy),
        "frame_label_keys": {
            "frame_type": label.type.name, "energy_index": label.energy_index.name,
            "repeat": label.repeat.name, "energy_ev": label.energy_ev.name,
        },
    }
    _md = {
        "element": element,
        "edge": edge,
        "detectors": [detector.name],
        "motors": [m.name for m in motors],
        "plan_args": {
            "detector": repr(detector), "energy": repr(energy), "energies_ev": args.energies_ev.tolist(),
            "frames_per_energy": args.frames_per_energy, "n_darks": args.n_darks,
            "flats_per_energy": args.flats_per_energy, "flat_every": args.flat_every,
            "scan_order": args.scan_order, "sample_out_um": list(args.sample_out_um),
            "exposure_s": args.exposure_s,
        },
        "hints": {"dimensions": [([energy.name], "primary")]},
    }
    focus_mode = getattr(energy, "focus_mode", None)
    if focus_mode is not None:
        _md["focus_mode"] = focus_mode.get()
    optics = getattr(energy, "optics", None)
    if optics is not None:
        _md["magnification"] = float(optics.magnification)
    if hasattr(detector, "pixel_size_nm"):
        _md["pixel_size_nm"] = float(detector.pixel_size_nm.get())
    _md.update(md or {})
    _md.update(measured)  # what the plan measures wins (md may not set it: checked up front)
    return _md


def _energy_loop(args: _Xanes2DArgs, detector, energy, label, sample_stage, readables, sample_in_um):
    sample_out = (sample_in_um[0] + args.sample_out_um[0], sample_in_um[1] + args.sample_out_um[1])
    flat_indices = set(args.flat_energy_indices)
    for i, energy_ev in enumerate(args.energies_ev):
        yield from stubs.move_energy(energy, energy_ev)
        yield from stubs.acquire_frames(detector, label, args.frames_per_energy, frame_type="sample",
                                        energy_index=i, energy_ev=energy_ev, readables=readables)
        if i in flat_indices:
            yield from stubs.take_flats(detector, label, sample_stage, args.flats_per_energy,
                                        sample_in_um=sample_in_um, sample_out_um=sample_out,
                                        energy_index=i, energy_ev=energy_ev, readables=readables)


def xanes_2d(
    detector,
    energy,
    energies_ev: Sequence[float],
    *,
    shutter,
    sample_stage,
    sample_out_um: tuple[float, float] = (100.0, 0.0),
    frames_per_energy: int = 1,
    n_darks: int = 10,
    flats_per_energy: int = 1,
    flat_every: int = 1,
    scan_order: str = "descending",
    exposure_s: float | None = None,
    element: str = "Ni",
    edge: str = "K",
    md: dict | None = None,
):
    """Measure a 2D XANES image stack with darks and flats.

    Parameters
    ----------
    detector : area detector
        Writes frames to files; has ``frame_type`` ('dark' | 'flat' | 'sample'),
        ``exposure_time`` (s) and ``pixel_size_nm`` signals.
    energy : positioner
        Monochromator energy in eV; refocuses the zone plate and detector when set (see
        :class:`txm_live.devices.energy.FocusTrackingMixin`).
    energies_ev : sequence of float
        Energies to measure, eV (e.g. :func:`txm_live.energies.xanes_energy_list`).
    shutter : settable
        Photon shutter, set to 'open' / 'close'.
    sample_stage : device with ``x`` and ``y`` positioners (µm)
    sample_out_um : (float, float)
        Relative (x, y) move in µm that takes the sample out of the field of view for flats.
    frames_per_energy : int
        Sample frames per energy (≥ 1).
    n_darks : int
        Dark frames at the start, shutter closed (≥ 0).
    flats_per_energy : int
        Flat frames each time flats are taken (≥ 1).
    flat_every : int
        Take flats at every ``flat_every``-th energy (and at the last one); 1 = every energy.
    scan_order : {'descending', 'ascending', 'as_given'}
        Energy order; FXI scans high → low.
    exposure_s : float, optional
        Exposure per frame, s; the detector's current setting when omitted.
    element, edge : str
        Absorption edge being measured (recorded in the start document).
    md : dict, optional
        Extra metadata for the start document (sample, operator, ...). It may not set
        what the plan records about its own measurement (:data:`PLAN_KEYS`, e.g.
        ``energies_ev``): the analysis relies on those.

    Notes
    -----
    Every argument is checked before anything moves. Each frame and each move begins with
    a checkpoint (:mod:`txm_live.plans.stubs`), so pause/resume and suspenders re-take
    only what was in flight. On exit (normal, abort or failure) the sample is put back
    where it was and the shutter closed.
    """
    args = _validate(energy, energies_ev, frames_per_energy=frames_per_energy, n_darks=n_darks,
                     flats_per_energy=flats_per_energy, flat_every=flat_every, scan_order=scan_order,
                     sample_out_um=sample_out_um, exposure_s=exposure_s, md=md)
    label = make_frame_label()
    motors = [energy, energy.zone_plate_z, energy.detector_z] if hasattr(energy, "zone_plate_z") else [energy]
    _md = _start_metadata(args, detector, energy, motors, label, element=element, edge=edge, md=md)
    start_x = yield from bps.rd(sample_stage.x)
    start_y = yield from bps.rd(sample_stage.y)

    def measure():
        if args.exposure_s is not None:
            yield from bps.mv(detector.exposure_time, args.exposure_s)
        yield from stubs.take_darks(detector, label, shutter, args.n_darks, readables=motors)
        yield from stubs.set_shutter(shutter, "open")
        yield from _energy_loop(args, detector, energy, label, sample_stage, motors, (start_x, start_y))

    def cleanup():
        # Runs on success, abort and failure: sample back in place, beam off the sample.
        yield from bps.mv(detector.frame_type, "sample")
        yield from bps.mv(sample_stage.x, start_x, sample_stage.y, start_y)
        yield from bps.mv(shutter, "close")

    @bpp.stage_decorator([detector])
    @bpp.run_decorator(md=_md)
    def run():
        return (yield from bpp.finalize_wrapper(measure(), cleanup()))

    return (yield from run())
