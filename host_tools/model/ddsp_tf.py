"""Differentiable harmonic plus filtered-noise synthesis in TensorFlow.

The batched TensorFlow mirror of :mod:`morphbox.kernels.synth` (DDSP, Engel et al., "DDSP:
Differentiable Digital Signal Processing", ICLR 2020): same upsampling (linear between frame
centres, held at the ends), same partial phases (``sin(k phi)``, phase 0 at sample 0), same
Nyquist rule (a partial is silent wherever ``k f0 >= sample_rate / 2``), same noise filter
(periodic-Hann frames of ``2 * hop`` centred on the frame centres, band gains applied in the
FFT domain, overlap-add). Given the same controls and the same white noise both return the
same audio to float32 precision (``tests/host_tools/test_model.py``).

Gradients flow to ``amplitude``, ``harmonic_distribution`` and ``noise_magnitudes``; f0 is a
given control (taken from the analysis, never learned), so the phase is accumulated in
float64 without gradient, which keeps high partials of long notes exact.

Shapes: ``B`` notes, ``F`` frames, ``K`` harmonics, ``N`` bands, ``S`` samples (float32).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from morphbox.kernels.synth import FRAME_RATE, SAMPLE_RATE, band_of_bins, hann, hop_size


def _upsample_indices(n_frames: int, n_samples: int, sample_rate: int, frame_rate: float):
    pos = np.arange(n_samples) * (frame_rate / sample_rate)
    i0 = np.clip(np.floor(pos).astype(np.int64), 0, n_frames - 1)
    i1 = np.minimum(i0 + 1, n_frames - 1)
    frac = np.clip(pos - i0, 0.0, 1.0)
    return i0, i1, frac


def upsample(frames: tf.Tensor, n_samples: int, sample_rate: int = SAMPLE_RATE,
             frame_rate: float = FRAME_RATE) -> tf.Tensor:
    """``(B, F)`` or ``(B, F, C)`` -> ``(B, S)`` or ``(B, S, C)``: linear interpolation between
    frame centres, as :func:`morphbox.kernels.synth.upsample`. ``F`` must be static."""
    n_frames = frames.shape[1]
    i0, i1, frac = _upsample_indices(n_frames, n_samples, sample_rate, frame_rate)
    frac = tf.constant(frac, frames.dtype)
    if frames.shape.rank == 3:
        frac = frac[:, None]
    return (tf.gather(frames, i0, axis=1) * (1.0 - frac)
            + tf.gather(frames, i1, axis=1) * frac)


def harmonic_synth(f0_hz: tf.Tensor, amplitude: tf.Tensor, harmonic_distribution: tf.Tensor,
                   n_samples: int | None = None, sample_rate: int = SAMPLE_RATE,
                   frame_rate: float = FRAME_RATE) -> tf.Tensor:
    """Harmonic part ``(B, S)`` float32 from ``f0_hz`` ``(B, F)`` Hz, ``amplitude`` ``(B, F)``
    linear and ``harmonic_distribution`` ``(B, F, K)``; ``S`` defaults to ``F * hop``."""
    hop = hop_size(sample_rate, frame_rate)
    n_frames = harmonic_distribution.shape[1]
    n_harm = harmonic_distribution.shape[2]
    n_samples = n_frames * hop if n_samples is None else int(n_samples)
    k = tf.range(1, n_harm + 1, dtype=tf.float64)
    f0_up = upsample(tf.cast(tf.stop_gradient(f0_hz), tf.float64), n_samples, sample_rate,
                     frame_rate)  # (B, S)
    cycles = tf.math.floormod(tf.math.cumsum(f0_up / sample_rate, axis=1, exclusive=True), 1.0)
    below = tf.cast(f0_up[:, :, None] * k < 0.5 * sample_rate, tf.float32)  # (B, S, K)
    phases = tf.cast(tf.math.floormod(cycles[:, :, None] * k, 1.0), tf.float32)
    amps = upsample(amplitude[:, :, None] * harmonic_distribution, n_samples, sample_rate,
                    frame_rate)
    return tf.reduce_sum(amps * below * tf.sin(2.0 * np.pi * phases), axis=-1)


def noise_synth(noise_magnitudes: tf.Tensor, noise: tf.Tensor, sample_rate: int = SAMPLE_RATE,
                frame_rate: float = FRAME_RATE) -> tf.Tensor:
    """Filtered noise ``(B, S)`` from band gains ``(B, F, N)`` and white noise ``(B, S)``
    (unit variance), as :func:`morphbox.kernels.synth.noise_synth`. ``F``, ``N``, ``S`` static."""
    hop = hop_size(sample_rate, frame_rate)
    n_src, n_bands = noise_magnitudes.shape[1], noise_magnitudes.shape[2]
    n = noise.shape[1]
    n_frames = -(-n // hop) + 1
    length = 2 * hop
    gains = tf.gather(noise_magnitudes, np.minimum(np.arange(n_frames), n_src - 1), axis=1)
    padded = tf.pad(noise, [[0, 0], [hop, (n_frames + 1) * hop - hop - n]])
    frames = tf.signal.frame(padded, length, hop)[:, :n_frames]  # (B, frames, length)
    spec = tf.signal.rfft(frames * tf.constant(hann(length), tf.float32))
    bin_gain = tf.gather(gains, band_of_bins(length, n_bands, sample_rate), axis=2)
    shaped = tf.signal.irfft(spec * tf.complex(bin_gain, tf.zeros_like(bin_gain)),
                             fft_length=[length])
    out = tf.signal.overlap_and_add(shaped, hop)
    return out[:, hop:hop + n]


def synthesize(f0_hz: tf.Tensor, amplitude: tf.Tensor, harmonic_distribution: tf.Tensor,
               noise_magnitudes: tf.Tensor, noise: tf.Tensor, sample_rate: int = SAMPLE_RATE,
               frame_rate: float = FRAME_RATE) -> tf.Tensor:
    """Harmonic plus noise audio ``(B, S)``, ``S = noise.shape[1]`` (shapes: module docstring).

    Pass white noise explicitly (``tf.random.stateless_normal`` in training, the same array as
    :func:`morphbox.kernels.synth.synthesize` in tests)."""
    n = noise.shape[1]
    return (harmonic_synth(f0_hz, amplitude, harmonic_distribution, n, sample_rate, frame_rate)
            + noise_synth(noise_magnitudes, noise, sample_rate, frame_rate))
