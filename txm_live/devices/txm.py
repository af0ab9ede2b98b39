"""EPICS devices of a full-field TXM (FXI-like), with the component names the plans use.

They talk Channel Access through ophyd's control layer: pyepics by default, caproto's
pure-Python client with ``OPHYD_CONTROL_LAYER=caproto`` set before ophyd is imported.
Nothing connects on construction; :func:`connect_epics_txm` waits for every PV and names
those that do not answer. PV names come from :class:`~txm_live.devices.pv_names.TXMPrefixes`
(FXI-like defaults); the simulated IOC (:mod:`simulators.ioc`) serves the same layout.

The camera keeps the simulated detector's document contract: each frame type
(``frame_type`` 'dark' | 'flat' | 'sample') goes to its own NDFileHDF5 plugin and file,
referenced by one ``stream_resource`` (dataset ``/entry/data/data``) and a
``stream_datum`` per frame, so every stream (``dark``, ``flat``, ``primary``) reads one
contiguous dataset and the live analysis reads EPICS runs unchanged. The simulated
twins in :mod:`simulators.devices` have the same components, so a plan runs unchanged on
either.
"""
from __future__ import annotations

import os
import threading
import time
import uuid
from collections import OrderedDict, deque
from pathlib import Path, PurePosixPath

from event_model import StreamRange, compose_stream_resource
from ophyd import Component as Cpt
from ophyd import Device, EpicsMotor, EpicsSignal, EpicsSignalRO, EpicsSignalWithRBV, Signal
from ophyd.device import Staged
from ophyd.signal import DerivedSignal
from ophyd.status import DeviceStatus

from .energy import FocusTrackingMixin
from .optics import TXMOptics
from .pv_names import CAM_SUFFIX, HDF5_PLUGIN_SUFFIXES, STATS_SUFFIX, TXMPrefixes
from .shutter import EpicsShutter

__all__ = [
    "CondenserStage", "DetectorStage", "EpicsEnergy", "SampleStage", "TXMCam", "TXMCamera", "TXMHDF5Plugin",
    "TXMPrefixes", "ZonePlateStage", "connect_epics_txm", "make_epics_txm", "FRAME_TYPES",
]

FRAME_TYPES = tuple(HDF5_PLUGIN_SUFFIXES)
HDF5_MIMETYPE = "application/x-hdf5"
#: Dataset the NDFileHDF5 plugin writes frames to (its default layout).
HDF5_DATASET = "/entry/data/data"
#: An acquisition may take its exposure plus this long before the trigger fails, s.
ACQUIRE_TIMEOUT_MARGIN_S = 30.0
#: How long a plugin may take to switch its callbacks on or off, s.
ENABLE_TIMEOUT_S = 5.0
#: ``CreateDirectory``: create up to this many missing folder levels (areaDetector: < 0).
CREATE_DIRECTORY_DEPTH = -5
#: areaDetector DataType_RBV → numpy dtype string.
AD_DTYPES = {"Int8": "|i1", "UInt8": "|u1", "Int16": "<i2", "UInt16": "<u2", "Int32": "<i4", "UInt32": "<u4",
             "Int64": "<i8", "UInt64": "<u8", "Float32": "<f4", "Float64": "<f8"}


class EpicsEnergy(FocusTrackingMixin, EpicsMotor):
    """DCM energy motor (eV) that refocuses the zone plate and detector when set."""


class ZonePlateStage(Device):
    """Zone plate: ``z`` is the sample → zone-plate distance (mm, calibrated offset in the IOC)."""

    x = Cpt(EpicsMotor, "X}Mtr")
    y = Cpt(EpicsMotor, "Y}Mtr")
    z = Cpt(EpicsMotor, "Z}Mtr")


class CondenserStage(Device):
    """Capillary condenser x, y, z (mm)."""

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


#: The stage class of each stage prefix in :class:`TXMPrefixes` (axes as in ``STAGE_AXES``).
STAGE_CLASSES = {"zone_plate": ZonePlateStage, "condenser": CondenserStage, "detector_stage": DetectorStage,
                 "sample_stage": SampleStage}


