"""Per-pixel XANES normalization, whiteline and edge maps (private module).

Public names are re-exported by :mod:`txm_live.analysis`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numba
import numpy as np

from . import _xanes_kernel as _k
from ._validate import EnergyGroups, check_stack, float_dtype, group_energies

__all__ = [
    "XanesResult",
    "fit_xanes",
    "find_e0",
    "normalization_parameters",
    "STATUS_CODES",
]

#: Meaning of :attr:`XanesResult.status` values.
STATUS_CODES = {
    _k.OK: "ok",
    _k.NONFINITE: "non-finite value in the spectrum",
    _k.SMALL_JUMP: "edge jump below edge_jump_min or edge_jump_snr * noise",
    _k.NO_WHITELINE: "no interior maximum in whiteline_range",
    _k.NO_EDGE: "normalized spectrum never crosses 0.5 below the whiteline",
    _k.USER_MASKED: "outside the user mask",
}

_MIN_ENERGIES = 8
_MEAN_ROW_STRIDE = 4
#: The energies span the edge if at least two lie this far below e0 and two
#: this far above it (eV).
_SPAN_BELOW_EV = 5.0
_SPAN_ABOVE_EV = 15.0


# --------------------------------------------------------------------------
# energy-only helpers (Larch rules)
# --------------------------------------------------------------------------
def _index_of(arr: np.ndarray, value: float) -> int:
    """Index of the last element <= value (0 if value is below all); Larch's rule."""
    if value < arr.min():
        return 0
    return int(np.flatnonzero(arr <= value).max())


def _index_nearest(arr: np.ndarray, value: float) -> int:
    return int(np.abs(arr - value).argmin())


def find_e0(energy, mu) -> float:
    """Edge energy E0 as the maximum of the smoothed derivative of ``mu``.

    Parameters
    ----------
    energy : array_like, shape (n,)
        Energies in eV, strictly increasing.
    mu : array_like, shape (n,)
        Absorbance (or mu) at ``energy``.

    Returns
    -------
    float
        The energy grid point (eV) where ``d mu / dE``, smoothed with a 3-point
        running mean, is largest, ignoring the first and last
        ``max(2, 2 %)`` points (monochromator glitches), as Larch's ``find_e0``
        does in spirit.
    """
    e = np.asarray(energy, dtype=np.float64)
    m = np.asarray(mu, dtype=np.float64)
    if e.size < 5:
        raise ValueError(f"find_e0 needs at least 5 energies; got {e.size}")
    d = np.gradient(m, e)
    d = np.convolve(np.pad(d, 1, mode="edge"), np.ones(3) / 3.0, mode="valid")
    nmin = max(2, int(0.02 * e.size))
    d[:nmin] = -np.inf
    d[-nmin:] = -np.inf
    d[~np.isfinite(d)] = -np.inf
    return float(e[int(np.argmax(d))])


