"""Tests of the synthesis kernels: quant, grid, oscillator, envelope, noise, limiter, pitch."""

from __future__ import annotations

import numpy as np
import pytest

from morphbox.kernels import analysis, envelope, grid, pitch, quant
from morphbox.kernels.envelope import ATTACK, DECAY, FADE, IDLE, RELEASE, SUSTAIN, advance_adsr
from morphbox.kernels.limiter import SoftLimiter, soft_clip
from morphbox.kernels.noise import NoiseSynth
from morphbox.kernels.oscillator import (
    BAND_HI_HZ,
    BAND_LO_HZ,
    HEADROOM,
    TABLE_MAX,
    WavetableBank,
    bandlimit_gains,
    partial_gains,
    phase_increment,
    read_crossfade,
    schroeder_phases,
    table_shifts,
    table_sizes,
)
from morphbox.kernels.pitch import midi_to_hz

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


def _table_partials(table: np.ndarray, size: int) -> np.ndarray:
    """Complex amplitudes of bins 0..size/2 of one table row (its first ``size`` points)."""
    return np.fft.rfft(table[:size].astype(np.float64)) * 2 / size


def test_wavetable_build_is_sum_of_sines_with_schroeder_phases_and_emphasis():
    k_max = 40
    bank = WavetableBank(k_max)
    rng = np.random.default_rng(2)
    amps = rng.uniform(0, 1, (3, k_max)).astype(np.float32)
    sizes = np.array([256, 256, 1024])
    tables = bank.build(amps, sizes)
    assert tables.shape == (3, TABLE_MAX + 1) and tables.dtype == np.float32
    k = np.arange(1, k_max + 1)
    phi = np.pi * k**2 / k_max
    np.testing.assert_allclose(schroeder_phases(k_max), phi)
    for v, size in enumerate(sizes):
        n = np.arange(size + 1)
        want = amps[v].astype(np.float64) @ np.sin(2 * np.pi * np.outer(k, n) / size
                                                    + phi[:, None])
        np.testing.assert_allclose(tables[v, :size + 1], want, atol=5e-5)
        assert tables[v, size] == pytest.approx(tables[v, 0], abs=1e-6)  # guard column
        # the table holds exactly the partials asked for
        spec = np.abs(_table_partials(tables[v], size))
        np.testing.assert_allclose(spec[1:k_max + 1], amps[v], atol=1e-4)
        assert spec[k_max + 1:].max() < 1e-5


def test_table_sizes_follow_the_pitch():
    f0 = midi_to_hz(np.array([12, 24, 36, 48, 60, 72, 96]))
    sizes = table_sizes(f0, SR)
    np.testing.assert_array_equal(sizes, [2048, 2048, 1024, 512, 256, 256, 256])
    # every partial up to 20 kHz fits under 0.3 of the table (MIDI 12 is capped)
    kmax = np.floor(20000 / f0)
    assert np.all((kmax <= HEADROOM * sizes)[1:])
    np.testing.assert_array_equal(table_shifts(sizes), 32 - np.log2(sizes))


def test_partial_gains_band_limit_headroom_and_droop():
    f0 = np.array([27.5, 440.0, 1000.0, 4186.0, 30000.0])
    sizes = table_sizes(f0, SR)
    g = partial_gains(f0, sizes, 700, SR)
    assert g.shape == (5, 700) and g.dtype == np.float32
    freq = np.outer(f0, np.arange(1, 701))
    rel = np.arange(1, 701)[None, :] / sizes[:, None]
    assert np.all(g[freq >= BAND_HI_HZ] == 0.0)
    assert np.all(g[rel >= HEADROOM] == 0.0)
    inside = (freq < BAND_LO_HZ) & (rel < HEADROOM)
    np.testing.assert_allclose(g[inside], (1 / np.sinc(rel) ** 2)[inside], rtol=1e-5)
    fade = (freq > BAND_LO_HZ) & (freq < BAND_HI_HZ) & (rel < HEADROOM)
    assert fade.any()
    np.testing.assert_allclose(g[fade], ((BAND_HI_HZ - freq) / 1000 / np.sinc(rel) ** 2)[fade],
                               rtol=1e-3)
    # nothing at or above Nyquist, at any rate
    b = bandlimit_gains(f0, 64, 16000)
    assert np.all(b[np.outer(f0, np.arange(1, 65)) >= 0.45 * 16000] == 0.0)


