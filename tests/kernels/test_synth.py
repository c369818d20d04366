"""Tests of kernels/synth.py: the full-band resynthesis, analysed again, and its band limit."""

from __future__ import annotations

import numpy as np

from morphbox.kernels import analysis as an
from morphbox.kernels import synth

FULL = 48000


def _note(rng: np.random.Generator, f0: float = 110.0) -> np.ndarray:
    """A 3 s note at 48 kHz: every partial to 20 kHz decaying, an attack, -50 dB noise."""
    t = np.arange(3 * FULL) / FULL
    k = np.arange(1, int(20000 // f0) + 1)
    amps = 0.3 / k * np.exp(-k * f0 / 6000.0)
    env = np.minimum(t / 0.01, 1.0) * np.exp(-0.5 * t)
    x = np.zeros(len(t))
    for a, kk in zip(amps, k):
        x += a * np.sin(2 * np.pi * kk * f0 * t + rng.uniform(0, 2 * np.pi))
    return (x + 0.003 * rng.standard_normal(len(t))) * env


def test_full_band_analysis_synthesis_analysis_round_trip():
    """render_features is what the analysis measures: analysed again, every partial up to
    20 kHz, the noise bands and the loudness come back."""
    x = _note(np.random.default_rng(1))
    a = an.analyze_note(x, FULL, 110.0)
    audio = synth.render_features(a.times, 110.0, a.harmonics_db, a.envelope_db, a.noise_db,
                                  len(x), FULL, seed=3)
    assert audio.shape == x.shape and audio.dtype == np.float32
    b = an.analyze_note(audio, FULL, 110.0)
    steady = slice(30, 140)
    strong = a.harmonics_db[steady] > -45  # well over the -50 dB noise
    assert strong.sum() > 2000
    assert np.abs(a.harmonics_db[steady] - b.harmonics_db[steady])[strong].max() < 0.5
    env = a.envelope_db[steady] > -70
    assert np.abs(a.envelope_db[steady] - b.envelope_db[steady])[env].mean() < 0.5
    np.testing.assert_allclose(b.loudness_db[steady], a.loudness_db[steady], atol=0.3)
    pa = 10 * np.log10(np.mean(10 ** (a.noise_db[steady] / 10), axis=0))
    pb = 10 * np.log10(np.mean(10 ** (b.noise_db[steady] / 10), axis=0))
    assert np.abs(pa - pb)[4:].max() < 2.5
    # and the top band is there: the note's energy above 8 kHz, within 1 dB
    def top(y):
        p = np.abs(np.fft.rfft(y)) ** 2
        f = np.fft.rfftfreq(len(y), 1 / FULL)
        return 10 * np.log10(p[f > 8000].sum() / p.sum())
    assert top(x) > -40 and abs(top(audio) - top(x)) < 1.0


def test_render_features_has_nothing_above_20khz():
    times = np.array([0.0, 1.0])
    harm = np.full((2, 64), -20.0, np.float32)
    env = np.full((2, 24), -20.0, np.float32)
    noise = np.full((2, 32), -40.0, np.float32)
    y = synth.render_features(times, 55.0, harm, env, noise, FULL, FULL)
    p = np.abs(np.fft.rfft(y * np.hanning(len(y)))) ** 2
    f = np.fft.rfftfreq(len(y), 1 / FULL)
    # only the table's interpolation images (-66 dB for the top partial, less below) get out
    assert p[f > 21000].max() < 1e-4 * p[(f > 1000) & (f < 19000)].mean()
