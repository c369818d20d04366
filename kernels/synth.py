"""Harmonic plus filtered-noise synthesis of a whole note from per-frame controls.

Pure numpy; the offline (note-at-once) counterpart of the engine's wavetable voices, and the
reference that the differentiable TensorFlow version (``morphbox.host_tools.model.ddsp_tf``) is
tested against. The model follows DDSP (Engel et al., "DDSP: Differentiable Digital Signal
Processing", ICLR 2020): an additive synthesiser driven by f0, a total amplitude and a
harmonic distribution, plus white noise shaped by time-varying band gains.

Controls are the ones :mod:`morphbox.kernels.analysis` measures, at ``frame_rate`` frames per
second, frame ``i`` centred ``i / frame_rate`` s after note start:

* ``f0_hz`` ``(frames,)`` Hz,
* ``amplitude`` ``(frames,)`` linear sum of the partial amplitudes,
* ``harmonic_distribution`` ``(frames, K)`` (rows sum to 1 or are 0; not re-normalised here),
* ``noise_magnitudes`` ``(frames, B)`` linear band gains.

Harmonic part: partial ``k`` is ``a_k(t) sin(k phi(t))`` with ``phi`` the running integral of
``2 pi f0(t)`` (so a constant control ``A`` at harmonic k is analysed back as ``A``).
Controls are upsampled from frames to samples by linear interpolation between frame centres
(held before frame 0's centre and after the last one). A partial is silent at every sample
where ``k f0 >= sample_rate / 2`` (the analysis sets those harmonics to 0 as well).

:func:`render_features` renders the full-band features of :mod:`morphbox.kernels.features`
(48 kHz, every partial up to 20 kHz, ERB noise bands, non-uniform frame times): the offline
analysis-resynthesis that the engine and the benchmarks are measured against. The functions
below it are the 16 kHz, fixed-frame-rate building blocks the TensorFlow twin mirrors.

Noise part (convention of :mod:`morphbox.kernels.analysis`): gain ``m[b]`` applied to unit-variance
white noise in linear band ``b`` of width ``(sample_rate / 2) / B``. The white noise is cut into
frames of ``2 * hop`` samples centred on the frame centres, windowed with a periodic Hann
window (which sums to exactly 1 at 50 % overlap), each frame's spectrum is multiplied by its
band gains, and the frames are overlap-added. With constant gains this returns the noise
filtered by the gains (up to the circular-convolution wrap of the short frames), so the band
powers are the squared gains.
"""

from __future__ import annotations

import numpy as np

from morphbox.kernels.features import (
    DB_FLOOR,
    frame_position,
    noise_bin_weights,
    partial_levels_db,
)

SAMPLE_RATE = 16000
FRAME_RATE = 50.0


def hop_size(sample_rate: int = SAMPLE_RATE, frame_rate: float = FRAME_RATE) -> int:
    """Samples per frame; raises ``ValueError`` unless ``sample_rate / frame_rate`` is whole."""
    hop = sample_rate / frame_rate
    if hop != int(hop) or hop < 1:
        raise ValueError(f"sample_rate / frame_rate must be a positive integer, got {hop}")
    return int(hop)


def upsample(frames: np.ndarray, n_samples: int, sample_rate: int = SAMPLE_RATE,
             frame_rate: float = FRAME_RATE) -> np.ndarray:
    """Linear interpolation from frame centres to samples.

    ``frames``: ``(frames,)`` or ``(frames, channels)``. Returns ``(n_samples,)`` or
    ``(n_samples, channels)`` float64; sample ``n`` sits at frame position
    ``n * frame_rate / sample_rate``; values are held beyond the first and last centres.
    """
    frames = np.asarray(frames, dtype=np.float64)
    pos = np.arange(n_samples) * (frame_rate / sample_rate)
    i0 = np.clip(np.floor(pos).astype(np.int64), 0, len(frames) - 1)
    i1 = np.minimum(i0 + 1, len(frames) - 1)
    frac = np.clip(pos - i0, 0.0, 1.0)
    if frames.ndim == 2:
        frac = frac[:, None]
    return frames[i0] * (1.0 - frac) + frames[i1] * frac