class TXMCam(Device):
    """The areaDetector driver PVs (``cam1:``) the camera uses."""

    acquire = Cpt(EpicsSignal, "Acquire", kind="omitted")
    acquiring = Cpt(EpicsSignalRO, "Acquire_RBV", kind="omitted")
    acquire_time = Cpt(EpicsSignalWithRBV, "AcquireTime", kind="config")
    image_mode = Cpt(EpicsSignalWithRBV, "ImageMode", string=True, kind="config")
    num_images = Cpt(EpicsSignalWithRBV, "NumImages", kind="config")
    array_counter = Cpt(EpicsSignalRO, "ArrayCounter_RBV", kind="omitted")
    detector_state = Cpt(EpicsSignalRO, "DetectorState_RBV", string=True, kind="omitted")
    status_message = Cpt(EpicsSignalRO, "StatusMessage_RBV", string=True, kind="omitted")
    bin_x = Cpt(EpicsSignalRO, "BinX_RBV", kind="config")
    array_size_x = Cpt(EpicsSignalRO, "ArraySizeX_RBV", kind="omitted")
    array_size_y = Cpt(EpicsSignalRO, "ArraySizeY_RBV", kind="omitted")
    data_type = Cpt(EpicsSignalRO, "DataType_RBV", string=True, kind="omitted")


class TXMHDF5Plugin(Device):
    """The NDFileHDF5 plugin PVs (``HDFn:``) the camera uses (Stream mode)."""

    enable = Cpt(EpicsSignalWithRBV, "EnableCallbacks", string=True, kind="omitted")
    file_path = Cpt(EpicsSignalWithRBV, "FilePath", string=True, kind="omitted")
    file_name = Cpt(EpicsSignalWithRBV, "FileName", string=True, kind="omitted")
    file_template = Cpt(EpicsSignalWithRBV, "FileTemplate", string=True, kind="omitted")
    file_write_mode = Cpt(EpicsSignalWithRBV, "FileWriteMode", string=True, kind="omitted")
    create_directory = Cpt(EpicsSignalWithRBV, "CreateDirectory", kind="omitted")
    num_capture = Cpt(EpicsSignalWithRBV, "NumCapture", kind="omitted")
    swmr_mode = Cpt(EpicsSignalWithRBV, "SWMRMode", string=True, kind="omitted")
    capture = Cpt(EpicsSignalWithRBV, "Capture", string=True, kind="omitted")
    num_captured = Cpt(EpicsSignalRO, "NumCaptured_RBV", kind="omitted")
    full_file_name = Cpt(EpicsSignalRO, "FullFileName_RBV", string=True, kind="omitted")
    write_message = Cpt(EpicsSignalRO, "WriteMessage", string=True, kind="omitted")


class PixelSizeSignal(DerivedSignal):
    """Pixel size at the sample (nm) from the camera's binning and the parent's optics."""

    def inverse(self, value):
        binning = int(value)
        if binning < 1:
            raise ValueError(f"{self.name}: the camera reports binning {value!r}; cannot derive a pixel size")
        return float(self.parent.optics.pixel_size_nm(binning))


def _plugin_cpt(frame_type: str):
    return Cpt(TXMHDF5Plugin, HDF5_PLUGIN_SUFFIXES[frame_type], kind="omitted")