def normalization_parameters(
    energy,
    e0: float,
    *,
    pre1: float | None = None,
    pre2: float | None = None,
    norm1: float | None = None,
    norm2: float | None = None,
    nnorm: int | None = None,
    rule: str = "xanes",
) -> dict[str, Any]:
    """Pre-/post-edge ranges with Larch's index rules.

    Mirrors ``larch.xafs.pre_edge`` (``npre=1``, ``nvict=0``). ``None`` means
    derived from the energies:

    - ``rule='larch'``: ``pre1`` = ``E[1] - e0`` rounded to 5 eV (2 eV if
      fewer than 21 points below e0), at least ``min(E) - e0``;
      ``pre2`` = ``pre1 / 2`` -- Larch's defaults, made for long EXAFS scans.
    - ``rule='xanes'`` (default): ``pre1`` = ``min(E) - e0`` (every pre-edge
      point) and ``pre2`` = -10 eV, or ``pre1 / 2`` if that is higher. A TXM
      XANES scan has only a handful of sparse pre-edge points; Larch's
      default keeps half of them and doubles the noise of the pre-edge line
      extrapolated to e0, which dominates the error of the edge position.
    - ``norm2`` = ``max(E) - e0`` rounded to 5 eV (at most ``max(E) - e0``);
      ``norm1`` = ``min(25, norm2 / 15 rounded to 5 eV)``.
    - ``nnorm`` = 2 if ``norm2 - norm1 >= 300``, 1 if ``>= 30``, else 0.

    The fits use the points ``index_of(E, e0 + pre1) : index_nearest(E, e0 + pre2)``
    and ``index_of(E, e0 + norm1) : index_nearest(E, e0 + norm2)`` (end
    exclusive, as Larch), and the edge step is evaluated at the grid point
    nearest e0.

    Parameters
    ----------
    energy : array_like, shape (n,)
        Strictly increasing energies in eV.
    e0 : float
        Edge energy in eV.
    pre1, pre2, norm1, norm2 : float or None, optional
        Ranges relative to ``e0`` in eV (Larch names). Default None (derived).
    nnorm : int or None, optional
        Degree of the post-edge polynomial (0, 1 or 2). Default None (derived).
    rule : {'xanes', 'larch'}, optional
        How ``pre1`` and ``pre2`` are derived when None. Default ``'xanes'``.

    Returns
    -------
    dict
        ``e0, pre1, pre2, norm1, norm2, nnorm, npre`` (the values used) and the
        index slices ``pre_slice``, ``post_slice`` and ``ie0``.
    """
    if rule not in ("xanes", "larch"):
        raise ValueError(f"rule must be 'xanes' or 'larch'; got {rule!r}")
    E = np.asarray(energy, dtype=np.float64)
    ie0 = _index_nearest(E, e0)
    if pre1 is None and rule == "xanes":
        pre1 = float(E.min() - e0)
        if pre2 is None:
            pre2 = max(-10.0, 0.5 * pre1)
    if pre1 is None:
        if ie0 > 20:
            pre1 = 5.0 * round((E[1] - e0) / 5.0)
        else:
            pre1 = 2.0 * round((E[1] - e0) / 2.0)
    pre1 = max(float(pre1), float(E.min() - e0))
    if pre2 is None:
        pre2 = 0.5 * pre1
    pre2 = float(pre2)
    if pre1 > pre2:
        raise ValueError(f"pre1 must be <= pre2; got pre1={pre1:g}, pre2={pre2:g} eV")
    npre = 1
    if _index_of(E - e0, pre2) - _index_of(E - e0, pre1) < 3:
        npre = 0
    if norm2 is None:
        norm2 = 5.0 * round((E.max() - e0) / 5.0)
    norm2 = float(norm2)
    if norm2 < 0:
        norm2 = E.max() - e0 - norm2
    norm2 = min(norm2, float(E.max() - e0))
    if norm1 is None:
        norm1 = min(25.0, 5.0 * round(norm2 / 15.0))
    norm1 = float(norm1)
    if norm1 > norm2:
        raise ValueError(f"norm1 must be <= norm2; got norm1={norm1:g}, norm2={norm2:g} eV")
    norm1 = min(norm1, norm2 - 2)
    if nnorm is None:
        nnorm = 2
        if norm2 - norm1 < 300:
            nnorm = 1
        if norm2 - norm1 < 30:
            nnorm = 0
    nnorm = int(nnorm)
    if nnorm not in (0, 1, 2):
        raise ValueError(f"nnorm must be 0, 1 or 2; got {nnorm}")
    p1 = _index_of(E, pre1 + e0)
    p2 = _index_nearest(E, pre2 + e0)
    if npre == 0:
        if p2 == p1:
            p2 += 1
    elif p2 - p1 < 2:
        p2 = min(E.size, p1 + 2)
    q1 = _index_of(E, norm1 + e0)
    q2 = _index_nearest(E, norm2 + e0)
    if q1 > E.size - 3:
        q1 = E.size - 3
    if q2 - q1 < 2:
        q1 -= 2
        nnorm = 0
    elif q2 - q1 < 5:
        nnorm = min(1, nnorm)
    return dict(
        e0=float(e0), pre1=float(pre1), pre2=float(pre2), norm1=float(norm1),
        norm2=float(norm2), nnorm=nnorm, npre=npre,
        pre_slice=slice(p1, p2), post_slice=slice(q1, q2), ie0=ie0,
    )


