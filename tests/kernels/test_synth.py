"""Tests of kernels/synth.py: upsampling, partials, Nyquist, noise convention, round trip."""

from __future__ import annotations

import numpy as np
import pytest

from morphbox.kernels import analysis as an
from morphbox.kernels import synth
from morphbox.kernels.quant import amplitude_to_db

SR = 16000
HOP = 320
STEADY = slice(5, -5)  # frames whose analysis windows lie inside the note


def test_upsample_hits_frame_centres_and_holds_ends():
    frames = np.array([0.0, 1.0, 3.0])
    up = synth.upsample(frames, 4 * HOP)
    assert up.shape == (4 * HOP,)
    assert up[0] == 0.0 and up[HOP] == 1.0 and up[2 * HOP] == 3.0
    assert up[HOP // 2] == pytest.approx(0.5)
    assert np.all(up[2 * HOP:] == 3.0)
    two = synth.upsample(np.stack([frames, -frames], axis=1), 3 * HOP)
    np.testing.assert_allclose(two[:, 1], -two[:, 0])


def test_hop_must_be_whole():
    with pytest.raises(ValueError, match="integer"):
        synth.hop_size(16000, 48.0)


def test_single_partial_amplitude_is_analysed_back():
    frames = 100
    dist = np.zeros((frames, 64))
    dist[:, 2] = 1.0  # third harmonic
    audio = synth.harmonic_synth(np.full(frames, 200.0), np.full(frames, 0.5), dist)
    assert audio.shape == (frames * HOP,) and audio.dtype == np.float32
    amps = an.harmonic_amplitudes(audio, SR, 200.0)[STEADY]
    np.testing.assert_allclose(amps[:, 2], 0.5, rtol=2e-3)
    assert amps[:, [0, 1, 3]].max() < 1e-3


def test_partials_at_or_above_nyquist_are_silent():
    frames = 50
    dist = np.full((frames, 64), 1.0 / 64)
    audio = synth.harmonic_synth(np.full(frames, 3000.0), np.ones(frames), dist)
    spec = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    freqs = np.fft.rfftfreq(len(audio), 1 / SR)
    peak = spec.max()
    # only 3 and 6 kHz exist; k = 3 (9 kHz) and up would alias back below Nyquist
    for f in (3000, 6000):
        assert spec[np.argmin(np.abs(freqs - f))] > 0.5 * peak
    away = (np.abs(freqs - 3000) > 50) & (np.abs(freqs - 6000) > 50)
    assert spec[away].max() < 1e-4 * peak


def test_unit_noise_gains_return_the_noise():
    noise = np.random.default_rng(0).standard_normal(64000)
    out = synth.noise_synth(np.ones((200, 32)), noise)
    np.testing.assert_allclose(out, noise, atol=1e-5)


def test_noise_band_gains_follow_the_analysis_convention():
    noise = np.random.default_rng(1).standard_normal(64000)
    mags = np.full((200, 32), 0.1)
    mags[:, 16:] = 0.02
    measured = an.noise_magnitudes(synth.noise_synth(mags, noise), SR)[STEADY]
    band_db = 10 * np.log10((measured**2).mean(axis=0))
    want = 20 * np.log10(mags[0])
    inner = np.r_[0:15, 17:32]  # away from the step, where the 1024-point window leaks
    np.testing.assert_allclose(band_db[inner], want[inner], atol=0.5)


def test_synthesize_is_deterministic_and_checks_shapes():
    f0, amp = np.full(20, 440.0), np.full(20, 0.3)
    dist, mags = np.full((20, 64), 1 / 64), np.full((20, 32), 0.01)
    a = synth.synthesize(f0, amp, dist, mags, seed=7)
    np.testing.assert_array_equal(a, synth.synthesize(f0, amp, dist, mags, seed=7))
    assert a.shape == (20 * HOP,)
    with pytest.raises(ValueError):
        synth.synthesize(f0, amp, dist[:10], mags)
    with pytest.raises(ValueError):
        synth.synthesize(f0, amp, dist, mags[:10])


def _note(rng: np.random.Generator) -> np.ndarray:
    """A 4 s note at 220 Hz: 30 decaying partials with an attack, plus -40 dB white noise."""
    t = np.arange(64000) / SR
    k = np.arange(1, 31)
    amps = 0.3 / k * np.exp(-0.05 * k)
    env = np.minimum(t / 0.05, 1.0) * np.exp(-0.3 * t)
    phases = rng.uniform(0, 2 * np.pi, len(k))
    x = (amps[:, None] * np.sin(2 * np.pi * np.outer(k * 220.0, t) + phases[:, None])).sum(0)
    return (x + 0.01 * rng.standard_normal(len(t))) * env


def test_analysis_synthesis_analysis_round_trip():
    a = an.analyze_note(_note(np.random.default_rng(1)), SR, 220.0)
    audio = synth.synthesize(a.f0_hz, a.amplitude, a.harmonic_distribution, a.noise_magnitudes,
                             seed=3)
    assert audio.shape == (64000,)
    b = an.analyze_note(audio, SR, 220.0)
    ha = amplitude_to_db(a.harmonic_amplitudes[STEADY])
    hb = amplitude_to_db(b.harmonic_amplitudes[STEADY])
    strong = ha > -30  # well above the noise floor in their frames
    assert strong.sum() > 500
    assert np.abs(ha - hb)[strong].max() < 0.5
    np.testing.assert_allclose(b.loudness_db[STEADY], a.loudness_db[STEADY], atol=0.2)
    # band power averaged over the note; the analysis' harmonic fit absorbs ~0.6 dB of the
    # noise each time it runs (its 64 partial estimators soak up noise near k f0)
    pa = 10 * np.log10((a.noise_magnitudes[STEADY] ** 2).mean(axis=0))
    pb = 10 * np.log10((b.noise_magnitudes[STEADY] ** 2).mean(axis=0))
    assert np.abs(pa - pb).max() < 1.5
    assert 0.3 < np.mean(pa - pb) < 1.0
