"""Tests of kernels/analysis.py and kernels/features.py against synthetic notes whose content
is known exactly (48 kHz, the analysis rate of the packs).

"Steady" frames are those whose analysis windows lie inside the note, away from its ends.
"""

from __future__ import annotations

import numpy as np
import pytest

from morphbox.kernels import analysis as an
from morphbox.kernels import features as ft

SR = 48000


def tone(f0: float, amps: np.ndarray, seconds: float, rng: np.random.Generator,
         stretch: float = 0.0) -> np.ndarray:
    """``sum_k amps[k-1] sin(2 pi f_k t + phi_k)``, ``f_k = k f0 sqrt(1 + B k^2)``."""
    t = np.arange(int(seconds * SR)) / SR
    out = np.zeros(len(t))
    for i, a in enumerate(amps):
        k = i + 1
        out += a * np.sin(2 * np.pi * k * f0 * np.sqrt(1 + stretch * k * k) * t
                          + rng.uniform(0, 2 * np.pi))
    return out


STEADY = slice(40, 100)  # 0.4 .. 1.6 s: inside a 2 s note for every window length


# ------------------------------------------------------------------------------------------
# the layout


def test_frame_times_are_1000_then_250_per_second_at_the_onset_then_50():
    t = ft.frame_times(2.5)
    assert len(t) == 20 + 20 + 121
    np.testing.assert_allclose(np.diff(t[:21]), 0.001, atol=1e-12)
    np.testing.assert_allclose(np.diff(t[20:41]), 0.004, atol=1e-12)
    np.testing.assert_allclose(np.diff(t[40:]), 0.02, atol=1e-12)
    assert t[0] == 0.0 and t[-1] == pytest.approx(2.5)
    np.testing.assert_array_equal(ft.check_frame_times(list(t)), t)
    for bad, rule in (([0.0], "at least 2"), ([0.1, 0.2], "start at 0"),
                      ([0.0, 0.2, 0.1], "increasing"), ([0.0, float("nan")], "finite")):
        with pytest.raises(ValueError, match=rule):
            ft.check_frame_times(bad)


def test_bands_are_even_on_the_erb_scale_and_cover_the_band():
    edges = ft.noise_edges()
    assert len(edges) == ft.N_NOISE_BANDS + 1
    assert edges[0] == pytest.approx(20.0) and edges[-1] == pytest.approx(20000.0)
    np.testing.assert_allclose(np.diff(ft.erb_rate(edges)), np.diff(ft.erb_rate(edges))[0])
    np.testing.assert_allclose(ft.erb_to_hz(ft.erb_rate([100.0, 5000.0])), [100.0, 5000.0])
    env = ft.envelope_edges()
    assert env[0] == pytest.approx(1000.0) and env[-1] == pytest.approx(20000.0)


def test_every_partial_to_20khz_has_a_level():
    """MIDI 24 has 611 partials below 20 kHz: 64 of their own, the rest from the envelope."""
    f0 = 32.7032
    assert ft.max_partials(f0) == 611
    harm = np.full(64, -10.0, np.float32)
    env = np.linspace(-20, -80, ft.N_ENVELOPE).astype(np.float32)
    lv = ft.partial_levels_db(harm, env, f0)
    assert lv.shape == (611,)
    np.testing.assert_array_equal(lv[:64], -10.0)
    centres = ft.envelope_centres()
    for e in (12, 18, 22):  # a partial at a band centre takes the band's level
        k = int(round(centres[e] / f0))
        want = np.interp(ft.erb_rate(k * f0), ft.erb_rate(centres), env)
        assert lv[k - 1] == pytest.approx(want, abs=0.01)
    assert np.all(np.diff(lv[64:]) <= 1e-4)  # a falling envelope gives falling partials


# ------------------------------------------------------------------------------------------
# partials


