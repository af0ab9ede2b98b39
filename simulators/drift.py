"""Sample drift: slow thermal drift, a small random walk, and jumps when the mono moves.

Units are whatever the caller chooses (the simulator uses nm at the sample plane, so that
drift does not depend on binning); time is in seconds and is injected by the caller, never
read from a clock, so simulations are deterministic.

The displacement ``(dy, dx)`` follows CONVENTIONS: how far the sample (and so its image)
moved, +dy toward larger row index.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["DriftModel"]


@dataclass
class DriftModel:
    """Seeded drift of the sample relative to the optics.

    ``drift(t) = rate·t + amplitude·(sin(2πt/period + φ) − sin φ) + walk(t) + Σ jumps``

    Parameters
    ----------
    rate_per_s : tuple of float
        Steady (dy, dx) thermal drift velocity, units/s (e.g. the sample stage warming).
    oscillation_amplitude : float
        Amplitude of a slow oscillation (e.g. hutch temperature regulation), units.
    oscillation_period_s : float
        Its period, s.
    walk_per_sqrt_s : float
        Standard deviation of the random walk after 1 s, units/√s. The walk is
        generated on a fixed 1 s grid from the seed and interpolated linearly, so
        ``offset(t)`` depends only on ``t`` and the seed, not on the call order.
    jump_sigma : float
        Standard deviation (per axis) of the step added each time the monochromator
        moves (:meth:`mono_moved`); jumps accumulate, as a real sample stays where the
        vibration put it.
    seed : int
        Seed of ``numpy.random.default_rng``.
    """

    rate_per_s: tuple = (0.0, 0.0)
    oscillation_amplitude: float = 0.0
    oscillation_period_s: float = 600.0
    walk_per_sqrt_s: float = 0.0
    jump_sigma: float = 0.0
    seed: int = 0

    def __post_init__(self):
        if self.oscillation_period_s <= 0:
            raise ValueError(f"oscillation_period_s must be > 0, got {self.oscillation_period_s}")
        rng = np.random.default_rng(self.seed)
        self._phase = rng.uniform(0.0, 2.0 * np.pi, size=2)
        # Separate streams so the number of jumps does not change the walk.
        self._walk_rng = np.random.default_rng(rng.integers(2**63))
        self._jump_rng = np.random.default_rng(rng.integers(2**63))
        self._walk = np.zeros((1, 2))
        self._jumps = np.zeros(2)
        self.n_jumps = 0

    def _extend_walk(self, t_max: float):
        n_needed = int(np.ceil(t_max)) + 2
        n_have = self._walk.shape[0]
        if n_needed > n_have:
            # Grow in chunks of at least 1024 s so that long scans extend rarely.
            n_new = max(n_needed - n_have, 1024)
            steps = self._walk_rng.normal(scale=self.walk_per_sqrt_s, size=(n_new, 2))
            self._walk = np.vstack([self._walk, self._walk[-1] + np.cumsum(steps, axis=0)])

    def smooth(self, time_s: float) -> np.ndarray:
        """Deterministic part (linear + oscillation) at ``time_s``, shape (2,)."""
        t = float(time_s)
        w = 2.0 * np.pi / self.oscillation_period_s
        osc = self.oscillation_amplitude * (np.sin(w * t + self._phase) - np.sin(self._phase))
        return np.asarray(self.rate_per_s, dtype=float) * t + osc

    def walk(self, time_s: float) -> np.ndarray:
        """Random-walk part at ``time_s`` (≥ 0; negative times read as 0), shape (2,)."""
        t = max(float(time_s), 0.0)
        self._extend_walk(t)
        i = int(np.floor(t))
        frac = t - i
        return (1.0 - frac) * self._walk[i] + frac * self._walk[i + 1]

    def mono_moved(self) -> np.ndarray:
        """Record a monochromator move: add one random jump; returns the jump, shape (2,)."""
        jump = self._jump_rng.normal(scale=self.jump_sigma, size=2)
        self._jumps = self._jumps + jump
        self.n_jumps += 1
        return jump

    def offset(self, time_s: float) -> np.ndarray:
        """Total drift ``(dy, dx)`` at ``time_s`` including all jumps so far, shape (2,)."""
        return self.smooth(time_s) + self.walk(time_s) + self._jumps
