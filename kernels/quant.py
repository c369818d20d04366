"""8-bit dB quantisation of magnitudes (harmonic amplitudes, noise band gains).

Code ``q`` in 0..255 stands for ``DB_MIN + q * DB_STEP`` dB (-120 dB .. +7.5 dB in 0.5 dB steps);
code 0 also stands for silence (amplitude 0 is stored as -120 dB). Half a decibel is below the
just-noticeable level difference, so the storage costs a quarter of float32 without audible loss.
"""

from __future__ import annotations

import numpy as np

DB_MIN = -120.0
DB_STEP = 0.5


def amplitude_to_db(amplitude: np.ndarray, floor_db: float = DB_MIN) -> np.ndarray:
    """Linear amplitude (any shape, >= 0) -> dB float32, floored at ``floor_db``."""
    amp = np.asarray(amplitude, dtype=np.float64)
    with np.errstate(divide="ignore"):
        db = 20.0 * np.log10(np.maximum(amp, 0.0))
    return np.maximum(db, floor_db).astype(np.float32)


def db_to_amplitude(db: np.ndarray) -> np.ndarray:
    """dB (any shape) -> linear amplitude float32; values at or below ``DB_MIN`` give 0."""
    db = np.asarray(db, dtype=np.float32)
    amp = np.power(np.float32(10.0), db * np.float32(0.05))
    return np.where(db <= DB_MIN, np.float32(0.0), amp)


def quantize_db(db: np.ndarray) -> np.ndarray:
    """dB (any shape) -> uint8 codes (rounded, clipped to the code range)."""
    q = np.round((np.asarray(db, dtype=np.float64) - DB_MIN) / DB_STEP)
    return np.clip(q, 0, 255).astype(np.uint8)


def dequantize_db(codes: np.ndarray) -> np.ndarray:
    """uint8 codes (any shape) -> dB float32."""
    return (np.asarray(codes, dtype=np.float32) * np.float32(DB_STEP) + np.float32(DB_MIN))
