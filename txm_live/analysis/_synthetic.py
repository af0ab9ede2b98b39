"""Analytic XANES spectra and stacks with known whiteline/edge (private).

Used by the tests and benchmarks: an arctan edge plus a Lorentzian whiteline on
a sloped background, with Poisson counting noise from a given flat level.
"""

from __future__ import annotations

import numpy as np

__all__ = ["analytic_spectrum", "synthetic_xanes_stack", "default_energies"]


def default_energies(e0: float = 8333.0, n: int = 100) -> np.ndarray:
    """FXI-like energy list (eV): coarse pre-edge, fine edge, coarse post-edge."""
    n_pre = max(4, n // 8)
    n_post = max(6, n // 5)
    n_mid = n - n_pre - n_post
    pre = np.linspace(e0 - 50, e0 - 8, n_pre, endpoint=False)
    mid = np.linspace(e0 - 8, e0 + 30, n_mid, endpoint=False)
    post = np.linspace(e0 + 30, e0 + 150, n_post)
    return np.concatenate([pre, mid, post])


def analytic_spectrum(energy, shift_ev=0.0, *, e0=8333.0, edge_width=4.0,
                      wl_offset=12.0, wl_amp=0.6, wl_width=6.0):
    """Normalized model spectrum (pre-edge 0, post-edge 1) shifted by ``shift_ev``.

    ``energy`` may broadcast against ``shift_ev``.
    """
    e = np.asarray(energy, dtype=np.float64)
    d = e - (e0 + shift_ev)
    step = 0.5 + np.arctan(d / (edge_width / 2)) / np.pi
    g = wl_width / 2
    peak = wl_amp * g * g / ((d - wl_offset) ** 2 + g * g)
    # the whiteline sits on the edge: let it fade in with the step
    return step * (1.0 + peak)


def _truth(E, shifts, e0_fit, jump, pre_slope, **kw):
    """Whiteline and edge of the noiseless spectra, Larch-normalized on ``E``.

    The edge is defined on the normalized spectrum, so the truth uses the same
    pre-edge line and edge step (from the noiseless samples at ``E``) as the
    fit; the curve itself is evaluated on a 0.002 eV grid.
    """
    from ._xanes import _lstsq_rows, normalization_parameters

    e0 = kw.get("e0", 8333.0)
    p = normalization_parameters(E, e0_fit)
    dense = np.arange(e0 - 20.0, e0 + 45.0, 0.002)
    wl = np.empty(shifts.shape)
    edge = np.empty(shifts.shape)
    t = E - e0_fit
    R_pre = _lstsq_rows(t[p["pre_slice"]], 1)
    R_post = _lstsq_rows(t[p["post_slice"]], p["nnorm"])
    powers = t[p["ie0"]] ** np.arange(p["nnorm"] + 1)
    for s in np.unique(shifts):
        mu = pre_slope * (E - e0) + jump * analytic_spectrum(E, s, **kw)
        a, b = R_pre @ mu[p["pre_slice"]]
        step = powers @ (R_post @ (mu - a - b * t)[p["post_slice"]])
        mud = pre_slope * (dense - e0) + jump * analytic_spectrum(dense, s, **kw)
        nd = (mud - a - b * (dense - e0_fit)) / step
        sel = shifts == s
        wl[sel] = dense[np.argmax(nd)]
        i = np.argmax(nd > 0.5)
        edge[sel] = np.interp(0.5, nd[i - 1:i + 1], dense[i - 1:i + 1])
    return wl, edge


def synthetic_xanes_stack(shape=(64, 64), energies=None, *, flat_counts=1e4,
                          thickness_abs=1.0, jump=0.5, pre_slope=-2e-4,
                          shift_range=(-1.5, 1.5), seed=0, dtype=np.float32,
                          **model_kw):
    """Absorbance stack with per-pixel edge shifts and Poisson noise.

    Returns
    -------
    stack : ndarray (nE, ny, nx)
    energies : ndarray (nE,)
    truth : dict with ``whiteline``, ``edge`` (eV, (ny, nx)), ``shift`` (eV)
        and ``e0`` (eV; pass it to the fit so the normalization matches)
    """
    rng = np.random.default_rng(seed)
    E = default_energies() if energies is None else np.asarray(energies, float)
    e0 = model_kw.get("e0", 8333.0)
    ny, nx = shape
    levels = np.linspace(shift_range[0], shift_range[1], 31)
    shifts = rng.choice(levels, size=(ny, nx))
    norm = analytic_spectrum(E[:, None, None], shifts[None], **model_kw)
    mu = thickness_abs + pre_slope * (E[:, None, None] - e0) + jump * norm
    if flat_counts:
        flat = rng.poisson(flat_counts, size=mu.shape)
        counts = rng.poisson(flat_counts * np.exp(-mu))
        mu = -np.log(np.maximum(counts, 1) / flat)
    wl, edge = _truth(E, shifts, e0, jump, pre_slope, **model_kw)
    return mu.astype(dtype), E, {"whiteline": wl, "edge": edge, "shift": shifts, "e0": e0}
