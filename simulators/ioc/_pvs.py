"""pvproperty shorthands for areaDetector-style PVs: settings echoed to ``<name>_RBV``.

areaDetector pairs every setting ``X`` with a readback ``X_RBV`` that the driver updates
once it has accepted the value. Declare the pair as two class attributes, ``x`` and
``x_rbv``; :func:`setting` gives ``x`` a putter that writes the accepted value to
``x_rbv``. Strings longer than 40 characters (paths, file names) are CHAR waveforms, as
in areaDetector; ophyd reads them with ``string=True``.
"""
from __future__ import annotations

import numpy as np
from caproto import ChannelType, native_type
from caproto.server import PvpropertyChar, pvproperty

__all__ = ["setting", "readback", "enum_setting", "enum_readback", "text_setting", "text_readback"]

#: Longest path or file name the CHAR waveforms hold.
TEXT_LENGTH = 512


async def echo_to_readback(group, instance, value):
    """Default putter of a setting: accept ``value`` and show it on ``<attr>_rbv``."""
    await getattr(group, instance.pvspec.attr + "_rbv").write(value)
    return value


def setting(name: str, value, *, put=echo_to_readback, **kwargs):
    return pvproperty(name=name, value=value, put=put, **kwargs)


def readback(name: str, value, **kwargs):
    return pvproperty(name=name, value=value, read_only=True, **kwargs)


def enum_setting(name: str, value: str, strings, **kwargs):
    return setting(name, value, dtype=ChannelType.ENUM, enum_strings=tuple(strings), **kwargs)


def enum_readback(name: str, value: str, strings, **kwargs):
    return readback(name, value, dtype=ChannelType.ENUM, enum_strings=tuple(strings), **kwargs)


class TextData(PvpropertyChar):
    """A CHAR waveform holding text that also accepts the empty string from clients.

    caproto 1.3 fails to convert an empty CHAR write (a single NUL) and refuses the put,
    so restoring an empty ``FileName`` would fail; this stores it as ``''``.
    """

    async def write_from_dbr(self, data, data_type, metadata, *, flags=0):
        if native_type(data_type) == ChannelType.CHAR and not np.asarray(data, np.uint8).tobytes().strip(b"\0"):
            return await self.write("", flags=flags)
        return await super().write_from_dbr(data, data_type, metadata, flags=flags)


def _text_kwargs():
    return dict(dtype=TextData, max_length=TEXT_LENGTH, string_encoding="utf-8")


def text_setting(name: str, value: str = "", **kwargs):
    return setting(name, value, **_text_kwargs(), **kwargs)


def text_readback(name: str, value: str = "", **kwargs):
    return readback(name, value, **_text_kwargs(), **kwargs)