def test_phase_increment():
    inc = phase_increment(np.array([440.0, SR / 4, 0.0]), SR)
    assert inc.dtype == np.uint32
    assert inc[0] == int(440.0 / SR * 2**32)
    assert inc[1] == 2**30
    assert inc[2] == 0


def _read_blocks(prev, cur, f0_hz, sizes, n_blocks, start_phase, ramp=None):
    inc = phase_increment(np.atleast_1d(np.asarray(f0_hz, np.float64)), SR)
    phase = np.full(len(inc), start_phase, np.uint32)
    ramp = np.ones(BLOCK, np.float32) if ramp is None else ramp
    out = []
    for _ in range(n_blocks):
        out.append(read_crossfade(prev, cur, phase, inc, BLOCK, ramp, table_shifts(sizes)))
        phase = phase + inc * np.uint32(BLOCK)  # the documented phase after a block
    return np.concatenate(out, axis=1), inc


@pytest.mark.parametrize("f0, size", [(440.0, 256), (55.0, 2048), (3520.0, 256)])
def test_read_one_partial_table_gives_continuous_sine_at_f0(f0, size):
    bank = WavetableBank(64)
    amps = np.zeros((1, 64), np.float32)
    amps[0, 0] = 0.8
    sizes = np.array([size])
    table = bank.build(amps, sizes)
    start = 3_000_000_000
    n_blocks = 80
    y, inc = _read_blocks(table, table, f0, sizes, n_blocks, start)
    y = y[0].astype(np.float64)
    assert y.shape == (n_blocks * BLOCK,)
    spec = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    freqs = np.fft.rfftfreq(len(y), 1 / SR)
    assert abs(freqs[spec.argmax()] - f0) <= SR / len(y)
    # the phase runs on across blocks: no sample-to-sample step beyond the sine's slope
    max_step = 0.8 * 2 * np.pi * f0 / SR
    assert np.abs(np.diff(y)).max() <= max_step * 1.001
    # and the waveform is the sine at the accumulator's phase (table interpolation error only)
    n = np.arange(len(y), dtype=np.uint64)
    acc = (np.uint64(start) + n * np.uint64(inc[0])) % np.uint64(2**32)
    want = 0.8 * np.sin(2 * np.pi * acc / 2**32 + schroeder_phases(64)[0])
    np.testing.assert_allclose(y, want, atol=1e-4)


def test_read_voices_are_independent_whatever_their_sizes():
    bank = WavetableBank(8)
    amps = np.zeros((2, 8), np.float32)
    amps[0, 0] = 1.0
    amps[1, 2] = 0.5
    sizes = np.array([2048, 256])
    tables = bank.build(amps, sizes)
    both, _ = _read_blocks(tables, tables, [300.0, 700.0], sizes, 4, 12345)
    one, _ = _read_blocks(tables[1:], tables[1:], [700.0], sizes[1:], 4, 12345)
    np.testing.assert_array_equal(both[1], one[0])


def test_crossfade_endpoints_and_midpoint():
    k_max = 16
    bank = WavetableBank(k_max)
    rng = np.random.default_rng(3)
    sizes = np.array([256, 512, 2048])
    shifts = table_shifts(sizes)
    prev = bank.build(rng.uniform(0, 0.1, (3, k_max)), sizes)
    cur = bank.build(rng.uniform(0, 0.1, (3, k_max)), sizes)
    f0 = np.array([110.0, 220.0, 1234.5])
    inc = phase_increment(f0, SR)
    phase = rng.integers(0, 2**32, 3, dtype=np.uint64).astype(np.uint32)
    zero, one = np.zeros(BLOCK, np.float32), np.ones(BLOCK, np.float32)
    only_prev = read_crossfade(prev, prev, phase, inc, BLOCK, zero, shifts)
    only_cur = read_crossfade(cur, cur, phase, inc, BLOCK, zero, shifts)
    assert only_prev.shape == (3, BLOCK) and only_prev.dtype == np.float32
    np.testing.assert_allclose(read_crossfade(prev, cur, phase, inc, BLOCK, zero, shifts),
                               only_prev, atol=1e-7)
    np.testing.assert_allclose(read_crossfade(prev, cur, phase, inc, BLOCK, one, shifts),
                               only_cur, atol=1e-7)
    ramp = np.linspace(0, 1, BLOCK, dtype=np.float32)
    mixed = read_crossfade(prev, cur, phase, inc, BLOCK, ramp, shifts)
    np.testing.assert_allclose(mixed, only_prev + (only_cur - only_prev) * ramp, atol=1e-6)


