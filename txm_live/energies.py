"""Energy lists for XANES scans around an absorption edge.

A leaf module (numpy and xraydb only) that plans, the simulator and analysis scripts share.
FXI measures 21–101 energies per element: sparse in the pre-edge (the baseline), dense
across the edge and whiteline (where the chemistry is), sparse again post-edge (the
normalization). All energies are in eV.
"""
from __future__ import annotations

import numpy as np


def edge_energy_ev(element: str, edge: str = "K") -> float:
    """Tabulated absorption-edge energy (eV) from xraydb, e.g. ``edge_energy_ev('Ni') == 8333.0``."""
    import xraydb

    try:
        return float(xraydb.xray_edge(element, edge).energy)
    except Exception as exc:  # xraydb raises a bare ValueError/KeyError for unknown names
        raise ValueError(f"no {edge} edge known for element {element!r}: {exc}") from exc


def xanes_energy_list(
    edge_ev: float,
    *,
    pre_edge_ev: tuple[float, float] = (-60.0, -15.0),
    pre_edge_step_ev: float = 5.0,
    near_edge_ev: tuple[float, float] = (-15.0, 25.0),
    near_edge_step_ev: float = 0.75,
    post_edge_ev: tuple[float, float] = (25.0, 120.0),
    post_edge_step_ev: float = 8.0,
) -> np.ndarray:
    """Energies (eV, ascending) for a 2D/3D XANES scan around ``edge_ev``.

    Parameters
    ----------
    edge_ev : float
        Edge energy, eV.
    pre_edge_ev, near_edge_ev, post_edge_ev : (float, float)
        Regions relative to ``edge_ev``, eV, as ``(start, stop)``; each stop is the next
        region's start.
    pre_edge_step_ev, near_edge_step_ev, post_edge_step_ev : float
        Spacing in each region, eV.

    Returns
    -------
    numpy.ndarray, shape (n,)
        The defaults give 75 energies from edge − 60 to edge + 120 eV, 0.75 eV apart from
        −15 to +25 eV (edge and whiteline). Each region's step is adjusted so the region
        holds a whole number of steps.
    """
    regions = [
        (pre_edge_ev, pre_edge_step_ev),
        (near_edge_ev, near_edge_step_ev),
        (post_edge_ev, post_edge_step_ev),
    ]
    parts = []
    for (start, stop), step in regions:
        if not (step > 0 and stop > start):
            raise ValueError(f"region ({start}, {stop}) eV with step {step} eV is empty or reversed")
        # An integer number of steps per region, so no region ends in a sliver of a step.
        n = max(1, round((stop - start) / step))
        parts.append(np.linspace(start, stop, n, endpoint=False))
    parts.append(np.array([post_edge_ev[1]]))
    relative = np.unique(np.round(np.concatenate(parts), 6))
    return float(edge_ev) + relative
