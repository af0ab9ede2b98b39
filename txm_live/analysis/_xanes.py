"""Per-pixel XANES normalization, whiteline and edge maps (private module).

Public names are re-exported by :mod:`txm_live.analysis`. The steps of the
fit live in :mod:`._xanes_plan` (global prepare, per-block apply), the
energy-only rules in :mod:`._xanes_energy`, the numba kernel in
:mod:`._xanes_kernel` and the dask plumbing in :mod:`._xanes_dask`;
:func:`fit_xanes` reads them in order.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from . import _xanes_kernel as _k
from ._validate import check_spectral_stack, is_dask_array
from ._xanes_energy import find_e0, lstsq_rows, normalization_parameters
from ._xanes_plan import NumpyStack, XanesOptions, XanesPlan, prepare_xanes

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

_MAP_FIELDS = ("whiteline", "edge", "edge_jump", "pre_edge", "whiteline_height", "noise",
               "status", "normalized")

_lstsq_rows = lstsq_rows  # the name txm_live.analysis._synthetic imports


# --------------------------------------------------------------------------
# result
# --------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class XanesResult:
    """Per-pixel XANES maps returned by :func:`fit_xanes`.

    All maps have the spatial shape of the stack (``(ny, nx)`` for images,
    ``(nz, ny, nx)`` for volumes) and the float precision of the input stack
    (float32 unless the stack is float64); pixels that are not in
    :attr:`mask` are NaN in :attr:`whiteline`, :attr:`edge` and
    :attr:`whiteline_height`. When the stack was a dask array the maps,
    :attr:`status`, :attr:`mask` and :attr:`normalized` are dask arrays
    (nothing computed yet; :meth:`compute` computes them all in one pass) and
    the other attributes are numpy.

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
        Mean absorbance per energy of the finite pixels in every 4th row
        (axis -2; all rows for images under 16 rows); used to derive e0 and
        the whiteline search range.
    normalized : ndarray or None
        Normalized stack ``(n_used, *spatial)`` on :attr:`energies` when
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
        """Number of pixels per status, keyed by the status meaning (computes
        the status of a dask-backed result)."""
        vals, counts = np.unique(np.asarray(self.status), return_counts=True)
        return {STATUS_CODES[int(v)]: int(c) for v, c in zip(vals, counts)}

    def compute(self, **dask_kwargs) -> "XanesResult":
        """The result with numpy maps: dask-backed maps computed together (one
        kernel pass; ``dask_kwargs`` go to ``dask.compute``), numpy ones as
        they are."""
        names = [f for f in _MAP_FIELDS if is_dask_array(getattr(self, f))]
        if not names:
            return self
        import dask

        values = dask.compute(*[getattr(self, f) for f in names], **dask_kwargs)
        return dataclasses.replace(self, **dict(zip(names, values)))


# --------------------------------------------------------------------------
# fit: the steps fit_xanes reads in order
# --------------------------------------------------------------------------
def _resolve_stack(stack):
    """Step 1: the stack as (n_energies, *spatial) in a float dtype that keeps
    its precision (float32 / float64; others -> float32, native byte order),
    wrapped for the numpy or the dask steps."""
    arr = check_spectral_stack(stack)
    if not np.issubdtype(arr.dtype, np.floating) or arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    if arr.dtype.byteorder not in ("=", "|"):
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if is_dask_array(arr):
        from ._xanes_dask import DaskStack

        return DaskStack(arr)
    return NumpyStack(arr)


def _resolve_mask(mask, source):
    """Step 1: the user mask as bool of the spatial shape, or None; a dask
    mask stays lazy for a dask stack."""
    if mask is None:
        return None
    lazy = is_dask_array(mask) and not isinstance(source, NumpyStack)
    m = mask.astype(bool) if lazy else np.asarray(mask, dtype=bool)
    if m.shape != tuple(source.spatial_shape):
        raise ValueError(
            f"mask shape {m.shape} does not match the image shape {tuple(source.spatial_shape)}"
        )
    return m


def _result(plan: XanesPlan, maps: dict) -> XanesResult:
    """Last step: the maps and the plan's global quantities as a XanesResult."""
    return XanesResult(
        whiteline=maps["whiteline"], edge=maps["edge"], edge_jump=maps["edge_jump"],
        pre_edge=maps["pre_edge"], whiteline_height=maps["whiteline_height"],
        noise=maps["noise"], status=maps["status"], energies=plan.energies,
        params=plan.params, mean_spectrum=plan.mean_spectrum, normalized=maps["normalized"],
    )


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
    stack : array_like or dask array, shape (n_energies, *spatial)
        Absorbance stack (e.g. from :func:`flat_dark_correct`) with any
        number of spatial axes: ``(n_energies, ny, nx)`` images,
        ``(n_energies, nz, ny, nx)`` volumes. Any real dtype; float32 and
        float64 keep their precision, other dtypes become float32. Not
        modified. Pixels with a non-finite value at any used energy are
        masked (status 1). A dask array must hold the energy axis in one
        chunk (chunk it over space); the maps are then dask arrays with its
        spatial chunks (Notes).
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
        whiteline (the edge step under the peak), measured on mean spectra of
        fitted pixels (Notes). Default True.
    mask : array_like of bool, shape ``spatial``, optional
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
        Wrong shapes, a dask stack chunked along the energy axis, energies
        not in eV, fewer than 8 distinct energies, or
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
    bias)`` pairs used. The pixels are drawn from 40000 positions fixed by
    the spatial shape alone (all pixels of smaller images; else a seeded
    random subset): those that fit, or a seeded random 20000 of them.

    **Edge rule.** From the whiteline downwards, the first energy where the
    normalized spectrum is below 0.5 brackets the crossing; a line fitted to
    the points within ``+-edge_halfwidth`` eV of the crossing gives its
    position.

    **Steps, N-D and dask.** The fit runs in two steps (:mod:`._xanes_plan`):
    a global *prepare* step reads every 4th row for the mean spectrum (e0,
    normalization ranges, whiteline search range) and the bias pixels'
    spectra (bias table); a per-block *apply* step runs the kernel and the
    bias correction on any block of pixels. Each pixel's result depends only
    on its spectrum and the global quantities, and those are computed with
    the same per-line arithmetic for numpy and dask, so a dask stack gives
    maps bit-identical to the numpy stack, whatever its chunks. With a dask
    stack the prepare step runs when ``fit_xanes`` is called (one read of
    the sampled rows and pixels, so bad input fails at once); the maps are
    computed when asked for, one kernel task per chunk. At most one kernel
    runs at a time per process, with all numba threads (or ``n_threads``).
    """
    options = XanesOptions(
        e0=e0, pre1=pre1, pre2=pre2, norm1=norm1, norm2=norm2, nnorm=nnorm,
        whiteline_range=whiteline_range, whiteline_halfwidth=whiteline_halfwidth,
        whiteline_order=whiteline_order, whiteline_tie=whiteline_tie,
        edge_halfwidth=edge_halfwidth, edge_jump_min=edge_jump_min,
        edge_jump_snr=edge_jump_snr, whiteline_bias_correction=whiteline_bias_correction,
        return_normalized=return_normalized, n_threads=n_threads,
    )
    source = _resolve_stack(stack)
    user_mask = _resolve_mask(mask, source)
    # global: mean spectrum -> energy groups -> e0 -> normalization ranges ->
    # whiteline range -> kernel weights -> whiteline bias table
    plan = prepare_xanes(source, energies, options, user_mask, stacklevel=3)
    # per block: kernel -> bias correction (lazy for dask)
    maps = source.fit(plan, user_mask)
    return _result(plan, maps)
