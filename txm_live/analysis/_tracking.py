"""Particle tracking between measurements (private module).

Public names are re-exported by :mod:`txm_live.analysis`. Register consecutive maps
(phase correlation), then match particles by overlap and centroid distance with the
Hungarian algorithm; particles may appear, disappear (and come back), or crack into
fragments that record their parent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from ._particles import ParticleLabels, _as_map, _check_positive
from ._registration import estimate_shift

__all__ = ["ParticleTracker", "TrackingStep"]

#: A previous particle is searched for within this many of its equivalent radii ...
GATE_RADII = 1.0
#: ... but never closer than this, px (small particles, residual registration error).
MIN_GATE_PX = 3.0
#: An unmatched label that lies this much (fraction of its area) inside a matched
#: particle of the previous measurement is a fragment of it (a crack).
FRAGMENT_OVERLAP = 0.5
#: Cost of a forbidden pairing in the assignment (never chosen over a real one).
_FORBIDDEN = 1e6


@dataclass(frozen=True, eq=False)
class TrackingStep:
    """How the particles of one measurement relate to the earlier ones.

    Attributes
    ----------
    track_ids : ndarray (n,) int64
        Track of each label (``track_ids[k]`` is label ``k + 1``); ids start at 1 and
        are never reused.
    drift_px : tuple of float
        How far the image content moved since the previous measurement, (dy, dx) px
        (CONVENTIONS sign); (0, 0) for the first measurement or without registration.
    match_iou : ndarray (n,) float
        Overlap (intersection over union, after registration) with the particle the
        label was matched to; NaN for new tracks, fragments and re-found tracks.
    new_tracks, lost_tracks, refound_tracks : tuple of int
        Tracks started here, tracks of the previous measurement not seen here, tracks
        missing earlier and found again here.
    parents : dict
        ``{fragment_track_id: parent_track_id}`` for labels that are pieces of a
        particle that cracked (the larger piece keeps the parent's track).
    registration_peak : float
        Normalized phase-correlation peak of the registration (1 = identical up to a
        shift); NaN when not registered.
    """

    track_ids: np.ndarray
    drift_px: tuple
    match_iou: np.ndarray
    new_tracks: tuple
    lost_tracks: tuple
    refound_tracks: tuple
    parents: dict
    registration_peak: float


@dataclass
class _Missing:
    centroid_px: np.ndarray  # predicted position in the latest measurement's frame
    radius_px: float
    missed: int


def _shift_labels(labels: np.ndarray, shift) -> np.ndarray:
    """``labels`` moved by the integer ``shift`` (dy, dx), background filling in."""
    dy, dx = (int(round(s)) for s in shift)
    out = np.zeros_like(labels)
    ny, nx = labels.shape
    src = labels[max(0, -dy): ny - max(0, dy), max(0, -dx): nx - max(0, dx)]
    out[max(0, dy): max(0, dy) + src.shape[0], max(0, dx): max(0, dx) + src.shape[1]] = src
    return out


def _overlaps(prev_shifted: np.ndarray, cur: np.ndarray, n_prev: int, n_cur: int) -> np.ndarray:
    """Pixel counts shared by each (previous, current) label pair, (n_prev + 1, n_cur + 1)."""
    pair = prev_shifted.astype(np.int64).ravel() * (n_cur + 1) + cur.ravel()
    return np.bincount(pair, minlength=(n_prev + 1) * (n_cur + 1)).reshape(n_prev + 1, n_cur + 1)


class ParticleTracker:
    """Keeps particle identities from one measurement to the next.

    Parameters
    ----------
    register : bool, optional
        Estimate the drift between consecutive maps by phase correlation
        (:func:`txm_live.analysis.estimate_shift`) before matching. False: match in
        detector coordinates (the negative control). Default True.
    max_distance_px : float or None, optional
        A current particle may continue a previous one only if its centroid lies within
        this distance of the previous centroid moved by the drift, px. Default None:
        ``max(3 px, one equivalent radius)`` of the previous particle.
    min_iou : float, optional
        Pairs that overlap less than this (intersection over union) are matched on
        distance alone. Default 0.1.
    max_missing : int, optional
        A track missing from up to this many consecutive measurements can be found again
        (by distance to its position predicted from the drift); after that it ends.
        Default 3.

    Notes
    -----
    Per measurement: (1) register the new map against the previous one; (2) move the
    previous labels by the drift and count the pixels each previous particle shares with
    each current one; (3) Hungarian assignment (``scipy.optimize.linear_sum_assignment``)
    on cost ``(1 − IoU) + distance / gate``, pairs beyond the gate with no overlap
    forbidden; (4) unmatched labels lying mostly inside a matched previous particle are
    its fragments (a crack): new tracks recording the parent; (5) the rest are matched
    against recently missing tracks by distance (again Hungarian), and otherwise start
    new tracks. State held: the previous map and labels (one image each) and the
    missing tracks' positions.
    """

    def __init__(self, *, register: bool = True, max_distance_px: float | None = None,
                 min_iou: float = 0.1, max_missing: int = 3):
        if max_distance_px is not None:
            max_distance_px = _check_positive("max_distance_px", max_distance_px)
        if not 0.0 <= float(min_iou) <= 1.0:
            raise ValueError(f"min_iou must be in [0, 1]; got {min_iou}")
        if int(max_missing) < 0:
            raise ValueError(f"max_missing must be >= 0; got {max_missing}")
        self.register = bool(register)
        self.max_distance_px = max_distance_px
        self.min_iou = float(min_iou)
        self.max_missing = int(max_missing)
        self._prev_map: np.ndarray | None = None
        self._prev: ParticleLabels | None = None
        self._prev_tracks: np.ndarray | None = None
        self._missing: dict[int, _Missing] = {}
        self._next_id = 1
        self.cumulative_drift_px = np.zeros(2)

    @property
    def latest_labels(self) -> ParticleLabels | None:
        """The particles of the last map given to :meth:`update` (None before the first)."""
        return self._prev

    @property
    def params(self) -> dict:
        return {"register": self.register, "max_distance_px": self.max_distance_px,
                "min_iou": self.min_iou, "max_missing": self.max_missing}

    def _new_ids(self, n: int) -> np.ndarray:
        ids = np.arange(self._next_id, self._next_id + n, dtype=np.int64)
        self._next_id += n
        return ids

    def _drift(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        if not self.register:
            return np.zeros(2), math.nan
        ref = np.where(np.isfinite(self._prev_map), self._prev_map, 0.0)
        img = np.where(np.isfinite(image), image, 0.0)
        shift, peak = estimate_shift(ref, img, return_error=True)
        return -np.asarray(shift, dtype=float), float(peak)  # content motion = −shift

    def update(self, particles: ParticleLabels, image) -> TrackingStep:
        """Track the particles of a new measurement.

        Parameters
        ----------
        particles : ParticleLabels
            This measurement's particles (:func:`segment_particles`).
        image : array_like (ny, nx)
            The map they were found on (used for registration; NaN allowed). Not modified.

        Returns
        -------
        TrackingStep
        """
        image = _as_map(image, "image")
        if image.shape != particles.labels.shape:
            raise ValueError(f"image {image.shape} and labels {particles.labels.shape} differ in shape")
        if self._prev is not None and self._prev.labels.shape != image.shape:
            raise ValueError(f"map shape changed from {self._prev.labels.shape} to {image.shape} "
                             "during a session")
        n = particles.n_particles
        if self._prev is None:
            ids = self._new_ids(n)
            step = TrackingStep(track_ids=ids, drift_px=(0.0, 0.0), match_iou=np.full(n, np.nan),
                                new_tracks=tuple(int(t) for t in ids), lost_tracks=(),
                                refound_tracks=(), parents={}, registration_peak=math.nan)
        else:
            step = self._match(particles, image)
        self._prev_map = np.array(image, copy=True)
        self._prev = particles
        self._prev_tracks = step.track_ids
        return step

    def _gates(self, prev: ParticleLabels) -> np.ndarray:
        if self.max_distance_px is not None:
            return np.full(prev.n_particles, self.max_distance_px)
        return np.maximum(MIN_GATE_PX, GATE_RADII * prev.equivalent_radius_px)

    def _match(self, cur: ParticleLabels, image: np.ndarray) -> TrackingStep:
        prev = self._prev
        drift, peak = self._drift(image)
        self.cumulative_drift_px = self.cumulative_drift_px + drift
        shifted = _shift_labels(prev.labels, drift)
        overlap = _overlaps(shifted, cur.labels, prev.n_particles, cur.n_particles)
        track_ids = np.zeros(cur.n_particles, np.int64)
        iou = np.full(cur.n_particles, np.nan)
        rows, cols, pair_iou = self._assign_previous(prev, cur, overlap, drift)
        track_ids[cols] = self._prev_tracks[rows]
        iou[cols] = pair_iou
        parents = self._fragments(track_ids, overlap, cur)
        matched_prev = set(int(t) for t in self._prev_tracks[rows])
        lost = tuple(int(t) for t in self._prev_tracks if int(t) not in matched_prev)
        self._add_missing(drift, prev, lost)
        refound = self._refind(track_ids, cur)
        self._age_missing()
        unmatched = np.flatnonzero(track_ids == 0)
        track_ids[unmatched] = self._new_ids(unmatched.size)
        return TrackingStep(
            track_ids=track_ids, drift_px=(float(drift[0]), float(drift[1])), match_iou=iou,
            new_tracks=tuple(int(t) for t in track_ids[unmatched]), lost_tracks=lost,
            refound_tracks=refound, parents={int(track_ids[k]): p for k, p in parents.items()},
            registration_peak=peak,
        )

    def _assign_previous(self, prev, cur, overlap, drift):
        """Hungarian assignment of current labels to the previous measurement's."""
        inter = overlap[1:, 1:].astype(float)
        union = prev.area_px[:, None] + cur.area_px[None, :] - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        predicted = prev.centroid_px + drift
        dist = np.hypot(predicted[:, None, 0] - cur.centroid_px[None, :, 0],
                        predicted[:, None, 1] - cur.centroid_px[None, :, 1])
        gate = self._gates(prev)[:, None]
        allowed = (dist <= gate) | (iou >= self.min_iou)
        cost = np.where(allowed, (1.0 - iou) + dist / gate, _FORBIDDEN)
        if cost.size == 0:
            return np.zeros(0, int), np.zeros(0, int), np.zeros(0)
        rows, cols = linear_sum_assignment(cost)
        ok = allowed[rows, cols]
        return rows[ok], cols[ok], iou[rows[ok], cols[ok]]

    def _fragments(self, track_ids, overlap, cur) -> dict:
        """Unmatched labels lying mostly inside a matched previous particle: its fragments.

        Returns ``{current label index: parent track id}``; those labels get new ids later
        (filled in by the caller) and are then reported under their own ids.
        """
        parents = {}
        for k in np.flatnonzero(track_ids == 0):
            column = overlap[1:, k + 1]
            if column.size == 0 or column.max() == 0:
                continue
            j = int(np.argmax(column))
            if column[j] >= FRAGMENT_OVERLAP * cur.area_px[k]:
                parent = int(self._prev_tracks[j])
                if parent in set(int(t) for t in track_ids):
                    parents[int(k)] = parent
        if parents:
            ids = self._new_ids(len(parents))
            for (k, _parent), new in zip(sorted(parents.items()), ids):
                track_ids[k] = new
        return parents

    def _add_missing(self, drift, prev, lost) -> None:
        """Move missing tracks with the drift and add the ones lost in this measurement."""
        for entry in self._missing.values():
            entry.centroid_px = entry.centroid_px + drift
        index = {int(t): k for k, t in enumerate(self._prev_tracks)}
        for track in lost:
            k = index[track]
            self._missing[track] = _Missing(prev.centroid_px[k] + drift,
                                            float(prev.equivalent_radius_px[k]), 0)

    def _age_missing(self) -> None:
        """Count one more measurement without each missing track; end the long-missing."""
        for track in list(self._missing):
            self._missing[track].missed += 1
            if self._missing[track].missed > self.max_missing:
                del self._missing[track]

    def _refind(self, track_ids, cur) -> tuple:
        """Match still-unmatched labels against missing tracks by distance."""
        free = np.flatnonzero(track_ids == 0)
        if free.size == 0 or not self._missing:
            return ()
        tracks = list(self._missing)
        pos = np.array([self._missing[t].centroid_px for t in tracks])
        gate = np.array([self.max_distance_px or max(MIN_GATE_PX, GATE_RADII * self._missing[t].radius_px)
                         for t in tracks])
        dist = np.hypot(pos[:, None, 0] - cur.centroid_px[None, free, 0],
                        pos[:, None, 1] - cur.centroid_px[None, free, 1])
        allowed = dist <= gate[:, None]
        rows, cols = linear_sum_assignment(np.where(allowed, dist / gate[:, None], _FORBIDDEN))
        found = []
        for r, c in zip(rows, cols):
            if allowed[r, c]:
                track_ids[free[c]] = tracks[r]
                del self._missing[tracks[r]]
                found.append(int(tracks[r]))
        return tuple(found)