class TXMCamera(Device):
    """An areaDetector camera (Andor Neo2, Kinetix …) writing one HDF5 file per frame type.

    Plan protocol (as :class:`simulators.devices.SimTXMDetector`): ``frame_type`` ('dark' |
    'flat' | 'sample'), ``exposure_time`` (s; the driver's ``AcquireTime``),
    ``pixel_size_nm`` (derived from ``BinX_RBV`` and the optics) and ``magnification``.

    Parameters
    ----------
    prefix : str
        The camera IOC prefix (``cam1:``, ``HDF1:`` … follow).
    write_dir : path
        Folder the IOC writes the HDF5 files to (as the IOC sees it).
    read_dir : path, optional
        The same folder as this process sees it (default ``write_dir``); stream resources
        point here.
    optics : TXMOptics, optional
        Magnification and camera pixel, for ``pixel_size_nm``.

    Notes
    -----
    ``stage`` points the three HDF5 plugins (``HDF1:`` darks, ``HDF2:`` flats, ``HDF3:``
    sample frames) at fresh files in ``write_dir``, Stream mode, SWMR, and opens them;
    sets ``ImageMode`` Single and ``NumImages`` 1; ``unstage`` closes the files and puts
    back every PV staging changed, ``AcquireTime`` included (a plan's exposure does not
    outlive the plan). ``trigger`` switches callbacks on for the current frame type's
    plugin only and acquires one frame; the frame's ``stream_datum`` names its index in
    that plugin's file, checked against ``NumCaptured_RBV``.
    """

    cam = Cpt(TXMCam, CAM_SUFFIX, kind="config")
    mean_counts = Cpt(EpicsSignalRO, STATS_SUFFIX + "MeanValue_RBV", kind="hinted", auto_monitor=False)
    hdf_dark = _plugin_cpt("dark")
    hdf_flat = _plugin_cpt("flat")
    hdf_sample = _plugin_cpt("sample")
    frame_type = Cpt(Signal, value="sample", kind="config")
    pixel_size_nm = Cpt(PixelSizeSignal, derived_from="cam.bin_x", write_access=False, kind="config")
    magnification = Cpt(Signal, value=32.5, kind="config")

    #: How long a plugin may take to open or close its file, s (an error shows up as a timeout).
    capture_timeout_s = 10.0

    def __init__(self, prefix="", *, write_dir=None, read_dir=None, optics: TXMOptics | None = None, **kwargs):
        self.optics = optics or TXMOptics()
        super().__init__(prefix, **kwargs)
        self.write_dir = None if write_dir is None else PurePosixPath(write_dir)
        self.read_dir = Path(read_dir) if read_dir is not None else (
            None if write_dir is None else Path(write_dir))
        self.magnification.put(float(self.optics.magnification))
        self._pending: deque[str] = deque()   # frame types triggered, documents not yet collected
        self._captured: dict[str, int] = {}
        self._resources: dict[str, object] = {}
        self._routed_to: str | None = None
        self._frame_shape: list[int] = []
        self._lock = threading.Lock()

    # ---- the plan protocol ---------------------------------------------------------
    @property
    def exposure_time(self):
        """Exposure per frame, s: the driver's ``AcquireTime`` (settable, ``bps.mv``)."""
        return self.cam.acquire_time

    @property
    def image_key(self) -> str:
        return f"{self.name}_image"

    @property
    def plugins(self) -> dict[str, TXMHDF5Plugin]:
        """The HDF5 plugin of each frame type."""
        return {frame_type: getattr(self, f"hdf_{frame_type}") for frame_type in FRAME_TYPES}

    # ---- staging -------------------------------------------------------------------
    def stage(self):
        if self.write_dir is None:
            raise RuntimeError(f"{self.name}: no write_dir; tell the camera where the IOC writes its files")
        run_stem = uuid.uuid4().hex
        for frame_type, plugin in self.plugins.items():
            plugin.stage_sigs = OrderedDict([
                ("enable", "Disable"), ("file_write_mode", "Stream"), ("num_capture", 0), ("swmr_mode", "On"),
                ("create_directory", CREATE_DIRECTORY_DEPTH), ("file_path", f"{self.write_dir}/"),
                ("file_name", f"{run_stem}_{frame_type}"), ("file_template", "%s%s.h5"),
            ])
        # AcquireTime is staged at its own value so that unstage puts it back after a plan set it.
        self.stage_sigs = OrderedDict([
            ("cam.acquire", 0), ("cam.image_mode", "Single"), ("cam.num_images", 1),
            ("cam.acquire_time", self.cam.acquire_time.get()),
        ])
        self._frame_shape = [int(self.cam.array_size_y.get()), int(self.cam.array_size_x.get())]
        staged = super().stage()
        try:
            self._open_files()
        except Exception:
            self.unstage()
            raise
        self._pending.clear()
        self._captured = dict.fromkeys(FRAME_TYPES, 0)
        self._resources = {}
        self._routed_to = None
        return staged

    def _open_files(self) -> None:
        for plugin in self.plugins.values():
            try:
                plugin.capture.set("Capture", timeout=self.capture_timeout_s).wait(self.capture_timeout_s + 1)
            except Exception as exc:
                raise RuntimeError(
                    f"{plugin.name} could not open {plugin.file_path.get()}{plugin.file_name.get()}: "
                    f"{plugin.write_message.get() or exc}"
                ) from exc

    def unstage(self):
        errors = []
        for plugin in self.plugins.values():
            try:
                if plugin.capture.get() != "Done":
                    plugin.capture.set("Done", timeout=self.capture_timeout_s).wait(self.capture_timeout_s + 1)
            except Exception as exc:  # close the others and restore the settings anyway
                errors.append(f"{plugin.name}: {exc!r}")
        self._pending.clear()
        self._routed_to = None
        unstaged = super().unstage()
        if errors:
            raise RuntimeError(f"{self.name}: closing the HDF5 files failed: {'; '.join(errors)}")
        return unstaged

    # ---- acquiring -----------------------------------------------------------------
    def _checked_frame_type(self) -> str:
        frame_type = self.frame_type.get()
        if frame_type not in FRAME_TYPES:
            raise ValueError(f"{self.name}.frame_type must be one of {FRAME_TYPES}, got {frame_type!r}")
        return frame_type

    def _route_frames_to(self, frame_type: str) -> None:
        """Callbacks on for ``frame_type``'s plugin only (the others first off)."""
        if self._routed_to == frame_type:
            return
        self._routed_to = None
        order = sorted(self.plugins.items(), key=lambda item: item[0] == frame_type)
        for other, plugin in order:
            plugin.enable.set("Enable" if other == frame_type else "Disable",
                              timeout=ENABLE_TIMEOUT_S).wait(ENABLE_TIMEOUT_S + 1)
        self._routed_to = frame_type

    def trigger(self):
        if self._staged != Staged.yes:
            raise RuntimeError(f"{self.name} must be staged before it is triggered (its HDF5 files are not open)")
        frame_type = self._checked_frame_type()
        self._route_frames_to(frame_type)
        timeout_s = float(self.cam.acquire_time.get()) + ACQUIRE_TIMEOUT_MARGIN_S
        status = DeviceStatus(self, timeout=timeout_s)
        seen = {"acquiring": False}

        # Watch the driver's Acquire_RBV (only the IOC writes it): 1 while acquiring, then 0.
        # Not the Acquire PV itself: ophyd shows our own put of 1 at once, and a late
        # monitor of an earlier 0 would then end the wait before the frame exists.
        def acquiring_changed(value, **kwargs):
            if int(value) == 1:
                seen["acquiring"] = True
            elif seen["acquiring"]:
                self.cam.acquiring.clear_sub(acquiring_changed)
                self._finish_frame(status)

        self.cam.acquiring.subscribe(acquiring_changed, run=False)
        with self._lock:
            self._pending.append(frame_type)
        self.cam.acquire.put(1, wait=False)
        return status

    def _finish_frame(self, status) -> None:
        try:
            state = self.cam.detector_state.get(use_monitor=False)
            if state == "Error":
                message = self.cam.status_message.get(use_monitor=False)
                raise RuntimeError(f"{self.name}: the camera reports an error: {message}")
        except Exception as exc:
            status.set_exception(exc)
        else:
            status.set_finished()

    # ---- documents -----------------------------------------------------------------
    def describe(self):
        description = super().describe()
        data_type = str(self.cam.data_type.get())
        if data_type not in AD_DTYPES:
            raise ValueError(f"{self.name}: DataType_RBV {data_type!r} is not one of {sorted(AD_DTYPES)}")
        description[self.image_key] = {
            "source": f"PV:{self.prefix}",
            "shape": [int(self.cam.array_size_y.get()), int(self.cam.array_size_x.get())],
            "dtype": "array",
            "dtype_numpy": AD_DTYPES[data_type],
            "external": "STREAM:",
        }
        return description

    def collect_asset_docs(self):
        while True:
            with self._lock:
                if not self._pending:
                    return
                frame_type = self._pending.popleft()
            yield from self._frame_documents(frame_type)

    def _frame_documents(self, frame_type: str):
        plugin = self.plugins[frame_type]
        captured = int(plugin.num_captured.get(use_monitor=False))
        expected = self._captured[frame_type] + 1
        if captured != expected:
            raise RuntimeError(
                f"{plugin.name} holds {captured} frames but {expected} {frame_type} frames were triggered: "
                f"frames were lost (WriteMessage: {plugin.write_message.get()!r})"
            )
        self._captured[frame_type] = captured
        if frame_type not in self._resources:
            bundle = compose_stream_resource(
                mimetype=HDF5_MIMETYPE,
                uri=self._read_path(plugin.full_file_name.get(use_monitor=False)).as_uri(),
                data_key=self.image_key,
                parameters={"dataset": HDF5_DATASET, "chunk_shape": [1, *self._frame_shape],
                            "swmr": True},
            )
            self._resources[frame_type] = bundle
            yield "stream_resource", bundle.stream_resource_doc
        compose_datum = self._resources[frame_type].compose_stream_datum
        yield "stream_datum", compose_datum(indices=StreamRange(start=captured - 1, stop=captured))

    def _read_path(self, written: str) -> Path:
        """Where this process reads a file the IOC wrote at ``written``."""
        relative = PurePosixPath(written).relative_to(self.write_dir)
        return (self.read_dir / relative).resolve()


