"""An NDFileHDF5 plugin (Stream mode) of the simulated camera.

PVs below the plugin prefix (``HDF1:`` …), each setting with its ``_RBV``:
``EnableCallbacks``, ``FilePath`` (+ ``FilePathExists_RBV``), ``CreateDirectory``,
``FileName``, ``FileNumber``, ``AutoIncrement``, ``FileTemplate`` (C format with path,
name and number, default ``%s%s_%6.6d.h5``), ``FullFileName_RBV``, ``FileWriteMode``,
``NumCapture`` (0: until ``Capture`` is set to Done), ``NumCaptured_RBV``, ``Capture``,
``ArrayCounter``, ``SWMRMode``, ``WriteStatus``, ``WriteMessage``, ``PluginType_RBV``.

``Capture = 1`` opens ``FullFileName_RBV`` (``Capture_RBV`` becomes 1); every frame the
camera produces while ``EnableCallbacks`` is Enable is appended and counted in
``NumCaptured_RBV``; ``Capture = 0`` closes the file. A file that cannot be opened leaves
``Capture_RBV`` at 0 and says why in ``WriteMessage``. Only Stream mode is simulated
(the modes that write at the end of a capture are no use to a live analysis); asking for
another is refused with that message. Frames are processed before the camera reports the
acquisition done, as with ``BlockingCallbacks = Yes``.
"""
from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

from caproto.server import PVGroup

from ._pvs import TEXT_LENGTH, enum_readback, enum_setting, readback, setting, text_readback, text_setting
from .nd_file import NDHDF5File

__all__ = ["HDF5FilePlugin"]

logger = logging.getLogger(__name__)

NO_YES = ("No", "Yes")
DONE_CAPTURE = ("Done", "Capture")
WRITE_MODES = ("Single", "Capture", "Stream")
SIMULATED_WRITE_MODE = "Stream"
#: One printf conversion in FileTemplate ("%%" is a literal percent sign).
FORMAT_FIELD = re.compile(r"%(?!%)[-#0 +]*\d*(?:\.\d+)?[sdiuxX]")


