"""Analysis of a single note into the features of :mod:`morphbox.kernels.features`.

Pure numpy. :func:`analyze_note` takes a mono note at 48 kHz (any rate >= 40 kHz works) and
its fundamental frequency and returns, at the frame times of
:func:`morphbox.kernels.features.frame_times` (250 frames/s over the first 0.1 s, then 50/s):

* ``loudness_db`` -- A-weighted loudness, dB relative to a full-scale sine;
* ``harmonics_db`` -- the level of each of the first 64 partials (dB of ``A`` for a partial
  ``A sin(2 pi k f0 t)``);
* ``envelope_db`` -- the harmonic envelope: RMS level of the partials in each of 24 ERB-spaced
  bands from 1 to 20 kHz (partials above the 64th are synthesised from it);
* ``noise_db`` -- the residual's power spectral density in 32 ERB-spaced bands, 20 Hz..20 kHz.

Method (all in the frequency domain, so hundreds of partials cost one FFT per frame): each
frame is windowed with a 4-term Blackman-Harris window (side lobes -92 dB, main lobe +-4 bins)
at least 8 periods of f0 long (and at least 85 ms at 48 kHz, so the lowest noise bands hold
several bins), so neighbouring partials never leak into each other or into the bins between
them. Partial ``k`` is the largest peak within half a harmonic spacing of ``k f0`` (so
stretched partials, a piano's, are still found), refined by parabolic interpolation of the
log power, less the noise power expected at that peak (Serra, "A system for sound
analysis/transformation/synthesis based on a deterministic plus stochastic decomposition",
1989). The noise is the power of the bins away from the main lobes per band: first their median
(over ln 2) away from every ``k f0`` and every peak found, which a partial spilling out of
its place (a pluck's pitch glide) cannot sway; then their mean away from every ``k f0`` and
every peak standing 8 dB over that first estimate. A band with no such bins is interpolated
from its neighbours.

Windows never reach before the note's onset or past its end (the first and last frames take
the spectrum of the first and last whole window): a window across the onset would read its
spectral splatter as noise, which the engine's own attack makes again anyway.

Levels at the frame rate, not the window's: the long window smears an attack over ~100 ms,
so each frame's levels are rescaled so that the power they describe (every partial plus the
noise) equals the short-time energy of the note at that frame: over a whole number of
periods spanning at least the frame spacing (a whole period reads a steady tone evenly),
and over half a period (at least 1 ms) on the 1 ms frames while the attack still rises, so
the window does not smear the rise by a period. Attacks keep their rise time; sustained
frames change by the estimators' small biases only.

DC offsets and rumble are the caller's to remove (the host tools high-pass sources at 20 Hz
before analysing); bins below 20 Hz are ignored here.

:func:`harmonic_amplitudes` (a heterodyne projection at exactly ``k f0``, any frame rate) and
:func:`loudness_db` stay as measuring tools for rendered audio.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from morphbox.kernels.features import (
    BAND_LIMIT_HZ,
    DB_FLOOR,
    N_ENVELOPE,
    N_HARMONICS,
    N_NOISE_BANDS,
    NOISE_LO_HZ,
    envelope_edges,
    frame_times,
    max_partials,
    noise_bin_weights,
    noise_edges,
)

FRAME_RATE = 50.0  # frame rate of the measuring tools (harmonic_amplitudes, loudness_db)
_LOUDNESS_FFT = 1024  # loudness_db's window at 16 kHz (scaled with the sample rate)
_BH4 = (0.35875, 0.48829, 0.14128, 0.01168)  # 4-term Blackman-Harris
_MAIN_LOBE = 4  # its main lobe half-width, bins
_MIN_WINDOW_S = 4096 / 48000  # so the lowest noise band (20-56 Hz) holds a few bins
_MAX_GAIN = 16.0  # attack sharpening: at most +12 dB over the long window's level


@dataclass(frozen=True)
class NoteFeatures:
    """Features of one note (layout: :mod:`morphbox.kernels.features`).

    Attributes:
        times: ``(F,)`` float64 frame times, s after note-on.
        f0_hz: the fundamental the note was analysed at, Hz.
        loudness_db: ``(F,)`` float32 A-weighted loudness, dB (0 dB = full-scale sine).
        harmonics_db: ``(F, K)`` float32 partial levels, dB (floor -120).
        envelope_db: ``(F, E)`` float32 harmonic envelope, dB.
        noise_db: ``(F, B)`` float32 noise band gains, dB.
        sample_rate: Hz of the analysed audio.
    """

    times: np.ndarray
    f0_hz: float
    loudness_db: np.ndarray
    harmonics_db: np.ndarray
    envelope_db: np.ndarray
    noise_db: np.ndarray
    sample_rate: int

    @property
    def frames_db(self) -> np.ndarray:
        """``(F, K + E + B)`` float32: partials, envelope and noise side by side (the order of
        a pack's frames)."""
        return np.concatenate([self.harmonics_db, self.envelope_db, self.noise_db], axis=1)

    @property
    def harmonic_amplitudes(self) -> np.ndarray:
        """``(F, K)`` float32 linear amplitude of each of the first K partials."""
        return np.where(self.harmonics_db <= DB_FLOOR, 0.0,
                        10.0 ** (self.harmonics_db / 20.0)).astype(np.float32)

    def slice(self, n: int) -> NoteFeatures:
        """The first ``n`` frames."""
        return NoteFeatures(self.times[:n], self.f0_hz, self.loudness_db[:n],
                            self.harmonics_db[:n], self.envelope_db[:n], self.noise_db[:n],
                            self.sample_rate)


def _mono(audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio, dtype=np.float64)
    if audio.ndim != 1:
        raise ValueError(f"audio must be mono (samples,), got shape {audio.shape}")
    return audio


def _check_f0(f0_hz) -> float:
    f0 = float(f0_hz)
    if not f0 > 0 or not np.isfinite(f0):
        raise ValueError(f"f0 must be positive, got {f0_hz!r} Hz")
    return f0


def frame_centres(n_samples: int, sample_rate: int, frame_rate: float = FRAME_RATE) -> np.ndarray:
    """Sample index of each frame centre: ``(frames,)`` int64, frame i at ``i / frame_rate`` s."""
    n_frames = int(np.floor(n_samples / sample_rate * frame_rate))
    return np.round(np.arange(n_frames) * sample_rate / frame_rate).astype(np.int64)


def _frames(audio: np.ndarray, centres: np.ndarray, length: int) -> np.ndarray:
    """``(frames, length)`` windows centred on ``centres`` (zero padded at both ends)."""
    half = length // 2
    padded = np.pad(audio.astype(np.float64), (half, length))
    idx = centres[:, None] + np.arange(length)[None, :]
    return padded[idx]


def blackman_harris(length: int) -> np.ndarray:
    """Periodic 4-term Blackman-Harris window ``(length,)`` float64 (side lobes -92 dB)."""
    x = 2.0 * np.pi * np.arange(length) / length
    a0, a1, a2, a3 = _BH4
    return a0 - a1 * np.cos(x) + a2 * np.cos(2 * x) - a3 * np.cos(3 * x)


def window_length(f0_hz: float, sample_rate: int) -> int:
    """Analysis window for ``f0_hz``: a power of two >= 8 periods and >= 85 ms."""
    need = max(8.0 * sample_rate / f0_hz, _MIN_WINDOW_S * sample_rate)
    return int(2 ** np.ceil(np.log2(need)))


def _short_energy(audio: np.ndarray, centres: np.ndarray, spans: np.ndarray,
                  onset: int) -> np.ndarray:
    """Mean square of ``audio`` over ``spans`` samples centred on ``centres``, counting only
    samples from ``onset`` on (a window reaching before the note would read its silence)."""
    n = len(audio)
    c = np.concatenate([[0.0], np.cumsum(audio * audio)])
    lo = np.clip(centres - spans // 2, onset, n)
    hi = np.clip(centres - spans // 2 + spans, onset, n)
    return np.divide(c[hi] - c[lo], hi - lo, out=np.zeros(len(centres)), where=hi > lo)


def analyze_note(audio: np.ndarray, sample_rate: int, f0_hz: float,
                 times: np.ndarray | None = None, n_harmonics: int = N_HARMONICS,
                 n_envelope: int = N_ENVELOPE, n_noise_bands: int = N_NOISE_BANDS,
                 ) -> NoteFeatures:
    """Analyse a mono note (``(samples,)`` float, -1..1) of known ``f0_hz`` (Hz).

    ``times`` (s, a frame layout) defaults to :func:`morphbox.kernels.features.frame_times`
    over the whole audio. Returns :class:`NoteFeatures` (method in the module docstring).
    Raises ``ValueError`` for non-1-D audio, a non-positive f0 or a sample rate below 40 kHz.
    """
    audio = _mono(audio)
    f0 = _check_f0(f0_hz)
    if sample_rate < 40000:
        raise ValueError(f"analysis needs >= 40 kHz audio (full band), got {sample_rate} Hz")
    if times is None:
        times = frame_times(max(len(audio) / sample_rate, 0.1))
    times = np.asarray(times, np.float64)
    centres = np.round(times * sample_rate).astype(np.int64)
    length = window_length(f0, sample_rate)
    window = blackman_harris(length)
    # a window never reaches before the note's onset (or past its end): the spectra of the
    # first (last) frames are those of the first (last) whole window, whose levels the
    # short-time energy then sets (a window across the onset would read the onset's
    # spectral splatter as noise, and the engine's own attack makes that splatter again)
    peak = np.max(np.abs(audio)) if len(audio) else 0.0
    onset = int(np.argmax(np.abs(audio) > 1e-3 * peak)) if peak > 0 else 0
    lo_c = onset + length // 2
    hi_c = max(len(audio) - length // 2, lo_c)
    frames = _frames(audio, np.clip(centres, lo_c, hi_c), length) * window
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # (F, bins)
    n_frames, n_bins = power.shape
    df = sample_rate / length
    freqs = np.arange(n_bins) * df
    sw, sw2 = window.sum(), np.sum(window ** 2)

    # ---- partial peaks: the largest bin within half a spacing of k f0, refined
    kmax = max_partials(f0, sample_rate)
    k = np.arange(1, kmax + 1)
    lo = np.maximum(np.ceil((k - 0.5) * f0 / df).astype(np.int64), 1)
    hi = np.minimum(np.floor((k + 0.5) * f0 / df).astype(np.int64), n_bins - 2)
    width = int(max(hi - lo + 1)) if kmax else 1
    idx = np.minimum(lo[:, None] + np.arange(width)[None, :], hi[:, None])  # (kmax, width)
    logp = np.log(power + 1e-30)
    if kmax:
        j = idx[np.arange(kmax)[None, :], np.argmax(logp[:, idx], axis=2)]  # (F, kmax) bins
        rows = np.arange(n_frames)[:, None]
        a, b, c = logp[rows, j - 1], logp[rows, j], logp[rows, j + 1]
        den = a - 2 * b + c
        p = np.clip(np.where(den < 0, 0.5 * (a - c) / np.where(den < 0, den, -1.0), 0.0),
                    -0.5, 0.5)
        peak = np.exp(b - 0.25 * (a - c) * p)  # (F, kmax) power at the peak
    else:
        j = np.zeros((n_frames, 0), np.int64)
        peak = np.zeros((n_frames, 0))

    # ---- noise: bins away from the main lobe of every partial that stands out of the noise
    edges = noise_edges(n_noise_bands)
    band = np.searchsorted(edges, freqs, side="right") - 1
    valid = (freqs >= NOISE_LO_HZ) & (freqs < BAND_LIMIT_HZ) & (band >= 0) & \
        (band < n_noise_bands)
    onehot = np.zeros((n_bins, n_noise_bands))
    onehot[np.flatnonzero(valid), band[valid]] = 1.0
    at = noise_bin_weights(k * f0, n_noise_bands) if kmax else None  # (B, kmax)

    def mask(real, where, also=None):
        near = np.zeros((n_frames, n_bins), bool)
        for off in range(-_MAIN_LOBE, _MAIN_LOBE + 1):
            near[np.nonzero(real)[0], np.clip(where[real] + off, 0, n_bins - 1)] = True
            if also is not None:
                near[np.arange(n_frames)[:, None], np.clip(also + off, 0, n_bins - 1)] = True
        return (~near) & valid[None, :]

    def fill(psd, empty):
        for f in np.flatnonzero(empty.any(axis=1)):
            have = ~empty[f]
            if have.any():
                psd[f, empty[f]] = np.interp(np.flatnonzero(empty[f]), np.flatnonzero(have),
                                             psd[f, have])
        return psd

    def noise_psd(real, where, also=None):
        free = mask(real, where, also)
        count = free.astype(np.float64) @ onehot  # (F, B)
        psd = np.divide((power * free) @ onehot, count,
                        out=np.zeros((n_frames, n_noise_bands)), where=count > 0) / sw2
        return fill(psd, count == 0)

    def noise_median(real, where, also):
        free = mask(real, where, also)
        psd = np.zeros((n_frames, n_noise_bands))
        empty = np.zeros((n_frames, n_noise_bands), bool)
        for b_ in range(n_noise_bands):
            cols = np.flatnonzero(valid & (band == b_))
            if not len(cols):
                empty[:, b_] = True
                continue
            vals = np.where(free[:, cols], power[:, cols], np.nan)
            ok = free[:, cols].any(axis=1)
            empty[:, b_] = ~ok
            if ok.any():
                psd[ok, b_] = np.nanmedian(vals[ok], axis=1) / np.log(2.0) / sw2
        return fill(psd, empty)

    # first pass: the median of the bins away from every k f0 and every peak found (over
    # ln 2: the median of exponentially distributed powers), robust to a partial that
    # spills (a pluck's pitch glide, a fast decay); then the mean of the bins away from
    # every k f0 and from the peaks that stand 8 dB over that (a noise maximum rarely does)
    expected = np.broadcast_to(np.round(k * f0 / df).astype(np.int64), (n_frames, kmax))
    psd = noise_median(np.ones((n_frames, kmax), bool), expected, j)
    if kmax:
        psd = noise_psd(peak > 6.0 * (psd @ at) * sw2, j, expected)

    # ---- partial amplitudes: peak power less the noise expected at the biggest of `width`
    # noise bins (the harmonic number H_width), in amplitude units (2 |X| / sum(w))
    if kmax:
        noise_at = (psd @ at) * sw2 * (np.log(width) + 0.5772 if width > 1 else 1.0)
        amp2 = np.maximum(peak - noise_at, 0.0) * 4.0 / sw ** 2
    else:
        amp2 = np.zeros((n_frames, 0))

    # ---- harmonic envelope: RMS amplitude of the partials in each ERB band
    env_edges = envelope_edges(n_envelope)
    env_band = np.searchsorted(env_edges, k * f0, side="right") - 1
    env_sum = np.zeros((n_frames, n_envelope))
    env_cnt = np.zeros(n_envelope)
    for e in range(n_envelope):
        sel = env_band == e
        env_cnt[e] = sel.sum()
        if env_cnt[e]:
            env_sum[:, e] = amp2[:, sel].mean(axis=1)
    top = kmax * f0
    reach = env_edges[:-1] <= top  # bands the partials reach
    env = env_sum.copy()
    have = env_cnt > 0
    if have.any():
        centres_e = np.arange(n_envelope)
        for f in range(n_frames):
            env[f, ~have] = np.interp(centres_e[~have], centres_e[have], env_sum[f, have])
    env[:, ~reach] = 0.0

    # ---- loudness (A-weighted, full-scale sine = 0 dB)
    weights = 10.0 ** (a_weighting_db(freqs) / 10.0)
    loud = (power * weights).sum(axis=1) / (length * sw2 / 4.0)

    # ---- levels at the frame rate: the features' power rescaled to the short-time energy
    spacing = np.diff(times, append=times[-1] + (times[-1] - times[-2] if len(times) > 1
                                                   else 0.02))
    period = sample_rate / f0
    spans = np.maximum(np.ceil(spacing * sample_rate / period), 1.0) * period
    spans = np.maximum(np.round(spans).astype(np.int64), 1)
    short = _short_energy(audio, centres, spans, onset)
    # the rise of an attack (the 1 ms frames before the note's short-time energy first peaks):
    # half a period, so the window does not smear the rise by a whole period (a window
    # shorter than a period reads a steady tone unevenly, so only while the note rises)
    fine = np.flatnonzero(spacing < 0.002)
    if len(fine):
        top = fine[int(np.argmax(short[fine]))]
        rising = fine[fine < top]
        half = np.maximum(np.round(np.maximum(spacing[rising] * sample_rate, 0.5 * period)),
                          1).astype(np.int64)
        short[rising] = _short_energy(audio, centres[rising], half, onset)
    widths = np.diff(np.clip(edges, 0, 0.5 * sample_rate)) / (0.5 * sample_rate)
    have_power = amp2.sum(axis=1) / 2.0 + psd @ widths  # every partial, and the noise
    gain = np.clip(np.divide(short, have_power, out=np.ones_like(short),
                             where=have_power > 1e-24), 0.0, _MAX_GAIN)

    def db(x, g=gain):
        x = np.asarray(x, np.float64) * (g[:, None] if np.ndim(x) == 2 else g)
        with np.errstate(divide="ignore"):
            return np.maximum(10.0 * np.log10(x), DB_FLOOR).astype(np.float32)

    harm = np.full((n_frames, n_harmonics), DB_FLOOR, np.float32)
    m = min(n_harmonics, kmax)
    harm[:, :m] = db(amp2[:, :m])
    return NoteFeatures(times=times, f0_hz=f0, loudness_db=db(loud), harmonics_db=harm,
                        envelope_db=db(env), noise_db=db(psd), sample_rate=int(sample_rate))


# ------------------------------------------------------------------------------ measuring


def _harmonic_fit(audio: np.ndarray, sample_rate: int, f0_hz: float, frame_rate: float,
                  n_harmonics: int) -> np.ndarray:
    """Complex amplitude ``(frames, K)`` of each harmonic per frame: ``A e^{j phi}`` for a
    partial ``A cos(2 pi k f0 t + phi)`` around the frame (Hann window >= 4 periods)."""
    length = int(2 ** np.ceil(np.log2(max(1024, 4 * sample_rate / f0_hz))))
    centres = frame_centres(len(audio), sample_rate, frame_rate)
    window = np.hanning(length)
    frames = _frames(audio, centres, length) * window
    t = (np.arange(length) - length // 2) / sample_rate
    k = np.arange(1, n_harmonics + 1)
    basis = np.exp(-2j * np.pi * np.outer(t, k * f0_hz))  # (length, K)
    coefs = 2.0 * (frames @ basis) / window.sum()
    coefs[:, k * f0_hz >= 0.5 * sample_rate] = 0.0
    return coefs


def harmonic_amplitudes(audio: np.ndarray, sample_rate: int, f0_hz: float,
                        frame_rate: float = FRAME_RATE,
                        n_harmonics: int = N_HARMONICS) -> np.ndarray:
    """Linear amplitude of each exact harmonic ``k f0`` per frame, ``(frames, n_harmonics)``
    float32 (a measuring tool for rendered audio: a heterodyne projection, Hann window of at
    least 4 periods). A sinusoid ``A sin(2 pi k f0 t)`` yields ``A`` at harmonic ``k``;
    harmonics at or above Nyquist are 0. Raises ``ValueError`` for a non-positive f0."""
    f0 = _check_f0(f0_hz)
    coefs = _harmonic_fit(_mono(audio), sample_rate, f0, frame_rate, n_harmonics)
    return np.abs(coefs).astype(np.float32)


def a_weighting_db(freqs_hz: np.ndarray) -> np.ndarray:
    """IEC 61672 A-weighting in dB for ``freqs_hz`` (any shape); -inf at 0 Hz."""
    f2 = np.asarray(freqs_hz, dtype=np.float64) ** 2
    with np.errstate(divide="ignore"):
        ra = (12194.0**2 * f2**2) / (
            (f2 + 20.6**2) * np.sqrt((f2 + 107.7**2) * (f2 + 737.9**2)) * (f2 + 12194.0**2))
        return 20.0 * np.log10(ra) + 2.0


def loudness_db(audio: np.ndarray, sample_rate: int, frame_rate: float = FRAME_RATE,
                floor_db: float = -120.0) -> np.ndarray:
    """A-weighted loudness per frame, ``(frames,)`` float32 dB (a measuring tool).

    Power spectrum (Hann, 64 ms) weighted by A-weighting, summed, scaled so a full-scale 1 kHz
    sine reads 0 dB (A-weighting is 0 dB at 1 kHz); floored at ``floor_db``.
    """
    audio = _mono(audio)
    n_fft = int(_LOUDNESS_FFT * sample_rate / 16000)
    centres = frame_centres(len(audio), sample_rate, frame_rate)
    window = np.hanning(n_fft)
    power = np.abs(np.fft.rfft(_frames(audio, centres, n_fft) * window, axis=1)) ** 2
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    weights = 10.0 ** (a_weighting_db(freqs) / 10.0)
    # Parseval (one-sided): a sine of amplitude A gives sum_k |X_k|^2 = N * sum(w^2) * A^2 / 4.
    total = (power * weights).sum(axis=1) / (n_fft * np.sum(window**2) / 4.0)
    with np.errstate(divide="ignore"):
        db = 10.0 * np.log10(total)
    return np.maximum(db, floor_db).astype(np.float32)