def harmonic_synth(f0_hz: np.ndarray, amplitude: np.ndarray, harmonic_distribution: np.ndarray,
                   n_samples: int | None = None, sample_rate: int = SAMPLE_RATE,
                   frame_rate: float = FRAME_RATE) -> np.ndarray:
    """Sum of harmonic partials, ``(n_samples,)`` float32.

    ``f0_hz`` ``(frames,)`` Hz, ``amplitude`` ``(frames,)`` linear, ``harmonic_distribution``
    ``(frames, K)``. ``n_samples`` defaults to ``frames * hop``. Partials at or above Nyquist
    are zeroed per sample. Raises ``ValueError`` on mismatched shapes.
    """
    f0, amp, dist = _check_controls(f0_hz, amplitude, harmonic_distribution)
    hop = hop_size(sample_rate, frame_rate)
    n_samples = len(f0) * hop if n_samples is None else int(n_samples)
    k = np.arange(1, dist.shape[1] + 1, dtype=np.float64)
    f0_up = upsample(f0, n_samples, sample_rate, frame_rate)
    amps = upsample(amp[:, None] * dist, n_samples, sample_rate, frame_rate)
    amps *= (f0_up[:, None] * k[None, :]) < 0.5 * sample_rate
    # phase in cycles, wrapped (exclusive cumulative sum: phase 0 at sample 0)
    cycles = np.concatenate([[0.0], np.cumsum(f0_up[:-1] / sample_rate)]) % 1.0
    return _sum_partials(cycles, amps, k).astype(np.float32)


def _sum_partials(cycles: np.ndarray, amps: np.ndarray, k: np.ndarray,
                  chunk: int = 8192) -> np.ndarray:
    out = np.empty(len(cycles))
    for s in range(0, len(cycles), chunk):  # bounded memory: chunk x K at a time
        c = cycles[s:s + chunk]
        out[s:s + chunk] = (amps[s:s + chunk] * np.sin(2 * np.pi * np.outer(c, k))).sum(axis=1)
    return out


