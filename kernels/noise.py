"""Filtered noise by FFT overlap-add, one stream for all voices, on ERB bands to 20 kHz.

Independent noises add in power, so the noise of every voice can be rendered as one stream
whose band power is the sum of the voices' band powers: one inverse FFT per block instead of
one per voice. Frames of ``overlap * block`` samples (4 x 128 = 512 at 48 kHz: 94 Hz bins, so
the narrow low ERB bands keep their shape) with a sine (sqrt-Hann) window scaled so that the
squared windows of overlapping frames sum to 1, at hop ``block``, keep the noise variance
constant across frames.

Band gains follow :mod:`morphbox.kernels.features`: gain ``m`` on unit-variance white noise at
the *source* rate, per ERB band, interpolated over ERB-rate between band centres
(:func:`morphbox.kernels.features.noise_bin_weights`), nothing below 20 Hz or above 20 kHz;
rendered at another rate the gain becomes ``m * sqrt(sample_rate / source_rate)`` so the
absolute spectral density is kept.
"""

from __future__ import annotations

import numpy as np

from morphbox.kernels.features import noise_bin_weights


class NoiseSynth:
    """Streaming noise shaped by band gains.

    Args:
        block_size: samples per block (hop).
        n_bands: ERB noise bands (:mod:`morphbox.kernels.features`).
        sample_rate, source_rate: output and analysis rates, Hz.
        seed: random seed (the stream is deterministic for a seed).
        overlap: frames overlapping each output sample (frame = overlap x block).
    """

    _POOL = 256

    def __init__(self, block_size: int, n_bands: int, sample_rate: float, source_rate: float,
                 seed: int = 0, overlap: int = 4):
        self.block_size = block_size
        self.n_fft = n_fft = overlap * block_size
        freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
        # (bands, bins) map from band power to bin power; sample_rate / source_rate keeps the
        # spectral density (module docstring); n_fft makes unit-power bins unit variance
        # after the inverse FFT
        self._map = noise_bin_weights(freqs, n_bands) * np.float32(
            sample_rate / source_rate * n_fft)
        rng = np.random.default_rng(seed)
        pool = rng.standard_normal((self._POOL, len(freqs), 2)).astype(np.float32)
        # complex Gaussian with E|X|^2 = 1 per bin -> unit variance after irfft * sqrt(n_fft)
        self._pool = ((pool[..., 0] + 1j * pool[..., 1]) / np.sqrt(2)).astype(np.complex64)
        hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
        self._window = np.sqrt(hann * 2.0 / overlap)  # squares of overlapping frames sum to 1
        self._carry = np.zeros(n_fft - block_size)
        self._rng = rng

    def render(self, band_power: np.ndarray) -> np.ndarray:
        """One block ``(block_size,)`` float32 of noise with ``band_power`` ``(n_bands,)``
        (sum over voices of squared band gains)."""
        mag = np.sqrt(band_power @ self._map)
        frame = np.fft.irfft(self._pool[self._rng.integers(self._POOL)] * mag, self.n_fft)
        frame *= self._window
        bs = self.block_size
        frame[:-bs] += self._carry
        self._carry = frame[bs:]
        return frame[:bs].astype(np.float32)

    def reset(self) -> None:
        """Drop the carried tails of earlier frames (after a block that went non-finite)."""
        self._carry = np.zeros_like(self._carry)

    def silence(self) -> np.ndarray:
        """Flush: the carried tails, then nothing, ``(block_size,)``."""
        bs = self.block_size
        out = self._carry[:bs].astype(np.float32)
        self._carry = np.concatenate([self._carry[bs:], np.zeros(bs)])
        return out
