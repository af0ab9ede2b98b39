"""Energy-only rules of the XANES fit: e0, Larch's normalization ranges and the
least-squares weights that depend only on the energies (private module).

Nothing here looks at a pixel: every function takes the energy grid (and e0)
and returns numbers or weights that :mod:`._xanes_plan` turns into the
kernel's :class:`~._xanes_kernel.KernelWeights`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["find_e0", "normalization_parameters", "lstsq_rows", "local_tables"]

#: find_e0 ignores this fraction of the points at each end (at least
#: _MIN_END_POINTS): monochromator glitches.
_END_FRACTION = 0.02
_MIN_END_POINTS = 2
#: Energies within a local polynomial's half-width plus this (eV) are inside it.
_HALFWIDTH_TOL_EV = 1e-9

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
    nmin = max(_MIN_END_POINTS, int(_END_FRACTION * e.size))
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


def lstsq_rows(t: np.ndarray, order: int) -> np.ndarray:
    """Rows R (order+1, len(t)) so that coef = R @ y fits sum coef_q t**q."""
    V = np.vander(t, order + 1, increasing=True)
    return np.linalg.pinv(V)


def local_tables(E: np.ndarray, halfwidth: float, order: int):
    """Local polynomial fits of degree ``order`` centred on every energy.

    The fit at energy k uses the points within ``halfwidth`` eV of ``E[k]``,
    widened (nearest side first) to at least ``order + 2`` points.

    Returns
    -------
    start, length : ndarray of int64, shape (n,)
        First point and number of points of each fit.
    W : ndarray of float64, shape (n, 4, max(length))
        Coefficient q (of ``(E - E[k])**q``) of fit k is
        ``W[k, q, :length[k]] @ y[start[k]:start[k] + length[k]]``.
    """
    nu = E.size
    need = order + 2
    starts = np.empty(nu, np.int64)
    lens = np.empty(nu, np.int64)
    spans = []
    for k in range(nu):
        idx = np.flatnonzero(np.abs(E - E[k]) <= halfwidth + _HALFWIDTH_TOL_EV)
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
        W[k, : o + 1, : hi - lo] = lstsq_rows(E[lo:hi] - E[k], o)
    return starts, lens, W
