"""Simulated time for the beamline: deterministic drift without waiting for it.

Every simulated device advances one :class:`SimClock` by the time its action would take at
a beamline (a move at the motor's speed plus settling, an exposure). The physics (drift,
changing illumination) follows this clock, so a test runs in milliseconds yet the sample
drifts as it would over a five-minute scan. With ``realistic=True`` the devices also
sleep those times, for demos that should feel like a beamtime.
"""
from __future__ import annotations

import threading


class SimClock:
    """Monotonic simulated time in seconds, shared by all simulated devices."""

    def __init__(self, start_s: float = 0.0, *, realistic: bool = False):
        self._now = float(start_s)
        self._busy_until = self._now
        self.realistic = realistic
        self._lock = threading.Lock()

    def now(self) -> float:
        return self._now

    def schedule(self, seconds: float) -> float:
        """Start an action of ``seconds`` now, in parallel with others; return its end time.

        Moves started together (energy, zone plate and detector) overlap: the clock only
        reaches the latest end when a device waits for them with :meth:`settle`.
        """
        if seconds < 0:
            raise ValueError(f"an action cannot take a negative time ({seconds} s)")
        with self._lock:
            end = self._now + seconds
            self._busy_until = max(self._busy_until, end)
            return end

    def settle(self) -> float:
        """Advance to the end of every scheduled action; return the new time."""
        with self._lock:
            self._now = max(self._now, self._busy_until)
            return self._now

    def advance(self, seconds: float) -> float:
        """Move time forward by ``seconds`` (≥ 0); return the new time."""
        if seconds < 0:
            raise ValueError(f"cannot advance the clock by a negative time ({seconds} s)")
        with self._lock:
            self._now += seconds
            return self._now

    def reset(self, start_s: float = 0.0) -> None:
        """Start time again at ``start_s`` with nothing in progress (after initial set-up)."""
        with self._lock:
            self._now = self._busy_until = float(start_s)

    def wait_time(self, seconds: float) -> float:
        """Real seconds a device should take for an action of ``seconds`` simulated time."""
        return seconds if self.realistic else 0.0