def make_epics_txm(prefixes: TXMPrefixes | None = None, *, optics: TXMOptics | None = None, write_dir=None,
                   read_dir=None, device_factory=None) -> dict:
    """Build the EPICS TXM devices (nothing connects yet; see :func:`connect_epics_txm`).

    Parameters
    ----------
    prefixes : TXMPrefixes, optional
    optics : TXMOptics, optional
        Zone plate and magnification for focus tracking and the pixel size.
    write_dir, read_dir : path, optional
        Where the camera IOC writes its HDF5 files, and where this process reads them
        (default: the same folder); see :class:`TXMCamera`.
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
    optics = optics or TXMOptics()
    make = device_factory or (lambda cls: cls)
    zp = make(ZonePlateStage)(p.zone_plate, name="zp")
    det_stage = make(DetectorStage)(p.detector_stage, name="det_stage")
    energy = make(EpicsEnergy)(p.energy, name="energy", zone_plate_z=zp.z, detector_z=det_stage.z, optics=optics)
    return {
        "energy": energy,
        "zp": zp,
        "condenser": make(CondenserStage)(p.condenser, name="condenser"),
        "det_stage": det_stage,
        "sample_stage": make(SampleStage)(p.sample_stage, name="sample_stage"),
        "shutter": make(EpicsShutter)(p.shutter, name="shutter"),
        "txm_det": make(TXMCamera)(p.camera, name="txm_det", optics=optics, write_dir=write_dir,
                                   read_dir=read_dir),
    }


def _pv_names(signal) -> list[str]:
    names = [getattr(signal, "pvname", None), getattr(signal, "setpoint_pvname", None)]
    return sorted({n for n in names if n})


def connect_epics_txm(devices: dict, *, timeout_s: float = 10.0) -> None:
    """Wait until every PV of ``devices`` answers; raise ``ConnectionError`` naming those that do not.

    Parameters
    ----------
    devices : dict
        As returned by :func:`make_epics_txm`.
    timeout_s : float
        Total time to wait, s.
    """
    deadline = time.monotonic() + float(timeout_s)
    for device in devices.values():
        try:
            device.wait_for_connection(timeout=max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            pass  # collected below, with every other PV that did not answer
    missing = sorted({pv for device in devices.values() for item in device.walk_signals()
                      if not item.item.connected for pv in _pv_names(item.item)})
    if missing:
        env = {k: os.environ.get(k, "<unset>") for k in ("EPICS_CA_ADDR_LIST", "EPICS_CA_AUTO_ADDR_LIST",
                                                        "EPICS_CA_SERVER_PORT")}
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise ConnectionError(
            f"{len(missing)} PVs did not connect within {timeout_s} s: {shown}. Is the IOC running, and does "
            f"Channel Access reach it? ({', '.join(f'{k}={v}' for k, v in env.items())})"
        )
