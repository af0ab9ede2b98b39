"""Whiteline and edge of analytic spectra, normalized by Larch (truth for fit_xanes tests).

Independent of the code under test: the spectrum is the analytic line shape
(:func:`txm_live.analysis._synthetic.analytic_spectrum`, an arctan edge times a
Lorentzian whiteline on a sloped background), its pre-edge line and edge step come from
Larch's ``preedge`` on the noiseless samples at the scan energies, and the whiteline
(maximum) and edge (0.5 crossing) are read off that normalized curve on a 0.002 eV grid.
"""
from __future__ import annotations

import numpy as np
from larch.xafs.pre_edge import preedge

from txm_live.analysis._synthetic import analytic_spectrum

DENSE_STEP_EV = 0.002


def larch_truth(energy_ev, shifts_ev, *, e0_ev, jump, pre_slope, thickness_abs=1.0,
                pre1, pre2, norm1, norm2, nnorm, model_e0_ev=8333.0):
    """Whiteline and edge (eV) of every distinct shift, Larch-normalized on ``energy_ev``.

    Parameters
    ----------
    energy_ev : ndarray (n,)
        Scan energies (ascending), eV.
    shifts_ev : ndarray (...)
        Edge shift of each pixel, eV.
    e0_ev, pre1, pre2, norm1, norm2, nnorm
        Normalization parameters handed to Larch (the same ones the fit is given).
    jump, pre_slope, thickness_abs, model_e0_ev
        The absorbance model ``thickness + pre_slope (E - model_e0) + jump * spectrum``.

    Returns
    -------
    whiteline_ev, edge_ev : ndarray, shape of ``shifts_ev``
    """
    E = np.asarray(energy_ev, float)
    shifts = np.asarray(shifts_ev, float)
    dense = np.arange(model_e0_ev - 20.0, model_e0_ev + 45.0, DENSE_STEP_EV)
    whiteline = np.empty(shifts.shape)
    edge = np.empty(shifts.shape)

    def mu(e, s):
        return thickness_abs + pre_slope * (e - model_e0_ev) + jump * analytic_spectrum(
            e, s, e0=model_e0_ev)

    for s in np.unique(shifts):
        out = preedge(E, mu(E, s), e0=e0_ev, pre1=pre1, pre2=pre2, norm1=norm1, norm2=norm2,
                      nnorm=nnorm)
        c0, c1 = out["precoefs"][0], out["precoefs"][1]
        norm = (mu(dense, s) - (c0 + c1 * dense)) / out["edge_step"]
        sel = shifts == s
        whiteline[sel] = dense[np.argmax(norm)]
        i = int(np.argmax(norm > 0.5))
        edge[sel] = np.interp(0.5, norm[i - 1:i + 1], dense[i - 1:i + 1])
    return whiteline, edge
