"""XANES maps from a stack that is still growing (private module).

While a 2D XANES scan runs (FXI scans high → low energy) the stack holds only part of the
spectrum. :func:`partial_xanes_maps` gives the best maps the energies measured so far
allow, with the same numerics as the final ones:

* once the pre-edge, the whiteline and the post-edge are measured, the full
  :func:`~txm_live.analysis.fit_xanes` on the energies so far;
* once only the whiteline has been passed, a quick per-pixel whiteline
  (:func:`peak_whiteline_map`: vertex of a parabola through the absorbance maximum);
  edge and edge jump need the pre-edge and stay NaN;
* before that, nothing (None).

Public names are re-exported by :mod:`txm_live.analysis`.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from ._xanes import XanesResult, fit_xanes

__all__ = [
    "PEAK_DROP_FRACTION",
    "PEAK_WINDOW_HALFWIDTH_EV",
    "PARTIAL_POST_EDGE_EV",
    "PARTIAL_PRE_EDGE_EV",
    "SAMPLE_MASK_FRACTION",
    "SAMPLE_MASK_MIN_ABSORBANCE",
    "SAMPLE_MASK_PERCENTILE",
    "XanesMaps",
    "partial_xanes_maps",
    "passed_peak_ev",
    "peak_whiteline_map",
    "sample_mask",
]

#: A pixel is "sample" when its absorbance is above this fraction of the image's
#: :data:`SAMPLE_MASK_PERCENTILE` percentile ...
SAMPLE_MASK_FRACTION = 0.25
SAMPLE_MASK_PERCENTILE = 99.0
#: ... and above this absolute absorbance (empty fields have no sample at all).
SAMPLE_MASK_MIN_ABSORBANCE = 0.02
#: The mean spectrum's maximum counts as passed once the absorbance somewhere below it
#: has dropped to this fraction of the maximum (and energies exist on both sides).
PEAK_DROP_FRACTION = 0.9
#: Fewest measured energies below the mean spectrum's maximum before it counts as passed.
PEAK_MIN_BELOW = 2
#: Half-width (eV) of the parabola's neighbourhood; the search window is three times it.
PEAK_WINDOW_HALFWIDTH_EV = 3.0
#: The full fit is tried once at least two energies lie this far below the peak (the
#: pre-edge) ...
PARTIAL_PRE_EDGE_EV = 20.0
#: ... and at least two lie this far above it (the post-edge).
PARTIAL_POST_EDGE_EV = 10.0
_MIN_SIDE_POINTS = 2

METHOD_FIT = "fit_xanes"
METHOD_PEAK = "parabola at the absorbance maximum"


@dataclass(frozen=True, eq=False)
class XanesMaps:
    """Whiteline, edge and edge-jump maps, partial or final.

    Attributes
    ----------
    whiteline, edge : ndarray, shape (ny, nx), float32
        Energies in eV; NaN outside :attr:`mask` (and ``edge`` NaN everywhere for the
        peak-only method).
    edge_jump : ndarray, shape (ny, nx), float32
        Edge step in absorbance; NaN when the method cannot measure it.
    mask : ndarray of bool, shape (ny, nx)
        Pixels with a fitted whiteline.
    e0_ev : float
        Edge energy used for normalization (NaN for the peak-only method).
    n_energies : int
        Energies the maps were computed from.
    method : str
        ``'fit_xanes'`` or ``'parabola at the absorbance maximum'``.
    final : bool
        True for the maps of the complete stack.
    result : XanesResult or None
        The full fit when ``method == 'fit_xanes'``.
    """

    whiteline: np.ndarray
    edge: np.ndarray
    edge_jump: np.ndarray
    mask: np.ndarray
    e0_ev: float
    n_energies: int
    method: str
    final: bool = False
    result: XanesResult | None = None

    @classmethod
    def from_result(cls, result: XanesResult, *, n_energies: int, final: bool) -> XanesMaps:
        """Maps of a :func:`fit_xanes` result (float32, as emitted)."""
        return cls(
            whiteline=np.asarray(result.whiteline, dtype=np.float32),
            edge=np.asarray(result.edge, dtype=np.float32),
            edge_jump=np.asarray(result.edge_jump, dtype=np.float32),
            mask=np.asarray(result.mask, dtype=bool),
            e0_ev=float(result.params.get("e0", float("nan"))),
            n_energies=int(n_energies), method=METHOD_FIT, final=bool(final), result=result,
        )


def sample_mask(image, *, fraction: float = SAMPLE_MASK_FRACTION,
                percentile: float = SAMPLE_MASK_PERCENTILE,
                min_absorbance: float = SAMPLE_MASK_MIN_ABSORBANCE) -> np.ndarray:
    """Pixels that hold sample in an absorbance image.

    Parameters
    ----------
    image : array_like, shape (ny, nx)
        Absorbance (e.g. the first aligned energy of a scan).
    fraction, percentile : float
        Threshold = ``fraction`` × the image's ``percentile`` percentile (robust to hot
        pixels), default a quarter of the 99th percentile.
    min_absorbance : float
        The threshold is at least this (absorbance), default 0.02.

    Returns
    -------
    ndarray of bool, shape (ny, nx)
        Finite pixels above the threshold; all False for an image with no finite pixel.
    """
    img = np.asarray(image)
    if img.ndim != 2:
        raise ValueError(f"image must be 2-D (ny, nx); got shape {img.shape}")
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100]; got {percentile!r}")
    finite = np.isfinite(img)
    if not finite.any():
        return finite
    level = max(float(min_absorbance), float(fraction) * float(np.percentile(img[finite], percentile)))
    return finite & (img > level)


def passed_peak_ev(energies_ev, spectrum, *, drop_fraction: float = PEAK_DROP_FRACTION,
                   min_below: int = PEAK_MIN_BELOW) -> float | None:
    """Energy of a spectrum's maximum once the scan has passed it, else None.

    Parameters
    ----------
    energies_ev : array_like, shape (n,)
        Energies measured so far (any order), eV.
    spectrum : array_like, shape (n,)
        Mean absorbance at those energies.
    drop_fraction : float
        Somewhere below the maximum the absorbance must have dropped to this fraction of
        it (the edge was reached), default 0.9.
    min_below : int
        At least this many energies below the maximum, default 2; and one above it.

    Returns
    -------
    float or None
        The energy (eV) of the maximum, or None while it may still be the edge rising.
    """
    e = np.asarray(energies_ev, dtype=float)
    sp = np.asarray(spectrum, dtype=float)
    if e.shape != sp.shape or e.ndim != 1:
        raise ValueError(f"energies_ev and spectrum must be 1-D of one length; got {e.shape} and {sp.shape}")
    if not np.isfinite(sp).any():
        return None
    order = np.argsort(e, kind="stable")
    es, sps = e[order], sp[order]
    ipk = int(np.nanargmax(sps))
    if ipk < min_below or ipk == len(es) - 1 or not np.nanmin(sps[:ipk]) <= drop_fraction * sps[ipk]:
        return None
    return float(es[ipk])


def peak_whiteline_map(stack, energies_ev, peak_ev: float, *, mask=None,
                       halfwidth_ev: float = PEAK_WINDOW_HALFWIDTH_EV) -> np.ndarray | None:
    """Quick per-pixel whiteline: the vertex of a parabola through the absorbance maximum.

    Per pixel, the absorbance maximum within ``3 * halfwidth_ev`` of ``peak_ev`` and its
    two neighbours in energy (uneven spacing allowed) define a parabola whose vertex is
    the whiteline; where the three points do not curve down, the maximum's energy.

    Parameters
    ----------
    stack : array_like, shape (n, ny, nx)
        Absorbance at ``energies_ev`` (any order).
    energies_ev : array_like, shape (n,)
    peak_ev : float
        The mean spectrum's maximum (:func:`passed_peak_ev`), eV.
    mask : array_like of bool, shape (ny, nx), optional
        Pixels to map; others are NaN.
    halfwidth_ev : float
        Default 3 eV.

    Returns
    -------
    ndarray, shape (ny, nx), float32, or None
        Whiteline energy in eV (NaN outside the mask), or None with fewer than three
        energies in the window.
    """
    arr = np.asarray(stack)
    e = np.asarray(energies_ev, dtype=float)
    if arr.ndim != 3 or arr.shape[0] != e.size:
        raise ValueError(f"stack must be (n, ny, nx) with n = {e.size} energies; got {arr.shape}")
    order = np.argsort(e, kind="stable")
    es = e[order]
    window = np.flatnonzero(np.abs(es - peak_ev) <= 3 * halfwidth_ev)
    if window.size < 3:
        return None
    sub = arr[order[window]]
    filled = np.where(np.isfinite(sub), sub, -np.inf)
    j = np.clip(np.argmax(filled, axis=0), 1, window.size - 2)
    ew = es[window]
    y0, y1, y2 = (np.take_along_axis(sub, (j + d)[None], 0)[0] for d in (-1, 0, 1))
    x0, x1, x2 = ew[j - 1], ew[j], ew[j + 1]
    d1, d2 = (y1 - y0) / (x1 - x0), (y2 - y1) / (x2 - x1)
    curvature = (d2 - d1) / (x2 - x0)
    with np.errstate(divide="ignore", invalid="ignore"):
        vertex = np.where(curvature < 0, 0.5 * (x0 + x1) - d1 / (2 * curvature), x1)
    vertex = np.clip(vertex, x0, x2)
    keep = np.isfinite(vertex) & np.isfinite(y1)
    if mask is not None:
        keep &= np.asarray(mask, dtype=bool)
    return np.where(keep, vertex, np.nan).astype(np.float32)


def _spans_edge(energies_ev: np.ndarray, peak_ev: float) -> bool:
    below = np.count_nonzero(energies_ev < peak_ev - PARTIAL_PRE_EDGE_EV)
    above = np.count_nonzero(energies_ev > peak_ev + PARTIAL_POST_EDGE_EV)
    return below >= _MIN_SIDE_POINTS and above >= _MIN_SIDE_POINTS


def partial_xanes_maps(stack, energies_ev, *, mean_spectrum=None, mask=None,
                       fit_params: dict | None = None) -> XanesMaps | None:
    """The best maps the energies measured so far allow (module docstring).

    Parameters
    ----------
    stack : array_like, shape (n, ny, nx)
        Aligned absorbance at the energies measured so far.
    energies_ev : array_like, shape (n,)
    mean_spectrum : array_like, shape (n,), optional
        Mean absorbance of the sample pixels per energy; computed over ``mask`` (or all
        finite pixels) when omitted.
    mask : array_like of bool, shape (ny, nx), optional
        Sample pixels (:func:`sample_mask`); the peak-only map is limited to them.
    fit_params : dict, optional
        Keyword arguments for :func:`fit_xanes`.

    Returns
    -------
    XanesMaps or None
        None until the whiteline has been passed.
    """
    arr = np.asarray(stack)
    e = np.asarray(energies_ev, dtype=float)
    if arr.ndim != 3 or arr.shape[0] != e.size:
        raise ValueError(f"stack must be (n, ny, nx) with n = {e.size} energies; got {arr.shape}")
    if mean_spectrum is None:
        sel = np.ones(arr.shape[1:], bool) if mask is None else np.asarray(mask, bool)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN frames give NaN
            mean_spectrum = np.array([np.nanmean(frame[sel]) if sel.any() else np.nan for frame in arr])
    peak = passed_peak_ev(e, mean_spectrum)
    if peak is None:
        return None
    if _spans_edge(e, peak):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # NaN pixels at the edges, reported in status
                result = fit_xanes(arr, e, **(fit_params or {}))
            return XanesMaps.from_result(result, n_energies=e.size, final=False)
        except ValueError:
            pass  # e.g. the normalization ranges hold too few points yet: the peak map below
    whiteline = peak_whiteline_map(arr, e, peak, mask=mask)
    if whiteline is None:
        return None
    nan = np.full(whiteline.shape, np.nan, np.float32)
    return XanesMaps(whiteline=whiteline, edge=nan, edge_jump=nan.copy(), mask=np.isfinite(whiteline),
                     e0_ev=float("nan"), n_energies=e.size, method=METHOD_PEAK)