def _lstsq_rows(t: np.ndarray, order: int) -> np.ndarray:
    """Rows R (order+1, len(t)) so that coef = R @ y fits sum coef_q t**q."""
    V = np.vander(t, order + 1, increasing=True)
    return np.linalg.pinv(V)


def _local_tables(E: np.ndarray, halfwidth: float, order: int):
    """Local polynomial fits centred on every energy: start, length, W."""
    nu = E.size
    need = order + 2
    starts = np.empty(nu, np.int64)
    lens = np.empty(nu, np.int64)
    spans = []
    for k in range(nu):
        idx = np.flatnonzero(np.abs(E - E[k]) <= halfwidth + 1e-9)
        lo, hi = int(idx.min()), int(idx.max()) + 1
        while hi - lo < need and (lo > 0 or hi < nu):
            dl = E[k] - E[lo - 1] if lo > 0 else np.inf
            dh = E[hi] - E[k] if hi < nu else np.inf
            if dl <= dh:
                lo -= 1
            else:
                hi += 1
        starts[k], lens[k] = lo, hi - lo
        spans.append((lo, hi))
    W = np.zeros((nu, 4, int(lens.max())))
    for k, (lo, hi) in enumerate(spans):
        o = min(order, hi - lo - 1)
        W[k, : o + 1, : hi - lo] = _lstsq_rows(E[lo:hi] - E[k], o)
    return starts, lens, W


# --------------------------------------------------------------------------
# result
# --------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class XanesResult:
    """Per-pixel XANES maps returned by :func:`fit_xanes`.

    All maps have shape ``(ny, nx)`` and the float precision of the input
    stack (float32 unless the stack is float64); pixels that are not in
    :attr:`mask` are NaN in :attr:`whiteline`, :attr:`edge` and
    :attr:`whiteline_height`.

    Attributes
    ----------
    whiteline : ndarray
        Whiteline energy (eV): the maximum of the normalized spectrum (see
        :func:`fit_xanes` Notes for the rule).
    edge : ndarray
        Edge energy (eV) where the normalized spectrum crosses 0.5.
    edge_jump : ndarray
        Edge step (absorbance) = post-edge minus pre-edge curve at e0 (Larch's
        ``edge_step``); NaN where the spectrum is not finite.
    pre_edge : ndarray
        Pre-edge line at e0 (absorbance below the edge, a thickness proxy).
    whiteline_height : ndarray
        Normalized height of the whiteline maximum.
    noise : ndarray
        RMS residual of the pre-edge line fit (absorbance), a per-pixel noise
        estimate; NaN when the pre-edge range has fewer than 3 points.
    status : ndarray of uint8
        0 where the pixel was fitted; otherwise the reason (:data:`STATUS_CODES`).
    mask : ndarray of bool
        ``status == 0``: pixels with a real edge and a fitted whiteline and edge.
    energies : ndarray, shape (n_used,)
        The sorted, de-duplicated energies (eV) the fit used.
    params : dict
        Parameters actually used (``e0``, ``pre1``, ``pre2``, ``norm1``,
        ``norm2``, ``nnorm``, ``whiteline_range``, ...).
    mean_spectrum : ndarray, shape (n_used,)
        Mean absorbance per energy of the finite pixels in every 4th row (all
        rows for images under 16 rows); used to derive e0 and the whiteline
        search range.
    normalized : ndarray or None
        Normalized stack ``(n_used, ny, nx)`` on :attr:`energies` when
        requested with ``return_normalized=True``.
    """

    whiteline: np.ndarray
    edge: np.ndarray
    edge_jump: np.ndarray
    pre_edge: np.ndarray
    whiteline_height: np.ndarray
    noise: np.ndarray
    status: np.ndarray
    energies: np.ndarray
    params: dict
    mean_spectrum: np.ndarray
    normalized: np.ndarray | None = None
    mask: np.ndarray = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "mask", self.status == _k.OK)

    def status_counts(self) -> dict[str, int]:
        """Number of pixels per status, keyed by the status meaning."""
        vals, counts = np.unique(self.status, return_counts=True)
        return {STATUS_CODES[int(v)]: int(c) for v, c in zip(vals, counts)}


