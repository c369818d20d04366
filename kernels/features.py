"""The layout of a note's features: frame times, partials, harmonic envelope and noise bands.

Pure numpy; shared by the analysis (:mod:`morphbox.kernels.analysis`), the offline synthesis
(:mod:`morphbox.kernels.synth`), the engine and the pack format, so all of them agree on what a
frame and a band are. No I/O, no state.

A note is described at 48 kHz over the whole audible band (20 Hz .. 20 kHz) by, per frame:

* ``harmonics_db`` ``(K,)``: the level (dB of the linear amplitude ``A`` of a partial
  ``A sin(2 pi k f0 t)``) of each of the first ``K`` partials (64);
* ``envelope_db`` ``(E,)``: the harmonic *envelope*, the RMS amplitude (dB) of the partials
  falling in each of ``E`` bands (24) spaced evenly on the ERB-rate scale from 1 kHz to 20 kHz.
  Partials above ``K`` take their level from it (interpolated in dB over ERB-rate at the
  partial's frequency), so a low note keeps all of its several hundred partials up to 20 kHz
  while a frame stays ``K + E`` numbers at every pitch;
* ``noise_db`` ``(B,)``: the non-harmonic residual's power spectral density in ``B`` bands (32)
  of equal width on the ERB-rate scale over 20 Hz .. 20 kHz, as the gain (dB) that, applied to
  unit-variance white noise, reproduces it (so 0 dB = white noise of variance 1).

Why ERB-rate (Glasberg and Moore, "Derivation of auditory filter shapes from notched-noise
data", Hear. Res. 1990, ``E(f) = 21.4 log10(1 + 0.00437 f)``): the ear resolves the spectrum
in roughly equal steps on this scale, so equal ERB steps spend the numbers where they are
heard: 32 noise bands are 1.3 ERB each, from 36 Hz wide at the bottom to 2.6 kHz at the top.

Frames (:func:`frame_times`): 1000/s over the first 20 ms (a struck or plucked note reaches
its peak in a few milliseconds, and values between frames are interpolated in dB, so a frame
must land on the attack), 250/s to 0.1 s (DDSP's frame rate), then ``FRAME_RATE`` (50/s).
Frame ``i`` describes the note at ``times[i]`` seconds after note-on; values between frames
are interpolated linearly in time.
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 48000  # Hz, analysis and engine rate
BAND_LIMIT_HZ = 20000.0  # nothing is analysed or synthesised above this
N_HARMONICS = 64  # partials with their own level
N_ENVELOPE = 24  # harmonic envelope bands (partials above N_HARMONICS)
N_NOISE_BANDS = 32  # noise bands
ENVELOPE_LO_HZ = 1000.0
NOISE_LO_HZ = 20.0
ONSET_SEGMENTS = ((0.02, 1000.0), (0.1, 250.0))  # (until s, frames per second)
FRAME_RATE = 50.0
DB_FLOOR = -120.0


def with_gain(db: np.ndarray, gain_db: float) -> np.ndarray:
    """``db + gain_db`` (float32), except that silence (``DB_FLOOR`` and below) stays silent."""
    db = np.asarray(db, np.float32)
    return np.where(db <= DB_FLOOR, np.float32(DB_FLOOR), db + np.float32(gain_db))


def erb_rate(hz):
    """ERB-rate (Cam) of frequencies in Hz, any shape: ``21.4 log10(1 + 0.00437 f)``."""
    return 21.4 * np.log10(1.0 + 0.00437 * np.asarray(hz, dtype=np.float64))


def erb_to_hz(erb):
    """Inverse of :func:`erb_rate`: frequency in Hz of an ERB-rate value, any shape."""
    return (np.power(10.0, np.asarray(erb, dtype=np.float64) / 21.4) - 1.0) / 0.00437


def band_edges(n_bands: int, lo_hz: float, hi_hz: float = BAND_LIMIT_HZ) -> np.ndarray:
    """``(n_bands + 1,)`` float64 band edges in Hz, equal widths on the ERB-rate scale."""
    return erb_to_hz(np.linspace(erb_rate(lo_hz), erb_rate(hi_hz), n_bands + 1))


def band_centres(n_bands: int, lo_hz: float, hi_hz: float = BAND_LIMIT_HZ) -> np.ndarray:
    """``(n_bands,)`` float64 band centres in Hz (the ERB-rate midpoint of each band)."""
    e = np.linspace(erb_rate(lo_hz), erb_rate(hi_hz), n_bands + 1)
    return erb_to_hz(0.5 * (e[:-1] + e[1:]))


def noise_edges(n_bands: int = N_NOISE_BANDS) -> np.ndarray:
    return band_edges(n_bands, NOISE_LO_HZ)


def noise_centres(n_bands: int = N_NOISE_BANDS) -> np.ndarray:
    return band_centres(n_bands, NOISE_LO_HZ)


def envelope_edges(n_bands: int = N_ENVELOPE) -> np.ndarray:
    return band_edges(n_bands, ENVELOPE_LO_HZ)


def envelope_centres(n_bands: int = N_ENVELOPE) -> np.ndarray:
    return band_centres(n_bands, ENVELOPE_LO_HZ)


def frame_times(duration_s: float, segments=ONSET_SEGMENTS, rate: float = FRAME_RATE
                ) -> np.ndarray:
    """``(F,)`` float64 frame times in seconds, 0 .. ``duration_s`` inclusive: each of
    ``segments`` ``((until_s, rate), ...)`` sampled at its rate from where the previous one
    ended, then every ``1 / rate`` s. Raises ``ValueError`` for non-positive rates or a
    duration shorter than the segments."""
    start, parts = 0.0, []
    for until, r in segments:
        if not (r > 0 and until > start):
            raise ValueError(f"bad frame layout segment {(until, r)}")
        parts.append(start + np.arange(int(round((until - start) * r))) / r)
        start = until
    if not (rate > 0 and duration_s >= start):
        raise ValueError(f"bad frame layout: {duration_s=} (onset to {start} s), {rate=}")
    n_rest = int(np.floor((duration_s - start) * rate + 1e-9)) + 1
    return np.concatenate(parts + [start + np.arange(n_rest) / rate])


def check_frame_times(times) -> np.ndarray:
    """``times`` as float64 if it is a valid frame layout (finite, starts at 0, strictly
    increasing, at least 2 frames); raises ``ValueError`` naming the rule otherwise."""
    t = np.asarray(times, dtype=np.float64)
    if t.ndim != 1 or len(t) < 2:
        raise ValueError("frame times must be a list of at least 2 numbers")
    if not np.all(np.isfinite(t)):
        raise ValueError("frame times must be finite")
    if t[0] != 0.0:
        raise ValueError(f"frame times must start at 0, not {t[0]}")
    if not np.all(np.diff(t) > 0):
        raise ValueError("frame times must be strictly increasing")
    return t


def frame_position(t, times: np.ndarray) -> np.ndarray:
    """Fractional frame index at time(s) ``t`` (s, any shape), clamped to the layout."""
    return np.interp(t, times, np.arange(len(times), dtype=np.float64))


def max_partials(f0_hz: float, sample_rate: float = SAMPLE_RATE) -> int:
    """How many partials of ``f0_hz`` lie below the band limit (and below Nyquist)."""
    top = min(BAND_LIMIT_HZ, 0.5 * sample_rate - 1e-6)
    return max(int(np.floor(top / float(f0_hz) - 1e-9)), 0)


def envelope_interp(f0_hz: np.ndarray, first: int, n_partials: int,
                    n_bands: int = N_ENVELOPE) -> tuple[np.ndarray, np.ndarray]:
    """Interpolation of the harmonic envelope at partials ``first .. first + n_partials - 1``
    of each ``f0_hz`` ``(voices,)``: ``(index (voices, n_partials) int64, weight float32)`` so
    that the level (dB) of a partial is ``env[index] * (1 - weight) + env[index + 1] *
    weight``, linear over ERB-rate between band centres and held beyond the first and last
    centre. ``index`` is in ``0 .. n_bands - 2``."""
    f0 = np.atleast_1d(np.asarray(f0_hz, dtype=np.float64))
    k = np.arange(first, first + n_partials, dtype=np.float64)
    e = erb_rate(f0[:, None] * k[None, :])
    c = erb_rate(envelope_centres(n_bands))
    pos = np.clip(np.interp(e, c, np.arange(n_bands, dtype=np.float64)), 0.0, n_bands - 1.0)
    i0 = np.minimum(np.floor(pos).astype(np.int64), n_bands - 2)
    return i0, (pos - i0).astype(np.float32)


def partial_levels_db(harmonics_db: np.ndarray, envelope_db: np.ndarray, f0_hz: float,
                      n_partials: int | None = None,
                      sample_rate: float = SAMPLE_RATE) -> np.ndarray:
    """Level of every partial up to the band limit, ``(..., n_partials)`` float32 dB: the
    first ``K`` from ``harmonics_db`` ``(..., K)``, the rest from ``envelope_db`` ``(..., E)``
    at the partial's frequency; partials at or above the band limit are ``DB_FLOOR``."""
    harmonics_db = np.asarray(harmonics_db, np.float32)
    envelope_db = np.asarray(envelope_db, np.float32)
    k_own = harmonics_db.shape[-1]
    top = max_partials(f0_hz, sample_rate)
    n = top if n_partials is None else int(n_partials)
    out = np.full(harmonics_db.shape[:-1] + (n,), DB_FLOOR, np.float32)
    m = min(n, k_own, top)
    out[..., :m] = harmonics_db[..., :m]
    if top > k_own and n > k_own:
        extra = min(n, top) - k_own
        i0, w = envelope_interp(np.array([f0_hz]), k_own + 1, extra, envelope_db.shape[-1])
        lo = np.take(envelope_db, i0[0], axis=-1)
        hi = np.take(envelope_db, i0[0] + 1, axis=-1)
        out[..., k_own:k_own + extra] = lo + (hi - lo) * w[0]
    return out


