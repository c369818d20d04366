"""Tests of kernels/analysis.py against synthetic notes whose content is known exactly.

All notes are at 16 kHz (the analysis rate of the packs). "Steady" frames are those whose
analysis windows lie entirely inside the note: the estimators zero-pad at both ends, so the
first and last few frames are biased by design and are not checked.
"""

from __future__ import annotations

import numpy as np
import pytest

from morphbox.kernels import analysis as an

SR = 16000
NOISE_FFT = 1024  # the noise / loudness STFT length (morphbox.kernels.analysis._NOISE_FFT)


def harmonic_window(f0_hz: float) -> int:
    """Length of the harmonic-fit window the module documents (>= 4 periods, >= 1024, 2**n)."""
    return int(2 ** np.ceil(np.log2(max(1024, 4 * SR / f0_hz))))


def synth_note(f0_hz: float, amps: np.ndarray, seconds: float, rng: np.random.Generator,
               ) -> np.ndarray:
    """``sum_k amps[k-1] cos(2 pi k f0 t + phi_k)`` with random phases, float64."""
    t = np.arange(int(seconds * SR)) / SR
    phases = rng.uniform(0.0, 2 * np.pi, len(amps))
    k = np.arange(1, len(amps) + 1)
    return (amps[:, None] * np.cos(2 * np.pi * np.outer(k * f0_hz, t) + phases[:, None])).sum(0)


def steady(n_samples: int, margin: int) -> np.ndarray:
    """Mask of frames whose centre is at least ``margin`` samples from both ends."""
    c = an.frame_centres(n_samples, SR)
    return (c - margin >= 0) & (c + margin <= n_samples)