def band_of_bins(n_fft: int, n_bands: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Band index of each rfft bin of an ``n_fft`` frame, ``(n_fft // 2 + 1,)`` int64 (the
    Nyquist bin joins the last band, as in :func:`morphbox.kernels.analysis.noise_magnitudes`)."""
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    return np.minimum((freqs / (0.5 * sample_rate) * n_bands).astype(np.int64), n_bands - 1)


def hann(length: int) -> np.ndarray:
    """Periodic Hann window ``(length,)`` float64; copies at hop ``length / 2`` sum to 1."""
    return 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(length) / length)


def noise_synth(noise_magnitudes: np.ndarray, noise: np.ndarray,
                sample_rate: int = SAMPLE_RATE, frame_rate: float = FRAME_RATE) -> np.ndarray:
    """White ``noise`` shaped by per-frame band gains, ``(len(noise),)`` float32.

    ``noise_magnitudes`` ``(frames, B)`` linear; ``noise`` ``(n_samples,)`` unit-variance white
    noise (pass the same array to compare implementations). Frame ``i`` covers samples
    ``(i - 1) hop .. (i + 1) hop``; past the last frame its gains are held.
    """
    mags = np.asarray(noise_magnitudes, dtype=np.float64)
    noise = np.asarray(noise, dtype=np.float64)
    if mags.ndim != 2 or noise.ndim != 1:
        raise ValueError(f"expected noise_magnitudes (frames, bands) and noise (samples,), got "
                         f"{mags.shape} and {noise.shape}")
    hop = hop_size(sample_rate, frame_rate)
    n_bands = mags.shape[1]
    n = len(noise)
    # frames 0 .. ceil(n / hop): every sample is covered by two frames; frames past the last
    # control frame hold its gains (as :func:`upsample` holds values)
    n_frames = -(-n // hop) + 1
    gains = mags[np.minimum(np.arange(n_frames), len(mags) - 1)]
    length = 2 * hop
    padded = np.zeros((n_frames + 1) * hop)
    padded[hop:hop + n] = noise
    idx = np.arange(n_frames)[:, None] * hop + np.arange(length)[None, :]
    spec = np.fft.rfft(padded[idx] * hann(length), axis=1)
    spec *= gains[:, band_of_bins(length, n_bands, sample_rate)]
    frames = np.fft.irfft(spec, n=length, axis=1)
    out = np.zeros((n_frames + 1) * hop)
    np.add.at(out, idx, frames)
    result = out[hop:hop + n]
    return result.astype(np.float32)


def synthesize(f0_hz: np.ndarray, amplitude: np.ndarray, harmonic_distribution: np.ndarray,
               noise_magnitudes: np.ndarray, noise: np.ndarray | None = None, seed: int = 0,
               n_samples: int | None = None, sample_rate: int = SAMPLE_RATE,
               frame_rate: float = FRAME_RATE) -> np.ndarray:
    """Harmonic plus noise audio of one note, ``(n_samples,)`` float32.

    ``noise`` (unit-variance white, ``(n_samples,)``) defaults to
    ``np.random.default_rng(seed).standard_normal(n_samples)``; ``n_samples`` defaults to
    ``len(noise)`` or ``frames * hop``. Shapes as in the module docstring; raises
    ``ValueError`` on mismatched frames.
    """
    hop = hop_size(sample_rate, frame_rate)
    if n_samples is None:
        n_samples = len(noise) if noise is not None else len(np.atleast_1d(f0_hz)) * hop
    if noise is None:
        noise = np.random.default_rng(seed).standard_normal(n_samples)
    elif len(noise) != n_samples:
        raise ValueError(f"noise has {len(noise)} samples, expected {n_samples}")
    if len(noise_magnitudes) != len(np.atleast_1d(f0_hz)):
        raise ValueError("noise_magnitudes and f0_hz must have the same number of frames")
    harm = harmonic_synth(f0_hz, amplitude, harmonic_distribution, n_samples, sample_rate,
                          frame_rate)
    return harm + noise_synth(noise_magnitudes, noise, sample_rate, frame_rate)


def _check_controls(f0_hz, amplitude, harmonic_distribution):
    f0 = np.asarray(f0_hz, dtype=np.float64)
    amp = np.asarray(amplitude, dtype=np.float64)
    dist = np.asarray(harmonic_distribution, dtype=np.float64)
    if f0.ndim != 1 or amp.shape != f0.shape or dist.ndim != 2 or len(dist) != len(f0):
        raise ValueError(f"expected f0_hz (frames,), amplitude (frames,), harmonic_distribution "
                         f"(frames, K); got {f0.shape}, {amp.shape}, {dist.shape}")
    if len(f0) == 0:
        raise ValueError("no frames")
    return f0, amp, dist


# Network output ranges (dB), shared by the TensorFlow model and the device decoder: each head
# ends in a sigmoid scaled to its range, so an int8 output code is ~0.5 dB everywhere in it.
AMPLITUDE_DB_RANGE = (-120.0, 20.0)
HARMONIC_DB_RANGE = (-120.0, 0.0)
NOISE_DB_RANGE = (-120.0, 20.0)


def controls_from_db(amplitude_db: np.ndarray, harmonic_db: np.ndarray,
                     noise_db: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decoder outputs in dB -> synthesis controls (float32).

    ``amplitude_db`` ``(..., frames)`` total harmonic amplitude, dB; ``harmonic_db``
    ``(..., frames, K)`` relative partial levels, dB (normalised here to a distribution that
    sums to 1); ``noise_db`` ``(..., frames, B)`` band gains, dB. Returns ``(amplitude,
    harmonic_distribution, noise_magnitudes)`` linear.
    """
    amp = np.power(10.0, np.asarray(amplitude_db, np.float64) / 20.0)
    rel = np.power(10.0, np.asarray(harmonic_db, np.float64) / 20.0)
    dist = rel / rel.sum(axis=-1, keepdims=True)
    noise = np.power(10.0, np.asarray(noise_db, np.float64) / 20.0)
    return amp.astype(np.float32), dist.astype(np.float32), noise.astype(np.float32)


# ---------------------------------------------------------------------- full-band features


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
        # exact inverse DFT, 16384 points: linear-interpolation images < -100 dB re the
        # partial), crossfaded between frames exactly as the amplitudes are interpolated
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