def partials_per_band(f0_hz: float, first: int, edges: np.ndarray,
                      sample_rate: float = SAMPLE_RATE) -> np.ndarray:
    """How many partials ``k >= first`` (below the band limit) of ``f0_hz`` fall in each band
    of ``edges`` (Hz): ``(len(edges) - 1,)`` int64."""
    top = max_partials(f0_hz, sample_rate)
    if top < first:
        return np.zeros(len(edges) - 1, np.int64)
    f = f0_hz * np.arange(first, top + 1)
    return np.histogram(f, bins=edges)[0].astype(np.int64)


def noise_bin_weights(freqs_hz: np.ndarray, n_bands: int = N_NOISE_BANDS) -> np.ndarray:
    """``(n_bands, len(freqs_hz))`` float32 map from band power (PSD) to the PSD at each
    frequency: linear interpolation over ERB-rate between band centres, held down to
    ``NOISE_LO_HZ`` and up to ``BAND_LIMIT_HZ``; 0 outside 20 Hz .. 20 kHz."""
    f = np.asarray(freqs_hz, dtype=np.float64)
    c = erb_rate(noise_centres(n_bands))
    pos = np.clip(np.interp(erb_rate(f), c, np.arange(n_bands, dtype=np.float64)), 0,
                  n_bands - 1)
    i0 = np.minimum(np.floor(pos).astype(np.int64), n_bands - 2)
    w = pos - i0
    out = np.zeros((n_bands, len(f)), np.float32)
    inside = (f >= NOISE_LO_HZ) & (f <= BAND_LIMIT_HZ)
    cols = np.flatnonzero(inside)
    out[i0[inside], cols] = 1.0 - w[inside]
    out[i0[inside] + 1, cols] += w[inside]
    return out


