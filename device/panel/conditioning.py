"""Signal conditioning of the panel's raw readings: touch smoothing, pot hysteresis, button
presses.

Pure logic over values and timestamps (no threads, no clock of its own: every call takes the
time ``t``/``now`` in seconds), so tests drive it directly.

Owns: :class:`OneEuroFilter`, :class:`Hysteresis`, :class:`PressDetector`. Imports: the
standard library only.
"""

from __future__ import annotations

import math


class OneEuroFilter:
    """One-euro filter (Casiez et al. 2012) of one coordinate: an adaptive low-pass whose
    cutoff rises with speed -- smooth when still, little lag when moving.

    ``min_cutoff_hz``: cutoff at rest; ``beta``: cutoff increase per unit/s of speed;
    ``d_cutoff_hz``: cutoff of the speed estimate. ``__call__(value, t)`` (t in seconds,
    increasing) returns the filtered value; ``reset()`` makes the next value pass unfiltered.
    """

    def __init__(self, min_cutoff_hz: float = 1.0, beta: float = 10.0, d_cutoff_hz: float = 1.0):
        if min_cutoff_hz <= 0 or d_cutoff_hz <= 0 or beta < 0:
            raise ValueError("one-euro filter: cutoffs must be > 0 and beta >= 0")
        self.min_cutoff, self.beta, self.d_cutoff = min_cutoff_hz, beta, d_cutoff_hz
        self.reset()

    def reset(self) -> None:
        self._x: float | None = None
        self._dx = 0.0
        self._t = 0.0

    @staticmethod
    def _alpha(cutoff: float, dt: float) -> float:
        tau = 1.0 / (2 * math.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    def __call__(self, x: float, t: float) -> float:
        if self._x is None:
            self._x, self._t = x, t
            return x
        dt = t - self._t
        if dt <= 0:
            return self._x
        self._t = t
        a_d = self._alpha(self.d_cutoff, dt)
        self._dx = a_d * (x - self._x) / dt + (1 - a_d) * self._dx
        a = self._alpha(self.min_cutoff + self.beta * abs(self._dx), dt)
        self._x = a * x + (1 - a) * self._x
        return self._x


class Hysteresis:
    """A pot value 0..1 that only changes when the input moves more than ``threshold`` from
    the last output (kills ADC jitter). ``update(v)`` returns the new output or None."""

    def __init__(self, threshold: float = 0.01):
        self.threshold = threshold
        self.value: float | None = None

    def update(self, v: float) -> float | None:
        if self.value is None or abs(v - self.value) > self.threshold:
            self.value = v
            return v
        return None


class PressDetector:
    """Short press vs hold of one button: ``update(pressed, now)`` returns ``"short"`` on a
    release before ``hold_s``, ``"long"`` once when held ``hold_s`` (on the original box: recall
    and save), else None."""

    def __init__(self, hold_s: float = 0.75):
        self.hold_s = hold_s
        self._down_t: float | None = None
        self._fired = False

    def update(self, pressed: bool, now: float) -> str | None:
        if pressed:
            if self._down_t is None:
                self._down_t, self._fired = now, False
            elif not self._fired and now - self._down_t >= self.hold_s:
                self._fired = True
                return "long"
            return None
        if self._down_t is None:
            return None
        fired, self._down_t = self._fired, None
        return None if fired else "short"
