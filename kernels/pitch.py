"""Pitch conversions (12-tone equal temperament, A4 = MIDI 69 = 440 Hz)."""

from __future__ import annotations

import numpy as np


def midi_to_hz(note):
    """MIDI note number (float ok, any shape) -> frequency, Hz."""
    return 440.0 * np.power(2.0, (np.asarray(note, dtype=np.float64) - 69.0) / 12.0)


def hz_to_midi(hz):
    """Frequency in Hz (> 0, any shape) -> fractional MIDI note number."""
    return 69.0 + 12.0 * np.log2(np.asarray(hz, dtype=np.float64) / 440.0)


def cents(hz, reference_hz):
    """Interval from ``reference_hz`` to ``hz`` in cents (1200 per octave)."""
    return 1200.0 * np.log2(np.asarray(hz, dtype=np.float64) / reference_hz)
