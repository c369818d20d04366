"""Soft limiter: block-rate gain riding followed by a soft clipper.

The gain follows the block peak down at once (ramped across the block) and recovers with
time constant ``release_s``; the soft clipper is the identity below ``knee`` and approaches
``ceiling`` with a tanh above it, so the output never reaches ``ceiling`` (full scale).
"""

from __future__ import annotations

import numpy as np


class SoftLimiter:
    """Args: threshold (linear peak the gain rider aims for), knee, ceiling, release_s,
    block_size, sample_rate (Hz)."""

    def __init__(self, block_size: int, sample_rate: float, threshold: float = 0.8,
                 knee: float = 0.85, ceiling: float = 1.0, release_s: float = 0.15):
        self.threshold, self.knee, self.ceiling = threshold, knee, ceiling
        self._recover = float(np.exp(-block_size / (release_s * sample_rate)))
        self._ramp = (np.arange(1, block_size + 1) / block_size).astype(np.float32)
        self.gain = 1.0

    def process(self, x: np.ndarray) -> np.ndarray:
        """Limit one block ``(block_size,)`` float32 in place; returns it."""
        peak = max(float(x.max()), -float(x.min())) if x.size else 0.0
        target = min(1.0, self.threshold / peak) if peak > 0 else 1.0
        new = target if target < self.gain else target + (self.gain - target) * self._recover
        if new > 0.9999:
            new = 1.0
        if new != 1.0 or self.gain != 1.0:
            x *= self.gain + (new - self.gain) * self._ramp
        self.gain, old = new, self.gain
        if peak * max(old, new) <= self.knee:
            return x
        return soft_clip(x, self.knee, self.ceiling)


def soft_clip(x: np.ndarray, knee: float = 0.85, ceiling: float = 1.0) -> np.ndarray:
    """Identity for ``|x| <= knee``; above, ``knee + (ceiling - knee) tanh((|x| - knee) /
    (ceiling - knee))`` with the sign kept. In place on float arrays; returns ``x``."""
    mag = np.abs(x)
    over = mag > knee
    if over.any():
        span = ceiling - knee
        x[over] = np.sign(x[over]) * (knee + span * np.tanh((mag[over] - knee) / span))
    return x
