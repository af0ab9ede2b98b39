"""PV names of one TXM: the prefixes the EPICS devices use and the simulated IOC serves.

A leaf module (no ophyd, no caproto) so that the ophyd classes in
:mod:`txm_live.devices.txm` and the Channel Access IOC in :mod:`simulators.ioc` share one
naming and cannot drift apart.

Layout (defaults follow NSLS-II FXI, 18-ID; they are examples, not promises)::

    {energy}.VAL / .RBV / .DMOV / .VELO / .HLM / .LLM / .STOP ...   motor record (eV)
    {zone_plate}X}Mtr  Y}Mtr  Z}Mtr                                   motor records (mm)
    {condenser}X}Mtr   Y}Mtr  Z}Mtr                                   motor records (mm)
    {detector_stage}Z}Mtr                                             motor record (mm)
    {sample_stage}X}Mtr Y}Mtr Z}Mtr (µm)   R}Mtr (deg)                 motor records
    {shutter}Pos-Sts  Cmd:Opn-Cmd  Cmd:Cls-Cmd                        photon shutter
    {camera}cam1:...                                                  areaDetector driver
    {camera}HDF1: HDF2: HDF3:                                         NDFileHDF5 plugins,
                                                                      one per frame type
    {camera}Stats1:MeanValue_RBV                                      NDStats mean
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

#: Suffix of the areaDetector driver PVs below the camera prefix.
CAM_SUFFIX = "cam1:"
#: Suffix of the NDStats plugin whose mean the camera reads with every frame.
STATS_SUFFIX = "Stats1:"
#: One NDFileHDF5 plugin per frame type, so each frame type lands in its own file and
#: every Bluesky stream (``dark``, ``flat``, ``primary``) references one contiguous dataset.
HDF5_PLUGIN_SUFFIXES = {"dark": "HDF1:", "flat": "HDF2:", "sample": "HDF3:"}
#: Axis suffixes of each stage (appended to the stage prefix).
STAGE_AXES = {
    "zone_plate": ("X}Mtr", "Y}Mtr", "Z}Mtr"),
    "condenser": ("X}Mtr", "Y}Mtr", "Z}Mtr"),
    "detector_stage": ("Z}Mtr",),
    "sample_stage": ("X}Mtr", "Y}Mtr", "Z}Mtr", "R}Mtr"),
}
#: Shutter status values of ``Pos-Sts`` (NSLS-II photon shutters): index 0 is open.
SHUTTER_STATUS_STRINGS = ("Open", "Not Open")


@dataclass(frozen=True)
class TXMPrefixes:
    """PV prefixes of one TXM; override per beamline.

    Attributes
    ----------
    energy : str
        Monochromator energy motor record (its full record name).
    zone_plate, condenser, detector_stage, sample_stage : str
        Stage prefixes; axis suffixes from :data:`STAGE_AXES` are appended.
    shutter : str
        Photon shutter prefix.
    camera : str
        areaDetector IOC prefix (``cam1:``, ``HDF1:`` … follow).
    """

    energy: str = "XF:18IDA-OP{Mono:DCM-Ax:En}Mtr"
    zone_plate: str = "XF:18IDB-OP{TXM-ZP:1-Ax:"
    condenser: str = "XF:18IDB-OP{TXM-CLens:1-Ax:"
    detector_stage: str = "XF:18IDB-OP{TXM-Det:1-Ax:"
    sample_stage: str = "XF:18IDB-OP{TXM-Sam:1-Ax:"
    shutter: str = "XF:18IDB-PPS{Sh:FE}"
    camera: str = "XF:18IDB-BI{Det:Neo}"

    def with_root(self, root: str) -> TXMPrefixes:
        """The same layout with ``root`` in front of every prefix (e.g. ``'SIM:'``)."""
        if not isinstance(root, str):
            raise TypeError(f"root must be a string, got {type(root).__name__}")
        return replace(self, **{f.name: root + getattr(self, f.name) for f in fields(self)})


#: PVs of the simulated IOC itself (not of a beamline), below its root prefix.
SIM_IOC_PREFIX = "TXMSIM:"
#: 1 once the simulated IOC has set every PV to its starting value.
SIM_READY_SUFFIX = "Ready"
