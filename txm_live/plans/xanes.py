"""2D XANES: an image stack across an absorption edge, with darks and flats (FXI style).

Sequence (after FXI's ``xanes_scan2``): darks once with the shutter closed, then for each
energy — move the monochromator (zone plate and detector follow to stay in focus), take
``frames_per_energy`` sample frames, and every ``flat_every`` energies move the sample out,
take flats, move it back. Energies are scanned high → low by default, as at FXI, so the
sample sees the most absorbing (highest-dose) energies first, while it is freshest.

Streams: ``dark``, ``flat`` and ``primary`` (sample frames); each event carries the
energy and the zone-plate/detector positions.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from bluesky import plan_stubs as bps
from bluesky import preprocessors as bpp

SCAN_ORDERS = ("descending", "ascending", "as_given")


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
        Metadata that overrides the defaults in the start document.

    Notes
    -----
    Every argument is checked before anything moves. On exit (normal, abort or failure) the
    sample is put back where it was and the shutter closed.
    """
    values = _order(_validate_energies(energies_ev, energy), scan_order)
    frames_per_energy = _positive_int("frames_per_energy", frames_per_energy, 1)
    n_darks = _positive_int("n_darks", n_darks, 0)
    flats_per_energy = _positive_int("flats_per_energy", flats_per_energy, 1)
    flat_every = _positive_int("flat_every", flat_every, 1)
    out_x, out_y = (float(v) for v in sample_out_um)
    if not (math.isfinite(out_x) and math.isfinite(out_y)) or (out_x == 0 and out_y == 0):
        raise ValueError(f"sample_out_um must be a finite, non-zero (x, y) move in µm, got {sample_out_um!r}")
    if exposure_s is not None and not (math.isfinite(exposure_s) and exposure_s > 0):
        raise ValueError(f"exposure_s must be a positive number of seconds, got {exposure_s!r}")

    motors = [energy, energy.zone_plate_z, energy.detector_z] if hasattr(energy, "zone_plate_z") else [energy]
    readables = [detector, *motors]
    flat_indices = sorted({*range(0, len(values), flat_every), len(values) - 1})

    _md = {
        "plan_name": "xanes_2d",
        "scan_type": "xanes2d",
        "element": element,
        "edge": edge,
        "energies_ev": values.tolist(),
        "num_energies": int(values.size),
        "frames_per_energy": frames_per_energy,
        "n_darks": n_darks,
        "flats_per_energy": flats_per_energy,
        "flat_energy_indices": flat_indices,
        "scan_order": scan_order,
        "sample_out_um": [out_x, out_y],
        "detectors": [detector.name],
        "motors": [m.name for m in motors],
        "num_points": int(values.size * frames_per_energy),
        "plan_args": {
            "detector": repr(detector),
            "energy": repr(energy),
            "energies_ev": values.tolist(),
            "frames_per_energy": frames_per_energy,
            "n_darks": n_darks,
            "flats_per_energy": flats_per_energy,
            "flat_every": flat_every,
            "scan_order": scan_order,
            "sample_out_um": [out_x, out_y],
            "exposure_s": exposure_s,
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

    def take(frame_type: str, stream: str, n: int):
        yield from bps.mv(detector.frame_type, frame_type)
        for _ in range(n):
            yield from bps.trigger_and_read(readables, name=stream)

    def inner(start_x, start_y):
        if exposure_s is not None:
            yield from bps.mv(detector.exposure_time, exposure_s)
        if n_darks:
            yield from bps.mv(shutter, "close")
            yield from take("dark", "dark", n_darks)
        yield from bps.mv(shutter, "open")
        for i, e in enumerate(values):
            yield from bps.mv(energy, float(e))
            yield from take("sample", "primary", frames_per_energy)
            if i in flat_indices:
                yield from bps.mv(sample_stage.x, start_x + out_x, sample_stage.y, start_y + out_y)
                yield from take("flat", "flat", flats_per_energy)
                yield from bps.mv(sample_stage.x, start_x, sample_stage.y, start_y)

    def cleanup(start_x, start_y):
        # Runs on success, abort and failure: sample back in place, beam off the sample.
        yield from bps.mv(detector.frame_type, "sample")
        yield from bps.mv(sample_stage.x, start_x, sample_stage.y, start_y)
        yield from bps.mv(shutter, "close")

    start_x = yield from bps.rd(sample_stage.x)
    start_y = yield from bps.rd(sample_stage.y)

    @bpp.stage_decorator([detector])
    @bpp.run_decorator(md=_md)
    def run():
        return (yield from bpp.finalize_wrapper(inner(start_x, start_y), cleanup(start_x, start_y)))

    return (yield from run())
