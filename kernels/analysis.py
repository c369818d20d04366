"""Analysis of a single note into DDSP-style synthesis controls.

Pure numpy. Given a mono note and its fundamental frequency, compute per frame (at a fixed
frame rate):

* ``f0_hz`` -- fundamental frequency, Hz (constant here: the note's pitch),
* ``loudness_db`` -- A-weighted loudness, dB relative to a full-scale sine,
* ``amplitude`` and ``harmonic_distribution`` -- the harmonic part as a total linear amplitude
  times a distribution over harmonics that sums to 1 (DDSP, Engel et al. 2020, sec. 3.2),
* ``noise_magnitudes`` -- the non-harmonic residual as linear band gains.

Harmonic amplitudes are estimated by projecting each Hann-windowed frame onto complex
exponentials at ``k * f0`` (a heterodyne estimate for known f0), which resolves harmonics of low
notes that an FFT peak picker cannot; the window spans at least four periods. The noise part is
measured on the residual: the note minus the overlap-added harmonic fit.

Noise magnitude convention (shared with :mod:`morphbox.kernels.noise`): ``m[b]`` is the gain that,
applied to unit-variance white noise at the analysis sample rate in linear band ``b`` (width
``nyquist / bands``), reproduces the residual's power in that band.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FRAME_RATE = 50.0
N_HARMONICS = 64
N_NOISE_BANDS = 32
_NOISE_FFT = 1024


@dataclass(frozen=True)
class NoteFeatures:
    """Per-frame controls of one note.

    Attributes:
        f0_hz: ``(frames,)`` float32, Hz.
        loudness_db: ``(frames,)`` float32, A-weighted dB (0 dB = full-scale sine).
        amplitude: ``(frames,)`` float32, sum of the linear harmonic amplitudes.
        harmonic_distribution: ``(frames, harmonics)`` float32, each row sums to 1 (or is 0).
        noise_magnitudes: ``(frames, bands)`` float32 linear band gains (module docstring).
        frame_rate: frames per second, Hz.
    """

    f0_hz: np.ndarray
    loudness_db: np.ndarray
    amplitude: np.ndarray
    harmonic_distribution: np.ndarray
    noise_magnitudes: np.ndarray
    frame_rate: float

    @property
    def harmonic_amplitudes(self) -> np.ndarray:
        """``(frames, harmonics)`` float32 linear amplitude of each partial."""
        return self.amplitude[:, None] * self.harmonic_distribution


def _mono(audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio, dtype=np.float64)
    if audio.ndim != 1:
        raise ValueError(f"audio must be mono (samples,), got shape {audio.shape}")
    return audio


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


def _harmonic_fit(audio: np.ndarray, sample_rate: int, f0_hz: float, frame_rate: float,
                  n_harmonics: int) -> tuple[np.ndarray, np.ndarray]:
    """Complex amplitude of each harmonic per frame and the harmonic part resynthesised.

    Returns ``(coefs (frames, K) complex128, harmonic (samples,) float64)``: ``coefs[i, k-1] =
    A e^{j phi}`` for a partial ``A cos(2 pi k f0 t + phi)`` around frame i; the resynthesis is
    the window-weighted overlap-add of every frame's fit.
    """
    if not f0_hz > 0:
        raise ValueError(f"f0 must be positive, got {f0_hz!r} Hz")
    length = int(2 ** np.ceil(np.log2(max(1024, 4 * sample_rate / f0_hz))))
    centres = frame_centres(len(audio), sample_rate, frame_rate)
    window = np.hanning(length)
    frames = _frames(audio, centres, length) * window
    t = (np.arange(length) - length // 2) / sample_rate
    k = np.arange(1, n_harmonics + 1)
    basis = np.exp(-2j * np.pi * np.outer(t, k * f0_hz))  # (length, K)
    coefs = 2.0 * (frames @ basis) / window.sum()
    coefs[:, k * f0_hz >= 0.5 * sample_rate] = 0.0
    fits = (coefs @ basis.conj().T).real * window  # (frames, length)
    half = length // 2
    acc = np.zeros(len(audio) + 2 * length)
    norm = np.zeros_like(acc)
    idx = centres[:, None] + np.arange(length)[None, :]
    np.add.at(acc, idx, fits)
    np.add.at(norm, idx, np.broadcast_to(window, fits.shape))
    harmonic = np.divide(acc, norm, out=np.zeros_like(acc), where=norm > 1e-3)
    return coefs, harmonic[half:half + len(audio)]


def harmonic_amplitudes(audio: np.ndarray, sample_rate: int, f0_hz: float,
                        frame_rate: float = FRAME_RATE,
                        n_harmonics: int = N_HARMONICS) -> np.ndarray:
    """Linear amplitude of each harmonic per frame, ``(frames, n_harmonics)`` float32.

    A sinusoid ``A sin(2 pi k f0 t)`` yields ``A`` at harmonic ``k``. Harmonics at or above
    Nyquist are 0. Raises ``ValueError`` for a non-positive f0.
    """
    coefs, _ = _harmonic_fit(_mono(audio), sample_rate, f0_hz, frame_rate, n_harmonics)
    return np.abs(coefs).astype(np.float32)


def a_weighting_db(freqs_hz: np.ndarray) -> np.ndarray:
    """IEC 61672 A-weighting in dB for ``freqs_hz`` (any shape); -inf at 0 Hz."""
    f2 = np.asarray(freqs_hz, dtype=np.float64) ** 2
    with np.errstate(divide="ignore"):
        ra = (12194.0**2 * f2**2) / (
            (f2 + 20.6**2) * np.sqrt((f2 + 107.7**2) * (f2 + 737.9**2)) * (f2 + 12194.0**2))
        return 20.0 * np.log10(ra) + 2.0


def _stft_power(audio: np.ndarray, sample_rate: int, frame_rate: float) -> tuple[np.ndarray,
                                                                                 np.ndarray]:
    centres = frame_centres(len(audio), sample_rate, frame_rate)
    window = np.hanning(_NOISE_FFT)
    spec = np.fft.rfft(_frames(audio, centres, _NOISE_FFT) * window, axis=1)
    return np.abs(spec) ** 2, window


def loudness_db(audio: np.ndarray, sample_rate: int, frame_rate: float = FRAME_RATE,
                floor_db: float = -120.0) -> np.ndarray:
    """A-weighted loudness per frame, ``(frames,)`` float32 dB.

    Power spectrum weighted by A-weighting, summed, scaled so a full-scale 1 kHz sine reads
    0 dB (A-weighting is 0 dB at 1 kHz); floored at ``floor_db``.
    """
    power, window = _stft_power(_mono(audio), sample_rate, frame_rate)
    freqs = np.fft.rfftfreq(_NOISE_FFT, 1.0 / sample_rate)
    weights = 10.0 ** (a_weighting_db(freqs) / 10.0)
    # Parseval (one-sided): a sine of amplitude A gives sum_k |X_k|^2 = N * sum(w^2) * A^2 / 4.
    total = (power * weights).sum(axis=1) / (_NOISE_FFT * np.sum(window**2) / 4.0)
    with np.errstate(divide="ignore"):
        db = 10.0 * np.log10(total)
    return np.maximum(db, floor_db).astype(np.float32)


def noise_magnitudes(residual: np.ndarray, sample_rate: int, frame_rate: float = FRAME_RATE,
                     n_bands: int = N_NOISE_BANDS) -> np.ndarray:
    """Band gains of a residual (note minus its harmonic part), ``(frames, n_bands)`` float32.

    Linear bands of width ``nyquist / n_bands``; convention in the module docstring.
    """
    power, window = _stft_power(_mono(residual), sample_rate, frame_rate)
    freqs = np.fft.rfftfreq(_NOISE_FFT, 1.0 / sample_rate)
    band_of_bin = np.minimum((freqs / (0.5 * sample_rate) * n_bands).astype(int), n_bands - 1)
    # White noise of variance s^2 gives E|X_k|^2 = s^2 sum(w^2).
    density = power / np.sum(window**2)
    onehot = np.zeros((len(freqs), n_bands))
    onehot[np.arange(len(freqs)), band_of_bin] = 1.0
    onehot /= onehot.sum(axis=0, keepdims=True)
    return np.sqrt(density @ onehot).astype(np.float32)


def analyze_note(audio: np.ndarray, sample_rate: int, f0_hz: float,
                 frame_rate: float = FRAME_RATE, n_harmonics: int = N_HARMONICS,
                 n_noise_bands: int = N_NOISE_BANDS) -> NoteFeatures:
    """Analyse a mono note (``(samples,)`` float, -1..1) of known f0 (Hz) into NoteFeatures.

    Frames at ``frame_rate`` Hz, frame i centred on ``i / frame_rate`` seconds.
    Raises ``ValueError`` for non-1-D audio or non-positive f0.
    """
    audio = _mono(audio)
    coefs, harmonic = _harmonic_fit(audio, sample_rate, f0_hz, frame_rate, n_harmonics)
    harm = np.abs(coefs).astype(np.float32)
    amp = harm.sum(axis=1)
    dist = np.divide(harm, amp[:, None], out=np.zeros_like(harm), where=amp[:, None] > 0)
    loud = loudness_db(audio, sample_rate, frame_rate)
    noise = noise_magnitudes(audio - harmonic, sample_rate, frame_rate, n_noise_bands)
    n = min(len(harm), len(loud), len(noise))
    return NoteFeatures(
        f0_hz=np.full(n, f0_hz, dtype=np.float32), loudness_db=loud[:n],
        amplitude=amp[:n].astype(np.float32), harmonic_distribution=dist[:n].astype(np.float32),
        noise_magnitudes=noise[:n], frame_rate=float(frame_rate))
