"""Assemble the simulated TXM beamline: physics model, clock and ophyd devices."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ophyd import Device

from .devices import (
    SimCondenser,
    SimDetectorStage,
    SimEnergy,
    SimSampleStage,
    SimShutter,
    SimTXMDetector,
    SimZonePlate,
)
from .model import SimConfig, SimTXM
from .timing import SimClock


@dataclass
class SimBeamline:
    """The simulated instrument; attribute names are the ones a profile exposes."""

    model: SimTXM
    clock: SimClock
    energy: SimEnergy
    zone_plate: SimZonePlate
    condenser: SimCondenser
    detector_stage: SimDetectorStage
    sample_stage: SimSampleStage
    shutter: SimShutter
    detector: SimTXMDetector

    def devices(self) -> dict[str, Device]:
        """Every ophyd device by its name."""
        return {
            dev.name: dev
            for dev in (self.energy, self.zone_plate, self.condenser, self.detector_stage,
                        self.sample_stage, self.shutter, self.detector)
        }


def make_sim_beamline(
    data_dir,
    *,
    model: SimTXM | None = None,
    config: SimConfig | None = None,
    energy_ev: float = 8333.0,
    realistic_timing: bool = False,
) -> SimBeamline:
    """Build the simulated beamline, focused at ``energy_ev``.

    Parameters
    ----------
    data_dir : path
        Folder for the detector's HDF5 files.
    model : SimTXM, optional
        The physics; built from ``config`` (default :class:`SimConfig`) when omitted.
    energy_ev : float
        Starting energy, eV; zone plate and detector start in focus for it.
    realistic_timing : bool
        Sleep for move, settle and exposure times, so a demo scan takes beamline time.
    """
    model = model if model is not None else SimTXM(config or SimConfig())
    clock = SimClock(realistic=False)  # setting up is instant; realism starts after
    optics = model.config.optics
    zone_plate = SimZonePlate(name="zp", clock=clock)
    detector_stage = SimDetectorStage(name="det_stage", clock=clock)
    zp_z_mm, det_z_mm = optics.focus_positions(energy_ev)
    zone_plate.z.set(zp_z_mm).wait(5)
    detector_stage.z.set(det_z_mm).wait(5)
    energy = SimEnergy(
        name="energy", clock=clock, speed=20.0, settle_s=0.5, egu="eV", value=energy_ev,
        zone_plate_z=zone_plate.z, detector_z=detector_stage.z, optics=optics,
    )
    condenser = SimCondenser(name="condenser", clock=clock)
    sample_stage = SimSampleStage(name="sample_stage", clock=clock)
    shutter = SimShutter(name="shutter", clock=clock)
    detector = SimTXMDetector(
        name="txm_det", model=model, data_dir=Path(data_dir), energy=energy, zone_plate=zone_plate,
        detector_stage=detector_stage, sample_stage=sample_stage, shutter=shutter, clock=clock,
    )
    clock.reset()  # the beamline starts aligned and focused at t = 0
    clock.realistic = realistic_timing
    return SimBeamline(model, clock, energy, zone_plate, condenser, detector_stage, sample_stage, shutter, detector)
