"""The frame label: what each frame is, recorded in the event beside the frame.

A plan sets the label's soft signals before every frame and reads the label in the same
event as the detector (:mod:`txm_live.plans.stubs` does both), so every event says what
its frame is — frame type, energy index, repeat and energy — whatever the detector is
(simulated or EPICS: the detector protocol does not change). The analysis identifies
frames by these fields, never by their position in a file, so a frame re-taken after a
pause or a suspender is recognised as the same frame.

Event data keys (the device is named ``frame`` by :func:`make_frame_label`):

=====================  ======  =================================================
key                    dtype   meaning
=====================  ======  =================================================
``frame_type``         string  'dark' (shutter closed), 'flat' (sample out),
                               'sample' (sample in the beam)
``frame_energy_index`` int     index into the start document's ``energies_ev``
                               (scan order); -1 for darks
``frame_repeat``       int     0, 1, ... among the frames of one type at one
                               energy (darks: the dark's number)
``frame_energy_ev``    float   the energy the plan moved to, eV (NaN for darks)
=====================  ======  =================================================
"""
from __future__ import annotations

import math

from ophyd import Component as Cpt
from ophyd import Device, Signal
from ophyd.status import Status

__all__ = ["FRAME_LABEL_KEYS", "FRAME_LABEL_NAME", "FrameLabelDevice", "make_frame_label"]

#: Name of the plan-owned label device; its signals' data keys follow from it.
FRAME_LABEL_NAME = "frame"
#: Field of :class:`txm_live.analysis.FrameLabel` (and the energy) -> event data key.
FRAME_LABEL_KEYS = {
    "frame_type": "frame_type",
    "energy_index": "frame_energy_index",
    "repeat": "frame_repeat",
    "energy_ev": "frame_energy_ev",
}


class LabelSignal(Signal):
    """A soft signal whose ``set`` is done once the value is stored.

    (``ophyd.Signal.set`` waits for the readback to equal the setpoint, which never
    happens for NaN — the energy of a dark.)
    """

    def set(self, value, **kwargs):
        self.put(value)
        status = Status(self)
        status.set_finished()
        return status


class FrameLabelDevice(Device):
    """Soft signals holding the label of the frame about to be taken (no hardware).

    Components ``type``, ``energy_index``, ``repeat``, ``energy_ev``; read with the
    detector in every event (see the module docstring for the data keys).
    """

    type = Cpt(LabelSignal, value="sample", kind="normal")
    energy_index = Cpt(LabelSignal, value=-1, kind="normal")
    repeat = Cpt(LabelSignal, value=0, kind="normal")
    energy_ev = Cpt(LabelSignal, value=math.nan, kind="normal")


def make_frame_label() -> FrameLabelDevice:
    """A fresh label device named :data:`FRAME_LABEL_NAME` (data keys :data:`FRAME_LABEL_KEYS`)."""
    return FrameLabelDevice(name=FRAME_LABEL_NAME)
