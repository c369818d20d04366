"""Offline synthesis of a whole note from its full-band features: the analysis-resynthesis.

Pure numpy. :func:`render_features` renders the features of :mod:`morphbox.kernels.features`
(48 kHz, every partial up to 20 kHz, ERB noise bands, non-uniform frame times) the way the
analysis (:mod:`morphbox.kernels.analysis`) measures them: what the representation can do at
best, before any quantisation, grid, loop or engine; the benchmarks and the model report
measure everything else against it. The model follows DDSP (Engel et al., "DDSP:
Differentiable Digital Signal Processing", ICLR 2020): an additive synthesiser driven by f0
and partial levels, plus white noise shaped by time-varying band gains.

Also the decoder heads' dB ranges (shared by the TensorFlow model and the device decoder: each
head ends in a sigmoid scaled to its range, so an int8 output code is ~0.5 dB everywhere in
it).
"""

from __future__ import annotations

import numpy as np

from morphbox.kernels.features import (
    DB_FLOOR,
    frame_position,
    noise_bin_weights,
    partial_levels_db,
)

AMPLITUDE_DB_RANGE = (-120.0, 20.0)  # the 64 partials' summed amplitude
HARMONIC_DB_RANGE = (-120.0, 0.0)  # each partial, relative (normalised to a distribution)
ENVELOPE_DB_RANGE = (-120.0, 20.0)  # the harmonic envelope, relative to the amplitude
NOISE_DB_RANGE = (-120.0, 20.0)  # noise band gains


def hann(length: int) -> np.ndarray:
    """Periodic Hann window ``(length,)`` float64; copies at hop ``length / 2`` sum to 1."""
    return 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(length) / length)


def render_features(times: np.ndarray, f0_hz: float, harmonics_db: np.ndarray,
                    envelope_db: np.ndarray, noise_db: np.ndarray, n_samples: int,
                    sample_rate: int = 48000, seed: int = 0,
                    noise_fft: int = 1024) -> np.ndarray:
    """Audio ``(n_samples,)`` float32 of a note's features (layout of
    :mod:`morphbox.kernels.features`; ``times`` ``(F,)`` s, ``harmonics_db`` ``(F, K)``,
    ``envelope_db`` ``(F, E)``, ``noise_db`` ``(F, B)``).

    Every partial up to the band limit (the first K at their own level, the rest from the
    envelope) at exactly ``k f0_hz`` with Schroeder phases, levels interpolated linearly in
    amplitude between frame times (held outside them); plus unit white noise (``seed``)
    shaped by the noise bands in an STFT of ``noise_fft`` points, hop 1/4, sqrt-Hann analysis
    and synthesis windows (which overlap-add to exactly 1), per-bin gains interpolated over
    ERB-rate between band centres (:func:`morphbox.kernels.features.noise_bin_weights`).
    """
    times = np.asarray(times, np.float64)
    levels = partial_levels_db(harmonics_db, envelope_db, f0_hz, sample_rate=sample_rate)
    amps = np.where(levels <= DB_FLOOR, 0.0, 10.0 ** (levels.astype(np.float64) / 20.0))
    n_partials = amps.shape[1]
    out = np.zeros(n_samples)
    if n_partials:
        # f0 is constant, so each frame's partials are one period: a table per frame (an
        # exact inverse DFT, 16384 points: linear-interpolation images (k / N)^2 under
        # partial k, -66 dB for the top partial of MIDI 24), crossfaded between frames
        # exactly as the amplitudes are interpolated
        size = 16384
        k = np.arange(1, n_partials + 1, dtype=np.float64)
        phases = np.pi * k * k / n_partials
        spec = np.zeros((len(times), size // 2 + 1), np.complex128)
        spec[:, 1:n_partials + 1] = amps * np.exp(1j * (phases - np.pi / 2)) * (size / 2)
        tables = np.fft.irfft(spec, size, axis=1)
        tables = np.concatenate([tables, tables[:, :1]], axis=1)
        for s in range(0, n_samples, 16384):
            n = np.arange(s, min(s + 16384, n_samples))
            pos = frame_position(n / sample_rate, times)
            i0 = np.minimum(pos.astype(np.int64), len(times) - 2)
            u = pos - i0
            ph = (n * (f0_hz / sample_rate)) % 1.0 * size
            j = np.minimum(ph.astype(np.int64), size - 1)
            fr = ph - j
            a = tables[i0, j] * (1 - fr) + tables[i0, j + 1] * fr
            b = tables[i0 + 1, j] * (1 - fr) + tables[i0 + 1, j + 1] * fr
            out[s:s + len(n)] = a + (b - a) * u
    out += _band_noise(times, noise_db, n_samples, sample_rate, seed, noise_fft)
    return out.astype(np.float32)


def _band_noise(times, noise_db, n_samples, sample_rate, seed, n_fft):
    hop = n_fft // 4
    rng = np.random.default_rng(seed)
    n_frames = -(-n_samples // hop) + 4
    white = rng.standard_normal((n_frames + 3) * hop)
    window = np.sqrt(hann(n_fft)) / np.sqrt(2.0)  # sqrt-Hann^2 at hop N/4 sums to 2
    weights = noise_bin_weights(np.fft.rfftfreq(n_fft, 1.0 / sample_rate), noise_db.shape[1])
    power = 10.0 ** (np.asarray(noise_db, np.float64) / 10.0) @ weights  # (F, bins)
    out = np.zeros((n_frames + 3) * hop)
    for i in range(n_frames):
        start = (i - 3) * hop  # frame i covers samples start .. start + n_fft
        centre = (start + n_fft / 2) / sample_rate
        pos = float(frame_position(centre, times))
        i0 = min(int(pos), len(times) - 2)
        fr = pos - i0
        mag = np.sqrt(power[i0] * (1 - fr) + power[i0 + 1] * fr)
        seg = white[i * hop:i * hop + n_fft] * window
        y = np.fft.irfft(np.fft.rfft(seg) * mag, n_fft) * window
        out[i * hop:i * hop + n_fft] += y
    return out[3 * hop:3 * hop + n_samples]
