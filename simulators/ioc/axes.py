"""The simulated beamline's axes: units, speeds, settling times, limits and PV names.

Speeds and settling times are those of the simulated ophyd devices
(:mod:`simulators.beamline`, :mod:`simulators.devices`), so a plan run against the IOC
spends the same *beamline* time per move as against the simulated devices, and the
sample drifts the same way (``tests/test_epics_ioc.py`` checks the two tables agree).
"""
from __future__ import annotations

from dataclasses import dataclass

from txm_live.devices.pv_names import STAGE_AXES, TXMPrefixes

__all__ = ["AxisSpec", "BEAMLINE_AXES", "axis_pv_prefixes", "SHUTTER_MOVE_S", "READOUT_S"]

#: Time a photon shutter takes to open or close, s of beamline time (as ``SimShutter``).
SHUTTER_MOVE_S = 0.5
#: Camera readout after each exposure, s of beamline time (as ``SimTXMDetector.readout_s``).
READOUT_S = 0.02


@dataclass(frozen=True)
class AxisSpec:
    """One motor of the simulated beamline.

    Attributes
    ----------
    egu : str
        Engineering units (``.EGU``): eV, mm, um or deg.
    velocity : float
        Speed in ``egu`` per second of beamline time (``.VELO``).
    settle_s : float
        Readback settle time after a move, s (``.DLY``).
    low_limit, high_limit : float
        Soft travel limits (``.LLM``, ``.HLM``), ``egu``.
    value : float or None
        Starting position; ``None`` for the energy and the focusing axes, which the IOC
        sets from its starting energy.
    precision : int
        Display precision (``.PREC``).
    """

    egu: str
    velocity: float
    settle_s: float
    low_limit: float
    high_limit: float
    value: float | None = 0.0
    precision: int = 4


#: Every axis by its name (``<stage>.<axis>`` or ``energy``).
BEAMLINE_AXES = {
    "energy": AxisSpec("eV", 20.0, 0.5, 5000.0, 15000.0, value=None, precision=3),
    "zone_plate.x": AxisSpec("mm", 1.0, 0.0, -5.0, 5.0),
    "zone_plate.y": AxisSpec("mm", 1.0, 0.0, -5.0, 5.0),
    "zone_plate.z": AxisSpec("mm", 2.0, 0.1, 1.0, 150.0, value=None, precision=5),
    "condenser.x": AxisSpec("mm", 1.0, 0.0, -10.0, 10.0),
    "condenser.y": AxisSpec("mm", 1.0, 0.0, -10.0, 10.0),
    "condenser.z": AxisSpec("mm", 1.0, 0.0, -10.0, 10.0),
    "detector_stage.z": AxisSpec("mm", 20.0, 0.2, 100.0, 4000.0, value=None, precision=3),
    "sample_stage.x": AxisSpec("um", 500.0, 0.2, -10000.0, 10000.0),
    "sample_stage.y": AxisSpec("um", 500.0, 0.2, -10000.0, 10000.0),
    "sample_stage.z": AxisSpec("um", 500.0, 0.2, -10000.0, 10000.0),
    "sample_stage.r": AxisSpec("deg", 30.0, 0.0, -720.0, 720.0),  # positioning speed; a fly scan sets VELO
}


def axis_pv_prefixes(prefixes: TXMPrefixes) -> dict[str, str]:
    """Motor record name of every axis in :data:`BEAMLINE_AXES` under ``prefixes``."""
    names = {"energy": prefixes.energy}
    for stage, suffixes in STAGE_AXES.items():
        for suffix in suffixes:
            axis = suffix.split("}")[0].lower()
            names[f"{stage}.{axis}"] = getattr(prefixes, stage) + suffix
    missing = set(BEAMLINE_AXES) ^ set(names)
    if missing:
        raise RuntimeError(f"axis table and PV layout disagree on {sorted(missing)}")
    return names