class HDF5FilePlugin(PVGroup):
    """One NDFileHDF5 plugin; frames arrive through :meth:`process`.

    Parameters
    ----------
    prefix : str
        Plugin prefix, macro-escaped.
    frame_shape : tuple of int
        ``(ny, nx)`` of the camera's frames.
    dtype : numpy dtype
        Frame dtype.
    attribute_names : sequence of str
        NDAttributes the camera attaches to every frame.
    """

    enable = enum_setting("EnableCallbacks", "Disable", ("Disable", "Enable"))
    enable_rbv = enum_readback("EnableCallbacks_RBV", "Disable", ("Disable", "Enable"))
    file_path = text_setting("FilePath")
    file_path_rbv = text_readback("FilePath_RBV")
    file_path_exists_rbv = enum_readback("FilePathExists_RBV", "No", NO_YES)
    create_directory = setting("CreateDirectory", 0)
    create_directory_rbv = readback("CreateDirectory_RBV", 0)
    file_name = text_setting("FileName")
    file_name_rbv = text_readback("FileName_RBV")
    file_number = setting("FileNumber", 0)
    file_number_rbv = readback("FileNumber_RBV", 0)
    auto_increment = enum_setting("AutoIncrement", "Yes", NO_YES)
    auto_increment_rbv = enum_readback("AutoIncrement_RBV", "Yes", NO_YES)
    file_template = text_setting("FileTemplate", "%s%s_%6.6d.h5")
    file_template_rbv = text_readback("FileTemplate_RBV", "%s%s_%6.6d.h5")
    full_file_name_rbv = text_readback("FullFileName_RBV")
    file_write_mode = enum_setting("FileWriteMode", "Single", WRITE_MODES)
    file_write_mode_rbv = enum_readback("FileWriteMode_RBV", "Single", WRITE_MODES)
    num_capture = setting("NumCapture", 1)
    num_capture_rbv = readback("NumCapture_RBV", 1)
    num_captured_rbv = readback("NumCaptured_RBV", 0)
    capture = enum_setting("Capture", "Done", DONE_CAPTURE, put=None)
    capture_rbv = enum_readback("Capture_RBV", "Done", DONE_CAPTURE)
    array_counter = setting("ArrayCounter", 0)
    array_counter_rbv = readback("ArrayCounter_RBV", 0)
    swmr_mode = enum_setting("SWMRMode", "Off", ("Off", "On"))
    swmr_mode_rbv = enum_readback("SWMRMode_RBV", "Off", ("Off", "On"))
    write_status = enum_readback("WriteStatus", "Write OK", ("Write OK", "Write error"))
    write_message = text_readback("WriteMessage")
    plugin_type_rbv = readback("PluginType_RBV", "NDFileHDF5", dtype=str)

    def __init__(self, prefix, *, frame_shape, dtype, attribute_names, **kwargs):
        super().__init__(prefix, **kwargs)
        self.frame_shape = tuple(frame_shape)
        self.dtype = dtype
        self.attribute_names = tuple(attribute_names)
        self._file: NDHDF5File | None = None
        self._lock = asyncio.Lock()

    @file_path.putter
    async def file_path(self, instance, value):
        await self.file_path_rbv.write(value)
        await self.file_path_exists_rbv.write("Yes" if value and Path(value).is_dir() else "No")
        return value

    # ---- capture --------------------------------------------------------------------
    @capture.putter
    async def capture(self, instance, value):
        if value == "Capture":
            if self._file is not None:
                return value
            try:
                await self._open()
            except Exception as exc:
                await self._report(f"cannot capture: {exc}")
                return "Done"  # as the plugin: Capture drops back, WriteMessage says why
            return value
        await self._close()
        return value

    def _full_file_name(self) -> str:
        template = self.file_template.value
        # like the plugin's C formatting: (path, name, number), as many as the template uses
        n_fields = len(FORMAT_FIELD.findall(template))
        args = (self.file_path.value, self.file_name.value, int(self.file_number.value))[:n_fields]
        try:
            return template % args
        except (TypeError, ValueError) as exc:
            raise ValueError(f"FileTemplate {template!r} does not format (path, name, number): {exc}") from None

    async def _open(self) -> None:
        mode = self.file_write_mode.value
        if mode != SIMULATED_WRITE_MODE:
            raise ValueError(f"FileWriteMode {mode!r} is not simulated; use {SIMULATED_WRITE_MODE!r}")
        directory = Path(self.file_path.value)
        if not directory.is_dir():
            if int(self.create_directory.value) == 0:
                raise FileNotFoundError(f"FilePath {str(directory)!r} does not exist and CreateDirectory is 0")
            directory.mkdir(parents=True, exist_ok=True)
            await self.file_path_exists_rbv.write("Yes")
        full = self._full_file_name()
        swmr = self.swmr_mode.value == "On"
        async with self._lock:
            self._file = NDHDF5File(full, self.frame_shape, self.dtype, self.attribute_names, swmr=swmr)
        await self.full_file_name_rbv.write(full)
        await self.num_captured_rbv.write(0)
        await self.write_status.write("Write OK")
        await self.write_message.write("")
        await self.capture_rbv.write("Capture")

    async def _close(self) -> None:
        async with self._lock:
            file, self._file = self._file, None
            if file is not None:
                file.close()
        await self.capture.write("Done", verify_value=False)
        await self.capture_rbv.write("Done")
        if file is not None and self.auto_increment.value == "Yes":
            number = int(self.file_number.value) + 1
            await self.file_number.write(number, verify_value=False)
            await self.file_number_rbv.write(number)

    async def _report(self, message: str) -> None:
        logger.warning("%s: %s", self.prefix, message)
        await self.write_status.write("Write error")
        await self.write_message.write(message[: TEXT_LENGTH - 1])

    async def end_capture(self) -> None:
        """Stop capturing and close the file (IOC reset)."""
        await self._close()

    def close_file(self) -> None:
        """Close the capture file now (IOC shutdown)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    # ---- frames ---------------------------------------------------------------------
    async def process(self, frame, attributes: dict) -> None:
        """Receive one frame from the camera (ignored unless callbacks are enabled)."""
        if self.enable.value != "Enable":
            return
        counter = int(self.array_counter.value) + 1
        await self.array_counter.write(counter, verify_value=False)
        await self.array_counter_rbv.write(counter)
        if self._file is None:
            return
        loop = asyncio.get_running_loop()
        async with self._lock:
            file = self._file
            try:
                await loop.run_in_executor(None, file.append, frame, attributes)
            except Exception as exc:
                failed = exc
            else:
                failed = None
        if failed is not None:
            await self._report(f"writing frame {counter} to {file.path} failed: {failed}")
            await self._close()
            return
        captured = int(self.num_captured_rbv.value) + 1
        await self.num_captured_rbv.write(captured)
        if 0 < int(self.num_capture.value) <= captured:
            await self._close()

