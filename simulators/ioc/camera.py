"""The simulated camera: an areaDetector driver (``cam1:``) and an NDStats mean (``Stats1:``).

Driver PVs (settings with their ``_RBV``): ``Acquire``, ``AcquireTime``, ``AcquirePeriod``
(served; frames follow one another without a gap), ``ImageMode`` (Single / Multiple /
Continuous), ``NumImages``, ``ArrayCounter``; readbacks ``NumImagesCounter_RBV``,
``DetectorState_RBV``, ``StatusMessage_RBV``, ``BinX_RBV``/``BinY_RBV``,
``MaxSizeX_RBV``/``MaxSizeY_RBV`` (sensor), ``ArraySizeX_RBV``/``ArraySizeY_RBV``
(binned image), ``DataType_RBV``, ``Manufacturer_RBV``, ``Model_RBV``.

``Acquire = 1`` takes ``1`` / ``NumImages`` / unlimited frames (by ``ImageMode``); each
comes from the simulator's physics at the IOC's current motor positions, shutter state
and ``AcquireTime`` (see :meth:`simulators.ioc.server.TXMIOC.expose`), takes
``(AcquireTime + readout) * time_scale`` of wall time, raises ``ArrayCounter_RBV`` and is
handed to every plugin before the next one; ``Acquire`` returns to 0 when the last frame
has been processed. A frame the physics refuses (e.g. an impossible zone-plate geometry)
ends the acquisition with ``DetectorState_RBV = Error`` and the reason in
``StatusMessage_RBV``.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import fields

import numpy as np
from caproto.server import PVGroup

from ..model import FrameTruth
from ._pvs import (
    TEXT_LENGTH,
    enum_readback,
    enum_setting,
    readback,
    setting,
    text_readback,
)
from .axes import READOUT_S

__all__ = ["CamDriver", "StatsPlugin", "frame_attributes", "FRAME_ATTRIBUTE_NAMES", "POSITION_ATTRIBUTES"]

logger = logging.getLogger(__name__)

IMAGE_MODES = ("Single", "Multiple", "Continuous")
DONE_ACQUIRE = ("Done", "Acquire")
DETECTOR_STATES = ("Idle", "Acquire", "Readout", "Correct", "Saving", "Aborting", "Error", "Waiting",
                   "Initializing", "Disconnected", "Aborted")
DATA_TYPES = ("Int8", "UInt8", "Int16", "UInt16", "Int32", "UInt32", "Int64", "UInt64", "Float32", "Float64")

#: What every frame was taken with, in the units its name says (NDAttributes).
POSITION_ATTRIBUTES = ("energy_ev", "zp_z_mm", "det_z_mm", "sample_x_um", "sample_y_um", "sample_z_um",
                       "theta_deg", "shutter_open", "exposure_s")


def _truth_attribute_names() -> tuple[str, ...]:
    names = []
    for f in fields(FrameTruth):
        if f.type == "tuple":  # (dy, dx) pairs: drift_px -> truth_drift_y_px, truth_drift_x_px
            base, unit = f.name.rsplit("_", 1)
            names += [f"truth_{base}_y_{unit}", f"truth_{base}_x_{unit}"]
        else:
            names.append(f"truth_{f.name}")
    return tuple(names)


#: NDAttributes of every frame: its unique id and beamline time, positions, ground truth.
FRAME_ATTRIBUTE_NAMES = ("NDArrayUniqueId", "NDArrayTimeStamp", *POSITION_ATTRIBUTES, *_truth_attribute_names())


def frame_attributes(unique_id: int, positions: dict, truth: FrameTruth) -> dict:
    """Per-frame NDAttributes (all floats) named as :data:`FRAME_ATTRIBUTE_NAMES`."""
    out = {"NDArrayUniqueId": float(unique_id), "NDArrayTimeStamp": float(truth.time_s)}
    out.update({name: float(positions[name]) for name in POSITION_ATTRIBUTES})
    for f in fields(FrameTruth):
        value = getattr(truth, f.name)
        if f.type == "tuple":
            base, unit = f.name.rsplit("_", 1)
            out[f"truth_{base}_y_{unit}"], out[f"truth_{base}_x_{unit}"] = (float(v) for v in value)
        else:
            out[f"truth_{f.name}"] = float(value)
    return out


class StatsPlugin(PVGroup):
    """NDStats, reduced to the mean of each frame (``MeanValue_RBV``, counts)."""

    mean_value_rbv = readback("MeanValue_RBV", 0.0, precision=2)
    array_counter_rbv = readback("ArrayCounter_RBV", 0)

    async def reset_counters(self) -> None:
        await self.array_counter_rbv.write(0)

    async def process(self, frame: np.ndarray, attributes: dict) -> None:
        await self.mean_value_rbv.write(float(frame.mean()))
        await self.array_counter_rbv.write(int(self.array_counter_rbv.value) + 1)


async def _positive(group, instance, value, *, minimum=0.0, strict=True):
    if (value <= minimum) if strict else (value < minimum):
        raise ValueError(f"{instance.pvname} must be {'>' if strict else '>='} {minimum}, got {value}")
    await getattr(group, instance.pvspec.attr + "_rbv").write(value)
    return value


async def _positive_time(group, instance, value):
    return await _positive(group, instance, value)


async def _at_least_one(group, instance, value):
    return await _positive(group, instance, value, minimum=1, strict=False)


class CamDriver(PVGroup):
    """The areaDetector driver of the simulated camera.

    Parameters
    ----------
    prefix : str
        Driver prefix (``…cam1:``), macro-escaped.
    frame_source : async callable ``(exposure_s, unique_id) -> (image, attributes)``
        The physics (:meth:`simulators.ioc.server.TXMIOC.expose`).
    consumers : sequence
        Plugins with ``async process(image, attributes)``, fed in order.
    time_scale : float
        Wall-clock seconds per second of beamline time.
    """

    acquire = enum_setting("Acquire", "Done", DONE_ACQUIRE, put=None)
    acquire_rbv = enum_readback("Acquire_RBV", "Done", DONE_ACQUIRE)
    acquire_time = setting("AcquireTime", 0.05, put=_positive_time, precision=4, units="s")
    acquire_time_rbv = readback("AcquireTime_RBV", 0.05, precision=4, units="s")
    acquire_period = setting("AcquirePeriod", 0.0, precision=4, units="s")
    acquire_period_rbv = readback("AcquirePeriod_RBV", 0.0, precision=4, units="s")
    image_mode = enum_setting("ImageMode", "Single", IMAGE_MODES)
    image_mode_rbv = enum_readback("ImageMode_RBV", "Single", IMAGE_MODES)
    num_images = setting("NumImages", 1, put=_at_least_one)
    num_images_rbv = readback("NumImages_RBV", 1)
    num_images_counter_rbv = readback("NumImagesCounter_RBV", 0)
    array_counter = setting("ArrayCounter", 0)
    array_counter_rbv = readback("ArrayCounter_RBV", 0)
    detector_state_rbv = enum_readback("DetectorState_RBV", "Idle", DETECTOR_STATES)
    status_message_rbv = text_readback("StatusMessage_RBV")
    bin_x_rbv = readback("BinX_RBV", 1)
    bin_y_rbv = readback("BinY_RBV", 1)
    max_size_x_rbv = readback("MaxSizeX_RBV", 0)
    max_size_y_rbv = readback("MaxSizeY_RBV", 0)
    array_size_x_rbv = readback("ArraySizeX_RBV", 0)
    array_size_y_rbv = readback("ArraySizeY_RBV", 0)
    data_type_rbv = enum_readback("DataType_RBV", "UInt16", DATA_TYPES)
    manufacturer_rbv = readback("Manufacturer_RBV", "txm-live", dtype=str)
    model_rbv = readback("Model_RBV", "simulated TXM camera", dtype=str)

    def __init__(self, prefix, *, frame_source, consumers, time_scale: float, **kwargs):
        super().__init__(prefix, **kwargs)
        self.frame_source = frame_source
        self.consumers = list(consumers)
        self.time_scale = float(time_scale)
        self._task: asyncio.Task | None = None

    async def initialize(self, *, shape, binning: int) -> None:
        """Sensor and image geometry: ``shape`` (ny, nx) binned ``binning`` × ``binning``."""
        ny, nx = (int(n) for n in shape)
        await self.bin_x_rbv.write(int(binning))
        await self.bin_y_rbv.write(int(binning))
        await self.array_size_x_rbv.write(nx)
        await self.array_size_y_rbv.write(ny)
        await self.max_size_x_rbv.write(nx * int(binning))
        await self.max_size_y_rbv.write(ny * int(binning))

    async def abort(self) -> None:
        """Stop an acquisition in progress and wait until it has ended."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def reset_counters(self) -> None:
        for pv in (self.array_counter, self.array_counter_rbv, self.num_images_counter_rbv):
            await pv.write(0, verify_value=False)
        await self.detector_state_rbv.write("Idle")
        await self.status_message_rbv.write("")

    @acquire.putter
    async def acquire(self, instance, value):
        if value == "Acquire":
            if self._task is None or self._task.done():
                self._task = asyncio.get_running_loop().create_task(self._acquire())
        elif self._task is not None and not self._task.done():
            self._task.cancel()
        return value

    def _frames_to_take(self) -> int | None:
        mode = self.image_mode.value
        if mode == "Single":
            return 1
        if mode == "Multiple":
            return int(self.num_images.value)
        return None  # Continuous: until Acquire = 0

    async def _acquire(self) -> None:
        await self.detector_state_rbv.write("Acquire")
        await self.acquire_rbv.write("Acquire")
        await self.num_images_counter_rbv.write(0)
        await self.status_message_rbv.write("")
        try:
            n_frames, taken = self._frames_to_take(), 0
            while n_frames is None or taken < n_frames:
                await self._one_frame()
                taken += 1
                await self.num_images_counter_rbv.write(taken)
            await self.detector_state_rbv.write("Idle")
        except asyncio.CancelledError:
            await self.detector_state_rbv.write("Aborted")
            raise
        except Exception as exc:  # the physics refused the frame: say why, as a driver does
            logger.warning("%s: acquisition failed: %r", self.prefix, exc)
            await self.status_message_rbv.write(f"{type(exc).__name__}: {exc}"[: TEXT_LENGTH - 1])
            await self.detector_state_rbv.write("Error")
        finally:
            await self.acquire_rbv.write("Done")
            await self.acquire.write("Done", verify_value=False)

    async def _one_frame(self) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        exposure_s = float(self.acquire_time.value)
        counter = int(self.array_counter.value) + 1
        image, attributes = await self.frame_source(exposure_s, counter)
        wall_s = (exposure_s + READOUT_S) * self.time_scale
        await asyncio.sleep(max(0.0, wall_s - (loop.time() - t0)))
        await self.array_counter.write(counter, verify_value=False)
        await self.array_counter_rbv.write(counter)
        for consumer in self.consumers:
            await consumer.process(image, attributes)