# --------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------
def _default_whiteline_range(mean, E, e0, t, ps, qs, wa, wb, ws, wl_tab, order, hw, ed_tab,
                             ed_hw, tie, p):
    """Whiteline search range: +-10 eV around the mean spectrum's whiteline
    (found in e0 .. e0 + 40 eV), not below e0; (0, 40) if it has none."""
    wide = (0.0, 40.0)
    if not np.all(np.isfinite(mean)):
        return wide
    ks0 = int(np.searchsorted(E, e0, side="left"))
    ks1 = int(np.searchsorted(E, e0 + 40.0, side="right"))
    if ks1 - ks0 < 3:
        return wide
    one = np.ascontiguousarray(mean.reshape(-1, 1, 1))
    outs = [np.empty((1, 1)) for _ in range(6)]
    st = np.empty((1, 1), np.uint8)
    _k.fit_kernel(
        one, np.arange(E.size, dtype=np.int64), np.arange(E.size + 1, dtype=np.int64), E, t,
        ps.start, ps.stop, wa, wb, qs.start, qs.stop, ws, float(t[p["ie0"]]),
        ks0, ks1, *wl_tab, order, hw, *ed_tab, ed_hw,
        -np.inf, 0.0, tie, np.ones((1, 1), np.bool_), False,
        *outs, st, np.empty((1, 1, 1)), False,
    )
    w = float(outs[0][0, 0])
    if st[0, 0] != _k.OK or not np.isfinite(w):
        return wide
    return (max(0.0, w - e0 - 10.0), w - e0 + 10.0)