def channel_weights(f0_hz: np.ndarray, n_harmonics: int = N_HARMONICS,
                    n_envelope: int = N_ENVELOPE, n_noise_bands: int = N_NOISE_BANDS,
                    sample_rate: float = SAMPLE_RATE) -> np.ndarray:
    """``(len(f0_hz), K + E + B)`` float32: the power a channel at 0 dB adds to a frame of a
    note at each ``f0_hz``: 1/2 per own partial below the band limit, 1/2 per partial above
    ``K`` in each envelope band, the band's share of the spectrum for a noise band (white
    noise of variance 1 has power 1)."""
    f0 = np.atleast_1d(np.asarray(f0_hz, np.float64))
    out = np.zeros((len(f0), n_harmonics + n_envelope + n_noise_bands), np.float32)
    env_edges = envelope_edges(n_envelope)
    widths = np.diff(np.clip(noise_edges(n_noise_bands), 0, 0.5 * sample_rate)) / (
        0.5 * sample_rate)
    for i, f in enumerate(f0):
        top = max_partials(f, sample_rate)
        out[i, :min(top, n_harmonics)] = 0.5
        out[i, n_harmonics:n_harmonics + n_envelope] = 0.5 * partials_per_band(
            f, n_harmonics + 1, env_edges, sample_rate)
        out[i, n_harmonics + n_envelope:] = widths
    return out


def frame_power(frames_db: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Power of frames ``(..., A, F, C)`` dB with :func:`channel_weights` ``(A, C)`` of their
    anchors: ``(..., A, F)`` float32 (a full-scale sine is 0.5)."""
    p = np.power(np.float32(10.0), np.asarray(frames_db, np.float32) * np.float32(0.1))
    return np.einsum("...afc,ac->...af", p, np.asarray(weights, np.float32))
