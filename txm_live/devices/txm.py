"""EPICS devices of a full-field TXM (FXI-like), with the component names the plans use.

Nothing here connects on construction: a profile builds them offline (and tests build
them with :func:`ophyd.sim.make_fake_device`); talking to IOCs needs ``pyepics``
(``pip install txm-live[epics]``). PV prefixes are arguments; the defaults follow
NSLS-II FXI (18-ID) naming and are examples, not promises.

The simulated twins in :mod:`simulators.devices` have the same components, so a plan runs
unchanged on either.
"""
from __future__ import annotations

from dataclasses import dataclass

from ophyd import Component as Cpt
from ophyd import Device, EpicsMotor, Signal
from ophyd.areadetector import AreaDetector, SingleTrigger
from ophyd.areadetector.filestore_mixins import FileStoreHDF5IterativeWrite
from ophyd.areadetector.plugins import HDF5Plugin

from .energy import FocusTrackingMixin
from .optics import TXMOptics
from .shutter import EpicsShutter


class EpicsEnergy(FocusTrackingMixin, EpicsMotor):
    """DCM energy motor (eV) that refocuses the zone plate and detector when set."""


class ZonePlateStage(Device):
    """Zone plate: ``z`` is the sample → zone-plate distance (mm, calibrated offset in the IOC)."""

    x = Cpt(EpicsMotor, "X}Mtr")
    y = Cpt(EpicsMotor, "Y}Mtr")
    z = Cpt(EpicsMotor, "Z}Mtr")


class CondenserStage(Device):
    x = Cpt(EpicsMotor, "X}Mtr")
    y = Cpt(EpicsMotor, "Y}Mtr")
    z = Cpt(EpicsMotor, "Z}Mtr")


class DetectorStage(Device):
    """Detector: ``z`` is the sample → detector distance (mm)."""

    z = Cpt(EpicsMotor, "Z}Mtr")


class SampleStage(Device):
    """Sample x, y, z (µm) and rotation r (deg) about the vertical axis."""

    x = Cpt(EpicsMotor, "X}Mtr")
    y = Cpt(EpicsMotor, "Y}Mtr")
    z = Cpt(EpicsMotor, "Z}Mtr")
    r = Cpt(EpicsMotor, "R}Mtr")


class TXMHDF5Plugin(HDF5Plugin, FileStoreHDF5IterativeWrite):
    """areaDetector HDF5 plugin whose frames are referenced by resource/datum (spec AD_HDF5)."""


class TXMCamera(SingleTrigger, AreaDetector):
    """An areaDetector camera (Andor Neo2, Kinetix …) writing HDF5 through its plugin.

    ``frame_type`` ('dark' | 'flat' | 'sample') is recorded with every event, like the
    simulated detector's; ``pixel_size_nm`` and ``magnification`` carry the calibration a
    beamline scientist enters for the current optics.
    """

    hdf5 = Cpt(TXMHDF5Plugin, "HDF1:", write_path_template="/nsls2/data/fxi/%Y/%m/%d/", root="/nsls2/data")
    exposure_time = Cpt(Signal, value=0.05, kind="config")
    frame_type = Cpt(Signal, value="sample", kind="config")
    pixel_size_nm = Cpt(Signal, value=20.0, kind="config")
    magnification = Cpt(Signal, value=32.5, kind="config")


@dataclass
class TXMPrefixes:
    """PV prefixes of one TXM; override per beamline."""

    energy: str = "XF:18IDA-OP{Mono:DCM-Ax:En}Mtr"
    zone_plate: str = "XF:18IDB-OP{TXM-ZP:1-Ax:"
    condenser: str = "XF:18IDB-OP{TXM-CLens:1-Ax:"
    detector_stage: str = "XF:18IDB-OP{TXM-Det:1-Ax:"
    sample_stage: str = "XF:18IDB-OP{TXM-Sam:1-Ax:"
    shutter: str = "XF:18IDB-PPS{Sh:FE}"
    camera: str = "XF:18IDB-BI{Det:Neo}"


def make_epics_txm(prefixes: TXMPrefixes | None = None, *, optics: TXMOptics | None = None, device_factory=None) -> dict:
    """Build the EPICS TXM devices (nothing connects yet).

    Parameters
    ----------
    prefixes : TXMPrefixes, optional
    optics : TXMOptics, optional
        Zone plate and magnification for focus tracking.
    device_factory : callable, optional
        Applied to each class before instantiation; pass
        :func:`ophyd.sim.make_fake_device` to check a profile offline.

    Returns
    -------
    dict
        ``energy``, ``zp``, ``condenser``, ``det_stage``, ``sample_stage``, ``shutter``,
        ``txm_det`` — the names the simulated profile uses too.
    """
    p = prefixes or TXMPrefixes()
    make = device_factory or (lambda cls: cls)
    zp = make(ZonePlateStage)(p.zone_plate, name="zp")
    det_stage = make(DetectorStage)(p.detector_stage, name="det_stage")
    energy = make(EpicsEnergy)(p.energy, name="energy", zone_plate_z=zp.z, detector_z=det_stage.z,
                               optics=optics or TXMOptics())
    return {
        "energy": energy,
        "zp": zp,
        "condenser": make(CondenserStage)(p.condenser, name="condenser"),
        "det_stage": det_stage,
        "sample_stage": make(SampleStage)(p.sample_stage, name="sample_stage"),
        "shutter": make(EpicsShutter)(p.shutter, name="shutter"),
        "txm_det": make(TXMCamera)(p.camera, name="txm_det"),
    }
