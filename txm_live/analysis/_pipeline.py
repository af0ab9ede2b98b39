"""One staged 2D XANES pipeline for live analysis, replay and batch files (private module).

Labelled frames go in, in any order; an aligned absorbance stack, partial maps and the
final maps come out. The stages, each decided from frame *labels* and never from arrival
order or file position, so that live, replayed and batch runs give the same numbers:

1. **dark/flat state** — the dark is the per-pixel median of all darks, the flat for
   energy index ``i`` the median of the flats at the planned flat energy index nearest to
   ``i`` (ties: the earlier in scan order), each zinger-cleaned once
   (:func:`remove_zingers`), as soon as they are complete;
2. **per-frame correction** — the frame's own zingers removed, then
   :func:`flat_dark_correct` to absorbance (or frames that arrive already corrected:
   :meth:`Xanes2DPipeline.add_absorbance` / :meth:`~Xanes2DPipeline.add_transmission`);
3. **registration in frame-index order** — sample frames ``(energy_index, repeat)`` in
   scan order through one :class:`StackAligner`, shifted into place, averaged per energy
   into the stack ``(n_energies, ny, nx)``;
4. **maps** — :func:`partial_xanes_maps` every ``partial_every`` energies while the stack
   grows, :func:`fit_xanes` on the whole stack at the end.

Re-taken frames
---------------
A pause or a suspender makes the RunEngine re-run the plan from its last checkpoint, so a
frame may arrive twice with the same :class:`FrameLabel`. The rule: **the later frame
with a label replaces the earlier one**. The frame announced last is provisional — it
is not used until a frame with a different label arrives (or :meth:`finish`), because only
it can still be re-taken when every frame has its own checkpoint (as the plan stubs in
:mod:`txm_live.plans.stubs` do). A frame re-taken after it was already used (a plan
without per-frame checkpoints) is ignored and noted in :attr:`Xanes2DPipeline.notes`.

Results the pipeline cannot stand behind
----------------------------------------
:attr:`Xanes2DPipeline.quality_warnings` lists what makes the maps suspect, and
:attr:`~Xanes2DPipeline.quality` is ``'suspect'`` when it is not empty (else ``'ok'``):

* **saturation** — pixels of a flat or a sample frame at the detector's full scale
  (``saturation_counts``; by default the raw frames' integer maximum, 65535 for uint16)
  after zinger removal: their absorbance is NaN (a clipped flat would give a finite
  absorbance that is too low), and how many is reported per flat set and for the frames;
* **registration** — a frame whose shift is beyond the aligner's search range or whose
  correlation peak says it did not match its reference (:class:`StackAligner`'s
  ``suspect``): its maps pixels may be misplaced.

Public names are re-exported by :mod:`txm_live.analysis`.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._flatdark import flat_dark_correct, full_scale_counts, remove_zingers, transmission_to_absorbance
from ._partial import XanesMaps, partial_xanes_maps, sample_mask
from ._registration import StackAligner, apply_shifts
from ._xanes import fit_xanes

__all__ = [
    "FRAME_TYPES",
    "NO_ENERGY_INDEX",
    "QUALITY_OK",
    "QUALITY_SUSPECT",
    "EnergyCompleted",
    "FrameAligned",
    "FrameLabel",
    "Xanes2DPipeline",
    "XanesScanLayout",
]

#: What a frame is: shutter closed, sample out of the beam, or sample in the beam.
FRAME_TYPES = ("dark", "flat", "sample")
#: ``energy_index`` of frames not taken at an energy of the list (darks).
NO_ENERGY_INDEX = -1
REGISTRATION_MODES = ("running_mean", "reference", "neighbour", "none")
#: A flat whose median lies fewer than this many dark-noise sigmas above the dark saw no beam.
FLAT_MIN_SIGNAL_TO_NOISE = 10.0
#: A sample frame with a finite absorbance in fewer than this fraction of its pixels is reported.
MIN_FINITE_FRACTION = 0.5
#: Median absolute deviation → standard deviation of a normal distribution.
MAD_TO_SIGMA = 1.4826
#: ``Xanes2DPipeline.quality``: nothing to report, or see ``quality_warnings``.
QUALITY_OK, QUALITY_SUSPECT = "ok", "suspect"


@dataclass(frozen=True, order=True)
class FrameLabel:
    """What a frame is, as the plan recorded it with the frame.

    Attributes
    ----------
    frame_type : {'dark', 'flat', 'sample'}
    energy_index : int
        Position of the frame's energy in the scan's energy list (scan order);
        :data:`NO_ENERGY_INDEX` (-1) for darks.
    repeat : int
        0, 1, ... for the frames of one type taken at one energy (for darks: the dark's
        number).
    """

    frame_type: str
    energy_index: int
    repeat: int

    def __post_init__(self):
        if self.frame_type not in FRAME_TYPES:
            raise ValueError(f"frame_type must be one of {FRAME_TYPES}; got {self.frame_type!r}")
        for name in ("energy_index", "repeat"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"{name} must be an integer; got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.repeat < 0 or self.energy_index < NO_ENERGY_INDEX:
            raise ValueError(f"repeat must be >= 0 and energy_index >= {NO_ENERGY_INDEX}; got {self}")


def _positive_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return int(value)


@dataclass(frozen=True, eq=False)
class XanesScanLayout:
    """What a 2D XANES scan planned to measure (from its start document or file).

    Attributes
    ----------
    energies_ev : ndarray, shape (n_energies,)
        Energies in scan order, eV; ``energy_index`` counts in this list.
    frames_per_energy : int
        Sample frames per energy (averaged after alignment).
    n_darks : int
        Darks planned (0: none; the dark is then zero).
    flats_per_energy : int
        Flats per set (their median is the flat).
    flat_energy_indices : tuple of int
        Energy indices at which flat sets are taken; default every energy.
    """

    energies_ev: np.ndarray
    frames_per_energy: int = 1
    n_darks: int = 0
    flats_per_energy: int = 1
    flat_energy_indices: tuple[int, ...] | None = None

    def __post_init__(self):
        e = np.array(self.energies_ev, dtype=float).ravel()
        if e.size == 0 or not np.all(np.isfinite(e)):
            raise ValueError(f"energies_ev must be a non-empty list of finite energies (eV); got {self.energies_ev!r}")
        object.__setattr__(self, "energies_ev", e)
        object.__setattr__(self, "frames_per_energy", _positive_int("frames_per_energy", self.frames_per_energy, 1))
        object.__setattr__(self, "n_darks", _positive_int("n_darks", self.n_darks, 0))
        object.__setattr__(self, "flats_per_energy", _positive_int("flats_per_energy", self.flats_per_energy, 1))
        fei = range(e.size) if self.flat_energy_indices is None else self.flat_energy_indices
        fei = tuple(int(i) for i in fei)
        if not fei or sorted(set(fei)) != list(fei) or fei[0] < 0 or fei[-1] >= e.size:
            raise ValueError(
                f"flat_energy_indices must be increasing indices into the {e.size} energies; got {fei!r}")
        object.__setattr__(self, "flat_energy_indices", fei)

    @property
    def n_energies(self) -> int:
        return int(self.energies_ev.size)

    @property
    def n_sample_frames(self) -> int:
        return self.n_energies * self.frames_per_energy

    def flat_position(self, energy_index: int, available=None) -> int | None:
        """Index into :attr:`flat_energy_indices` of the flats nearest ``energy_index``.

        Ties go to the earlier set in scan order. ``available`` limits the choice to
        those positions; None when it is empty.
        """
        positions = range(len(self.flat_energy_indices)) if available is None else available
        best = None
        for p in positions:
            d = abs(self.flat_energy_indices[p] - energy_index)
            if best is None or d < best[0]:
                best = (d, p)
        return None if best is None else best[1]


@dataclass(frozen=True)
class FrameAligned:
    """A sample frame was corrected and registered (one drift row)."""

    label: FrameLabel
    frame_index: int          # energy_index * frames_per_energy + repeat
    energy_ev: float
    shift_px: tuple[float, float]


@dataclass(frozen=True)
class EnergyCompleted:
    """An energy's frames are in the stack (one spectrum row)."""

    energy_index: int
    energy_ev: float
    mean_absorbance: float
    n_energies: int            # energies in the stack now


