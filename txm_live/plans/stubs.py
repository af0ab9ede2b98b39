"""Plan stubs every TXM plan is built from: darks, flats, energy moves, labelled frames.

Each stub is a generator of bluesky messages, in the style of ``bluesky.plan_stubs``.
Every step begins with ``bps.checkpoint()``: a pause (``RE.request_pause``) or a
suspender (beam lost) makes the RunEngine rewind to the last checkpoint and re-run from
there, so it re-takes exactly the step that was in flight — one frame, or one move —
and never a frame whose event was already saved *before* that step began. The frame
re-taken carries the same label as the one it replaces (see
:mod:`txm_live.devices.label`); the analysis keeps the later one.

Device protocol (what the stubs expect; simulated and EPICS devices both satisfy it):

``detector``
    ``trigger()`` / ``read()`` / ``describe()``, frames written to files and referenced
    by ``stream_resource``/``stream_datum`` (or ``resource``/``datum``) documents; a
    settable ``frame_type`` signal ('dark' | 'flat' | 'sample') that routes the frame
    (e.g. to its dataset); optionally ``exposure_time`` (s).
``label``
    A :class:`txm_live.devices.label.FrameLabelDevice` (soft signals ``type``,
    ``energy_index``, ``repeat``, ``energy_ev``), read in the same event as the detector.
``energy``
    A positioner in eV. Focus tracking is the device's job: an energy device with
    :class:`txm_live.devices.energy.FocusTrackingMixin` moves zone plate and detector
    in the same ``set``.
``shutter``
    Settable to ``'open'`` / ``'close'``.
``sample_stage``
    Has positioners ``x`` and ``y`` in µm.

Streams: darks go to ``'dark'``, flats to ``'flat'``, sample frames to ``'primary'``
(overridable with ``stream=``); every event holds the label fields, the detector's
frame reference and whatever ``readables`` are passed (e.g. energy, zone plate and
detector positions).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

from bluesky import plan_stubs as bps

__all__ = ["acquire_frame", "acquire_frames", "acquire_projection", "move_energy", "move_sample", "set_shutter",
           "take_darks", "take_flats"]

#: ``energy_index`` recorded with darks (not taken at an energy of the list).
NO_ENERGY_INDEX = -1


def set_shutter(shutter, state: str):
    """Checkpoint, then open or close the shutter (``state`` 'open' | 'close')."""
    yield from bps.checkpoint()
    yield from bps.mv(shutter, state)


def move_energy(energy, energy_ev: float):
    """Checkpoint, then move the monochromator to ``energy_ev`` (eV).

    Focus tracking happens in the energy device itself (zone plate and detector move in
    the same ``set``), so a pause during the move repeats the whole refocused move.
    """
    yield from bps.checkpoint()
    yield from bps.mv(energy, float(energy_ev))


def move_sample(sample_stage, x_um: float, y_um: float):
    """Checkpoint, then move the sample stage to ``(x_um, y_um)`` (absolute, µm)."""
    yield from bps.checkpoint()
    yield from bps.mv(sample_stage.x, float(x_um), sample_stage.y, float(y_um))


def acquire_frame(detector, label, *, frame_type: str, energy_index: int, repeat: int,
                  energy_ev: float = math.nan, readables: Sequence = (), stream: str = "primary"):
    """One labelled frame: checkpoint, set the label and ``detector.frame_type``, trigger and read.

    Parameters
    ----------
    detector, label
        See the module docstring.
    frame_type : {'dark', 'flat', 'sample'}
    energy_index : int
        Index into the scan's energy list; -1 for darks.
    repeat : int
        Frame number among those of this type at this energy.
    energy_ev : float
        Energy recorded in the label, eV (NaN for darks).
    readables : sequence
        Also read in the event (positions of the energy, zone plate, detector ...).
    stream : str
        Event stream name.
    """
    yield from bps.checkpoint()
    yield from bps.mv(label.type, frame_type, label.energy_index, int(energy_index),
                      label.repeat, int(repeat), label.energy_ev, float(energy_ev),
                      detector.frame_type, frame_type)
    return (yield from bps.trigger_and_read([detector, label, *readables], name=stream))


def acquire_projection(detector, label, angle, *, index: int, energy_index: int, energy_ev: float = math.nan,
                       readables: Sequence = (), stream: str = "primary", checkpoint: bool = True):
    """One labelled projection with its angle read from the rotation stage.

    The label is ``('sample', energy_index, index)``: ``repeat`` is the projection's index
    in acquisition order, so a projection re-taken after a pause carries the same label
    as the one it replaces. ``angle`` (a :class:`txm_live.devices.rotation.FrameAngleSignal`)
    is triggered before the detector and read after it, so the event's ``theta_rad`` is
    the stage's readback around the exposure.

    Parameters
    ----------
    detector, label
        See the module docstring.
    angle : FrameAngleSignal
        The projection angle's signal (data key ``theta_rad``).
    index : int
        Projection number, 0, 1, ... in acquisition order.
    energy_index, energy_ev
        The scan's energy (index into the start document's ``energies_ev``).
    readables : sequence
        Also read in the event (e.g. the rotation stage itself).
    stream : str
    checkpoint : bool
        Begin with a checkpoint (step scans). A fly scan's projections have none: the
        rotation does not stop between them, so a pause re-takes the whole rotation from
        the checkpoint before it, every projection under its own label again.
    """
    if checkpoint:
        yield from bps.checkpoint()
    yield from bps.mv(label.type, "sample", label.energy_index, int(energy_index), label.repeat, int(index),
                      label.energy_ev, float(energy_ev), detector.frame_type, "sample")
    return (yield from bps.trigger_and_read([angle, detector, label, *readables], name=stream))


def acquire_frames(detector, label, n: int, *, frame_type: str = "sample", energy_index: int,
                   energy_ev: float = math.nan, readables: Sequence = (), stream: str = "primary",
                   first_repeat: int = 0):
    """``n`` labelled frames (repeats ``first_repeat`` … ``first_repeat + n - 1``) of one type at
    one energy; each checkpointed."""
    for repeat in range(int(first_repeat), int(first_repeat) + int(n)):
        yield from acquire_frame(detector, label, frame_type=frame_type, energy_index=energy_index,
                                 repeat=repeat, energy_ev=energy_ev, readables=readables, stream=stream)


def take_darks(detector, label, shutter, n: int, *, readables: Sequence = (), stream: str = "dark"):
    """Close the shutter and take ``n`` darks (label energy index -1); the shutter stays closed."""
    if n <= 0:
        return
    yield from set_shutter(shutter, "close")
    yield from acquire_frames(detector, label, n, frame_type="dark", energy_index=NO_ENERGY_INDEX,
                              readables=readables, stream=stream)


def take_flats(detector, label, sample_stage, n: int, *, sample_in_um: tuple[float, float],
               sample_out_um: tuple[float, float], energy_index: int, energy_ev: float,
               readables: Sequence = (), stream: str = "flat", first_repeat: int = 0):
    """Move the sample out, take ``n`` flats, move it back in.

    Parameters
    ----------
    sample_in_um, sample_out_um : (float, float)
        Absolute ``(x, y)`` positions in µm: where the sample is measured and where it is
        out of the field of view. Absolute positions make a re-run after a pause land in
        the same place.
    energy_index, energy_ev
        The energy the flats belong to (its label).
    first_repeat : int
        ``repeat`` of the first flat (a second set at the same energy, e.g. a tomography's
        flats after the rotation, continues the numbering so every flat has its own label).
    """
    yield from move_sample(sample_stage, *sample_out_um)
    yield from acquire_frames(detector, label, n, frame_type="flat", energy_index=energy_index,
                              energy_ev=energy_ev, readables=readables, stream=stream,
                              first_repeat=first_repeat)
    yield from move_sample(sample_stage, *sample_in_um)
