"""Filtered noise by FFT overlap-add, one stream for all voices.

Independent noises add in power, so the noise of every voice can be rendered as one stream
whose band power is the sum of the voices' band powers: one inverse FFT per block instead of
one per voice. Frames of ``2 * block`` samples with a sine (sqrt-Hann) window at 50 % overlap
keep the noise variance constant across frames.

Band gains follow :mod:`morphbox.kernels.analysis`: gain ``m`` on unit-variance white noise at the
*source* rate over linear bands covering 0..source Nyquist; rendered at another rate the gain
becomes ``m * sqrt(sample_rate / source_rate)`` so the absolute spectral density is kept.
"""

from __future__ import annotations

import numpy as np


class NoiseSynth:
    """Streaming noise shaped by band gains.

    Args:
        block_size: samples per block (hop).
        n_bands: linear bands over 0..source_rate / 2.
        sample_rate, source_rate: output and analysis rates, Hz.
        seed: random seed (the stream is deterministic for a seed).
    """

    _POOL = 256

    def __init__(self, block_size: int, n_bands: int, sample_rate: float, source_rate: float,
                 seed: int = 0):
        self.block_size = block_size
        n_fft = 2 * block_size
        freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
        band = freqs / (0.5 * source_rate) * n_bands
        inside = band < n_bands
        # (bands, bins) map; bins above the source Nyquist get no noise.
        self._map = np.zeros((n_bands, len(freqs)), np.float32)
        self._map[band[inside].astype(int), np.flatnonzero(inside)] = 1.0
        # gain sqrt(sample_rate / source_rate) keeps the spectral density (module docstring);
        # sqrt(n_fft) makes the unit-power bins below unit variance after the inverse FFT
        self._map *= np.float32(sample_rate / source_rate * n_fft)
        rng = np.random.default_rng(seed)
        pool = rng.standard_normal((self._POOL, len(freqs), 2)).astype(np.float32)
        # complex Gaussian with E|X|^2 = 1 per bin -> unit variance after irfft * sqrt(n_fft)
        self._pool = ((pool[..., 0] + 1j * pool[..., 1]) / np.sqrt(2)).astype(np.complex64)
        self._window = np.sqrt(0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft))
        self._carry = np.zeros(block_size)
        self._rng = rng

    def render(self, band_power: np.ndarray) -> np.ndarray:
        """One block ``(block_size,)`` float32 of noise with ``band_power`` ``(n_bands,)``
        (sum over voices of squared band gains)."""
        mag = np.sqrt(band_power @ self._map)
        frame = np.fft.irfft(self._pool[self._rng.integers(self._POOL)] * mag)
        frame *= self._window
        out = (self._carry + frame[:self.block_size]).astype(np.float32)
        self._carry = frame[self.block_size:]
        return out

    def silence(self) -> np.ndarray:
        """Flush: the carried tail of the last frame, then nothing, ``(block_size,)``."""
        out = self._carry.astype(np.float32)
        self._carry = np.zeros(self.block_size)
        return out