@pytest.mark.parametrize("f0", [32.7032, 65.406, 440.0, 2093.0])
def test_partials_are_recovered_up_to_20khz(f0):
    rng = np.random.default_rng(int(f0))
    n = ft.max_partials(f0)
    k = np.arange(1, n + 1)
    amps = 0.3 / k * np.exp(-k * f0 / 12000.0)  # smooth, bright spectrum
    x = tone(f0, amps, 2.0, rng)
    f = an.analyze_note(x, SR, f0)
    assert f.harmonics_db.shape == (len(ft.frame_times(2.0)), ft.N_HARMONICS)
    assert f.envelope_db.shape[1] == ft.N_ENVELOPE and f.noise_db.shape[1] == ft.N_NOISE_BANDS
    for arr in (f.harmonics_db, f.envelope_db, f.noise_db, f.loudness_db):
        assert arr.dtype == np.float32
    want = 20 * np.log10(amps)
    own = min(n, ft.N_HARMONICS)
    got = f.harmonics_db[STEADY][:, :own]
    np.testing.assert_allclose(got, np.broadcast_to(want[:own], got.shape), atol=0.1)
    assert np.all(f.harmonics_db[:, own:] == ft.DB_FLOOR)  # none above the band limit
    # every partial, through the envelope, within 1.5 dB (a smooth spectrum; the last band's
    # level is held above its centre, where this one keeps falling)
    lv = ft.partial_levels_db(f.harmonics_db[STEADY], f.envelope_db[STEADY], f0)
    assert lv.shape[1] == n
    assert np.abs(lv - want).max() < 1.5
    # a pure tone leaves (almost) no noise
    assert f.noise_db[STEADY].max() < want.max() - 60


def test_stretched_partials_are_still_found():
    """A piano's partials are sharp of k f0 (inharmonicity B = 4e-4): each is still found
    within half a spacing of k f0, so its level is right and it is not taken for noise."""
    f0, b = 130.81, 1e-4
    rng = np.random.default_rng(1)
    amps = 0.2 / np.arange(1, 41)
    x = tone(f0, amps, 2.0, rng, stretch=b)
    f = an.analyze_note(x, SR, f0)
    shift = np.sqrt(1 + b * np.arange(1, 41) ** 2) - 1  # in units of k f0
    ok = shift * np.arange(1, 41) < 0.45  # still within half a spacing
    assert ok.sum() >= 20 and shift[19] * 20 > 0.3  # partial 20 is a third of a spacing off
    got = f.harmonics_db[STEADY][:, :40].mean(axis=0)
    np.testing.assert_allclose(got[ok], 20 * np.log10(amps[ok]), atol=0.3)
    assert f.noise_db[STEADY].max() < -70


@pytest.mark.parametrize("std", [0.1, 0.003])
def test_white_noise_reads_its_level_in_every_band(std):
    x = std * np.random.default_rng(3).standard_normal(2 * SR)
    f = an.analyze_note(x, SR, 220.0)
    band = 10 * np.log10(np.mean(10 ** (f.noise_db[STEADY] / 10.0), axis=0))
    # within 2 dB: the lowest band holds a few bins, and the bins next to k f0 are left out
    np.testing.assert_allclose(band, 20 * np.log10(std), atol=2.0)
    assert f.harmonics_db[STEADY].max() < 20 * np.log10(std) - 10


def test_band_limited_noise_is_found_in_its_bands_only():
    rng = np.random.default_rng(4)
    n = 2 * SR
    spec = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / SR)
    spec[(freqs < 2000) | (freqs >= 4000)] = 0
    x = 0.05 * np.fft.irfft(spec, n)
    f = an.analyze_note(x, SR, 110.0)
    band = 10 * np.log10(np.mean(10 ** (f.noise_db[STEADY] / 10.0), axis=0))
    centres = ft.noise_centres()
    inside = (centres > 2300) & (centres < 3600)
    outside = (centres < 1500) | (centres > 5000)
    assert inside.sum() >= 2
    # (within 3.5 dB: a 110 Hz "note" leaves few bins between its would-be partials)
    np.testing.assert_allclose(band[inside], 20 * np.log10(0.05), atol=3.5)
    assert band[outside].max() < 20 * np.log10(0.05) - 25


def test_tone_plus_noise_recovers_both():
    rng = np.random.default_rng(5)
    f0, std = 220.0, 0.003
    amps = 0.3 / np.arange(1, 31)
    x = tone(f0, amps, 2.0, rng) + std * rng.standard_normal(2 * SR)
    f = an.analyze_note(x, SR, f0)
    np.testing.assert_allclose(f.harmonics_db[STEADY][:, :30].mean(axis=0),
                               20 * np.log10(amps), atol=0.3)
    band = 10 * np.log10(np.mean(10 ** (f.noise_db[STEADY] / 10.0), axis=0))
    np.testing.assert_allclose(band, 20 * np.log10(std), atol=3.0)


