"""One staged tomography pipeline for live analysis, replay and batch files (private module).

Labelled frames go in (darks, flats, projections with their angle), in any order; preview
slices come out while the projections arrive and the volume at the end. The stages, each
decided from frame labels (never from arrival order), so that live, replayed and batch
runs give the same volume:

1. **dark** — the per-pixel median of the darks, fixed once the planned number has
   arrived (or when the first projection arrives, when the number is not known);
2. **zingers** — each projection's zingers and hot pixels replaced by their 3×3 median
   as soon as the dark exists (:func:`remove_zingers`; the median of integer counts is one
   of them, so the frame keeps its dtype and its memory);
3. **absorbance** — ``−ln((I − D)/(F − D))`` with the median of all flats, computed a few
   detector rows at a time when the reconstruction asks for them
   (:class:`ProjectionAbsorbance`): the pipeline holds the raw projections, never a
   float copy of the whole scan; then, optionally, :func:`remove_outliers` (zingers left,
   against the neighbouring angles) and :func:`remove_stripes` (rings) on those rows;
4. **centre** — ``center_px`` when given, else :func:`find_center` on the whole scan;
5. **reconstruction** — :func:`reconstruct` (default backend ``'nufft'``).

Previews (:class:`TomoSlice`): every ``preview_every`` projections (counted, not timed)
the slice of detector row ``preview_row`` is reconstructed from the projections so far
(a partial turn: ``allow_missing_wedge``), with ``center_px`` when given, else the centre
from opposite projections of the preview rows once the scan has them (the first step of
:func:`find_center`), else from the sinogram's centre of mass (``c + X cos θ + Z sin θ``
fitted to its column, once the angles span ``COM_MIN_SPAN_DEG``), else the detector
centre.
Before any flat has arrived (FXI takes its flats after the rotation), a preview uses each
pixel's brightest dark-subtracted value so far as its flat, and says so
(``TomoSlice.flat_source``).

A projection re-taken after a pause carries the label of the one it replaces (its index);
the later one is kept.

Public names are re-exported by :mod:`txm_live.analysis`.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from ._pipeline import FrameLabel
from ._tomo import MIN_ANGLES, TomoInputWarning, _check_angles, reconstruct, reconstruction_backends
from ._tomo_center import _pair_center, find_center
from ._tomo_prep import remove_outliers, remove_stripes

__all__ = ["ProjectionAbsorbance", "TomoPipeline", "TomoSlice", "TomoVolume"]

#: Angular span (degrees) the projections must cover before a preview's centre comes from
#: the sinogram's centre of mass (a sine fit over less is ill-conditioned).
COM_MIN_SPAN_DEG = 90.0
#: Default number of previews over a scan of known length (one every few percent).
DEFAULT_PREVIEWS = 20
_STRIPE_METHODS = (None, "mean", "sorting")


@dataclass(frozen=True)
class TomoSlice:
    """One reconstructed slice (a preview while the scan runs, or the final one).

    Attributes
    ----------
    row : int
        Detector row reconstructed.
    image : ndarray (nx, nx) float32
        Attenuation per pixel length (``reconstruct``'s units and geometry).
    center_px : float
        Centre used, detector column.
    center_method : str
        'given', 'opposite_projections', 'center_of_mass', 'detector_centre' (previews)
        or 'find_center'.
    n_projections : int
        Projections it was reconstructed from.
    final : bool
        From the whole scan with the final centre.
    flat_source : str
        'flats' or 'brightest_so_far' (no flat had arrived).
    """

    row: int
    image: np.ndarray = field(repr=False)
    center_px: float
    center_method: str
    n_projections: int
    final: bool
    flat_source: str


@dataclass(frozen=True)
class TomoVolume:
    """The reconstructed volume and what it was made with.

    Attributes
    ----------
    volume : ndarray (ny, nx, nx) float32
        ``volume[j]`` from detector row ``j`` (``reconstruct``'s geometry).
    center_px : float
    center_method : str
        'given' or 'find_center'.
    theta_rad : ndarray (n_projections,)
        Angles used, in projection-index order.
    parameters : dict
        Algorithm, its options, zinger/outlier/stripe settings.
    notes : tuple of str
        What was cleaned or skipped (invalid pixels, re-taken frames, ...).
    """

    volume: np.ndarray = field(repr=False)
    center_px: float
    center_method: str
    theta_rad: np.ndarray
    parameters: dict
    notes: tuple


class ProjectionAbsorbance:
    """``(n, ny, nx)`` absorbance of raw projections, computed rows at a time on indexing.

    ``view[:, r0:r1, :]`` normalizes only rows ``r0:r1`` of every projection (with one
    row of margin, so the 3×3 zinger median is that of the whole frame); ``view[i]`` one
    projection. Outlier and stripe removal apply when every projection is requested (they
    work along the angles). Usable wherever :func:`reconstruct` and :func:`find_center`
    take ``tomo``.

    Parameters
    ----------
    frames : sequence of ndarray (ny, nx)
        Raw projections in index order (zingers already removed, or not).
    flats, darks : ndarray (m, ny, nx), (k, ny, nx)
    zinger_sigma : float or None
        Zinger threshold applied to the flats (and, when ``clean_frames``, the frames).
    clean_frames : bool
        Also remove the frames' zingers here (False when they were cleaned on arrival).
    outlier_sigma : float or None
        :func:`remove_outliers` threshold; None: off.
    stripe_method : {None, 'mean', 'sorting'}
        :func:`remove_stripes` method; None: off.
    """

    def __init__(self, frames, flats, darks, *, zinger_sigma=10.0, clean_frames=False, outlier_sigma=None,
                 stripe_method=None):
        self._frames = list(frames)
        if not self._frames:
            raise ValueError("no projections")
        ny, nx = self._frames[0].shape
        self.shape = (len(self._frames), ny, nx)
        self.dtype = np.dtype(np.float32)
        self._flats, self._darks = np.asarray(flats), np.asarray(darks)
        self._zinger_sigma = zinger_sigma
        self._clean_frames = clean_frames
        self._outlier_sigma = outlier_sigma
        self._stripe_method = stripe_method
        #: pixels that were invalid (NaN: flat or sample not above the dark), summed over reads
        self.n_invalid = 0

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        k0, k1, k2 = key + (slice(None),) * (3 - len(key))
        n, ny, _ = self.shape
        idx = np.arange(n)[k0]
        rows = np.arange(ny)[k1]
        one_frame, one_row = np.ndim(idx) == 0, np.ndim(rows) == 0
        idx, rows = np.atleast_1d(idx), np.atleast_1d(rows)
        lo, hi = int(rows.min()), int(rows.max()) + 1
        block = self._rows(idx, lo, hi, whole_scan=idx.size == n and np.all(np.diff(idx) == 1))
        block = block[:, rows - lo][..., k2]
        if one_row:
            block = block[:, 0]
        return block[0] if one_frame else block

    def _rows(self, idx, lo, hi, *, whole_scan):
        ny = self.shape[1]
        h0, h1 = max(0, lo - 1), min(ny, hi + 1)
        raw = np.stack([self._frames[i][h0:h1] for i in idx])
        absorb = _absorbance(raw, self._flats[:, h0:h1], self._darks[:, h0:h1],
                             zinger_sigma=self._zinger_sigma, clean_frames=self._clean_frames)
        block = absorb[:, lo - h0 : hi - h0]
        self.n_invalid += int(np.count_nonzero(~np.isfinite(block)))
        if whole_scan and self._outlier_sigma is not None and block.shape[0] >= 3:
            block, _ = remove_outliers(block, sigma=self._outlier_sigma)
        if whole_scan and self._stripe_method is not None:
            block = remove_stripes(np.nan_to_num(block), method=self._stripe_method)
        return block


#: Compare-exchange pairs of a 9-element median network (Paeth; Devillard's ``opt_med9``):
#: after them, element 4 is the median.
_MEDIAN9_NETWORK = ((1, 2), (4, 5), (7, 8), (0, 1), (3, 4), (6, 7), (1, 2), (4, 5), (7, 8), (0, 3), (5, 8),
                    (4, 7), (3, 6), (1, 4), (2, 5), (4, 7), (4, 2), (6, 4), (4, 2))


def _median3x3(image):
    """3×3 median of the last two axes, edges repeating the border (``scipy.ndimage.
    median_filter(size=3, mode='nearest')``, to the bit), by a 19-step compare-exchange
    network on shifted copies: vectorized, ~10× faster than the generic filter at 1024²."""
    a = np.asarray(image)
    pad = [(0, 0)] * (a.ndim - 2) + [(1, 1), (1, 1)]
    padded = np.pad(a, pad, mode="edge")
    ny, nx = a.shape[-2:]
    v = [padded[..., i : i + ny, j : j + nx] for i in range(3) for j in range(3)]
    for i, j in _MEDIAN9_NETWORK:
        v[i], v[j] = np.minimum(v[i], v[j]), np.maximum(v[i], v[j])
    return v[4]


def _zingers_removed(frame, dark, sigma):
    """``frame`` with pixels deviating from their 3×3 median by more than ``sigma``
    Poisson standard deviations (``sqrt(|median − dark| + 1)``) replaced by that median;
    the rule of :func:`remove_zingers`, in numpy (one frame or a stack of them, last two
    axes the image; edges repeat the border). Keeps the dtype: the median of integer
    counts is one of them."""
    frame = np.asarray(frame)
    med = _median3x3(frame)
    med_f = med.astype(np.float32)
    sig = np.sqrt(np.abs(med_f - dark) + 1.0)
    bad = np.abs(frame.astype(np.float32) - med_f) > sigma * sig
    return np.where(bad, med, frame)


def _absorbance(raw, flats, darks, *, zinger_sigma, clean_frames):
    """Absorbance ``−ln((I − D)/(F − D))`` of ``raw`` (n, rows, nx), float32, NaN where
    the flat or the frame is not above the dark: the median of the flats (zinger-cleaned)
    and of the darks; the frames' zingers removed only when ``clean_frames``."""
    dark = (np.median(darks, axis=0) if darks.shape[0] > 1 else darks[0]).astype(np.float32)
    flat = (np.median(flats, axis=0) if flats.shape[0] > 1 else flats[0]).astype(np.float32)
    if zinger_sigma is not None:
        flat = _zingers_removed(flat, dark, zinger_sigma)
        if clean_frames:
            raw = _zingers_removed(raw, dark, zinger_sigma)
    num = raw.astype(np.float32) - dark
    den = flat - dark
    valid = (num > 0) & (den > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = -np.log(num / den)
    out[~valid] = np.nan
    return out


def _check_pipeline_options(*, n_projections, n_darks, center_px, algorithm, algorithm_options, zinger_sigma,
                            outlier_sigma, stripe_method, preview_every):
    for name, value in (("n_projections", n_projections), ("n_darks", n_darks), ("preview_every", preview_every)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0):
            raise ValueError(f"{name} must be a non-negative integer or None; got {value!r}")
    if center_px is not None and not (isinstance(center_px, (int, float, np.floating)) and math.isfinite(center_px)):
        raise ValueError(f"center_px must be a finite number (detector column) or None; got {center_px!r}")
    backends = reconstruction_backends()
    if algorithm not in backends:
        raise ValueError(f"unknown algorithm {algorithm!r}; expected one of {sorted(backends)}")
    unknown = sorted(set(algorithm_options or {}) - set(backends[algorithm]["options"]))
    if unknown:
        raise TypeError(f"algorithm {algorithm!r} does not take {unknown}; its options are "
                        f"{sorted(backends[algorithm]['options'])}")
    for name, value in (("zinger_sigma", zinger_sigma), ("outlier_sigma", outlier_sigma)):
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be > 0 or None; got {value!r}")
    if stripe_method not in _STRIPE_METHODS:
        raise ValueError(f"stripe_method must be one of {_STRIPE_METHODS}; got {stripe_method!r}")


class TomoPipeline:
    """Darks, flats and projections in; preview slices and the volume out.

    Parameters
    ----------
    n_projections : int, optional
        Projections planned (sets the preview spacing; None: unknown).
    n_darks : int, optional
        Darks planned: the dark is fixed once they are all in; None: when the first
        projection arrives.
    center_px : float, optional
        Detector column of the rotation axis; None: :func:`find_center` at the end (and
        the sinogram's centre of mass for previews).
    algorithm : str
        :func:`reconstruct` backend (default 'nufft').
    algorithm_options : dict, optional
        Its options (checked against the backend's list).
    zinger_sigma : float or None
        Zinger threshold for frames and flats (:func:`remove_zingers`); None: off.
    outlier_sigma : float or None
        :func:`remove_outliers` on the absorbance before reconstruction; None: off.
    stripe_method : {None, 'mean', 'sorting'}
        :func:`remove_stripes` before reconstruction; None: off.
    preview_every : int, optional
        A preview slice every this many projections; default ``n_projections //
        DEFAULT_PREVIEWS`` (at least ``MIN_ANGLES``); 0: no previews.
    preview_row : int, optional
        Detector row of the preview slices; default the middle row.
    ncore : int, optional
        Threads for the reconstruction.
    """

    def __init__(self, *, n_projections: int | None = None, n_darks: int | None = None,
                 center_px: float | None = None, algorithm: str = "nufft", algorithm_options: dict | None = None,
                 zinger_sigma: float | None = 10.0, outlier_sigma: float | None = None,
                 stripe_method: str | None = None, preview_every: int | None = None,
                 preview_row: int | None = None, ncore: int | None = None):
        _check_pipeline_options(n_projections=n_projections, n_darks=n_darks, center_px=center_px,
                                algorithm=algorithm, algorithm_options=algorithm_options,
                                zinger_sigma=zinger_sigma, outlier_sigma=outlier_sigma,
                                stripe_method=stripe_method, preview_every=preview_every)
        self.n_planned = n_projections
        self.n_darks = n_darks
        self.center_px = None if center_px is None else float(center_px)
        self.algorithm = algorithm
        self.algorithm_options = dict(algorithm_options or {})
        self.zinger_sigma = zinger_sigma
        self.outlier_sigma = outlier_sigma
        self.stripe_method = stripe_method
        if preview_every is None:
            preview_every = max(MIN_ANGLES, (n_projections or 0) // DEFAULT_PREVIEWS) if n_projections else 0
        self.preview_every = int(preview_every)
        self.preview_row = preview_row
        self.ncore = ncore
        self.notes: list[str] = []
        self.n_retaken = 0
        self._darks: dict[int, np.ndarray] = {}
        self._flats: dict[int, np.ndarray] = {}
        self._frames: dict[int, np.ndarray] = {}   # index -> raw projection (cleaned once the dark exists)
        self._theta: dict[int, float] = {}
        self._cleaned: set[int] = set()
        self._dark: np.ndarray | None = None
        self._last_preview_count = 0
        self.volume: TomoVolume | None = None

    # ---- input --------------------------------------------------------------------------
    @property
    def n_projections(self) -> int:
        """Distinct projections received."""
        return len(self._frames)

    @property
    def theta_rad(self) -> np.ndarray:
        """Angles of the projections received, index order, radians."""
        return np.array([self._theta[i] for i in sorted(self._frames)], dtype=np.float64)

    def add_frame(self, label: FrameLabel, image, *, theta_rad: float | None = None) -> list[TomoSlice]:
        """Add one labelled frame; returns the preview slices it completes (0 or 1).

        ``theta_rad`` (radians) is required for projections (``label.frame_type ==
        'sample'``; their index is ``label.repeat``).
        """
        image = np.asarray(image)
        if image.ndim != 2:
            raise ValueError(f"{label}: a frame must be 2-D (ny, nx); got shape {image.shape}")
        shape = self._shape()
        if shape is not None and image.shape != shape:
            raise ValueError(f"{label}: frame shape {image.shape} differs from the scan's {shape}")
        kind = label.frame_type
        if kind == "dark":
            self._add_dark(label.repeat, image)
            return []
        if kind == "flat":
            self._flats[label.repeat] = image
            return []
        if kind != "sample":
            raise ValueError(f"unknown frame type {kind!r} in {label}")
        if theta_rad is None or not math.isfinite(float(theta_rad)):
            raise ValueError(f"{label}: a projection needs a finite theta_rad; got {theta_rad!r}")
        return self._add_projection(label.repeat, image, float(theta_rad))

    def _shape(self):
        for store in (self._frames, self._darks, self._flats):
            for image in store.values():
                return image.shape
        return None

    def _add_dark(self, repeat: int, image) -> None:
        if self._dark is not None:
            self.notes.append(f"dark {repeat} arrived after the dark was fixed: not used")
            return
        self._darks[repeat] = image
        if self.n_darks is not None and len(self._darks) >= self.n_darks:
            self._fix_dark()

    def _fix_dark(self) -> None:
        if self._dark is not None or not self._darks:
            return
        darks = np.stack([self._darks[k] for k in sorted(self._darks)])
        self._dark = np.median(darks, axis=0).astype(np.float32) if len(darks) > 1 else darks[0].astype(np.float32)
        for index in list(self._frames):
            self._clean(index)

    def _clean(self, index: int) -> None:
        if self.zinger_sigma is None or index in self._cleaned or self._dark is None:
            return
        frame = self._frames[index]
        self._frames[index] = _zingers_removed(frame, self._dark, self.zinger_sigma)
        self._cleaned.add(index)

    def _add_projection(self, index: int, image, theta: float) -> list[TomoSlice]:
        if index in self._frames:
            self.n_retaken += 1
            self._cleaned.discard(index)
        if self.n_darks is None:
            self._fix_dark()
        self._frames[index] = image
        self._theta[index] = theta
        self._clean(index)
        n = self.n_projections
        due = (self.preview_every and n >= MIN_ANGLES
               and (n - self._last_preview_count >= self.preview_every or n == self.n_planned))
        if not due:
            return []
        self._last_preview_count = n
        preview = self.preview_slice()
        return [] if preview is None else [preview]

    # ---- previews -----------------------------------------------------------------------
    def _row(self) -> int:
        ny = self._shape()[0]
        row = ny // 2 if self.preview_row is None else int(self.preview_row)
        if not 0 <= row < ny:
            raise ValueError(f"preview_row {row} is outside the detector's {ny} rows")
        return row

    def sinogram(self, row: int | None = None) -> np.ndarray:
        """Absorbance sinogram ``(n_projections, nx)`` of one detector row so far (index
        order), float32; with the brightest value so far as the flat when no flat has
        arrived. Needs the dark."""
        absorb, k, _ = self._preview_rows(self._row() if row is None else int(row))
        return absorb[:, k]

    def _preview_rows(self, row: int):
        if self._dark is None:
            raise ValueError("no dark yet: the projections cannot be normalized")
        ny = self._shape()[0]
        h0, h1 = max(0, row - 1), min(ny, row + 2)
        raw = np.stack([self._frames[i][h0:h1] for i in sorted(self._frames)]).astype(np.float32)
        dark = self._dark[h0:h1]
        if self._flats:
            flats, source = np.stack([self._flats[k][h0:h1] for k in sorted(self._flats)]), "flats"
        else:  # stand-in: each pixel's brightest value so far (a preview only)
            flats, source = raw.max(axis=0, keepdims=True), "brightest_so_far"
        absorb = _absorbance(raw, flats, dark[None], zinger_sigma=self.zinger_sigma, clean_frames=False)
        return absorb, row - h0, source

    def _preview_center(self, rows, theta) -> tuple[float, str]:
        """Centre of a preview: given; else from opposite projections of the preview rows
        (once the scan has them); else the sinogram's centre of mass; else the detector's."""
        sino = rows[:, rows.shape[1] // 2]
        nx = sino.shape[-1]
        if self.center_px is not None:
            return self.center_px, "given"
        pair = _pair_center(rows, theta)
        if pair is not None and 0.0 <= pair <= nx - 1:
            return pair, "opposite_projections"
        span = np.rad2deg(np.ptp(theta)) if theta.size else 0.0
        if span >= COM_MIN_SPAN_DEG:
            w = np.maximum(np.nan_to_num(sino), 0.0)
            total = w.sum(axis=1)
            ok = total > 0
            if ok.sum() >= MIN_ANGLES:
                com = (w[ok] @ np.arange(nx)) / total[ok]
                design = np.stack([np.ones(ok.sum()), np.cos(theta[ok]), np.sin(theta[ok])], axis=1)
                c = float(np.linalg.lstsq(design, com, rcond=None)[0][0])
                if 0.0 <= c <= nx - 1:
                    return c, "center_of_mass"
        return nx / 2.0, "detector_centre"

    def preview_slice(self) -> TomoSlice | None:
        """The preview row reconstructed from the projections so far (None without a dark
        or with fewer than ``MIN_ANGLES`` projections)."""
        if self._dark is None or self.n_projections < MIN_ANGLES:
            return None
        row = self._row()
        rows, k, source = self._preview_rows(row)
        theta = self.theta_rad
        center, method = self._preview_center(np.nan_to_num(rows), theta)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TomoInputWarning)  # invalid pixels: a preview
            image = reconstruct(rows[:, k : k + 1], theta, center, algorithm=self.algorithm, ncore=self.ncore,
                                allow_missing_wedge=True, **self.algorithm_options)[0]
        return TomoSlice(row=row, image=image, center_px=center, center_method=method,
                         n_projections=self.n_projections, final=False, flat_source=source)

    # ---- the end ------------------------------------------------------------------------
    def absorbance(self) -> ProjectionAbsorbance:
        """The whole scan's absorbance, index order, computed on access (needs darks and
        flats; raises ValueError naming what is missing)."""
        if not self._frames:
            raise ValueError("no projections were received")
        self._fix_dark()
        missing = [what for what, store in (("darks", self._darks), ("flats", self._flats)) if not store]
        if missing:
            raise ValueError(f"no {' and no '.join(missing)}: a tomography scan needs shutter-closed darks and "
                             f"sample-out flats to normalize its projections")
        flats = np.stack([self._flats[k] for k in sorted(self._flats)])
        darks = np.stack([self._darks[k] for k in sorted(self._darks)])
        _check_flats(flats, self._dark)
        for index in self._frames:
            self._clean(index)
        frames = [self._frames[i] for i in sorted(self._frames)]
        return ProjectionAbsorbance(frames, flats, darks, zinger_sigma=self.zinger_sigma, clean_frames=False,
                                    outlier_sigma=self.outlier_sigma, stripe_method=self.stripe_method)

    def reconstruct_volume(self) -> TomoVolume:
        """Centre (given or found) and the volume from every projection received.

        Raises
        ------
        ValueError
            No projections, darks or flats; flats not above the dark; too few angles or
            angles not covering a half turn (the messages say which and by how much).
        """
        tomo = self.absorbance()
        theta = _check_angles(self.theta_rad, tomo.shape[0])  # clear errors before any work
        if self.center_px is not None:
            center, method = self.center_px, "given"
        else:
            center, method = find_center(tomo, theta, ncore=self.ncore), "find_center"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TomoInputWarning)  # counted by the view: one note
            volume = reconstruct(tomo, theta, center, algorithm=self.algorithm, ncore=self.ncore,
                                 **self.algorithm_options)
        notes = list(self.notes)
        if tomo.n_invalid:
            notes.append(f"{tomo.n_invalid} absorbance pixel reads were invalid (flat or sample not above the dark) "
                         f"and filled along their row")
        if self.n_retaken:
            notes.append(f"{self.n_retaken} projections re-taken; the later take used")
        self.volume = TomoVolume(volume=volume, center_px=float(center), center_method=method, theta_rad=theta,
                                 parameters=self.parameters(), notes=tuple(notes))
        return self.volume

    def final_slice(self) -> TomoSlice:
        """The preview row of :attr:`volume` (after :meth:`reconstruct_volume`)."""
        if self.volume is None:
            raise ValueError("no volume yet: call reconstruct_volume() first")
        row = self._row()
        return TomoSlice(row=row, image=self.volume.volume[row], center_px=self.volume.center_px,
                         center_method=self.volume.center_method, n_projections=self.n_projections, final=True,
                         flat_source="flats")

    def parameters(self) -> dict:
        """What the volume is made with (recorded with it)."""
        return {"algorithm": self.algorithm, "algorithm_options": dict(self.algorithm_options),
                "zinger_sigma": self.zinger_sigma, "outlier_sigma": self.outlier_sigma,
                "stripe_method": self.stripe_method, "center_px": self.center_px,
                "flat": "median of all flats", "dark": "median of the darks"}

    def release(self) -> None:
        """Drop the raw frames (the volume, if made, stays)."""
        self._frames.clear()
        self._flats.clear()
        self._darks.clear()


def _check_flats(flats, dark) -> None:
    """Refuse flats that cannot normalize anything (all zero, all NaN, not above the dark)."""
    flat = np.median(flats, axis=0)
    usable = np.isfinite(flat) & (flat - dark > 0)
    if not usable.any():
        finite = flat[np.isfinite(flat)]
        rng = f"{finite.min():g} to {finite.max():g}" if finite.size else "all NaN"
        raise ValueError(f"the flats are not above the dark in any pixel (zero or NaN flats?): flat median "
                         f"range {rng}, dark median {float(np.median(dark)):g}")