@pytest.mark.parametrize("k, size", [(1, 256), (20, 256), (60, 256), (300, 1024),
                                     (600, 2048)])
def test_played_partial_has_the_requested_amplitude(k, size):
    """Through table build + linear-interpolated reading, a partial comes out at the amplitude
    asked for (the gains of partial_gains cancel the interpolation droop)."""
    bank = WavetableBank()
    amps = np.zeros((1, k), np.float32)
    amps[0, k - 1] = 0.5
    f0 = 15000.0 / k / 1.037  # partial k well below Nyquist, incommensurate with the table
    sizes = np.array([size])
    amps *= partial_gains(np.array([f0]), sizes, k, 48000)
    table = bank.build(amps, sizes)
    n = 48000
    out = read_crossfade(table, table, np.zeros(1, np.uint32),
                         phase_increment(np.array([f0]), 48000), n, np.ones(n, np.float32),
                         table_shifts(sizes))[0]
    spec = np.abs(np.fft.rfft(out * np.hanning(n))) * 2 / np.hanning(n).sum()
    freqs = np.fft.rfftfreq(n, 1 / 48000)
    peak = spec[np.argmin(np.abs(freqs - k * f0)) - 2:][:5].max()
    assert abs(20 * np.log10(peak / 0.5)) < 0.3
    # its linear-interpolation image, (N - k) f0 folded at Nyquist, is >= 12 dB under it
    image = abs(((size - k) * f0 + 24000) % 48000 - 24000)
    near = np.abs(freqs - image) < 3
    assert spec[near].max() < 0.5 * 10 ** (-12 / 20)


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


def _psd(x, sr, n=4096):
    seg = x[:len(x) // n * n].reshape(-1, n) * np.hanning(n)
    return (np.fft.rfftfreq(n, 1 / sr),
            (np.abs(np.fft.rfft(seg, axis=1)) ** 2).mean(axis=0) / np.sum(np.hanning(n) ** 2))


@pytest.mark.parametrize("sr, block", [(48000, 128), (48000, 64), (44100, 256)])
def test_noise_density_matches_band_power(sr, block):
    """Flat band power p (of unit white noise at the 48 kHz source) is white noise of that
    density at any output rate, from 20 Hz to 20 kHz, nothing outside."""
    p = 0.01
    ns = NoiseSynth(block, 32, sr, 48000, seed=3)
    out = _render(ns, np.full(32, p, np.float32), 3.0, sr)
    assert out.dtype == np.float32
    freqs, psd = _psd(out, sr)
    inside = (freqs > 300) & (freqs < 19000)
    # density per bin: p * sr / src on the output's bins (the source's density, kept)
    np.testing.assert_allclose(psd[inside].mean(), p * sr / 48000, rtol=0.05)
    flat = psd[inside][:len(psd[inside]) // 16 * 16].reshape(-1, 16).mean(axis=1)  # 190 Hz
    np.testing.assert_allclose(10 * np.log10(flat / psd[inside].mean()), 0, atol=1.0)
    assert psd[freqs > 21500].max() < psd[inside].mean() * 10 ** (-25 / 10)
    # power is linear in band power
    ns2 = NoiseSynth(block, 32, sr, 48000, seed=3)
    out2 = _render(ns2, np.full(32, 4 * p, np.float32), 3.0, sr)
    np.testing.assert_allclose(out2, 2 * out, rtol=1e-4, atol=1e-6)


def test_noise_bands_round_trip_through_analysis():
    """Render at 48 kHz and measure with morphbox.kernels.analysis: one convention."""
    ns = NoiseSynth(BLOCK, analysis.N_NOISE_BANDS, 48000, 48000, seed=5)
    gains_db = np.linspace(-30.0, -60.0, analysis.N_NOISE_BANDS)
    out = _render(ns, (10 ** (gains_db / 20)) ** 2, 2.0, 48000)
    f = analysis.analyze_note(out, 48000, 200.0)
    est = 10 * np.log10(np.mean(10 ** (f.noise_db[40:90] / 10.0), axis=0))
    np.testing.assert_allclose(est[2:], gains_db[2:], atol=2.5)


def test_noise_is_deterministic_and_silence_flushes():
    a = NoiseSynth(BLOCK, 8, SR, 48000, seed=9)
    b = NoiseSynth(BLOCK, 8, SR, 48000, seed=9)
    bp = np.full(8, 0.1, np.float32)
    np.testing.assert_array_equal(a.render(bp), b.render(bp))
    for _ in range(3):  # the carried tails of the overlapping frames
        a.silence()
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
