"""Monochromator energy that keeps the zone-plate microscope in focus.

A zone plate's focal length grows linearly with photon energy (f = D·Δr/λ), so an energy
change alone defocuses the image. At FXI the XANES plans move the zone plate and the
detector together with the monochromator; :class:`FocusTrackingMixin` does the same for
any positioner (an EPICS motor at the beamline, a simulated axis in tests).
"""
from __future__ import annotations

import math

from ophyd import Component as Cpt
from ophyd import Device, Signal
from ophyd.status import AndStatus

from .optics import TXMOptics

#: Focus modes and what each moves with the monochromator.
FOCUS_MODES = {
    "zp_and_detector": "move zone plate and detector: focus and magnification held (FXI)",
    "zone_plate": "refocus with the zone plate alone: sharp, but magnification changes",
    "off": "move the monochromator only: the image defocuses",
}


class FocusTrackingMixin(Device):
    """Mix into an energy positioner (eV) so that ``set`` also refocuses the microscope.

    Parameters
    ----------
    zone_plate_z : positioner
        Sample → zone-plate distance p (mm).
    detector_z : positioner
        Sample → detector distance p + q (mm).
    optics : TXMOptics
        The zone plate and the magnification to hold.

    Notes
    -----
    ``focus_mode`` (a configuration signal, recorded in every run) picks what moves; see
    :data:`FOCUS_MODES`. An energy outside ``optics.energy_range_ev`` is refused before
    anything moves.
    """

    focus_mode = Cpt(Signal, value="zp_and_detector", kind="config")

    def __init__(self, *args, zone_plate_z, detector_z, optics: TXMOptics | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.zone_plate_z = zone_plate_z
        self.detector_z = detector_z
        self.optics = optics or TXMOptics()

    def check_energy(self, energy_ev: float) -> None:
        """Raise ``ValueError`` unless the optics can image at ``energy_ev``."""
        lo, hi = self.optics.energy_range_ev
        if not (isinstance(energy_ev, (int, float)) and math.isfinite(energy_ev) and lo <= energy_ev <= hi):
            raise ValueError(
                f"{self.name}: energy {energy_ev!r} eV is outside the range the optics support "
                f"({lo:.0f}–{hi:.0f} eV)"
            )

    def focus_targets(self, energy_ev: float) -> dict:
        """Positions (mm) the zone plate and detector take for ``energy_ev`` in the current mode."""
        mode = self.focus_mode.get()
        if mode == "zp_and_detector":
            zp_z_mm, det_z_mm = self.optics.focus_positions(energy_ev)
            return {self.zone_plate_z: zp_z_mm, self.detector_z: det_z_mm}
        if mode == "zone_plate":
            det_z_mm = float(self.detector_z.position)
            return {self.zone_plate_z: self.optics.zone_plate_refocus(energy_ev, det_z_mm)}
        if mode == "off":
            return {}
        raise ValueError(f"{self.name}: focus_mode {mode!r} is not one of {sorted(FOCUS_MODES)}")

    def set(self, energy_ev, **kwargs):
        energy_ev = float(energy_ev)
        self.check_energy(energy_ev)
        targets = self.focus_targets(energy_ev)
        status = super().set(energy_ev, **kwargs)
        for positioner, target in targets.items():
            status = AndStatus(status, positioner.set(target))
        return status
