"""Tests of the synthesis kernels: quant, grid, oscillator, envelope, noise, limiter, pitch."""

from __future__ import annotations

import numpy as np
import pytest

from morphbox.kernels import analysis, envelope, grid, pitch, quant
from morphbox.kernels.envelope import ATTACK, DECAY, FADE, IDLE, RELEASE, SUSTAIN, advance_adsr
from morphbox.kernels.limiter import SoftLimiter, soft_clip
from morphbox.kernels.noise import NoiseSynth
from morphbox.kernels.oscillator import (
    BANDLIMIT_HI,
    BANDLIMIT_LO,
    TABLE_SIZE,
    WavetableBank,
    bandlimit_gains,
    phase_increment,
    read_crossfade,
    schroeder_phases,
)

SR = 48000
BLOCK = 128

# ------------------------------------------------------------------------------------------
# quant


def test_quant_round_trip_within_quarter_db():
    db = np.linspace(quant.DB_MIN + 0.26, quant.DB_MIN + 255 * quant.DB_STEP, 20001)
    amp = 10.0 ** (db / 20.0)
    codes = quant.quantize_db(quant.amplitude_to_db(amp))
    assert codes.dtype == np.uint8
    back = quant.db_to_amplitude(quant.dequantize_db(codes))
    assert back.dtype == np.float32
    err_db = 20 * np.log10(back.astype(np.float64) / amp)
    assert np.abs(err_db).max() <= 0.25 + 1e-4
    # every code is used: the rounding is to the nearest 0.5 dB step
    assert len(np.unique(codes)) == 255


def test_quant_zero_is_code_zero_is_silence():
    assert quant.amplitude_to_db(np.array([0.0]))[0] == quant.DB_MIN
    code = quant.quantize_db(quant.amplitude_to_db(np.zeros(3)))
    np.testing.assert_array_equal(code, 0)
    assert np.all(quant.db_to_amplitude(quant.dequantize_db(code)) == 0.0)


def test_quant_codes_and_clipping():
    np.testing.assert_array_equal(quant.dequantize_db(np.array([0, 1, 240, 255], np.uint8)),
                                  [-120.0, -119.5, 0.0, 7.5])
    np.testing.assert_array_equal(quant.quantize_db(np.array([-500.0, 0.0, 0.2, 0.3, 99.0])),
                                  [0, 240, 240, 241, 255])
    assert quant.db_to_amplitude(np.array([0.0]))[0] == pytest.approx(1.0)
    assert quant.db_to_amplitude(np.array([-6.0]))[0] == pytest.approx(0.501187, rel=1e-5)


# ------------------------------------------------------------------------------------------
# grid

CORNER_XY = {"NW": (0, 0), "NE": (1, 0), "SW": (0, 1), "SE": (1, 1)}


def test_corner_weights_sum_to_one_and_are_one_hot_at_corners():
    rng = np.random.default_rng(0)
    x, y = rng.uniform(-0.2, 1.2, 1000), rng.uniform(-0.2, 1.2, 1000)
    w = grid.corner_weights(x, y)
    assert w.shape == (1000, 4)
    np.testing.assert_allclose(w.sum(axis=-1), 1.0, atol=1e-12)
    assert np.all(w >= 0)
    for i, name in enumerate(grid.CORNERS):
        np.testing.assert_array_equal(grid.corner_weights(*CORNER_XY[name]), np.eye(4)[i])
    np.testing.assert_allclose(grid.corner_weights(0.5, 0.5), 0.25)
    # x runs west -> east: halfway along the north edge is NW/NE only
    np.testing.assert_allclose(grid.corner_weights(0.25, 0.0), [0.75, 0.25, 0, 0])
    np.testing.assert_allclose(grid.corner_weights(0.0, 0.25), [0.75, 0, 0.25, 0])