def test_frame_centres_are_at_frame_rate():
    c = an.frame_centres(SR, SR)
    assert len(c) == int(an.FRAME_RATE)
    np.testing.assert_array_equal(c, np.arange(50) * (SR // 50))


# ------------------------------------------------------------------------------------------
# harmonic amplitudes


@pytest.mark.parametrize("f0_hz, n_partials, seed", [
    (32.7, 64, 0),   # C1: 64 partials up to 2.1 kHz, spaced only 32.7 Hz apart
    (32.7, 64, 1),
    (440.0, 18, 2),  # A4: 18 partials reach 7.92 kHz, just under Nyquist
    (440.0, 18, 3),
    (261.63, 30, 4),
])
def test_harmonic_amplitudes_recover_known_partials(f0_hz, n_partials, seed):
    rng = np.random.default_rng(seed)
    k = np.arange(1, n_partials + 1)
    amps = 0.5 * k ** -0.7 * rng.uniform(0.5, 1.0, n_partials)
    x = synth_note(f0_hz, amps, 1.0, rng)
    h = an.harmonic_amplitudes(x, SR, f0_hz)
    assert h.shape == (50, an.N_HARMONICS) and h.dtype == np.float32
    ok = steady(len(x), harmonic_window(f0_hz) // 2)
    assert ok.sum() >= 30
    est = h[ok][:, :n_partials]
    np.testing.assert_allclose(est, np.broadcast_to(amps, est.shape), rtol=0.02)
    # harmonics not in the note (if any, below Nyquist) read ~0
    if n_partials < an.N_HARMONICS:
        assert h[ok][:, n_partials:].max() < 0.002 * amps.min()


def test_harmonic_amplitudes_sine_gives_its_amplitude():
    """Module contract: ``A sin(2 pi k f0 t)`` yields ``A`` at harmonic ``k``."""
    t = np.arange(SR) / SR
    x = 0.3 * np.sin(2 * np.pi * 3 * 110.0 * t)
    h = an.harmonic_amplitudes(x, SR, 110.0)
    ok = steady(len(x), harmonic_window(110.0) // 2)
    np.testing.assert_allclose(h[ok][:, 2], 0.3, rtol=1e-3)
    others = np.delete(h[ok], 2, axis=1)
    assert others.max() < 1e-3


def test_partials_at_or_above_nyquist_are_zero():
    f0 = 440.0
    rng = np.random.default_rng(5)
    x = synth_note(f0, np.full(18, 0.05), 0.5, rng) + 0.05 * rng.standard_normal(SR // 2)
    h = an.harmonic_amplitudes(x, SR, f0)
    k = np.arange(1, an.N_HARMONICS + 1)
    above = k * f0 >= SR / 2
    assert above.sum() == an.N_HARMONICS - 18
    assert np.all(h[:, above] == 0.0)
    assert np.all(h[:, ~above][2:-2] > 0.0)
    feats = an.analyze_note(x, SR, f0)
    assert np.all(feats.harmonic_distribution[:, above] == 0.0)


def test_harmonic_amplitudes_scale_linearly():
    rng = np.random.default_rng(6)
    x = synth_note(220.0, 0.2 / np.arange(1, 20), 0.5, rng)
    a = an.harmonic_amplitudes(x, SR, 220.0)
    b = an.harmonic_amplitudes(0.25 * x, SR, 220.0)
    np.testing.assert_allclose(b, 0.25 * a, rtol=1e-4, atol=1e-9)


# ------------------------------------------------------------------------------------------
# analyze_note: amplitude x distribution


@pytest.mark.parametrize("f0_hz, n_partials", [(32.7, 64), (440.0, 18)])
def test_analyze_note_distribution_sums_to_one(f0_hz, n_partials):
    rng = np.random.default_rng(7)
    amps = 0.4 / np.arange(1, n_partials + 1)
    x = synth_note(f0_hz, amps, 1.0, rng)
    f = an.analyze_note(x, SR, f0_hz)
    n = len(f.amplitude)
    assert n == 50
    assert f.harmonic_distribution.shape == (n, an.N_HARMONICS)
    assert f.noise_magnitudes.shape == (n, an.N_NOISE_BANDS)
    assert f.loudness_db.shape == f.f0_hz.shape == (n,)
    for arr in (f.f0_hz, f.loudness_db, f.amplitude, f.harmonic_distribution,
                f.noise_magnitudes):
        assert arr.dtype == np.float32
    np.testing.assert_allclose(f.f0_hz, f0_hz, rtol=1e-6)
    assert f.frame_rate == an.FRAME_RATE
    assert np.all(f.harmonic_distribution >= 0)
    np.testing.assert_allclose(f.harmonic_distribution.sum(axis=1), 1.0, atol=1e-5)
    ok = steady(len(x), harmonic_window(f0_hz) // 2)
    np.testing.assert_allclose(f.amplitude[ok], amps.sum(), rtol=0.01)
    np.testing.assert_allclose(f.harmonic_amplitudes[ok][:, :n_partials],
                               np.broadcast_to(amps, (ok.sum(), n_partials)), rtol=0.02)


def test_silence_gives_zero_distribution_and_floor_loudness():
    f = an.analyze_note(np.zeros(SR // 2), SR, 100.0)
    assert np.all(f.amplitude == 0)
    assert np.all(f.harmonic_distribution == 0)  # "sums to 1 (or is 0)"
    assert np.all(f.noise_magnitudes == 0)
    assert np.all(f.loudness_db == -120.0)


# ------------------------------------------------------------------------------------------
# loudness


def _sine(freq, amp, seconds=1.0):
    return amp * np.sin(2 * np.pi * freq * np.arange(int(seconds * SR)) / SR)


def _steady_loudness(x):
    ld = an.loudness_db(x, SR)
    return ld[steady(len(x), NOISE_FFT // 2)]


def test_a_weighting_reference_values():
    # IEC 61672-1 table values (rounded to 0.1 dB) at the exact base-10 frequencies
    freqs = 10.0 ** np.array([1.5, 2.0, 3.0, 3.6, 4.0])  # nominal 31.5, 100, 1k, 4k, 10k Hz
    want = np.array([-39.4, -19.1, 0.0, 1.0, -2.5])
    np.testing.assert_allclose(an.a_weighting_db(freqs), want, atol=0.1)
    assert an.a_weighting_db(np.array([0.0]))[0] == -np.inf


def test_loudness_full_scale_1khz_sine_is_0db():
    ld = _steady_loudness(_sine(1000.0, 1.0))
    assert len(ld) > 30
    np.testing.assert_allclose(ld, 0.0, atol=0.05)


def test_loudness_100hz_sine_is_a_weighted():
    ld = _steady_loudness(_sine(100.0, 1.0))
    np.testing.assert_allclose(ld, -19.1, atol=0.3)


@pytest.mark.parametrize("freq", [100.0, 1000.0, 3000.0])
def test_loudness_drops_6db_per_halving(freq):
    full = _steady_loudness(_sine(freq, 1.0))
    for n in (1, 2, 4):
        quieter = _steady_loudness(_sine(freq, 0.5**n))
        np.testing.assert_allclose(quieter - full, -20 * np.log10(2) * n, atol=0.02)


def test_loudness_is_floored():
    ld = an.loudness_db(_sine(1000.0, 1e-9, 0.2), SR, floor_db=-90.0)
    assert np.all(ld == -90.0)


# ------------------------------------------------------------------------------------------
# noise magnitudes


@pytest.mark.parametrize("std", [0.3, 0.01])
def test_noise_magnitudes_of_white_noise_equal_its_std(std):
    rng = np.random.default_rng(8)
    x = std * rng.standard_normal(3 * SR)
    m = an.noise_magnitudes(x, SR)
    assert m.shape == (150, an.N_NOISE_BANDS) and m.dtype == np.float32
    ok = steady(len(x), NOISE_FFT // 2)
    # the convention is on power: average power over frames, then back to a gain
    band = np.sqrt((m[ok].astype(np.float64) ** 2).mean(axis=0))
    np.testing.assert_allclose(band, std, rtol=0.15)


def test_noise_magnitudes_see_band_limited_noise_in_its_bands_only():
    rng = np.random.default_rng(9)
    n = 2 * SR
    spec = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / SR)
    spec[(freqs < 2000) | (freqs >= 4000)] = 0  # bands 8..15 (250 Hz each)
    x = np.fft.irfft(spec, n)
    m = an.noise_magnitudes(x, SR)
    ok = steady(n, NOISE_FFT // 2)
    band = np.sqrt((m[ok].astype(np.float64) ** 2).mean(axis=0))
    # white noise of variance s^2 spread over the full band, then cut to 2..4 kHz:
    # in-band density unchanged -> in-band gains equal the full noise's std (1)
    np.testing.assert_allclose(band[9:15], 1.0, rtol=0.15)
    assert band[:6].max() < 0.05 and band[18:].max() < 0.05


@pytest.mark.parametrize("f0_hz, n_partials", [(32.7, 64), (440.0, 18)])
def test_noise_magnitudes_near_zero_for_harmonic_note(f0_hz, n_partials):
    rng = np.random.default_rng(10)
    amps = 0.5 * np.arange(1, n_partials + 1) ** -0.7
    x = synth_note(f0_hz, amps, 1.0, rng)
    f = an.analyze_note(x, SR, f0_hz)
    # the residual at a sample depends on every harmonic frame overlapping it
    ok = steady(len(x), harmonic_window(f0_hz) + NOISE_FFT // 2)
    assert ok.sum() >= 20
    # white noise with the note's rms would read rms in every band: the residual is >46 dB down
    assert f.noise_magnitudes[ok].max() < 0.005 * np.std(x)


def test_harmonic_note_plus_noise_recovers_both():
    rng = np.random.default_rng(11)
    f0, std = 440.0, 0.02
    amps = 0.3 / np.arange(1, 19)
    tone = synth_note(f0, amps, 2.0, rng)
    x = tone + std * rng.standard_normal(len(tone))
    f = an.analyze_note(x, SR, f0)
    ok = steady(len(x), harmonic_window(f0) + NOISE_FFT // 2)
    assert ok.sum() >= 80
    harm = f.harmonic_amplitudes[ok][:, :18].mean(axis=0)
    np.testing.assert_allclose(harm, amps, rtol=0.05)
    noise = np.sqrt((f.noise_magnitudes[ok].astype(np.float64) ** 2).mean(axis=0))
    np.testing.assert_allclose(noise, std, rtol=0.15)


# ------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize("shape", [(SR, 2), (2, SR)])
def test_analyze_note_refuses_stereo(shape):
    with pytest.raises(ValueError, match="mono"):
        an.analyze_note(np.zeros(shape), SR, 440.0)


@pytest.mark.parametrize("f0", [0.0, -440.0, float("nan")])
def test_non_positive_f0_is_refused(f0):
    x = _sine(440.0, 0.5, 0.2)
    with pytest.raises(ValueError, match="f0"):
        an.analyze_note(x, SR, f0)
    with pytest.raises(ValueError, match="f0"):
        an.harmonic_amplitudes(x, SR, f0)