def test_attack_levels_follow_the_note_at_the_frame_rate():
    """A tone switched on at 0.2 s within 2 ms: frames before read nothing, the frame 4 ms
    after the onset has its full level (the 85 ms window alone would smear it over ~50 ms)."""
    f0 = 523.25
    t = np.arange(SR) / SR
    x = np.sin(2 * np.pi * f0 * t) * 0.5 * np.clip((t - 0.2) / 0.002, 0, 1)
    times = np.concatenate([np.arange(0, 0.2, 0.02), 0.2 + np.arange(0, 0.1, 0.004)])
    f = an.analyze_note(x, SR, f0, times=times)
    full = 20 * np.log10(0.5)
    assert f.harmonics_db[:9, 0].max() < full - 40  # before the onset
    on = int(np.argmin(np.abs(times - 0.204)))
    assert f.harmonics_db[on:, 0].min() > full - 1.0
    assert abs(f.loudness_db[on + 5] - (full - 3.0 + 0.0)) < 0.5  # sine: rms is A / sqrt(2)


def test_silence_gives_floor_levels():
    f = an.analyze_note(np.zeros(SR), SR, 100.0)
    for arr in (f.harmonics_db, f.envelope_db, f.noise_db, f.loudness_db):
        assert np.all(arr == ft.DB_FLOOR)


# ------------------------------------------------------------------------------------------
# the measuring tools: harmonic_amplitudes and loudness


def test_harmonic_amplitudes_sine_gives_its_amplitude():
    """``A sin(2 pi k f0 t)`` yields ``A`` at harmonic ``k`` (any rate, any frame rate)."""
    t = np.arange(SR) / SR
    x = 0.3 * np.sin(2 * np.pi * 3 * 110.0 * t)
    h = an.harmonic_amplitudes(x, SR, 110.0)
    np.testing.assert_allclose(h[5:-5, 2], 0.3, rtol=1e-3)
    assert np.delete(h[5:-5], 2, axis=1).max() < 1e-3
    k = np.arange(1, an.N_HARMONICS + 1)
    assert np.all(an.harmonic_amplitudes(x, 16000, 440.0)[:, k * 440.0 >= 8000] == 0.0)


def test_a_weighting_reference_values():
    # IEC 61672-1 table values (rounded to 0.1 dB) at the exact base-10 frequencies
    freqs = 10.0 ** np.array([1.5, 2.0, 3.0, 3.6, 4.0])  # nominal 31.5, 100, 1k, 4k, 10k Hz
    want = np.array([-39.4, -19.1, 0.0, 1.0, -2.5])
    np.testing.assert_allclose(an.a_weighting_db(freqs), want, atol=0.1)
    assert an.a_weighting_db(np.array([0.0]))[0] == -np.inf


@pytest.mark.parametrize("freq, want", [(1000.0, 0.0), (100.0, -19.1)])
def test_loudness_of_full_scale_sines(freq, want):
    x = np.sin(2 * np.pi * freq * np.arange(SR) / SR)
    np.testing.assert_allclose(an.loudness_db(x, SR)[5:-5], want, atol=0.3)
    f = an.analyze_note(x, SR, freq)
    np.testing.assert_allclose(f.loudness_db[STEADY], want, atol=0.3)


def test_loudness_is_floored():
    ld = an.loudness_db(1e-9 * np.sin(np.arange(SR // 5)), SR, floor_db=-90.0)
    assert np.all(ld == -90.0)


# ------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize("shape", [(SR, 2), (2, SR)])
def test_analyze_note_refuses_stereo(shape):
    with pytest.raises(ValueError, match="mono"):
        an.analyze_note(np.zeros(shape), SR, 440.0)


@pytest.mark.parametrize("f0", [0.0, -440.0, float("nan")])
def test_non_positive_f0_is_refused(f0):
    x = np.zeros(SR // 5)
    with pytest.raises(ValueError, match="f0"):
        an.analyze_note(x, SR, f0)
    with pytest.raises(ValueError, match="f0"):
        an.harmonic_amplitudes(x, SR, f0)


def test_low_sample_rate_is_refused():
    with pytest.raises(ValueError, match="40 kHz"):
        an.analyze_note(np.zeros(16000), 16000, 440.0)