@dataclass
class _Frame:
    image: np.ndarray
    source: Any = None
    cleaned: np.ndarray | None = None   # zingers removed ahead of time (same numbers, earlier)


@dataclass
class _FlatDarkState:
    """The dark and the flats by flat position, combined and cleaned once."""

    zinger_sigma: float | None
    saturation_counts: float = np.inf
    dark: np.ndarray | None = None
    flats: dict = field(default_factory=dict)   # flat position -> cleaned flat
    n_pixels: int = 0                           # pixels of a frame
    n_saturated_frames: int = 0                 # sample frames with saturated pixels
    max_saturated_px: int = 0                   # most saturated pixels in one of them

    def combine_dark(self, frames: list[np.ndarray], shape) -> np.ndarray:
        if not frames:
            self.dark = np.zeros(shape, np.float32)
            return self.dark
        stack = np.stack(frames).astype(np.float32)
        dark = np.median(stack, axis=0) if len(stack) > 1 else stack[0]
        if len(stack) < 3 and self.zinger_sigma is not None:  # as flat_dark_correct does
            dark, _ = remove_zingers(dark, None, sigma=self.zinger_sigma)
        self.dark = dark
        return dark

    def clean(self, image: np.ndarray) -> np.ndarray:
        """One frame (or a single flat) with its zingers removed against the dark."""
        if self.zinger_sigma is None:
            return image
        return remove_zingers(image.astype(np.float32, copy=False), self.dark, sigma=self.zinger_sigma)[0]

    def combine_flat(self, position: int, frames: list[_Frame]) -> np.ndarray:
        if len(frames) == 1 and frames[0].cleaned is not None:
            flat = frames[0].cleaned
        else:
            stack = np.stack([f.image for f in frames]).astype(np.float32)
            flat = self.clean(np.median(stack, axis=0) if len(stack) > 1 else stack[0])
        self._check_flat_above_dark(position, flat)
        self.flats[position] = flat
        return flat

    def _check_flat_above_dark(self, position: int, flat: np.ndarray) -> None:
        """Raise when the flat is no brighter than the dark (shutter closed, beam off, wrong frames)."""
        if self.dark is None or not np.any(self.dark):
            return  # no dark measured: nothing to compare with
        signal = float(np.nanmedian(flat - self.dark))
        noise = float(np.nanmedian(np.abs(self.dark - np.nanmedian(self.dark)))) * MAD_TO_SIGMA + 1.0
        if not signal > FLAT_MIN_SIGNAL_TO_NOISE * noise:
            raise ValueError(
                f"the flat of flat set {position} is only {signal:.1f} counts above the dark (median), "
                f"expected at least {FLAT_MIN_SIGNAL_TO_NOISE:g} x the dark's noise ({noise:.1f} counts): "
                "no beam on the detector (shutter closed? beam lost?); the frames cannot be corrected")

    def correct(self, frame: _Frame, flat: np.ndarray) -> np.ndarray:
        raw = frame.cleaned if frame.cleaned is not None else self.clean(frame.image)
        n_saturated = self.count_saturated(raw)
        if n_saturated:
            self.n_saturated_frames += 1
            self.max_saturated_px = max(self.max_saturated_px, n_saturated)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # dead and saturated pixels -> NaN, counted here
            return flat_dark_correct(raw, flat, self.dark, zinger_sigma=None,
                                     saturation_counts=self.saturation_counts)

    def count_saturated(self, image: np.ndarray) -> int:
        """Pixels at or above the full scale (after zinger removal)."""
        self.n_pixels = image.size
        return int(np.count_nonzero(image >= self.saturation_counts))


