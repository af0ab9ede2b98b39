"""Ni K-edge XANES and X-ray attenuation of an NMC-like cathode, per Ni oxidation state.

The line shape of Ni2+ is the *measured* NiO spectrum (``data/nio_normalized.csv``,
derived from ``../shared/data/xas/NiO.prj`` by ``data/make_nio_lineshape.py``); higher
oxidation states are that spectrum shifted up in energy and reshaped (weaker, broader
whiteline), as seen in charged (delithiated) NMC. Off-edge absorption comes from
xraydb's tabulated cross sections.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xraydb
from scipy.interpolate import PchipInterpolator
from scipy.ndimage import gaussian_filter1d

__all__ = ["NiXanesModel", "load_nio_lineshape"]

_LINESHAPE_CSV = Path(__file__).resolve().parent / "data" / "nio_normalized.csv"

# Fine relative-energy grid (eV from the pure phase's half-step) on which each valence's
# line shape is tabulated once; 0.05 eV is well below the 0.125 eV shift of one 0.1
# valence step, so interpolating it linearly loses nothing a TXM could resolve.
_GRID_STEP_EV = 0.05
_GRID = np.arange(-250.0, 1250.0 + _GRID_STEP_EV / 2, _GRID_STEP_EV)


def load_nio_lineshape(path=_LINESHAPE_CSV) -> tuple[np.ndarray, np.ndarray]:
    """Read the committed NiO line shape.

    Returns
    -------
    de_ev, norm : ndarray
        Energy relative to the measured half-step (eV) and the flattened normalized mu.
    """
    data = np.loadtxt(path, delimiter=",", comments="#")
    return data[:, 0].copy(), data[:, 1].copy()


def _fit_loglog(element, e_lo, e_hi, n=60):
    """Quadratic fit of ln(mu_mass) vs ln(E) for one element over [e_lo, e_hi] eV."""
    energy = np.geomspace(e_lo, e_hi, n)
    mu = xraydb.mu_elam(element, energy)
    return np.polyfit(np.log(energy), np.log(mu), 2)


class NiXanesModel:
    """Ni K-edge XANES of an NMC-like cathode per Ni oxidation state (valence 2.0 … 4.0).

    Parameters
    ----------
    edge_ev : float or None
        Where the Ni2+ half-step (normalized = 0.5) is placed, eV. ``None`` → xraydb's
        tabulated Ni K edge, 8333 eV. Note that in real NiO the half-step sits several eV
        above the metal's tabulated edge (8342 eV in the NiO.prj calibration); the default
        keeps xraydb's value so that plans, energy lists and tests referencing "the Ni K
        edge" line up with the simulated spectrum.
    shift_ev_per_valence : float
        Rigid shift of edge and whiteline per unit of valence, eV (Ni2+→Ni4+ ≈ 2.5 eV).
    material : str
        Chemical formula of the electrode material (xraydb syntax).
    density_g_cm3 : float
        Its density, g/cm³.
    valence_grid : array_like or None
        Discrete valence levels used for projection; ``None`` → 2.0 … 4.0 in 0.1 steps.
    broadening_ev_per_valence : float
        Extra Gaussian sigma (eV) per unit valence above 2 convolved into the line shape
        (1.5 eV at Ni4+ by default): broader whiteline of the oxidised phase.
    whiteline_damping_per_valence : float
        Fraction by which the above-edge oscillation (whiteline and EXAFS) ``norm - 1``
        shrinks per unit valence above 2 (0.30 at Ni4+ by default).
    lineshape : tuple of ndarray or None
        ``(de_ev, norm)`` Ni2+ line shape relative to its half-step; ``None`` → the
        committed NiO measurement.

    Notes
    -----
    Linear attenuation (1/µm) is built from xraydb per element:

    ``mu(E, v) = mu_other(E) + mu_Ni_below(E) + jump(E) * normalized(E, v)``

    where ``mu_other`` is the exact tabulated attenuation of every element but Ni
    (including the Co and Mn K edges), ``mu_Ni_below`` is Ni's tabulated attenuation
    below its K edge, extrapolated smoothly across it (log-log quadratic fit), and
    ``jump`` is the tabulated above-edge Ni attenuation (also fitted smoothly and
    extrapolated back) minus ``mu_Ni_below``. ``normalized`` is 0 well below the edge and
    tends to 1 (with EXAFS wiggles) above it, so far from the edge ``mu`` is xraydb's.
    Valences must lie in [2, 4], the range the model is calibrated for.
    """

    def __init__(
        self,
        *,
        edge_ev=None,
        shift_ev_per_valence=1.25,
        material="LiNi0.8Mn0.1Co0.1O2",
        density_g_cm3=4.75,
        valence_grid=None,
        broadening_ev_per_valence=0.75,
        whiteline_damping_per_valence=0.15,
        lineshape=None,
    ):
        tab_edge = xraydb.xray_edge("Ni", "K").energy
        self.edge_ev_ni2 = float(tab_edge if edge_ev is None else edge_ev)
        self.shift_ev_per_valence = float(shift_ev_per_valence)
        self.material = material
        self.density_g_cm3 = float(density_g_cm3)
        self.broadening_ev_per_valence = float(broadening_ev_per_valence)
        self.whiteline_damping_per_valence = float(whiteline_damping_per_valence)
        if valence_grid is None:
            valence_grid = np.round(np.arange(2.0, 4.0 + 1e-9, 0.1), 6)
        self.valence_grid = np.asarray(valence_grid, dtype=float)
        self._check_valence(self.valence_grid)

        de, norm = load_nio_lineshape() if lineshape is None else lineshape
        # PCHIP: smooth through the measured points without overshooting the whiteline.
        base = PchipInterpolator(de, norm, extrapolate=False)(_GRID)
        base[_GRID < de[0]] = 0.0
        base[_GRID > de[-1]] = 1.0
        self._base = base
        self._tables: dict[float, tuple[np.ndarray, float]] = {}
        self._mu_cache: dict[float, np.ndarray] = {}

        # Partial densities (g/cm³) of each element in the material.
        counts = xraydb.chemparse(material)
        masses = {el: n * xraydb.atomic_mass(el) for el, n in counts.items()}
        total = sum(masses.values())
        self._partial_density = {el: self.density_g_cm3 * m / total for el, m in masses.items()}
        if "Ni" not in self._partial_density:
            raise ValueError(f"material {material!r} contains no Ni")
        # Smooth Ni cross sections either side of the tabulated K edge (the fit ranges
        # avoid the Co K edge at 7709 eV and stay within a few keV of the Ni edge).
        self._ni_below = _fit_loglog("Ni", 7750.0, tab_edge - 3.0)
        self._ni_above = _fit_loglog("Ni", tab_edge + 3.0, 11000.0)

    # ------------------------------------------------------------------ line shapes
    @staticmethod
    def _check_valence(valence):
        v = np.asarray(valence, dtype=float)
        if np.any(~np.isfinite(v)) or np.any(v < 2.0 - 1e-9) or np.any(v > 4.0 + 1e-9):
            raise ValueError(
                f"valence must lie in [2, 4]; got min {np.nanmin(v)}, max {np.nanmax(v)}"
            )

    def _table(self, valence: float) -> tuple[np.ndarray, float]:
        """Line shape of a pure phase on ``_GRID`` and its half-step (relative eV)."""
        key = round(float(valence), 6)
        hit = self._tables.get(key)
        if hit is not None:
            return hit
        t = key - 2.0
        shape = self._base
        sigma_ev = self.broadening_ev_per_valence * t
        if sigma_ev > 0:
            shape = gaussian_filter1d(shape, sigma_ev / _GRID_STEP_EV, mode="nearest")
        damp = self.whiteline_damping_per_valence * t
        if damp != 0:
            # Switch the damping on across the edge only, so the pre-edge stays at 0.
            switch = 0.5 * (1.0 + np.tanh(_GRID / 1.5))
            shape = shape - damp * (shape - 1.0) * switch
        near = np.nonzero((_GRID > -20.0) & (shape >= 0.5))[0][0]
        half = float(np.interp(0.5, shape[near - 1 : near + 1], _GRID[near - 1 : near + 1]))
        if len(self._tables) > 512:  # bounded: arbitrary valences must not grow memory
            self._tables.clear()
        self._tables[key] = (shape, half)
        return shape, half

    def edge_ev(self, valence) -> float:
        """Half-step energy (normalized = 0.5) of the pure phase of ``valence``, eV."""
        self._check_valence(valence)
        return self.edge_ev_ni2 + self.shift_ev_per_valence * (float(valence) - 2.0)

    def whiteline_ev(self, valence) -> float:
        """Whiteline energy (argmax of ``normalized``) of the pure phase, eV.

        Found numerically on the 0.05 eV table within 40 eV above the edge and refined
        by a parabola through the three highest points.
        """
        self._check_valence(valence)
        shape, half = self._table(valence)
        window = np.nonzero((_GRID > half - 2.0) & (_GRID < half + 40.0))[0]
        i = window[np.argmax(shape[window])]
        y0, y1, y2 = shape[i - 1 : i + 2]
        denom = y0 - 2 * y1 + y2
        frac = 0.5 * (y0 - y2) / denom if denom != 0 else 0.0
        rel = _GRID[i] + frac * _GRID_STEP_EV - half
        return self.edge_ev(valence) + rel

    def normalized(self, energy_ev, valence) -> np.ndarray:
        """Normalized XANES of the pure phase of ``valence``.

        Parameters
        ----------
        energy_ev : array_like
            Energies, eV.
        valence : array_like
            Ni oxidation states in [2, 4]; broadcast against ``energy_ev``.

        Returns
        -------
        ndarray
            float64, broadcast shape: 0 well below the edge, → 1 (with EXAFS) above.
        """
        energy, val = np.broadcast_arrays(
            np.asarray(energy_ev, dtype=float), np.asarray(valence, dtype=float)
        )
        self._check_valence(val)
        out = np.empty(energy.shape, dtype=float)
        uniq, inverse = np.unique(val, return_inverse=True)
        inverse = inverse.reshape(val.shape)
        for j, v in enumerate(uniq):
            sel = inverse == j
            shape, half = self._table(v)
            rel = energy[sel] - self.edge_ev(v) + half
            out[sel] = np.interp(rel, _GRID, shape, left=0.0, right=1.0)
        return out

    # ------------------------------------------------------------------ attenuation
    def _ni_smooth(self, coeffs, energy):
        le = np.log(energy)
        return np.exp(np.polyval(coeffs, le)) * self._partial_density["Ni"] * 1e-4

    def mu_other_per_um(self, energy_ev) -> np.ndarray:
        """Tabulated attenuation of every element but Ni, 1/µm."""
        energy = np.asarray(energy_ev, dtype=float)
        flat = np.atleast_1d(energy).ravel()  # xraydb rejects 0-d arrays
        total = np.zeros(flat.shape)
        for el, rho in self._partial_density.items():
            if el != "Ni":
                total = total + rho * xraydb.mu_elam(el, flat) * 1e-4
        return total.reshape(energy.shape)

    def mu_below_per_um(self, energy_ev) -> np.ndarray:
        """Smooth attenuation without the Ni K edge (pre-edge, extrapolated), 1/µm."""
        energy = np.asarray(energy_ev, dtype=float)
        return self.mu_other_per_um(energy) + self._ni_smooth(self._ni_below, energy)

    def edge_jump_per_um(self, energy_ev) -> np.ndarray:
        """Ni K-edge jump of the material, 1/µm (tabulated above − below, both smooth)."""
        energy = np.asarray(energy_ev, dtype=float)
        return self._ni_smooth(self._ni_above, energy) - self._ni_smooth(self._ni_below, energy)

    def mu_per_um(self, energy_ev, valence) -> np.ndarray:
        """Linear attenuation of the material, 1/µm, including the Ni-edge fine structure.

        Parameters
        ----------
        energy_ev, valence : array_like
            Broadcast together; energy in eV, valence in [2, 4].

        Returns
        -------
        ndarray
            ``mu_below(E) + jump(E) * normalized(E, v)``, float64, broadcast shape.
        """
        energy = np.asarray(energy_ev, dtype=float)
        return self.mu_below_per_um(energy) + self.edge_jump_per_um(energy) * self.normalized(
            energy, valence
        )

    def mu_grid_per_um(self, energy_ev: float) -> np.ndarray:
        """``mu_per_um`` at one energy for every level of ``valence_grid``, shape (K,).

        Cached per energy (scans revisit their energies for flats and repeats; xraydb
        look-ups cost ~1 ms each). Returns a read-only array.
        """
        key = round(float(energy_ev), 6)
        hit = self._mu_cache.get(key)
        if hit is None:
            hit = self.mu_per_um(key, self.valence_grid)
            hit.flags.writeable = False
            if len(self._mu_cache) > 4096:  # bounded
                self._mu_cache.clear()
            self._mu_cache[key] = hit
        return hit

    def normalized_grid(self, energy_ev) -> np.ndarray:
        """``normalized`` for every level of ``valence_grid``: shape (K, nE)."""
        energy = np.atleast_1d(np.asarray(energy_ev, dtype=float))
        return self.normalized(energy[None, :], self.valence_grid[:, None])
