"""A simulated operando cell: an NMC811 cathode (vs Li metal) whose particles charge unevenly.

Pure numpy; no ophyd. The simulated potentiostat in :mod:`simulators.devices` wraps
:class:`NMCCell` and only passes setpoints and time in.

The model
---------
The cathode is a network of particles in parallel between one electrode potential
``V_e`` and the cell terminals (a half cell against Li metal, so the cell voltage is the
cathode's potential vs Li/Li⁺):

- **Open-circuit voltage.** Each particle's equilibrium potential is the NMC811 open-circuit
  potential of Chen et al. (2020) [1]_ (their fit for the LG M50 positive electrode) at the
  particle's *surface* lithium stoichiometry ``x``, mapped from state of charge
  ``soc`` 0 … 1 onto the stoichiometry window of that cell, ``x = 0.9084 − soc · (0.9084 −
  0.2661)``: 3.56 V at SOC 0, 3.84 V at 0.5, 4.28 V at 1, rising monotonically (at
  least 0.34 V per unit SOC). A particle that reaches SOC 0 or 1 takes no more charge
  in that direction (it is full); the others take the current, so charge is conserved
  exactly.
- **Kinetics and contact.** Particle ``i`` exchanges current ``I_i = g_i · (V_e − U_i)``
  with the electrode (linearised Butler–Volmer with its electronic contact in series).
  Its conductance ``g_i = q_i / τ_i`` (``q_i`` its capacity in coulombs) sets its own
  kinetic time ``τ_i = kinetic_time_s · (R_i / R_ref) / (contact_i · surface_i)``: the
  reaction scales with the surface (∝ R²) and the charge to move with the volume (∝ R³),
  so big particles lag; ``contact_i`` (log-normal, the carbon/binder network) and
  ``surface_i`` (log-normal, reactive surface) spread it further. *Inactive* particles
  have lost contact: ``g_i = 0``, their SOC never changes.
- **Inside a particle.** The surface runs ahead of the volume mean by ``δ_i``, which
  relaxes with the solid-diffusion time ``τ_D = R² / (15 D)`` towards the parabolic-
  profile value ``τ_D · d soc_i/dt`` (Subramanian et al. 2005 [2]_): during charge the
  surface is delithiated first and the core lags, during discharge the reverse.
- **Terminals.** ``V = V_e + I · R_series``; the total current ``I = Σ I_i``.
  Each time step is linearly implicit in the particles' OCV (stable at any step), which
  makes constant current (CC), constant voltage (CV) and rest closed-form per step.
- **Hidden population.** Besides the particles in the field of view (the phantom's, in
  its order), the electrode holds ``n_hidden`` particles drawn from the same
  distributions, so the global SOC is the electrode's, not the field of view's.

Sign: current > 0 charges the cathode (delithiation, SOC and Ni oxidation state rise).
Faults (:data:`FAULT_CODES`): a terminal voltage beyond the instrument's compliance (a
current step into a dried, high-impedance cell), a CV step at the compliance current, or
a disconnected cell; each turns the output off (rest) until cleared.
Charge counting: ``capacity_mah`` is the net charge passed (charge positive); with
``nominal_capacity_mah`` the capacity of all particles, the counted SOC equals the
capacity-weighted mean particle SOC exactly (no side reactions).

The per-particle state feeds the phantom: Ni valence ``2 + 2·soc`` (the simulator's Ni²⁺ →
Ni⁴⁺ convention, :mod:`simulators.spectra`), the mean over the particle's volume from the
mean SOC and the surface valence from the surface SOC, through the phantom's own radial
profile ``v(r) = core + (surface − core)·exp(−(R − r)/penetration)``
(:meth:`simulators.phantom.Particle.with_state`).

References
----------
.. [1] C.-H. Chen, F. Brosa Planella, K. O'Regan, D. Gastol, W. D. Widanage, E. Kendrick,
   "Development of Experimental Techniques for Parameterization of Multi-scale Lithium-ion
   Battery Models", J. Electrochem. Soc. 167, 080534 (2020), doi:10.1149/1945-7111/ab9050.
.. [2] V. R. Subramanian, V. D. Diwakar, D. Tapriyal, "Efficient Macro-Micro Scale Coupled
   Modeling of Batteries", J. Electrochem. Soc. 152, A2002 (2005), doi:10.1149/1.2032427.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field, replace

import numpy as np

from txm_live.devices.potentiostat_protocol import (
    CONTROL_MODES,
    FAULT_CODES,
    LIMIT_ACTIONS,
    current_from_c_rate_a,
)

from .phantom import NMCPhantom

__all__ = [
    "CONTROL_MODES", "FAULT_CODES", "CellControl", "CellParameters", "CellState", "NMCCell",
    "OperandoSample", "ParticleProperties", "nmc811_ocv_slope_v_per_soc", "nmc811_ocv_v",
]

#: Li stoichiometry of the positive electrode at SOC 0 and SOC 1 (Chen et al. 2020 cell).
STOICHIOMETRY_DISCHARGED = 0.9084
STOICHIOMETRY_CHARGED = 0.2661
#: Coulombs per mAh.
COULOMB_PER_MAH = 3.6
#: Fault codes (:data:`FAULT_CODES`): voltage compliance, current compliance, disconnected.
FAULT_VOLTAGE, FAULT_CURRENT, FAULT_DISCONNECTED = 1, 2, 3
#: Faults the simulation can inject.
INJECTABLE_FAULTS = ("disconnect", "high_impedance")
#: Series resistance factor of an injected ``high_impedance`` fault (dried electrolyte,
#: a loose spring contact).
HIGH_IMPEDANCE_FACTOR = 1e4
_EVENT_LOG_LENGTH = 1000

# Chen et al. (2020), eq. for the NMC811 positive electrode OCP (their Table/fit):
# U(x) = a0·x + a1 − Σ_k b_k·tanh(c_k·(x − d_k)) with the signs below.
_OCV_LINEAR = (-0.8090, 4.4875)
_OCV_TANH = ((-0.0428, 18.5138, 0.5542), (-17.7326, 15.7890, 0.3117), (17.5842, 15.9308, 0.3120))


def _stoichiometry(soc):
    return STOICHIOMETRY_DISCHARGED - soc * (STOICHIOMETRY_DISCHARGED - STOICHIOMETRY_CHARGED)


def nmc811_ocv_v(soc) -> np.ndarray:
    """Open-circuit potential of NMC811 vs Li/Li⁺ at state of charge ``soc``, V.

    Parameters
    ----------
    soc : array_like
        State of charge 0 (lithiated, discharged) … 1 (charged); evaluated at
        ``clip(soc, 0, 1)``.

    Returns
    -------
    ndarray (float64), shape of ``soc``
        Chen et al. (2020) fit at the stoichiometry of ``soc`` (module docstring).
    """
    x = _stoichiometry(np.clip(np.asarray(soc, dtype=float), 0.0, 1.0))
    u = _OCV_LINEAR[0] * x + _OCV_LINEAR[1]
    for amp, rate, centre in _OCV_TANH:
        u = u + amp * np.tanh(rate * (x - centre))
    return u


def nmc811_ocv_slope_v_per_soc(soc) -> np.ndarray:
    """Derivative of :func:`nmc811_ocv_v` with respect to SOC, V per unit SOC (> 0)."""
    x = _stoichiometry(np.clip(np.asarray(soc, dtype=float), 0.0, 1.0))
    du_dx = np.full_like(x, _OCV_LINEAR[0])
    for amp, rate, centre in _OCV_TANH:
        du_dx = du_dx + amp * rate / np.cosh(rate * (x - centre)) ** 2
    return du_dx * -(STOICHIOMETRY_DISCHARGED - STOICHIOMETRY_CHARGED)


@dataclass(frozen=True)
class CellParameters:
    """Physical parameters of the simulated cell and of the potentiostat driving it.

    Parameters
    ----------
    nominal_capacity_mah : float
        Capacity of the whole cathode (all particles, SOC 0 → 1), mAh; 1C is this many mA.
    series_resistance_ohm : float
        Electrolyte, separator and lead resistance between the terminals and the
        electrode, Ω.
    kinetic_time_s : float
        Kinetic time ``q/g`` (s per volt of overpotential per unit SOC) of a particle of
        ``reference_radius_um`` with contact and surface factors 1. At 1C a particle
        needs an overpotential of ``τ_i / 3600 s`` V, i.e. lags the electrode by about
        ``τ_i / 3600 s / (dU/dsoc)`` in SOC.
    reference_radius_um : float
        Radius at which ``kinetic_time_s`` is quoted, µm.
    diffusion_um2_per_s : float
        Solid-state Li diffusion coefficient, µm²/s (1e-3 µm²/s = 1e-11 cm²/s, within the
        1e-10 … 1e-12 cm²/s range GITT gives for NMC811).
    contact_spread, surface_spread : float
        Log-normal sigma of the contact and reactive-surface factors.
    inactive_fraction : float
        Probability that a particle has lost contact (never reacts).
    n_hidden : int
        Particles outside the field of view, drawn like the visible ones.
    hidden_radius_range_um : tuple of float or None
        Radius range of the hidden particles, µm; None → the visible particles' range.
    compliance_voltage_v, compliance_current_a : float
        What the potentiostat can deliver: a terminal voltage beyond ±compliance_voltage_v
        is a voltage-compliance fault; setpoints beyond ±compliance_current_a are refused.
    max_step_s : float
        Longest internal integration step, s (steps are implicit; this bounds the time
        resolution of cutoffs and the relaxation accuracy).
    """

    nominal_capacity_mah: float = 1.0
    series_resistance_ohm: float = 20.0
    kinetic_time_s: float = 150.0
    reference_radius_um: float = 3.0
    diffusion_um2_per_s: float = 1e-3
    contact_spread: float = 0.5
    surface_spread: float = 0.3
    inactive_fraction: float = 0.1
    n_hidden: int = 400
    hidden_radius_range_um: tuple | None = None
    compliance_voltage_v: float = 10.0
    compliance_current_a: float = 0.1
    max_step_s: float = 5.0

    def __post_init__(self):
        positive = ("nominal_capacity_mah", "kinetic_time_s", "reference_radius_um",
                    "diffusion_um2_per_s", "compliance_voltage_v", "compliance_current_a",
                    "max_step_s")
        for name in positive:
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"CellParameters.{name} must be finite and > 0, got {value}")
        for name in ("series_resistance_ohm", "contact_spread", "surface_spread"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"CellParameters.{name} must be finite and >= 0, got {value}")
        if not 0.0 <= self.inactive_fraction < 1.0:
            raise ValueError("CellParameters.inactive_fraction must be in [0, 1), got "
                             f"{self.inactive_fraction}")
        if int(self.n_hidden) < 0:
            raise ValueError(f"CellParameters.n_hidden must be >= 0, got {self.n_hidden}")


@dataclass(frozen=True)
class CellControl:
    """What the potentiostat applies: rest, constant current or constant voltage.

    Parameters
    ----------
    mode : {'rest', 'cc', 'cv'}
        Open circuit (no current), constant current, constant voltage.
    current_a : float
        CC current, A (> 0 charges).
    voltage_v : float
        CV setpoint, V vs Li/Li⁺.
    voltage_max_v, voltage_min_v : float
        CC cutoffs: a charge ends at ``voltage_max_v``, a discharge at ``voltage_min_v``
        (the step's ``limit_reached`` becomes True and ``on_limit`` follows).
    current_limit_a : float
        CV: the current is held within ±this. Without a limit inside the instrument's
        compliance, a CV step that needs the compliance current is a current-compliance
        fault (as a real instrument overloads).
    end_current_a : float
        CV: the step ends (→ rest, ``limit_reached``) once |I| falls below this; 0 = never.
    on_limit : {'rest', 'cv'}
        After a CC cutoff: rest, or hold the cutoff voltage (CC–CV charging).
    """

    mode: str = "rest"
    current_a: float = 0.0
    voltage_v: float = math.nan
    voltage_max_v: float = 4.3
    voltage_min_v: float = 3.0
    current_limit_a: float = math.inf
    end_current_a: float = 0.0
    on_limit: str = "rest"

    def __post_init__(self):
        if self.mode not in CONTROL_MODES:
            raise ValueError(f"mode must be one of {CONTROL_MODES}, got {self.mode!r}")
        if self.on_limit not in LIMIT_ACTIONS:
            raise ValueError(f"on_limit must be one of {LIMIT_ACTIONS}, got {self.on_limit!r}")
        if not math.isfinite(self.current_a):
            raise ValueError(f"current_a must be finite, got {self.current_a}")
        if self.mode == "cv" and not math.isfinite(self.voltage_v):
            raise ValueError(f"a CV step needs a finite voltage_v, got {self.voltage_v}")
        if not self.voltage_min_v < self.voltage_max_v:
            raise ValueError(
                f"voltage_min_v ({self.voltage_min_v}) must be below voltage_max_v ({self.voltage_max_v})"
            )
        if not self.current_limit_a > 0:
            raise ValueError(f"current_limit_a must be > 0, got {self.current_limit_a}")
        if not self.end_current_a >= 0:
            raise ValueError(f"end_current_a must be >= 0, got {self.end_current_a}")


@dataclass(frozen=True)
class CellState:
    """The cell at one moment (what the potentiostat reads, plus the simulator's truth).

    Attributes
    ----------
    time_s : float
        Cell time, s (the beamline's simulated clock).
    mode : str
        Control mode in force ('rest' after a cutoff that rests, or after a fault).
    voltage_v, current_a : float
        Terminal voltage (V vs Li/Li⁺; NaN while disconnected) and current (A, > 0 charge).
    capacity_mah : float
        Net charge passed since the cell was built, mAh (charge positive).
    step_time_s, step_capacity_mah : float
        Time and charge since the current control was applied.
    limit_reached : bool
        The current step ended at its cutoff (CC voltage limit, CV end current).
    fault : int
        :data:`FAULT_CODES` key; 0 = no fault.
    soc : float
        True global SOC: capacity-weighted mean of every particle's mean SOC.
    counted_soc : float
        Initial SOC + capacity / nominal capacity (what coulomb counting gives).
    particle_soc, particle_surface_soc : ndarray (n_visible,)
        Mean and surface SOC of the visible particles (the phantom's, in its order).
    inactive : ndarray of bool (n_visible,)
        Visible particles that have lost contact (their SOC never changes).
    """

    time_s: float
    mode: str
    voltage_v: float
    current_a: float
    capacity_mah: float
    step_time_s: float
    step_capacity_mah: float
    limit_reached: bool
    fault: int
    soc: float
    counted_soc: float
    particle_soc: np.ndarray
    particle_surface_soc: np.ndarray
    inactive: np.ndarray

    @property
    def fault_message(self) -> str:
        return FAULT_CODES[self.fault]


@dataclass(frozen=True)
class ParticleProperties:
    """Fixed properties of the visible particles (ground truth), arrays of (n_visible,).

    Attributes
    ----------
    radius_um : ndarray
    contact, surface : ndarray
        Contact and reactive-surface factors (log-normal around 1).
    kinetic_time_s : ndarray
        ``q/g`` of each particle, s per volt per unit SOC (inf for inactive ones).
    diffusion_time_s : ndarray
        ``R² / (15 D)``, s.
    capacity_mah : ndarray
        Charge the particle holds from SOC 0 to 1, mAh.
    inactive : ndarray of bool
    """

    radius_um: np.ndarray
    contact: np.ndarray
    surface: np.ndarray
    kinetic_time_s: np.ndarray
    diffusion_time_s: np.ndarray
    capacity_mah: np.ndarray
    inactive: np.ndarray


@dataclass
class _Particles:
    """Per-particle constants and state of the whole electrode (visible first)."""

    radius_um: np.ndarray
    charge_c: np.ndarray  # capacity of the particle, C
    conductance_a_per_v: np.ndarray
    diffusion_time_s: np.ndarray
    inactive: np.ndarray
    soc: np.ndarray
    contact: np.ndarray
    surface: np.ndarray
    surface_lead: np.ndarray = field(default=None)  # surface SOC − mean SOC

    def __post_init__(self):
        if self.surface_lead is None:
            self.surface_lead = np.zeros_like(self.soc)

    def surface_soc(self) -> np.ndarray:
        return np.clip(self.soc + self.surface_lead, 0.0, 1.0)


class NMCCell:
    """A simulated NMC811 half cell whose particles charge heterogeneously.

    Parameters
    ----------
    radii_um : array_like, shape (n_visible,)
        Radii of the particles in the field of view, µm (the phantom's, in order).
    params : CellParameters, optional
    initial_soc : float
        SOC of every particle at the start (0 = pristine, discharged).
    inactive : array_like of bool (n_visible,) or None
        Which visible particles have lost contact; None → drawn with
        ``params.inactive_fraction`` (the hidden ones are always drawn).
    seed : int
        Seeds every random property (``numpy.random.default_rng``).
    start_time_s : float
        Cell time at construction, s.

    Notes
    -----
    Drive it with :meth:`apply` (a :class:`CellControl`) and :meth:`advance_to` (the
    clock's time): the current control acts from the moment it is applied. Observers
    added with :meth:`add_observer` are called with the new :class:`CellState` after
    every advance, control change and fault.
    """

    def __init__(self, radii_um, *, params: CellParameters | None = None, initial_soc=0.0,
                 inactive=None, seed=0, start_time_s=0.0):
        self.params = p = CellParameters() if params is None else params
        radii = np.asarray(radii_um, dtype=float).ravel()
        if radii.size == 0 or not np.all(np.isfinite(radii) & (radii > 0)):
            raise ValueError(f"radii_um must be a non-empty list of positive radii, got {radii_um!r}")
        if not 0.0 <= float(initial_soc) <= 1.0:
            raise ValueError(f"initial_soc must be in [0, 1], got {initial_soc}")
        self.n_visible = radii.size
        rng = np.random.default_rng(seed)
        self._particles = self._draw_particles(radii, inactive, float(initial_soc), rng)
        self._initial_soc = float(initial_soc)
        self._time_s = self._step_start_s = float(start_time_s)
        self._capacity_c = self._step_start_c = 0.0
        self._control = CellControl()
        self._current_a = 0.0
        self._voltage_v = float(nmc811_ocv_v(initial_soc))
        self._limit_reached = False
        self._fault = 0
        self._connected = True
        self._resistance_factor = 1.0
        self._scheduled: list[tuple[float, str]] = []
        self._observers: list = []
        #: Recent events, oldest first: ``(time_s, kind, detail)`` (bounded).
        self.events: deque = deque(maxlen=_EVENT_LOG_LENGTH)

    @classmethod
    def from_phantom(cls, phantom: NMCPhantom, **kwargs) -> NMCCell:
        """A cell whose visible particles are ``phantom``'s (same radii, same order)."""
        return cls([part.radius_um for part in phantom.particles], **kwargs)

    # ------------------------------------------------------------------ construction
    def _draw_particles(self, radii, inactive, soc0, rng) -> _Particles:
        p = self.params
        lo, hi = p.hidden_radius_range_um or (float(radii.min()), float(radii.max()))
        n_hidden = int(p.n_hidden)
        radius = np.concatenate([radii, rng.uniform(lo, hi, n_hidden)])
        n = radius.size
        contact = np.exp(p.contact_spread * rng.normal(size=n))
        surface = np.exp(p.surface_spread * rng.normal(size=n))
        dead = rng.random(n) < p.inactive_fraction
        if inactive is not None:
            forced = np.asarray(inactive, dtype=bool).ravel()
            if forced.shape != (radii.size,):
                raise ValueError(f"inactive must have one flag per visible particle ({radii.size}), "
                                 f"got shape {forced.shape}")
            dead[: radii.size] = forced
        volume = radius**3
        charge_c = p.nominal_capacity_mah * COULOMB_PER_MAH * volume / volume.sum()
        kinetic_s = p.kinetic_time_s * (radius / p.reference_radius_um) / (contact * surface)
        conductance = np.where(dead, 0.0, charge_c / kinetic_s)  # A per V (1 V per unit SOC)
        return _Particles(radius_um=radius, charge_c=charge_c, conductance_a_per_v=conductance,
                          diffusion_time_s=radius**2 / (15.0 * p.diffusion_um2_per_s),
                          inactive=dead, soc=np.full(n, soc0), contact=contact, surface=surface)

    # ------------------------------------------------------------------ reading
    @property
    def time_s(self) -> float:
        return self._time_s

    @property
    def control(self) -> CellControl:
        return self._control

    def c_rate_current_a(self, c_rate: float) -> float:
        """The current (A) of ``c_rate`` for this cell's nominal capacity (> 0 charges)."""
        return current_from_c_rate_a(c_rate, self.params.nominal_capacity_mah)

    def state(self) -> CellState:
        """The present :class:`CellState` (copies; changing them changes nothing)."""
        parts = self._particles
        nv = self.n_visible
        q_total = self.params.nominal_capacity_mah * COULOMB_PER_MAH
        return CellState(
            time_s=self._time_s, mode=self._control.mode,
            voltage_v=self._voltage_v if self._connected else math.nan,
            current_a=self._current_a, capacity_mah=self._capacity_c / COULOMB_PER_MAH,
            step_time_s=self._time_s - self._step_start_s,
            step_capacity_mah=(self._capacity_c - self._step_start_c) / COULOMB_PER_MAH,
            limit_reached=self._limit_reached, fault=self._fault,
            soc=float(np.dot(parts.charge_c, parts.soc) / parts.charge_c.sum()),
            counted_soc=self._initial_soc + self._capacity_c / q_total,
            particle_soc=parts.soc[:nv].copy(), particle_surface_soc=parts.surface_soc()[:nv],
            inactive=parts.inactive[:nv].copy(),
        )

    def particle_properties(self) -> ParticleProperties:
        """The visible particles' fixed properties (copies)."""
        parts, nv = self._particles, self.n_visible
        with np.errstate(divide="ignore"):
            kinetic = parts.charge_c[:nv] / parts.conductance_a_per_v[:nv]
        return ParticleProperties(
            radius_um=parts.radius_um[:nv].copy(), contact=parts.contact[:nv].copy(),
            surface=parts.surface[:nv].copy(), kinetic_time_s=kinetic,
            diffusion_time_s=parts.diffusion_time_s[:nv].copy(),
            capacity_mah=parts.charge_c[:nv] / COULOMB_PER_MAH, inactive=parts.inactive[:nv].copy(),
        )

    def add_observer(self, callback) -> None:
        """Call ``callback(state)`` after every change of the cell."""
        self._observers.append(callback)

    def _notify(self) -> None:
        if self._observers:
            state = self.state()
            for callback in list(self._observers):
                callback(state)

    # ------------------------------------------------------------------ control
    def apply(self, control: CellControl) -> None:
        """Apply ``control`` from now on (a new step: step time and limit flag reset).

        Raises
        ------
        ValueError
            A setpoint beyond the instrument's compliance; the cell has a fault (clear it
            first with :meth:`clear_fault`); the cell is disconnected.
        """
        if not isinstance(control, CellControl):
            raise TypeError(f"control must be a CellControl, got {type(control).__name__}")
        p = self.params
        if abs(control.current_a) > p.compliance_current_a:
            raise ValueError(f"current {control.current_a} A is beyond the potentiostat's compliance "
                             f"(±{p.compliance_current_a} A)")
        if control.mode == "cv" and abs(control.voltage_v) > p.compliance_voltage_v:
            raise ValueError(f"voltage {control.voltage_v} V is beyond the potentiostat's compliance "
                             f"(±{p.compliance_voltage_v} V)")
        if self._fault and control.mode != "rest":
            raise RuntimeError(f"the cell has a fault ({FAULT_CODES[self._fault]}): clear it before "
                               f"applying a {control.mode!r} step")
        self._control = control
        self._step_start_s, self._step_start_c = self._time_s, self._capacity_c
        self._limit_reached = False
        self.events.append((self._time_s, "apply", control))
        self._refresh_readings()
        self._notify()

    # ------------------------------------------------------------------ faults
    def inject_fault(self, kind: str, *, at_time_s: float | None = None) -> None:
        """Make something go wrong now, or when the cell reaches ``at_time_s``.

        ``'disconnect'``: the leads come off (fault 3, voltage NaN). ``'high_impedance'``:
        the series resistance rises 10⁴-fold (a dried cell): a current step then drives the
        terminal voltage beyond compliance (fault 1). Either fault turns the output off
        (rest).
        """
        if kind not in INJECTABLE_FAULTS:
            raise ValueError(f"fault kind must be one of {INJECTABLE_FAULTS}, got {kind!r}")
        if at_time_s is None or at_time_s <= self._time_s:
            self._trigger_fault(kind)
        else:
            self._scheduled.append((float(at_time_s), kind))
            self._scheduled.sort()

    def _trigger_fault(self, kind: str) -> None:
        if kind == "disconnect":
            self._connected = False
            self._set_fault(FAULT_DISCONNECTED)
        else:
            self._resistance_factor = HIGH_IMPEDANCE_FACTOR
            self.events.append((self._time_s, "high_impedance", self._resistance_factor))
            self._refresh_readings()
            if not self._check_compliance():  # a current step overloads at once
                self._notify()

    def _set_fault(self, code: int) -> None:
        self._fault = code
        self._control = replace(self._control, mode="rest")
        self._current_a = 0.0
        self.events.append((self._time_s, "fault", FAULT_CODES[code]))
        self._refresh_readings()
        self._notify()

    def clear_fault(self) -> None:
        """Reconnect, restore the resistance and clear the fault; the output stays at rest."""
        self._connected = True
        self._resistance_factor = 1.0
        self._fault = 0
        self.events.append((self._time_s, "clear_fault", None))
        self._refresh_readings()
        self._notify()

    # ------------------------------------------------------------------ time
    def advance(self, seconds: float) -> CellState:
        """Integrate ``seconds`` (≥ 0) further; returns the new state."""
        if not seconds >= 0:
            raise ValueError(f"cannot advance the cell by {seconds} s")
        return self.advance_to(self._time_s + seconds)

    def advance_to(self, time_s: float, *, stop_on_step_end: bool = False) -> CellState:
        """Integrate up to ``time_s`` (a time not after the present does nothing).

        Parameters
        ----------
        time_s : float
            Target cell time, s.
        stop_on_step_end : bool
            Stop early, at the end of the internal step where the current step reaches its
            cutoff or a fault occurs (a plan waiting for the step to end).

        Returns
        -------
        CellState
        """
        target = float(time_s)
        changed = False
        while self._time_s < target:
            end = min(target, self._time_s + self.params.max_step_s)
            if self._scheduled and self._scheduled[0][0] <= end:
                end = max(self._scheduled[0][0], self._time_s)
            ended = self._step(end - self._time_s)
            changed = True
            while self._scheduled and self._scheduled[0][0] <= self._time_s:
                self._trigger_fault(self._scheduled.pop(0)[1])
                ended = ended or self._fault != 0
            if ended and stop_on_step_end:
                break
        if changed:
            self._notify()
        return self.state()

    def _linearised(self, dt_s: float):
        """Implicit-step conductances ``a`` (A/V) and the OCV ``U`` at the particles' surfaces.

        ``a_i = g_i / (1 + g_i · U'_i · dt / q_i)``: the particle's current over the step
        is ``a_i (V_e − U_i)`` with its OCV linearised at the end of the step.
        """
        parts = self._particles
        s_surf = parts.surface_soc()
        u = nmc811_ocv_v(s_surf)
        if not self._connected:
            return np.zeros_like(u), u
        g = parts.conductance_a_per_v
        du = nmc811_ocv_slope_v_per_soc(s_surf)
        return g / (1.0 + g * du * dt_s / parts.charge_c), u

    def _solve_terminals(self, a, u, fixed_a: float, r_series: float):
        """Terminal current (A) and electrode potential (V) for the present control.

        ``a`` holds the free particles' step conductances (0 for saturated, inactive or
        disconnected ones), ``fixed_a`` the current already taken by saturated particles.
        Returns ``(current, v_e)``, ``v_e`` None when no particle can take the current a
        CC step asks for (the electrode is full or empty: the voltage runs to the cutoff).
        """
        c = self._control
        a_sum = float(a.sum())
        au = float(np.dot(a, u))
        if a_sum <= 0:
            if c.mode == "cc":
                return fixed_a, None
            if c.mode == "cv":  # the potentiostat holds its setpoint; nothing more flows
                return fixed_a, c.voltage_v - fixed_a * r_series
            return fixed_a, float(np.mean(u))
        if c.mode == "rest":
            current = 0.0
        elif c.mode == "cc":
            current = c.current_a
        else:
            limit = min(c.current_limit_a, self.params.compliance_current_a)
            u_mean = au / a_sum
            current = (c.voltage_v - u_mean + fixed_a / a_sum) / (1.0 / a_sum + r_series)
            current = float(np.clip(current, -limit, limit))
        return current, (current - fixed_a + au) / a_sum

    def _particle_currents(self, dt_s: float, r_series: float):
        """Per-particle currents over one step, keeping every SOC inside [0, 1].

        A particle that would leave [0, 1] takes exactly the charge that fills (or empties)
        it and drops out; the terminals are solved again for the rest (charge conserved).
        Returns ``(particle_current_a, terminal_current_a, v_e)``.
        """
        parts = self._particles
        a, u = self._linearised(dt_s)
        fixed = np.zeros(a.size, bool)
        fixed_i = np.zeros(a.size)
        while True:
            free_a = np.where(fixed, 0.0, a)
            current, v_e = self._solve_terminals(free_a, u, float(fixed_i.sum()), r_series)
            particle_i = fixed_i if v_e is None else np.where(fixed, fixed_i, free_a * (v_e - u))
            new_soc = parts.soc + particle_i * dt_s / parts.charge_c
            leaving = ~fixed & ((new_soc > 1.0) | (new_soc < 0.0))
            if v_e is None or not leaving.any():
                return particle_i, current, v_e
            fixed |= leaving
            to_bound = np.clip(new_soc[leaving], 0.0, 1.0) - parts.soc[leaving]
            fixed_i[leaving] = to_bound * parts.charge_c[leaving] / dt_s

    def _step(self, dt_s: float) -> bool:
        """One implicit step of ``dt_s``; returns True when the step (protocol) ended."""
        if dt_s <= 0:
            return False
        parts = self._particles
        r_series = self.params.series_resistance_ohm * self._resistance_factor
        particle_i, current, v_e = self._particle_currents(dt_s, r_series)
        rate = particle_i / parts.charge_c  # d soc / dt, 1/s
        parts.soc = np.clip(parts.soc + rate * dt_s, 0.0, 1.0)
        lead_ss = parts.diffusion_time_s * rate
        decay = np.exp(-dt_s / parts.diffusion_time_s)
        parts.surface_lead = lead_ss + (parts.surface_lead - lead_ss) * decay
        self._capacity_c += current * dt_s
        self._time_s += dt_s
        self._current_a = current
        if v_e is None:  # nothing can take the current: the voltage runs to the CC cutoff
            c = self._control
            self._voltage_v = c.voltage_max_v if c.current_a > 0 else c.voltage_min_v
        else:
            self._voltage_v = v_e + current * r_series
        return self._check_compliance() or self._check_cutoff()

    def _check_compliance(self) -> bool:
        """Fault when the instrument cannot deliver what the step needs (output off)."""
        p, c = self.params, self._control
        if abs(self._voltage_v) > p.compliance_voltage_v:
            self._set_fault(FAULT_VOLTAGE)
            return True
        overload = c.mode == "cv" and c.current_limit_a > p.compliance_current_a
        if overload and abs(self._current_a) >= p.compliance_current_a * (1.0 - 1e-12):
            self._set_fault(FAULT_CURRENT)
            return True
        return False

    def _check_cutoff(self) -> bool:
        c = self._control
        v, i = self._voltage_v, self._current_a
        if c.mode == "cc" and ((i > 0 and v >= c.voltage_max_v) or (i < 0 and v <= c.voltage_min_v)):
            self._limit_reached = True
            self.events.append((self._time_s, "cutoff", v))
            if c.on_limit == "cv":
                hold = c.voltage_max_v if i > 0 else c.voltage_min_v
                self._control = replace(c, mode="cv", voltage_v=hold, current_limit_a=abs(c.current_a))
            else:
                self._control = replace(c, mode="rest")
            self._refresh_readings()
            return True
        if c.mode == "cv" and c.end_current_a > 0 and abs(i) < c.end_current_a:
            self._limit_reached = True
            self.events.append((self._time_s, "end_current", i))
            self._control = replace(c, mode="rest")
            self._refresh_readings()
            return True
        return False

    def _refresh_readings(self) -> None:
        """Terminal voltage and current for the present control, without advancing time."""
        a, u = self._linearised(0.0)
        r_series = self.params.series_resistance_ohm * self._resistance_factor
        current, v_e = self._solve_terminals(a, u, 0.0, r_series)
        self._current_a = current
        if v_e is None:
            c = self._control
            self._voltage_v = c.voltage_max_v if c.current_a > 0 else c.voltage_min_v
        else:
            self._voltage_v = v_e + current * r_series

    # ------------------------------------------------------------------ the sample
    def phantom(self, base: NMCPhantom) -> NMCPhantom:
        """``base`` with each visible particle's Ni valence set from its SOC (2 + 2·soc).

        The volume-mean valence follows the particle's mean SOC, the surface valence its
        surface SOC, through the phantom's radial profile (module docstring).
        """
        if len(base.particles) != self.n_visible:
            raise ValueError(f"the phantom has {len(base.particles)} particles, the cell "
                             f"{self.n_visible} visible ones")
        parts = self._particles
        nv = self.n_visible
        return base.with_particle_states(2.0 + 2.0 * parts.soc[:nv], 2.0 + 2.0 * parts.surface_soc()[:nv])


class OperandoSample:
    """The phantom as the cell makes it at any time: a ``SimTXM.sample_source``.

    Parameters
    ----------
    cell : NMCCell
    base : NMCPhantom
        The particles (geometry, voids, penetration); their valences are replaced.
    soc_tolerance : float
        A new phantom is built only when some visible particle's mean or surface SOC has
        moved by more than this since the last one (projections are then recomputed);
        0.005 SOC ≈ 0.01 in Ni valence, below what one 2D XANES resolves per pixel.

    Calling it with a time advances the cell to that time (never backwards) and returns
    the phantom (the same object while nothing moved beyond the tolerance).
    """

    def __init__(self, cell: NMCCell, base: NMCPhantom, *, soc_tolerance: float = 0.005):
        if not soc_tolerance >= 0:
            raise ValueError(f"soc_tolerance must be >= 0, got {soc_tolerance}")
        self.cell = cell
        self.base = base
        self.soc_tolerance = float(soc_tolerance)
        self._built_from = None
        self._phantom = None
        self.n_built = 0

    def __call__(self, time_s: float) -> NMCPhantom:
        state = self.cell.advance_to(time_s)
        now = np.concatenate([state.particle_soc, state.particle_surface_soc])
        if self._phantom is None or np.max(np.abs(now - self._built_from)) > self.soc_tolerance:
            self._phantom = self.cell.phantom(self.base)
            self._built_from = now
            self.n_built += 1
        return self._phantom