class Xanes2DPipeline:
    """Labelled frames → aligned absorbance stack → partial and final XANES maps.

    Parameters
    ----------
    layout : XanesScanLayout
        What the scan planned (energies in scan order, frames per energy, darks, flats).
    registration_mode : {'running_mean', 'reference', 'neighbour', 'none'}
        :class:`StackAligner` mode, or no registration. Default ``'running_mean'``.
    roi : tuple of two slices, optional
        Region used for registration.
    zinger_sigma : float or None
        :func:`remove_zingers` threshold for darks, flats and frames; None: off.
    fit_params : dict, optional
        Keyword arguments for :func:`fit_xanes` (partial and final maps).
    partial_every : int
        Partial maps every this many energies (0: none).
    min_partial_energies : int
        No partial maps before this many energies are in the stack.
    saturation_counts : float, optional
        The detector's full-scale reading (counts); default the largest value of the
        first raw frame's integer dtype (none for float frames). See
        :attr:`quality_warnings`.
    max_shift_px : float, optional
        Registration search range (px); default :class:`StackAligner`'s.

    Notes
    -----
    :meth:`add_frame` (raw counts) or :meth:`add_absorbance` / :meth:`add_transmission`
    (already corrected; one kind per pipeline) return the steps they completed —
    :class:`FrameAligned`, :class:`EnergyCompleted` and :class:`XanesMaps` (partial) —
    in processing order; :meth:`finish` processes what is left (using the nearest flats
    that exist), and :meth:`fit_final` returns the final maps. See the module docstring
    for the stages and the rule for re-taken frames.

    Examples
    --------
    >>> pipe = Xanes2DPipeline(XanesScanLayout(energies, n_darks=1))  # doctest: +SKIP
    >>> pipe.add_frame(FrameLabel("dark", -1, 0), dark)                # doctest: +SKIP
    >>> for i, (frame, flat) in enumerate(zip(frames, flats)):         # doctest: +SKIP
    ...     pipe.add_frame(FrameLabel("sample", i, 0), frame)
    ...     pipe.add_frame(FrameLabel("flat", i, 0), flat)
    >>> pipe.finish(); maps = pipe.fit_final()                         # doctest: +SKIP
    """

    def __init__(self, layout: XanesScanLayout, *, registration_mode: str = "running_mean", roi=None,
                 zinger_sigma: float | None = 10.0, fit_params: dict | None = None,
                 partial_every: int = 10, min_partial_energies: int = 20,
                 saturation_counts: float | None = None, max_shift_px: float | None = None):
        if not isinstance(layout, XanesScanLayout):
            raise TypeError(f"layout must be a XanesScanLayout; got {type(layout).__name__}")
        if registration_mode not in REGISTRATION_MODES:
            raise ValueError(f"registration_mode must be one of {REGISTRATION_MODES}; got {registration_mode!r}")
        if zinger_sigma is not None and not zinger_sigma > 0:
            raise ValueError(f"zinger_sigma must be > 0 or None; got {zinger_sigma!r}")
        if saturation_counts is not None and not saturation_counts > 0:
            raise ValueError(f"saturation_counts must be > 0 counts or None; got {saturation_counts!r}")
        self.saturation_counts = saturation_counts
        self.layout = layout
        self.registration_mode = registration_mode
        self.fit_params = dict(fit_params or {})
        self.partial_every = _positive_int("partial_every", partial_every, 0)
        self.min_partial_energies = _positive_int("min_partial_energies", min_partial_energies, 0)
        self._aligner = None if registration_mode == "none" else StackAligner(
            mode=registration_mode, roi=roi, max_shift_px=max_shift_px)
        self._state = _FlatDarkState(zinger_sigma)
        self._kind: str | None = None                 # 'raw' or 'absorbance', fixed by the first frame
        self._frames: dict[FrameLabel, _Frame] = {}   # announced, not yet used
        self._provisional: FrameLabel | None = None   # announced last: may still be re-taken
        self._used: set[FrameLabel] = set()
        self._next = 0                                # next sample frame in (energy_index, repeat) order
        self._energy_frames: list[np.ndarray] = []
        self._stack: np.ndarray | None = None
        self._n_stack = 0
        self._finished = False
        #: Source (e.g. ``(stream, row)``) of the frame used for each label.
        self.sources: dict[FrameLabel, Any] = {}
        #: Labels of the sample frames registered, in processing order, and their shifts.
        self.aligned_labels: list[FrameLabel] = []
        self.shifts: list[tuple[float, float]] = []
        self.mean_spectrum: list[float] = []
        self.sample_mask: np.ndarray | None = None
        self.partial: XanesMaps | None = None
        self.final: XanesMaps | None = None
        #: Frames replaced by a later frame with the same label.
        self.n_retaken = 0
        #: What the pipeline could not use, in words.
        self.notes: list[str] = []
        self._saturated_flats: list[tuple[int, int]] = []   # (energy index, pixels at full scale)
        self._suspect_frames: list[tuple[FrameLabel, str]] = []

    # ---- input ------------------------------------------------------------------------
    def add_frame(self, label: FrameLabel, image, *, source=None) -> list:
        """Announce a raw frame (counts); returns the steps it completed."""
        return self._announce(label, np.asarray(image), source, "raw")

    def add_absorbance(self, label: FrameLabel, absorbance, *, source=None) -> list:
        """Announce an already corrected sample frame (absorbance); returns the steps."""
        if label.frame_type != "sample":
            raise ValueError(f"corrected frames are sample frames; got {label}")
        return self._announce(label, np.asarray(absorbance), source, "absorbance")

    def add_transmission(self, label: FrameLabel, transmission, *, source=None) -> list:
        """Announce a normalized transmission frame ``(I-D)/(F-D)`` (FXI's ``img_xanes``).

        Values that are not positive and finite (FXI writes 0 for invalid pixels) become
        NaN absorbance.
        """
        return self.add_absorbance(label, transmission_to_absorbance(transmission), source=source)

    def _announce(self, label: FrameLabel, image: np.ndarray, source, kind: str) -> list:
        if not isinstance(label, FrameLabel):
            raise TypeError(f"label must be a FrameLabel; got {label!r}")
        if self._finished:
            raise RuntimeError(f"the pipeline has finished; frame {label} came too late")
        if image.ndim != 2:
            raise ValueError(f"frame {label} must be 2-D (ny, nx); got shape {image.shape}")
        if self._kind is None:
            self._kind = kind
            self._set_saturation(image.dtype)
        elif self._kind != kind:
            raise ValueError(f"frame {label} is {kind} but this pipeline takes {self._kind} frames")
        if self._provisional is not None and self._provisional != label:
            self._provisional = None  # a different frame came: the previous one is final
        if label in self._used:
            self.notes.append(f"{label} re-taken after it was used; the first take is kept")
            return []
        if label in self._frames:
            self.n_retaken += 1
        self._frames[label] = _Frame(image, source)
        self._provisional = label
        steps = self._advance(final=False)
        self._clean_ahead(label)
        return steps

    def _set_saturation(self, dtype) -> None:
        level = self.saturation_counts if self.saturation_counts is not None else full_scale_counts(dtype)
        self._state.saturation_counts = np.inf if level is None else float(level)

    def _clean_ahead(self, label: FrameLabel) -> None:
        """Remove a waiting frame's zingers now (a pure function of the frame and the dark),
        so that less is left to do when it becomes usable — e.g. at the stop document."""
        frame = self._frames.get(label)
        if (frame is None or self._kind != "raw" or self._state.dark is None
                or label.frame_type == "dark" or (label.frame_type == "flat" and self.layout.flats_per_energy > 1)):
            return
        frame.cleaned = self._state.clean(frame.image)

    def finish(self) -> list:
        """Every frame is final: process what is left; returns the steps completed."""
        self._provisional = None
        steps = self._advance(final=True)
        self._finished = True
        left = sorted(label for label in self._frames if label.frame_type == "sample")
        if left:
            self.notes.append(f"{len(left)} sample frame(s) not used (an energy before them is "
                              f"incomplete): {left[0]} ...")
        self._frames.clear()
        return steps

    @property
    def quality_warnings(self) -> list[str]:
        """What makes the result suspect, in words (see the module docstring); [] if nothing."""
        out = []
        state = self._state
        if self._saturated_flats:
            (first, n_first), worst = self._saturated_flats[0], max(n for _, n in self._saturated_flats)
            n_sets = len(self.layout.flat_energy_indices)
            out.append(f"saturation: the flats at {len(self._saturated_flats)} of {n_sets} flat energies have pixels "
                       f"at the detector's full scale (>= {state.saturation_counts:g} counts), from energy index "
                       f"{first} ({n_first} pixels; up to {worst} of {state.n_pixels}): their absorbance is NaN, not "
                       "the too-low finite value a clipped flat gives")
        if state.n_saturated_frames:
            out.append(f"saturation: {state.n_saturated_frames} sample frame(s) have pixels at the detector's full "
                       f"scale (>= {state.saturation_counts:g} counts; up to {state.max_saturated_px} in one "
                       "frame): their absorbance is NaN")
        if self._suspect_frames:
            label, problem = self._suspect_frames[0]
            out.append(f"registration: {len(self._suspect_frames)} of {len(self.shifts)} sample frame(s) may be "
                       f"misplaced, from {label}: {problem}")
        return out

    @property
    def quality(self) -> str:
        """``'ok'``, or ``'suspect'`` when :attr:`quality_warnings` says why."""
        return QUALITY_SUSPECT if self.quality_warnings else QUALITY_OK

    def fit_final(self) -> XanesMaps:
        """:func:`fit_xanes` on the whole stack: the final maps (also :attr:`final`)."""
        n = self._n_stack
        if n == 0:
            raise RuntimeError("no complete energy was measured")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # NaN pixels at the borders are in the status map
            result = fit_xanes(self.stack, self.layout.energies_ev[:n], **self.fit_params)
        self.final = XanesMaps.from_result(result, n_energies=n, final=True)
        return self.final

    # ---- state ------------------------------------------------------------------------
    @property
    def stack(self) -> np.ndarray:
        """Aligned absorbance so far, one frame per energy in scan order: (n, ny, nx) float32."""
        if self._stack is None:
            return np.empty((0, 0, 0), np.float32)
        return self._stack[: self._n_stack]

    @property
    def energies_done_ev(self) -> np.ndarray:
        """Energies of :attr:`stack`, eV."""
        return self.layout.energies_ev[: self._n_stack]

    @property
    def result(self):
        """The final :class:`XanesResult` (None before :meth:`fit_final`)."""
        return None if self.final is None else self.final.result

    def release(self) -> None:
        """Drop the stack and every frame (keeps the final maps, spectrum and drift)."""
        self._stack = None
        self._n_stack = 0
        self._frames.clear()
        self._energy_frames = []
        self._state = _FlatDarkState(self._state.zinger_sigma, self._state.saturation_counts)

    # ---- stages -----------------------------------------------------------------------
    def _usable(self, label: FrameLabel, final: bool) -> bool:
        return label in self._frames and (final or label != self._provisional)

    def _take(self, label: FrameLabel) -> _Frame:
        frame = self._frames.pop(label)
        self._used.add(label)
        self.sources[label] = frame.source
        return frame

    def _dark(self, final: bool):
        if self._state.dark is not None:
            return self._state.dark
        planned = [FrameLabel("dark", NO_ENERGY_INDEX, r) for r in range(self.layout.n_darks)]
        if not final and not all(self._usable(label, final) for label in planned):
            return None
        darks = sorted(label for label in self._frames if label.frame_type == "dark"
                       and self._usable(label, final))
        if len(darks) < self.layout.n_darks:
            self.notes.append(
                f"{len(darks)} of the {self.layout.n_darks} planned dark frames arrived; "
                + ("the dark is taken as 0 counts, so the absorbance is biased by the detector's offset"
                   if not darks else "the dark is the median of those"))
        shape = next(iter(self._frames.values())).image.shape
        return self._state.combine_dark([self._take(label).image for label in darks], shape)

    def _flat_labels(self, position: int, final: bool):
        energy_index = self.layout.flat_energy_indices[position]
        labels = [FrameLabel("flat", energy_index, r) for r in range(self.layout.flats_per_energy)]
        return labels if all(self._usable(label, final) for label in labels) else None

    def _flat(self, energy_index: int, final: bool):
        position = self.layout.flat_position(energy_index)
        if position in self._state.flats:
            return self._state.flats[position]
        labels = self._flat_labels(position, final)
        if labels is None:
            if not final:
                return None
            complete = [p for p in range(len(self.layout.flat_energy_indices))
                        if p in self._state.flats or self._flat_labels(p, True) is not None]
            position = self.layout.flat_position(energy_index, complete)
            if position is None:
                raise RuntimeError("no complete set of flat frames was measured; cannot correct the frames")
            if position in self._state.flats:
                return self._state.flats[position]
            labels = self._flat_labels(position, True)
        flat = self._state.combine_flat(position, [self._take(label) for label in labels])
        n_saturated = self._state.count_saturated(flat)
        if n_saturated:
            self._saturated_flats.append((self.layout.flat_energy_indices[position], n_saturated))
        return flat

    def _absorbance(self, label: FrameLabel, final: bool):
        """The frame's absorbance once its dark and flat exist (None: not yet)."""
        if self._kind == "absorbance":
            return self._take(label).image
        if self._dark(final) is None:
            return None
        flat = self._flat(label.energy_index, final)
        if flat is None:
            return None
        return self._state.correct(self._take(label), flat)

    def _advance(self, final: bool) -> list:
        steps: list = []
        fpe = self.layout.frames_per_energy
        while self._next < self.layout.n_sample_frames:
            label = FrameLabel("sample", *divmod(self._next, fpe))
            if not self._usable(label, final):
                break
            absorbance = self._absorbance(label, final)
            if absorbance is None:
                break
            steps.append(self._register(label, absorbance))
            self._next += 1
            if label.repeat == fpe - 1:
                steps.extend(self._complete_energy(label.energy_index))
        return steps

    def _register(self, label: FrameLabel, absorbance: np.ndarray) -> FrameAligned:
        finite = float(np.isfinite(absorbance).mean())
        if finite < MIN_FINITE_FRACTION:
            self.notes.append(
                f"sample frame {label} ({self.layout.energies_ev[label.energy_index]:g} eV): only {finite:.0%} of "
                "its pixels have a finite absorbance (non-finite counts, or not above the dark); the maps "
                "rest on the other energies there")
        if self._aligner is None:
            shift, aligned = (0.0, 0.0), absorbance.astype(np.float32, copy=False)
        else:
            shift = self._aligner.add(absorbance)
            aligned = apply_shifts(absorbance[None], [shift])[0]
            problem = self._aligner.suspect.get(len(self._aligner.shifts) - 1)
            if problem is not None:
                self._suspect_frames.append((label, problem))
        self._energy_frames.append(aligned)
        self.aligned_labels.append(label)
        self.shifts.append(shift)
        frame_index = label.energy_index * self.layout.frames_per_energy + label.repeat
        return FrameAligned(label, frame_index, float(self.layout.energies_ev[label.energy_index]), shift)

    def _complete_energy(self, energy_index: int) -> list:
        frames, self._energy_frames = self._energy_frames, []
        image = frames[0] if len(frames) == 1 else np.mean(frames, axis=0, dtype=np.float32)
        if self._stack is None:
            self._stack = np.empty((self.layout.n_energies,) + image.shape, np.float32)
        self._stack[self._n_stack] = image
        self._n_stack += 1
        if self.sample_mask is None:
            self.sample_mask = sample_mask(image)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a frame with no finite pixel: noted in _register
            value = float(np.nanmean(image[self.sample_mask])) if self.sample_mask.any() else float("nan")
        self.mean_spectrum.append(value)
        steps: list = [EnergyCompleted(energy_index, float(self.layout.energies_ev[energy_index]), value,
                                       self._n_stack)]
        n = self._n_stack
        if self.partial_every and n >= self.min_partial_energies and n % self.partial_every == 0:
            maps = self._partial_maps()
            if maps is not None:
                self.partial = maps
                steps.append(maps)
        return steps

    def _partial_maps(self) -> XanesMaps | None:
        """Partial maps are for watching: a failure is noted and the analysis goes on."""
        try:
            return partial_xanes_maps(self.stack, self.energies_done_ev, mean_spectrum=self.mean_spectrum,
                                      mask=self.sample_mask, fit_params=self.fit_params)
        except Exception as exc:
            self.notes.append(f"partial maps at {self._n_stack} energies failed: {type(exc).__name__}: {exc}")
            return None