def _whiteline_bias(arr, groups, wl_map, mask, E, t, ps, qs, wa, wb, ws, t_e0, ks0, ks1,
                    wl_tab, order, hw, ed_tab, ed_hw, tie, *, n_bins=8, min_pixels=30,
                    max_pixels=20000, seed=0):
    """Bias of the whiteline estimator as a function of the estimate.

    Fitted pixels are binned by their whiteline estimate; in each bin the
    mean spectrum (noise averaged away) gives both the estimator's answer and
    the maximum of a cubic spline through it. Returns the bin centres and
    biases (empty arrays when there are too few pixels).
    """
    from scipy.interpolate import CubicSpline

    idx = np.flatnonzero(mask.ravel())
    if idx.size < min_pixels:
        return np.empty(0), np.empty(0)
    if idx.size > max_pixels:
        idx = np.sort(np.random.default_rng(seed).choice(idx, max_pixels, replace=False))
    ny, nx = arr.shape[1:]
    u = np.empty((E.size, idx.size))
    for j in range(E.size):
        rows = [arr[f].reshape(-1)[idx] for f in groups.index[groups.ptr[j]:groups.ptr[j + 1]]]
        u[j] = np.mean(rows, axis=0)
    west = wl_map.reshape(-1)[idx].astype(np.float64)
    n_b = max(1, min(n_bins, idx.size // min_pixels))
    edges = np.quantile(west, np.linspace(0, 1, n_b + 1))
    which = np.clip(np.searchsorted(edges, west, side="right") - 1, 0, n_b - 1)
    means = []
    centres = []
    for b in range(n_b):
        sel = which == b
        if sel.sum() >= min_pixels // 2:
            means.append(u[:, sel].mean(axis=1))
            centres.append(np.median(west[sel]))
    if not means:
        return np.empty(0), np.empty(0)
    M = np.ascontiguousarray(np.array(means).T.reshape(E.size, 1, len(means)))
    outs = [np.empty((1, len(means))) for _ in range(6)]
    st = np.empty((1, len(means)), np.uint8)
    _k.fit_kernel(
        M, np.arange(E.size, dtype=np.int64), np.arange(E.size + 1, dtype=np.int64), E, t,
        ps.start, ps.stop, wa, wb, qs.start, qs.stop, ws, t_e0,
        ks0, ks1, *wl_tab, order, hw, *ed_tab, ed_hw,
        -np.inf, 0.0, tie, np.ones((1, 1), np.bool_), False,
        *outs, st, np.empty((1, 1, 1)), False,
    )
    lo = max(0, ks0 - 2)
    hi = min(E.size, ks1 + 2)
    cs_out, bias_out = [], []
    for i, m in enumerate(means):
        est = float(outs[0][0, i])
        if st[0, i] != _k.OK or not np.isfinite(est):
            continue
        cs = CubicSpline(E[lo:hi], m[lo:hi])
        dense = np.arange(est - 2 * hw, est + 2 * hw, 0.002)
        dense = dense[(dense >= E[ks0]) & (dense <= E[ks1 - 1])]
        if dense.size < 3:
            continue
        b = est - float(dense[np.argmax(cs(dense))])
        if abs(b) < hw:
            cs_out.append(centres[i])
            bias_out.append(b)
    order_ = np.argsort(cs_out)
    return np.asarray(cs_out)[order_], np.asarray(bias_out)[order_]


def _resolve_stack(stack):
    arr = check_stack(stack)
    if not np.issubdtype(arr.dtype, np.floating) or arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    if arr.dtype.byteorder not in ("=", "|"):
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr


def fit_xanes(
    stack,
    energies,
    *,
    e0: float | None = None,
    pre1: float | None = None,
    pre2: float | None = None,
    norm1: float | None = None,
    norm2: float | None = None,
    nnorm: int | None = None,
    whiteline_range: tuple[float, float] | None = None,
    whiteline_halfwidth: float = 3.0,
    whiteline_order: int = 2,
    whiteline_tie: float = 0.05,
    edge_halfwidth: float = 1.5,
    edge_jump_min: float = 0.0,
    edge_jump_snr: float = 5.0,
    whiteline_bias_correction: bool = True,
    mask=None,
    return_normalized: bool = False,
    n_threads: int | None = None,
) -> XanesResult:
    """Normalize every pixel's spectrum and map whiteline, edge and edge jump.

    Parameters
    ----------
    stack : array_like, shape (n_energies, ny, nx)
        Absorbance stack (e.g. from :func:`flat_dark_correct`), any real dtype;
        float32 and float64 keep their precision, other dtypes become float32.
        Not modified. Pixels with a non-finite value at any used energy are
        masked (status 1).
    energies : array_like, shape (n_energies,)
        Energy of each frame in eV, in any order. Frames with a non-finite
        energy, and frames with no finite pixel, are dropped with an
        :class:`XanesInputWarning`; frames at duplicate energies (closer than
        1e-3 eV) are averaged, with a warning.
    e0 : float or None, optional
        Edge energy (eV) for the normalization ranges. Default None: the
        maximum of the smoothed derivative of the mean spectrum of all finite
        pixels (:func:`find_e0`). One e0 is used for all pixels.
    pre1, pre2, norm1, norm2 : float or None, optional
        Pre-edge and post-edge ranges relative to e0 (eV), Larch's names and
        defaults (:func:`normalization_parameters`).
    nnorm : int or None, optional
        Post-edge polynomial degree; Larch's default when None.
    whiteline_range : (float, float) or None, optional
        Search range for the whiteline relative to e0 (eV). Default None:
        +-10 eV around the whiteline of the mean spectrum (searched from e0 to
        e0 + 40 eV), not below e0; ``(0, 40)`` if the mean spectrum has none.
    whiteline_halfwidth : float, optional
        Half-width (eV) of the local polynomial used to smooth the spectrum
        and locate the whiteline maximum. Default 3.0. Widened to at least
        ``whiteline_order + 2`` points where the sampling is sparse.
    whiteline_order : {2, 3}, optional
        Degree of the local polynomial around the maximum. Default 2.
    whiteline_tie : float, optional
        Normalized-height tolerance of the two-maxima rule (Notes). Default 0.05.
    edge_halfwidth : float, optional
        Half-width (eV) of the local line fitted around the 0.5 crossing.
        Default 1.5.
    edge_jump_min : float, optional
        Pixels whose edge jump (absorbance) is not above this are masked
        (status 2). Default 0.
    edge_jump_snr : float, optional
        Pixels whose edge jump is below ``edge_jump_snr * noise`` are masked
        (status 2). Default 5.
    whiteline_bias_correction : bool, optional
        Remove the bias of the local polynomial caused by the asymmetry of the
        whiteline (the edge step under the peak), measured on the mean
        spectrum (Notes). Default True.
    mask : array_like of bool, shape (ny, nx), optional
        User mask; pixels where it is False are not fitted (status 5).
    return_normalized : bool, optional
        Also return the normalized stack (same dtype as the maps; one extra
        stack of memory). Default False.
    n_threads : int or None, optional
        Numba threads for this call; default all.

    Returns
    -------
    XanesResult

    Raises
    ------
    ValueError
        Wrong shapes, energies not in eV, fewer than 8 distinct energies, or
        energies that do not span the edge: fewer than two energies at or
        below e0 - 5 eV or at or above e0 + 15 eV, or fewer than two points in
        the pre-edge or post-edge range.

    Notes
    -----
    **Normalization** follows Larch's ``pre_edge`` exactly (same default
    ranges, same index rules, ``npre=1``, ``nvict=0``): a line fitted below the
    edge, a polynomial of degree ``nnorm`` fitted to ``mu - pre_edge`` above
    it, ``edge_step`` = that polynomial at the grid point nearest e0, and
    ``norm = (mu - pre_edge) / edge_step``. Because the energies are shared by
    all pixels, every fit is a fixed linear functional of the spectrum: the
    weights are computed once and applied in a fused, parallel numba kernel.

    **Whiteline rule.** Each normalized spectrum is smoothed with a local
    polynomial of degree ``whiteline_order`` over ``+-whiteline_halfwidth``
    eV (a Savitzky-Golay filter for non-uniform energies). The whiteline is
    the highest interior maximum of the smoothed spectrum in
    ``whiteline_range`` -- except that when a *separate* lower-energy maximum
    (the dip between the two is deeper than ``whiteline_tie``) is within
    ``whiteline_tie`` of the highest, the lowest-energy such maximum wins, so
    that a two-phase mixture with near-equal peaks reports the same (reduced)
    phase regardless of noise. The position is then refined to the vertex of
    the local polynomial, re-centred on the grid point nearest the vertex
    until it is stable. A maximum on the boundary of ``whiteline_range`` is
    not a whiteline (status 3).

    **Edge step under the peak.** The whiteline sits on the rising edge, so
    the peak is asymmetric and a symmetric local polynomial puts its vertex
    on the slow (high-energy) side of the true maximum -- by about
    ``h**2 / 10`` times the ratio of the third to the second derivative for
    half-width h, 0.1-0.3 eV for Ni K-edge spectra, more for sharp peaks.
    With ``whiteline_bias_correction`` the fitted pixels are binned by their
    whiteline (up to 8 bins of at least 30 pixels, from up to 20000 pixels);
    each bin's mean spectrum, where the noise has averaged away, gives the
    estimator's answer and the maximum of a cubic spline through the
    samples; their difference, interpolated at each pixel's estimate, is
    subtracted. ``params['whiteline_bias_ev']`` lists the ``(whiteline,
    bias)`` pairs used.

    **Edge rule.** From the whiteline downwards, the first energy where the
    normalized spectrum is below 0.5 brackets the crossing; a line fitted to
    the points within ``+-edge_halfwidth`` eV of the crossing gives its
    position.
    """
    arr = _resolve_stack(stack)
    nE, ny, nx = arr.shape
    out_dtype = float_dtype(arr)
    if whiteline_order not in (2, 3):
        raise ValueError(f"whiteline_order must be 2 or 3; got {whiteline_order!r}")
    for name, val in (("whiteline_halfwidth", whiteline_halfwidth),
                      ("edge_halfwidth", edge_halfwidth)):
        if not val > 0:
            raise ValueError(f"{name} must be > 0 eV; got {val!r}")
    user_mask = np.ones((1, 1), dtype=np.bool_)
    if mask is not None:
        user_mask = np.asarray(mask, dtype=bool)
        if user_mask.shape != (ny, nx):
            raise ValueError(
                f"mask shape {user_mask.shape} does not match the image shape {(ny, nx)}"
            )

    threads_before = numba.get_num_threads()
    if n_threads is not None:
        numba.set_num_threads(int(n_threads))
    try:
        # mean spectrum from every 4th row (a quarter of the reads); a frame
        # with no finite pixel there is checked in full before it is dropped
        sub = arr[:, ::_MEAN_ROW_STRIDE, :] if ny >= 4 * _MEAN_ROW_STRIDE else arr
        sums, counts = _k.frame_sums(sub)
        for f in np.flatnonzero(counts == 0):
            v = arr[f][np.isfinite(arr[f])]
            sums[f], counts[f] = float(v.sum(dtype=np.float64)), v.size
        groups: EnergyGroups = group_energies(energies, nE, frame_ok=counts > 0, stacklevel=3)
        E = groups.energies
        if E.size < _MIN_ENERGIES:
            raise ValueError(
                f"fit_xanes needs at least {_MIN_ENERGIES} distinct energies; got {E.size}"
            )
        per_frame = sums / np.maximum(counts, 1)
        mean = np.array(
            [per_frame[groups.index[groups.ptr[j]:groups.ptr[j + 1]]].mean()
             for j in range(E.size)]
        )
        if e0 is None:
            e0_used = find_e0(E, mean)
        else:
            e0_used = float(e0)
            if not (E[1] <= e0_used <= E[-2]):
                raise ValueError(
                    f"e0={e0_used:g} eV is outside the energies "
                    f"({E[1]:g} to {E[-2]:g} eV, ends excluded)"
                )
        p = normalization_parameters(E, e0_used, pre1=pre1, pre2=pre2, norm1=norm1,
                                     norm2=norm2, nnorm=nnorm)
        ps, qs = p["pre_slice"], p["post_slice"]
        n_pre = ps.stop - ps.start
        n_post = qs.stop - qs.start
        n_below = int(np.count_nonzero(E <= e0_used - _SPAN_BELOW_EV))
        n_above = int(np.count_nonzero(E >= e0_used + _SPAN_ABOVE_EV))
        if (n_pre < 2 or n_post < 2 or qs.start <= p["ie0"] or ps.stop > p["ie0"] + 1
                or n_below < 2 or n_above < 2):
            raise ValueError(
                f"energies {E[0]:g} to {E[-1]:g} eV do not span the edge at "
                f"e0={e0_used:g} eV: {n_below} energies at or below e0-{_SPAN_BELOW_EV:g} eV, "
                f"{n_above} at or above e0+{_SPAN_ABOVE_EV:g} eV, {n_pre} pre-edge point(s) in "
                f"[e0{p['pre1']:+g}, e0{p['pre2']:+g}] and {n_post} post-edge "
                f"point(s) in [e0{p['norm1']:+g}, e0{p['norm2']:+g}] (need >= 2 each)"
            )
        t = E - e0_used
        wa = np.zeros(E.size)
        wb = np.zeros(E.size)
        if p["npre"] == 0:
            wa[ps] = 1.0 / n_pre
        else:
            R = _lstsq_rows(t[ps], 1)
            wa[ps], wb[ps] = R[0], R[1]
        R = _lstsq_rows(t[qs], p["nnorm"])
        ws = np.zeros(E.size)
        ws[qs] = (t[p["ie0"]] ** np.arange(p["nnorm"] + 1)) @ R

        wl_start, wl_len, wl_W = _local_tables(E, whiteline_halfwidth, whiteline_order)
        ed_start, ed_len, ed_W = _local_tables(E, edge_halfwidth, 1)
        if whiteline_range is None:
            wr = _default_whiteline_range(mean, E, e0_used, t, ps, qs, wa, wb, ws,
                                          (wl_start, wl_len, wl_W), int(whiteline_order),
                                          float(whiteline_halfwidth), (ed_start, ed_len, ed_W),
                                          float(edge_halfwidth), float(whiteline_tie), p)
        else:
            wr = tuple(float(v) for v in whiteline_range)
            if len(wr) != 2 or not wr[0] < wr[1]:
                raise ValueError(f"whiteline_range must be (low, high) with low < high; got {whiteline_range!r}")
        ks0 = int(np.searchsorted(E, e0_used + wr[0], side="left"))
        ks1 = int(np.searchsorted(E, e0_used + wr[1], side="right"))
        if ks1 - ks0 < 3:
            raise ValueError(
                f"whiteline_range e0{wr[0]:+g} to e0{wr[1]:+g} eV holds {ks1 - ks0} "
                f"energies; need at least 3"
            )
        maps = [np.empty((ny, nx), dtype=out_dtype) for _ in range(6)]
        status = np.empty((ny, nx), dtype=np.uint8)
        norm_out = (np.empty((E.size, ny, nx), dtype=out_dtype) if return_normalized
                    else np.empty((1, 1, 1), dtype=out_dtype))
        kd = out_dtype  # kernel arithmetic dtype (see fit_kernel)
        _k.fit_kernel(
            arr, groups.index, groups.ptr, E, t.astype(kd),
            ps.start, ps.stop, wa.astype(kd), wb.astype(kd), qs.start, qs.stop, ws.astype(kd),
            float(t[p["ie0"]]),
            ks0, ks1, wl_start, wl_len, wl_W.astype(kd), int(whiteline_order),
            float(whiteline_halfwidth),
            ed_start, ed_len, ed_W, float(edge_halfwidth),
            float(edge_jump_min), float(edge_jump_snr), float(whiteline_tie),
            user_mask, mask is not None,
            *maps, status, norm_out, bool(return_normalized),
        )
        bias_centres = bias_values = np.empty(0)
        if whiteline_bias_correction:
            bias_centres, bias_values = _whiteline_bias(
                arr, groups, maps[0], status == _k.OK, E, t, ps, qs, wa, wb, ws,
                float(t[p["ie0"]]), ks0, ks1,
                (wl_start, wl_len, wl_W), int(whiteline_order), float(whiteline_halfwidth),
                (ed_start, ed_len, ed_W), float(edge_halfwidth), float(whiteline_tie),
            )
            if bias_values.size:
                wl_map = maps[0]
                corr = np.interp(wl_map, bias_centres, bias_values)
                wl_map -= corr.astype(wl_map.dtype)
    finally:
        if n_threads is not None:
            numba.set_num_threads(threads_before)

    params = {k: p[k] for k in ("e0", "pre1", "pre2", "norm1", "norm2", "nnorm")}
    params.update(
        whiteline_range=wr, whiteline_halfwidth=float(whiteline_halfwidth),
        whiteline_order=int(whiteline_order), whiteline_tie=float(whiteline_tie),
        edge_halfwidth=float(edge_halfwidth), edge_jump_min=float(edge_jump_min),
        edge_jump_snr=float(edge_jump_snr),
        whiteline_bias_correction=bool(whiteline_bias_correction),
        whiteline_bias_ev=[(float(c), float(v)) for c, v in zip(bias_centres, bias_values)],
    )
    wl, edge, jump, pre, height, noise = maps
    return XanesResult(
        whiteline=wl, edge=edge, edge_jump=jump, pre_edge=pre, whiteline_height=height,
        noise=noise, status=status, energies=E, params=params, mean_spectrum=mean,
        normalized=norm_out if return_normalized else None,
    )