@pytest.mark.parametrize("size", [2, 5, 9])
def test_spectral_grid_corners_and_centre(size):
    rng = np.random.default_rng(size)
    corners = rng.uniform(-100, 0, (4, 3, 7)).astype(np.float32)
    g = grid.spectral_grid(corners, size)
    assert g.shape == (size, size, 3, 7) and g.dtype == np.float32
    last = size - 1
    for i, name in enumerate(grid.CORNERS):
        ix, iy = CORNER_XY[name]
        np.testing.assert_array_equal(g[iy * last, ix * last], corners[i])
    if size % 2:
        np.testing.assert_allclose(g[last // 2, last // 2], corners.mean(axis=0), atol=1e-4)
    # edges are linear between their two corners
    np.testing.assert_allclose(g[0, :], np.linspace(corners[0], corners[1], size), atol=1e-4)
    np.testing.assert_allclose(g[:, last], np.linspace(corners[1], corners[3], size), atol=1e-4)


def test_spectral_grid_refuses_bad_input():
    with pytest.raises(ValueError):
        grid.spectral_grid(np.zeros((4, 2)), 1)
    with pytest.raises(ValueError):
        grid.spectral_grid(np.zeros((3, 2)), 5)


@pytest.mark.parametrize("x, y", [(0, 0), (1, 1), (0.3, 0.7), (0.5, 0.5), (0.999, 0.001),
                                  (0.125, 0.875), (1.5, -0.5)])
def test_grid_cell_bilinear_lookup_matches_corner_weights(x, y):
    size = 9
    rng = np.random.default_rng(1)
    corners = rng.uniform(-60, 0, (4, 5)).astype(np.float32)
    g = grid.spectral_grid(corners, size)
    iy0, ix0, w = grid.grid_cell(x, y, size)
    assert 0 <= iy0 <= size - 2 and 0 <= ix0 <= size - 2
    assert w.shape == (2, 2) and w.dtype == np.float32
    assert w.sum() == pytest.approx(1.0, abs=1e-6)
    assert np.all(w >= 0)
    looked_up = np.einsum("ab,abk->k", w, g[iy0:iy0 + 2, ix0:ix0 + 2])
    # a bilinear grid of a bilinear surface: the look-up is exact anywhere
    np.testing.assert_allclose(looked_up, grid.corner_weights(x, y) @ corners, atol=1e-3)


def test_grid_cell_at_grid_points_is_one_hot():
    iy0, ix0, w = grid.grid_cell(0.25, 0.5, 9)  # point [4, 2]
    assert (iy0, ix0) == (4, 2)
    np.testing.assert_array_equal(w, [[1, 0], [0, 0]])
    iy0, ix0, w = grid.grid_cell(1.0, 1.0, 9)  # last point: last cell, far corner
    assert (iy0, ix0) == (7, 7)
    np.testing.assert_array_equal(w, [[0, 0], [0, 1]])


# ------------------------------------------------------------------------------------------
# oscillator


def test_wavetable_build_is_sum_of_sines_with_schroeder_phases_and_emphasis():
    k_max = 40
    bank = WavetableBank(k_max)
    rng = np.random.default_rng(2)
    amps = rng.uniform(0, 1, (3, k_max)).astype(np.float32)
    tables = bank.build(amps)
    assert tables.shape == (3, TABLE_SIZE + 1) and tables.dtype == np.float32
    n = np.arange(TABLE_SIZE + 1)
    k = np.arange(1, k_max + 1)
    phi = np.pi * k**2 / k_max
    np.testing.assert_allclose(schroeder_phases(k_max), phi)
    emphasis = 1 / np.sinc(k / TABLE_SIZE) ** 2  # undoes linear interpolation's droop
    want = (amps.astype(np.float64) * emphasis) @ np.sin(2 * np.pi * np.outer(k, n) / TABLE_SIZE
                                                         + phi[:, None])
    np.testing.assert_allclose(tables, want, atol=5e-5)
    np.testing.assert_allclose(tables[:, -1], tables[:, 0], atol=1e-5)  # guard column
    # the table holds exactly the partials asked for
    spec = np.fft.rfft(tables[:, :TABLE_SIZE].astype(np.float64), axis=1) * 2 / TABLE_SIZE
    np.testing.assert_allclose(np.abs(spec[:, 1:k_max + 1]), amps * emphasis, atol=1e-4)
    assert np.abs(spec[:, k_max + 1:]).max() < 1e-5


def test_wavetable_bank_refuses_bad_sizes():
    with pytest.raises(ValueError):
        WavetableBank(256)
    with pytest.raises(ValueError):
        WavetableBank(10, table_size=500)


def test_bandlimit_gains():
    f0 = np.array([27.5, 440.0, 1000.0, 4186.0, 30000.0])
    k = np.arange(1, 65)
    g = bandlimit_gains(f0, 64, SR)
    assert g.shape == (5, 64) and g.dtype == np.float32
    rel = np.outer(f0, k) / SR
    assert np.all(g[rel > BANDLIMIT_HI] == 0.0)
    assert np.all(g[rel < BANDLIMIT_LO - 1e-6] == 1.0)
    between = (rel > BANDLIMIT_LO) & (rel < BANDLIMIT_HI)
    assert between.any()
    np.testing.assert_allclose(g[between], ((BANDLIMIT_HI - rel) / 0.05)[between], atol=1e-4)
    assert np.all(np.diff(g, axis=1) <= 0)
    # nothing at or above Nyquist is ever given gain
    assert np.all(g[rel >= 0.5] == 0.0)
    np.testing.assert_array_equal(g[0], 1.0)  # A0: all 64 partials below 0.4 * sr


def test_phase_increment():
    inc = phase_increment(np.array([440.0, SR / 4, 0.0]), SR)
    assert inc.dtype == np.uint32
    assert inc[0] == int(440.0 / SR * 2**32)
    assert inc[1] == 2**30
    assert inc[2] == 0


def _read_blocks(prev, cur, f0_hz, n_blocks, start_phase, ramp=None):
    inc = phase_increment(np.atleast_1d(np.asarray(f0_hz, np.float64)), SR)
    phase = np.full(len(inc), start_phase, np.uint32)
    ramp = np.ones(BLOCK, np.float32) if ramp is None else ramp
    out = []
    for _ in range(n_blocks):
        out.append(read_crossfade(prev, cur, phase, inc, BLOCK, ramp))
        phase = phase + inc * np.uint32(BLOCK)  # the documented phase after a block
    return np.concatenate(out, axis=1), inc


@pytest.mark.parametrize("f0", [440.0, 55.0, 3520.0])
def test_read_one_partial_table_gives_continuous_sine_at_f0(f0):
    k_max = 64
    bank = WavetableBank(k_max)
    amps = np.zeros((1, k_max), np.float32)
    amps[0, 0] = 0.8
    table = bank.build(amps)
    start = 3_000_000_000
    n_blocks = 80
    y, inc = _read_blocks(table, table, f0, n_blocks, start)
    y = y[0].astype(np.float64)
    assert y.shape == (n_blocks * BLOCK,)
    # FFT peak at f0 within a bin
    spec = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    freqs = np.fft.rfftfreq(len(y), 1 / SR)
    assert abs(freqs[spec.argmax()] - f0) <= SR / len(y)
    # the phase runs on across blocks: no sample-to-sample step beyond the sine's slope
    max_step = 0.8 * 2 * np.pi * f0 / SR
    assert np.abs(np.diff(y)).max() <= max_step * 1.001
    # and the waveform is the sine at the accumulator's phase (table interpolation error only)
    n = np.arange(len(y), dtype=np.uint64)
    acc = (np.uint64(start) + n * np.uint64(inc[0])) % np.uint64(2**32)
    want = 0.8 * np.sin(2 * np.pi * acc / 2**32 + schroeder_phases(k_max)[0])
    np.testing.assert_allclose(y, want, atol=1e-4)


def test_read_voices_are_independent():
    bank = WavetableBank(8)
    amps = np.zeros((2, 8), np.float32)
    amps[0, 0] = 1.0
    amps[1, 2] = 0.5
    tables = bank.build(amps)
    both, _ = _read_blocks(tables, tables, [300.0, 700.0], 4, 12345)
    one, _ = _read_blocks(tables[1:], tables[1:], [700.0], 4, 12345)
    np.testing.assert_array_equal(both[1], one[0])


def test_crossfade_endpoints_and_midpoint():
    k_max = 16
    bank = WavetableBank(k_max)
    rng = np.random.default_rng(3)
    prev = bank.build(rng.uniform(0, 0.1, (3, k_max)))
    cur = bank.build(rng.uniform(0, 0.1, (3, k_max)))
    f0 = np.array([110.0, 220.0, 1234.5])
    inc = phase_increment(f0, SR)
    phase = rng.integers(0, 2**32, 3, dtype=np.uint64).astype(np.uint32)
    only_prev = read_crossfade(prev, prev, phase, inc, BLOCK, np.zeros(BLOCK, np.float32))
    only_cur = read_crossfade(cur, cur, phase, inc, BLOCK, np.zeros(BLOCK, np.float32))
    assert only_prev.shape == (3, BLOCK) and only_prev.dtype == np.float32
    np.testing.assert_allclose(
        read_crossfade(prev, cur, phase, inc, BLOCK, np.zeros(BLOCK, np.float32)),
        only_prev, atol=1e-7)
    np.testing.assert_allclose(
        read_crossfade(prev, cur, phase, inc, BLOCK, np.ones(BLOCK, np.float32)),
        only_cur, atol=1e-7)
    ramp = np.linspace(0, 1, BLOCK, dtype=np.float32)
    mixed = read_crossfade(prev, cur, phase, inc, BLOCK, ramp)
    np.testing.assert_allclose(mixed, only_prev + (only_cur - only_prev) * ramp, atol=1e-6)
    np.testing.assert_allclose(mixed[:, 0], only_prev[:, 0], atol=1e-7)
    np.testing.assert_allclose(mixed[:, -1], only_cur[:, -1], atol=1e-7)


# ------------------------------------------------------------------------------------------
# envelope

DT = BLOCK / SR


def _run(stage, level, n, **times):
    params = {"attack_s": 0.01, "decay_s": 0.2, "sustain": 0.5, "release_s": 0.3,
              "fade_s": 0.02}
    params.update(times)
    hist = []
    for _ in range(n):
        advance_adsr(stage, level, DT, **params)
        hist.append((stage.copy(), level.copy()))
    return hist


def test_attack_is_linear_and_ends_after_attack_s():
    n_attack = 100
    stage = np.array([ATTACK], np.int8)
    level = np.zeros(1, np.float32)
    hist = _run(stage, level, n_attack + 2, attack_s=n_attack * DT, decay_s=0.5, sustain=0.5)
    levels = np.array([lv[0] for _, lv in hist])
    stages = np.array([st[0] for st, _ in hist])
    # linear rise of dt / attack_s per block while attacking
    np.testing.assert_allclose(levels[:n_attack - 1], np.arange(1, n_attack) / n_attack,
                               atol=1e-5)
    assert np.all(stages[:n_attack - 1] == ATTACK)
    # the attack ends (stage -> DECAY) no later than one block after attack_s, and the
    # level has been within a block's step of full scale
    first_decay = int(np.argmax(stages == DECAY))
    assert stages[first_decay] == DECAY and first_decay <= n_attack
    assert levels.max() >= 1.0 - 1.5 / n_attack
    assert levels.max() <= 1.0


def test_attack_peak_is_reached_at_a_block_boundary():
    stage = np.array([ATTACK], np.int8)
    level = np.zeros(1, np.float32)
    hist = _run(stage, level, 12, attack_s=10 * DT, decay_s=0.05, sustain=0.2)
    assert max(lv[0] for _, lv in hist) == 1.0


def test_decay_settles_at_sustain():
    decay_s, sustain = 0.2, 0.4
    stage = np.array([DECAY], np.int8)
    level = np.ones(1, np.float32)
    n = round(decay_s / DT)
    hist = _run(stage, level, n, decay_s=decay_s, sustain=sustain)
    lv = hist[-1][1][0]
    # time constant decay_s / 5: within 1 % of the way after decay_s
    assert abs(lv - sustain) <= 0.01 * (1 - sustain)
    # exponential: after one time constant 1/e of the way is left
    tau_blocks = round(decay_s / 5 / DT)
    assert hist[tau_blocks - 1][1][0] - sustain == pytest.approx(
        (1 - sustain) * np.exp(-tau_blocks * DT * 5 / decay_s), rel=1e-3)
    hist = _run(stage, level, n, decay_s=decay_s, sustain=sustain)
    assert hist[-1][0][0] == SUSTAIN
    assert hist[-1][1][0] == pytest.approx(sustain)
    # sustain holds
    hist = _run(stage, level, 50, decay_s=decay_s, sustain=sustain)
    assert all(st[0] == SUSTAIN and lv[0] == pytest.approx(sustain) for st, lv in hist)


def test_release_reaches_minus_60db_at_release_s_then_idle():
    release_s = 250 * DT
    stage = np.array([RELEASE], np.int8)
    level = np.full(1, 0.8, np.float32)
    hist = _run(stage, level, 400, release_s=release_s)
    levels = np.array([lv[0] for _, lv in hist])
    stages = np.array([st[0] for st, _ in hist])
    db = 20 * np.log10(levels[249] / 0.8)
    assert db == pytest.approx(-60.0, abs=0.05)
    assert stages[249] == RELEASE
    # ends at -80 dB (IDLE with level 0): after 4/3 release_s
    end = int(np.argmax(stages == IDLE))
    assert stages[end] == IDLE
    blocks_to_80db = 20 * np.log10(0.8 / 1e-4) / 60 * 250  # -60 dB per release_s
    assert end + 1 == pytest.approx(np.ceil(blocks_to_80db), abs=1)
    assert np.all(levels[end:] == 0.0) and np.all(stages[end:] == IDLE)
    assert np.all(np.diff(levels[:end]) < 0)


@pytest.mark.parametrize("start_level", [1.0, 0.3])
def test_fade_ends_within_fade_s(start_level):
    fade_s = 0.02
    stage = np.array([FADE], np.int8)
    level = np.full(1, start_level, np.float32)
    hist = _run(stage, level, 20, fade_s=fade_s)
    stages = np.array([st[0] for st, _ in hist])
    levels = np.array([lv[0] for _, lv in hist])
    end = int(np.argmax(stages == IDLE))
    assert stages[end] == IDLE and levels[end] == 0.0
    assert (end + 1) * DT <= start_level * fade_s + DT
    # linear: dt / fade_s per block
    np.testing.assert_allclose(np.diff(levels[:end]), -DT / fade_s, atol=1e-6)


def test_envelope_voices_advance_independently():
    stage = np.array([IDLE, ATTACK, DECAY, SUSTAIN, RELEASE, FADE], np.int8)
    level = np.array([0.0, 0.0, 1.0, 0.5, 0.5, 0.5], np.float32)
    advance_adsr(stage, level, DT, attack_s=0.1, decay_s=0.2, sustain=0.5, release_s=0.3,
                 fade_s=0.02)
    np.testing.assert_array_equal(stage, [IDLE, ATTACK, DECAY, SUSTAIN, RELEASE, FADE])
    np.testing.assert_allclose(level, [0.0, DT / 0.1, 0.5 + 0.5 * np.exp(-DT * 5 / 0.2), 0.5,
                                       0.5 * 1000 ** (-DT / 0.3), 0.5 - DT / 0.02], rtol=1e-5)
    assert envelope.IDLE == 0


# ------------------------------------------------------------------------------------------
# noise


def _render(ns, band_power, seconds, sr):
    n_blocks = int(seconds * sr / ns.block_size)
    return np.concatenate([ns.render(band_power) for _ in range(n_blocks)])


def _promised_variance(p, n_bands, sr, src, block):
    """Variance the noise module promises for flat band power ``p``: the source noise's
    absolute spectral density (``p`` spread over 0..src/2) kept at the output rate, i.e.
    ``p * sr / src`` on the output's rfft bins below the source Nyquist only."""
    n_fft = 2 * block
    freqs = np.fft.rfftfreq(n_fft, 1 / sr)
    inside = freqs < src / 2
    # irfft variance: DC counts half, every other bin twice (its negative-frequency twin)
    weight = np.where(freqs == 0, 0.5, 2.0)
    return p * (sr / src) * (weight * inside).sum() / n_fft


@pytest.mark.parametrize("sr, src, block", [(48000, 16000, 128), (16000, 16000, 128),
                                            (44100, 16000, 256)])
def test_noise_variance_matches_band_power(sr, src, block):
    p = 0.01
    ns = NoiseSynth(block, 32, sr, src, seed=3)
    out = _render(ns, np.full(32, p, np.float32), 2.0, sr)
    assert out.dtype == np.float32
    promised = _promised_variance(p, 32, sr, src, block)
    assert promised == pytest.approx(p, rel=0.02)  # i.e. the density, not the gain, is kept
    assert out[block:].var() == pytest.approx(promised, rel=0.10)
    # power is linear in band power
    ns2 = NoiseSynth(block, 32, sr, src, seed=3)
    out2 = _render(ns2, np.full(32, 4 * p, np.float32), 2.0, sr)
    np.testing.assert_allclose(out2, 2 * out, rtol=1e-4, atol=1e-6)


def _psd(x, sr, n=4096):
    seg = x[:len(x) // n * n].reshape(-1, n) * np.hanning(n)
    return np.fft.rfftfreq(n, 1 / sr), (np.abs(np.fft.rfft(seg, axis=1)) ** 2).mean(axis=0)


def test_noise_spectrum_is_empty_above_source_nyquist():
    sr, src = 48000, 16000
    ns = NoiseSynth(BLOCK, 32, sr, src, seed=4)
    out = _render(ns, np.full(32, 0.01, np.float32), 2.0, sr)
    freqs, psd = _psd(out, sr)
    passband = psd[(freqs > 500) & (freqs < 7500)].mean()
    # only the sine window's leakage crosses 8 kHz; an octave up nothing is left
    assert psd[freqs > 10000].max() < passband * 10 ** (-40 / 10)
    assert psd[freqs > 16000].max() < passband * 10 ** (-55 / 10)


def test_noise_band_gains_round_trip_through_analysis():
    """Render at the source rate and measure with morphbox.kernels.analysis: the same convention."""
    ns = NoiseSynth(BLOCK, analysis.N_NOISE_BANDS, 16000, 16000, seed=5)
    gains = np.linspace(0.2, 0.02, analysis.N_NOISE_BANDS).astype(np.float32)
    out = _render(ns, gains**2, 2.0, 16000)
    est = analysis.noise_magnitudes(out, 16000)[3:-3].astype(np.float64)
    np.testing.assert_allclose(np.sqrt((est**2).mean(axis=0)), gains, rtol=0.12)


def test_noise_is_deterministic_and_silence_flushes():
    a = NoiseSynth(BLOCK, 8, SR, 16000, seed=9)
    b = NoiseSynth(BLOCK, 8, SR, 16000, seed=9)
    bp = np.full(8, 0.1, np.float32)
    np.testing.assert_array_equal(a.render(bp), b.render(bp))
    tail = a.silence()
    assert np.abs(tail).max() > 0  # the carried half frame
    np.testing.assert_array_equal(a.silence(), 0.0)
    np.testing.assert_array_equal(a.render(np.zeros(8, np.float32)), 0.0)


# ------------------------------------------------------------------------------------------
# limiter


def test_limiter_output_never_exceeds_full_scale():
    rng = np.random.default_rng(6)
    lim = SoftLimiter(BLOCK, SR)
    peak = 0.0
    for i in range(1600):
        scale = (0.1, 1.0, 5.0, 20.0, 0.5, 20.0, 0.01, 3.0)[(i // 37) % 8]
        x = (rng.uniform(-1, 1, BLOCK) * scale).astype(np.float32)
        if i % 53 == 0:
            x[0] = 20.0  # a step at the very first sample of a block: the ramp starts late
        y = lim.process(x)
        peak = max(peak, float(np.abs(y).max()))
    assert peak <= 1.0
    assert peak > 0.95  # and the test did drive it hard


def test_limiter_leaves_quiet_signal_unchanged():
    t = np.arange(BLOCK * 400) / SR
    quiet = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32).reshape(-1, BLOCK)
    fresh = SoftLimiter(BLOCK, SR)
    for b in quiet[:50]:
        np.testing.assert_array_equal(fresh.process(b.copy()), b)
    # after a loud burst the gain recovers with release_s = 0.15 s; 2 s later it is back
    lim = SoftLimiter(BLOCK, SR)
    for _ in range(10):
        lim.process(np.full(BLOCK, 20.0, np.float32))
    assert lim.gain == pytest.approx(0.8 / 20.0)
    n_settle = int(2.0 * SR / BLOCK)
    for i in range(n_settle):
        out = lim.process(quiet[i % len(quiet)].copy())
    np.testing.assert_allclose(out, quiet[(n_settle - 1) % len(quiet)], rtol=1e-5, atol=1e-7)
    assert lim.gain == pytest.approx(1.0, abs=1e-5)


def test_limiter_gain_follows_peak_down_at_once():
    lim = SoftLimiter(BLOCK, SR, threshold=0.8)
    lim.process(np.full(BLOCK, 0.1, np.float32))
    y = lim.process(np.full(BLOCK, 4.0, np.float32))
    assert lim.gain == pytest.approx(0.2)
    # ramped across the block: the last sample has the new gain
    assert y[-1] == pytest.approx(0.8, abs=1e-6)
    assert np.all(np.diff(y[:-1]) <= 1e-7)


def test_soft_clip_monotonic_bounded_and_identity_below_knee():
    x = np.linspace(-25, 25, 200001, dtype=np.float32)
    y = soft_clip(x.copy())
    assert np.all(np.diff(y) >= 0)
    assert np.abs(y).max() <= 1.0
    np.testing.assert_array_equal(y, -soft_clip(-x.copy()))
    below = np.abs(x) <= 0.85
    np.testing.assert_array_equal(y[below], x[below])
    # continuous with unit slope at the knee
    k = np.float32(0.85)
    eps = np.float32(1e-3)
    assert soft_clip(np.array([k + eps]))[0] == pytest.approx(k + eps, abs=1e-5)
    assert soft_clip(np.array([1.0], np.float32))[0] == pytest.approx(
        0.85 + 0.15 * np.tanh(0.15 / 0.15), rel=1e-6)


# ------------------------------------------------------------------------------------------
# pitch


def test_pitch_conversions():
    assert pitch.midi_to_hz(69) == pytest.approx(440.0)
    assert pitch.midi_to_hz(60) == pytest.approx(261.6256, rel=1e-6)
    assert pitch.midi_to_hz(24) == pytest.approx(32.7032, rel=1e-5)
    notes = np.array([21.0, 60.5, 108.0])
    np.testing.assert_allclose(pitch.hz_to_midi(pitch.midi_to_hz(notes)), notes)
    assert pitch.cents(880.0, 440.0) == pytest.approx(1200.0)
    assert pitch.cents(440.0 * 2 ** (1 / 1200), 440.0) == pytest.approx(1.0)


@pytest.mark.parametrize("k", [1, 20, 60])
def test_played_partial_has_the_requested_amplitude(k):
    """Through table build + linear-interpolated reading, a partial comes out at the amplitude
    asked for (the emphasis cancels the interpolation droop)."""
    bank = WavetableBank(64)
    amps = np.zeros((1, 64), np.float32)
    amps[0, k - 1] = 0.5
    table = bank.build(amps)
    f0 = 15000.0 / k / 1.037  # partial k well below Nyquist, incommensurate with the table
    n = 48000
    out = read_crossfade(table, table, np.zeros(1, np.uint32),
                         phase_increment(np.array([f0]), 48000), n, np.ones(n, np.float32))[0]
    spec = np.abs(np.fft.rfft(out * np.hanning(n))) * 2 / np.hanning(n).sum()
    freqs = np.fft.rfftfreq(n, 1 / 48000)
    peak = spec[np.argmin(np.abs(freqs - k * f0)) - 2:][:5].max()
    assert abs(20 * np.log10(peak / 0.5)) < 0.3
