"""An operando session: particles segmented, tracked and measured per measurement (private module).

Public names are re-exported by :mod:`txm_live.analysis`. Keeps per-particle numbers,
never images, so a session of any length holds little memory; its statistics give the
SOC of every tracked particle over time, the session mean, the heterogeneity index and
the inactive particles.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import numpy as np

from ._particles import (
    ParticleLabels,
    SocCalibration,
    _as_map,
    _check_quantity,
    particle_statistics,
    segment_particles,
)
from ._tracking import ParticleTracker

__all__ = ["MeasurementSummary", "OperandoSession", "SessionStatistics"]

#: A track whose whiteline follows the session mean with less than this slope is inactive.
INACTIVE_MAX_ACTIVITY = 0.3
#: Activity is only judged when the session mean whiteline moved this much (eV) ...
MIN_SESSION_RANGE_EV = 0.3
#: ... and on tracks seen at least this many times.
MIN_MEASUREMENTS_FOR_ACTIVITY = 3


#: Per-particle numbers a session keeps per measurement, in this order.
_ROW_FIELDS = ("whiteline_ev", "whiteline_std_ev", "edge_ev", "edge_std_ev", "weight", "area_px",
               "centroid_y_px", "centroid_x_px")


@dataclass(frozen=True)
class MeasurementSummary:
    """What one measurement added to a session (no images).

    Attributes
    ----------
    index : int
        0, 1, … in the order measurements were added.
    time_s, cell_soc, voltage_v : float
        When it was taken and the cell's counted SOC and voltage then (NaN if not given).
    n_particles : int
    drift_px, cumulative_drift_px : tuple of float
        Content motion since the previous measurement and since the first, (dy, dx) px.
    new_tracks, lost_tracks, refound_tracks : tuple of int
    parents : dict
        Fragments found here, ``{fragment_track: parent_track}``.
    mean_whiteline_ev, mean_edge_ev : float
        Weighted means over all its particles, eV (NaN without particles or edge map).
    problem : str
        '' when everything worked, otherwise what could not be done (e.g. no particles).
    """

    index: int
    time_s: float
    cell_soc: float
    voltage_v: float
    n_particles: int
    drift_px: tuple
    cumulative_drift_px: tuple
    new_tracks: tuple
    lost_tracks: tuple
    refound_tracks: tuple
    parents: dict
    mean_whiteline_ev: float
    mean_edge_ev: float
    problem: str = ""


@dataclass(frozen=True, eq=False)
class SessionStatistics:
    """Per-particle state of charge over a session, and what it says about the electrode.

    ``m`` measurements, ``k`` tracks (columns in order of ``track_ids``); NaN where a track
    was not seen.

    Attributes
    ----------
    time_s, cell_soc : ndarray (m,)
    track_ids : ndarray (k,) int64
    whiteline_ev, whiteline_std_ev, edge_ev, edge_std_ev : ndarray (m, k)
        Per-particle weighted mean and spread of the whiteline and edge energies, eV.
    soc, soc_std : ndarray (m, k)
        Per-particle SOC and its spread inside the particle, through the calibration (of
        its quantity); NaN without one.
    weight : ndarray (m, k)
        Per-particle weight sum (∝ Ni content with edge-jump weights).
    mean_soc : ndarray (m,)
        Session mean SOC: weight-weighted over the particles of each measurement
        (inactive particles included, as the cell's own SOC includes them).
    heterogeneity_index : ndarray (m,)
        Weight-weighted standard deviation of the particles' SOC across the particles of
        each measurement (0 for a uniform electrode); NaN without a calibration.
    heterogeneity_ev : ndarray (m,)
        The same in eV of the calibration's quantity (whiteline without one).
    activity : ndarray (k,)
        Least-squares slope of a track's whiteline against the session mean whiteline
        (1: follows the electrode, 0: does not react); NaN when not judged (fewer than 3
        measurements of the track, or a session mean that moved under 0.3 eV).
    inactive : ndarray (k,) bool
        ``activity < 0.3`` (judged tracks only).
    inactive_fraction : float
        Inactive tracks / judged tracks (NaN when none could be judged).
    parents : dict
        ``{fragment_track: parent_track}`` over the whole session.
    calibration : SocCalibration or None
    """

    time_s: np.ndarray
    cell_soc: np.ndarray
    track_ids: np.ndarray
    whiteline_ev: np.ndarray
    whiteline_std_ev: np.ndarray
    edge_ev: np.ndarray
    edge_std_ev: np.ndarray
    soc: np.ndarray
    soc_std: np.ndarray
    weight: np.ndarray
    mean_soc: np.ndarray
    heterogeneity_index: np.ndarray
    heterogeneity_ev: np.ndarray
    activity: np.ndarray
    inactive: np.ndarray
    inactive_fraction: float
    parents: dict
    calibration: SocCalibration | None


def _weighted_mean_std(values: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise weighted mean and std of ``values`` (m, k), ignoring NaN entries."""
    w = np.where(np.isfinite(values) & np.isfinite(weights), weights, 0.0)
    v = np.where(w > 0, values, 0.0)
    wsum = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (w * v).sum(axis=1) / wsum
        var = (w * (v - mean[:, None]) ** 2).sum(axis=1) / wsum
    return np.where(wsum > 0, mean, np.nan), np.where(wsum > 0, np.sqrt(var), np.nan)


def _activity(whiteline: np.ndarray, session_mean: np.ndarray) -> np.ndarray:
    """Slope of each column of ``whiteline`` (m, k) against ``session_mean`` (m,)."""
    k = whiteline.shape[1]
    out = np.full(k, np.nan)
    finite = session_mean[np.isfinite(session_mean)]
    if finite.size == 0 or np.ptp(finite) < MIN_SESSION_RANGE_EV:
        return out
    for j in range(k):
        seen = np.isfinite(whiteline[:, j]) & np.isfinite(session_mean)
        if seen.sum() < MIN_MEASUREMENTS_FOR_ACTIVITY:
            continue
        x = session_mean[seen] - session_mean[seen].mean()
        if np.dot(x, x) > 0:
            out[j] = float(np.dot(x, whiteline[seen, j] - whiteline[seen, j].mean()) / np.dot(x, x))
    return out


class OperandoSession:
    """Per-particle chemistry of an operando session, one measurement at a time.

    Parameters
    ----------
    calibration : SocCalibration or None, optional
        Energy → SOC. May be set later (:meth:`calibrate_from_states`, or assign
        :attr:`calibration`); statistics are kept in eV and converted when asked for, so
        a calibration made at the end applies to the whole session.
    segmentation : dict or None, optional
        Keyword options of :func:`segment_particles` (checked by name).
    tracker : ParticleTracker or None, optional
        Default ``ParticleTracker()``.
    weight_by_edge_jump : bool, optional
        Weight each pixel by its edge jump in the per-particle means (the particle's
        volume mean for a quantity linear in oxidation state). Default True.

    Notes
    -----
    Memory: the tracker holds the last map and labels (two images); the session holds
    per measurement one :class:`MeasurementSummary` and, per particle, its track id and
    eight numbers (72 bytes), however large the maps: a day of measurements of a few
    hundred particles is a few MB.
    """

    def __init__(self, *, calibration: SocCalibration | None = None, segmentation: dict | None = None,
                 tracker: ParticleTracker | None = None, weight_by_edge_jump: bool = True):
        allowed = [p for p in inspect.signature(segment_particles).parameters if p != "edge_jump"]
        unknown = sorted(set(segmentation or {}) - set(allowed))
        if unknown:
            raise ValueError(f"unknown segmentation options {unknown}; allowed: {allowed}")
        if calibration is not None and not isinstance(calibration, SocCalibration):
            raise TypeError(f"calibration must be a SocCalibration, got {type(calibration).__name__}")
        self.calibration = calibration
        self.segmentation = dict(segmentation or {})
        self.tracker = ParticleTracker() if tracker is None else tracker
        self.weight_by_edge_jump = bool(weight_by_edge_jump)
        self.measurements: list[MeasurementSummary] = []
        self._rows: list[tuple[np.ndarray, np.ndarray]] = []  # (track ids (n,), (8, n) numbers)
        self._parents: dict[int, int] = {}

    @property
    def params(self) -> dict:
        """Options in use (segmentation, tracking, weighting, calibration)."""
        cal = self.calibration
        return {"segmentation": dict(self.segmentation), "tracking": self.tracker.params,
                "weight_by_edge_jump": self.weight_by_edge_jump,
                "calibration": None if cal is None else {"method": cal.method, "quantity": cal.quantity,
                                                         "energy_soc0_ev": cal.energy_soc0_ev,
                                                         "energy_soc1_ev": cal.energy_soc1_ev}}

    @property
    def latest_labels(self) -> ParticleLabels | None:
        """The particles of the last measurement (for outlines in a preview); None before any."""
        return self.tracker.latest_labels

    def track_ids_of(self, index: int) -> np.ndarray:
        """Track of each label (``[k]`` is label ``k + 1``) of measurement ``index`` (a copy)."""
        return self._rows[index][0].copy()

    def particle_rows(self, index: int) -> dict:
        """Per-particle numbers of measurement ``index``, in label order (copies).

        Returns ``{'track_id': (n,) int64, 'whiteline_ev': (n,), 'whiteline_std_ev', 'edge_ev',
        'edge_std_ev', 'weight', 'area_px', 'centroid_y_px', 'centroid_x_px'}`` (energies eV,
        centroids px).
        """
        ids, values = self._rows[index]
        out = {"track_id": ids.copy()}
        out.update({name: values[i].copy() for i, name in enumerate(_ROW_FIELDS)})
        return out

    @property
    def nbytes(self) -> int:
        """Bytes held for the time series (per-particle rows; the tracker's two images not counted)."""
        return sum(ids.nbytes + values.nbytes for ids, values in self._rows)

    def _segment(self, edge: np.ndarray) -> tuple[ParticleLabels, str]:
        try:
            labels = segment_particles(edge, **self.segmentation)
        except ValueError as exc:  # a blank map: report it, keep the session going
            empty = ParticleLabels(np.zeros(edge.shape, np.int32), np.zeros(0, np.int64),
                                   np.zeros((0, 2)), math.nan, {})
            return empty, f"segmentation failed: {exc}"
        return labels, "" if labels.n_particles else "no particles found"

    def add(self, edge_jump, whiteline_ev, *, edge_ev=None, valid=None, time_s: float = math.nan,
            cell_soc: float = math.nan, voltage_v: float = math.nan) -> MeasurementSummary:
        """Segment, track and measure one measurement's maps.

        Parameters
        ----------
        edge_jump, whiteline_ev : array_like (ny, nx)
            ``XanesResult.edge_jump`` and ``XanesResult.whiteline`` of the measurement
            (all measurements of a session share one shape). Not modified.
        edge_ev : array_like (ny, nx), optional
            ``XanesResult.edge`` (for an ``'edge'`` calibration).
        valid : array_like (ny, nx) of bool, optional
            ``XanesResult.mask``.
        time_s, cell_soc, voltage_v : float, optional
            When it was taken, the cell's counted SOC and its voltage.

        Returns
        -------
        MeasurementSummary
            ``problem`` says what could not be done (no particles found); such a
            measurement is recorded with no particles and tracking carries on.
        """
        edge = _as_map(edge_jump, "edge_jump")
        if np.shape(whiteline_ev) != edge.shape:
            raise ValueError(f"whiteline_ev {np.shape(whiteline_ev)} and edge_jump {edge.shape} "
                             "differ in shape")
        labels, problem = self._segment(edge)
        step = self.tracker.update(labels, edge)
        stats = particle_statistics(labels, whiteline_ev, edge_ev=edge_ev, valid=valid,
                                    weights=edge if self.weight_by_edge_jump else None)
        values = np.stack([stats.whiteline_ev, stats.whiteline_std_ev, stats.edge_ev, stats.edge_std_ev,
                           stats.weight, stats.area_px.astype(float), stats.centroid_px[:, 0],
                           stats.centroid_px[:, 1]])
        self._rows.append((step.track_ids.copy(), values))
        self._parents.update(step.parents)
        energies = np.stack([stats.whiteline_ev, stats.edge_ev])
        means = _weighted_mean_std(energies, np.stack([stats.weight] * 2))[0]
        summary = MeasurementSummary(
            index=len(self.measurements), time_s=float(time_s), cell_soc=float(cell_soc),
            voltage_v=float(voltage_v), n_particles=labels.n_particles, drift_px=step.drift_px,
            cumulative_drift_px=tuple(float(v) for v in self.tracker.cumulative_drift_px),
            new_tracks=step.new_tracks, lost_tracks=step.lost_tracks, refound_tracks=step.refound_tracks,
            parents=dict(step.parents), mean_whiteline_ev=float(means[0]), mean_edge_ev=float(means[1]),
            problem=problem,
        )
        self.measurements.append(summary)
        return summary

    def add_result(self, result, **kwargs) -> MeasurementSummary:
        """:meth:`add` with the maps of a :class:`~txm_live.analysis.XanesResult`."""
        return self.add(result.edge_jump, result.whiteline, edge_ev=result.edge, valid=result.mask, **kwargs)

    def calibrate_from_states(self, first: int = 0, last: int = -1, *, soc_first: float | None = None,
                              soc_last: float | None = None, quantity: str = "whiteline") -> SocCalibration:
        """Calibrate from the session mean at two measurements of known SOC.

        ``soc_first``/``soc_last`` default to the ``cell_soc`` given with those
        measurements (coulomb counting); choose two far apart in SOC (the first and the
        most charged). The calibration is stored (:attr:`calibration`) and returned.
        """
        _check_quantity(quantity)
        if len(self.measurements) < 2:
            raise ValueError(f"need at least two measurements to calibrate; have {len(self.measurements)}")
        a, b = self.measurements[first], self.measurements[last]
        sa = a.cell_soc if soc_first is None else soc_first
        sb = b.cell_soc if soc_last is None else soc_last
        key = "mean_whiteline_ev" if quantity == "whiteline" else "mean_edge_ev"
        self.calibration = SocCalibration.from_states(getattr(a, key), sa, getattr(b, key), sb,
                                                      quantity=quantity)
        return self.calibration

    def _table(self) -> tuple[np.ndarray, np.ndarray]:
        """Track ids (k,) and a dense (8, m, k) array of the per-particle numbers."""
        ids = np.unique(np.concatenate([r[0] for r in self._rows])) if self._rows else np.zeros(0, np.int64)
        table = np.full((len(_ROW_FIELDS), len(self._rows), ids.size), np.nan)
        for i, (tracks, values) in enumerate(self._rows):
            table[:, i, np.searchsorted(ids, tracks)] = values
        return ids, table

    def statistics(self) -> SessionStatistics:
        """Per-particle time series and the session's heterogeneity and inactive particles."""
        ids, table = self._table()
        col = dict(zip(_ROW_FIELDS, table))
        cal = self.calibration
        energy = col["edge_ev"] if cal is not None and cal.quantity == "edge" else col["whiteline_ev"]
        spread = col["edge_std_ev"] if cal is not None and cal.quantity == "edge" else col["whiteline_std_ev"]
        mean_energy, het_ev = _weighted_mean_std(energy, col["weight"])
        mean_wl, _ = _weighted_mean_std(col["whiteline_ev"], col["weight"])
        activity = _activity(col["whiteline_ev"], mean_wl)
        judged = np.isfinite(activity)
        inactive = judged & (activity < INACTIVE_MAX_ACTIVITY)
        nan_mk, nan_m = np.full(energy.shape, np.nan), np.full(mean_energy.shape, np.nan)
        scale = abs(cal.ev_per_soc) if cal is not None else math.nan
        return SessionStatistics(
            time_s=np.array([m.time_s for m in self.measurements]),
            cell_soc=np.array([m.cell_soc for m in self.measurements]), track_ids=ids,
            whiteline_ev=col["whiteline_ev"], whiteline_std_ev=col["whiteline_std_ev"],
            edge_ev=col["edge_ev"], edge_std_ev=col["edge_std_ev"],
            soc=cal.soc(energy) if cal is not None else nan_mk, soc_std=spread / scale,
            weight=col["weight"], mean_soc=cal.soc(mean_energy) if cal is not None else nan_m,
            heterogeneity_index=het_ev / scale, heterogeneity_ev=het_ev, activity=activity,
            inactive=inactive,
            inactive_fraction=float(inactive.sum() / judged.sum()) if judged.any() else math.nan,
            parents=dict(self._parents), calibration=cal,
        )
