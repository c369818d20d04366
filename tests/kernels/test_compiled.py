"""The compiled kernel's parts against numpy and the numpy kernels they stand for.

Tolerances: the inverse FFTs run in float32 (numpy's in float64): 2e-6 of the largest value
(about 2^-19, a few float32 roundings per radix-4 stage). The ADSR and the limiter follow the
numpy code's float32 arithmetic: levels agree to 1e-6 (a float32 rounding), stages exactly.
Partial gains are float32 in both: 1e-6; the envelope interpolation is float64: its weights
agree to 1e-6 and its band indices exactly.
"""

from __future__ import annotations

import numpy as np
import pytest

from morphbox.kernels import compiled as K
from morphbox.kernels import envelope as env
from morphbox.kernels.features import envelope_centres, envelope_interp, erb_rate
from morphbox.kernels.limiter import SoftLimiter
from morphbox.kernels.oscillator import (
    MAX_PARTIALS,
    TABLE_MAX,
    band_edges_hz,
    partial_gains,
    phase_increment,
)

HMAX = TABLE_MAX // 2


@pytest.fixture(scope="module")
def twiddles():
    w = np.exp(2j * np.pi * np.arange(HMAX) / HMAX)
    p = np.exp(2j * np.pi * np.arange(HMAX) / TABLE_MAX)
    return (w.real.astype(np.float32), w.imag.astype(np.float32),
            p.real.astype(np.float32), p.imag.astype(np.float32))


@pytest.mark.parametrize("n", [16, 64, 256, 512, 1024, 2048])
@pytest.mark.parametrize("lanes", [1, 3, 8])
def test_batched_inverse_real_ffts_match_numpy(twiddles, n, lanes):
    rng = np.random.default_rng(n + lanes)
    m = n // 2
    c = rng.normal(size=(m, lanes)) + 1j * rng.normal(size=(m, lanes))
    c[0] = 0.0  # DC is not rendered
    c[:, 0] *= 1.0 / np.arange(1, m + 1)  # a falling spectrum in one lane
    cr = np.ascontiguousarray(c.real, np.float32).ravel()
    ci = np.ascontiguousarray(c.imag, np.float32).ravel()
    work = [np.zeros(HMAX * 41, np.float32) for _ in range(4)]
    twr, twi, pwr, pwi = twiddles
    zr, zi = K.real_tables(cr, ci, n, lanes, *work, twr, twi, HMAX // m, pwr, pwi,
                           TABLE_MAX // n)
    got = np.empty((n, lanes))
    got[0::2] = zr[:m * lanes].reshape(m, lanes)
    got[1::2] = zi[:m * lanes].reshape(m, lanes)
    spec = np.zeros((n // 2 + 1, lanes), complex)
    spec[:m] = c.astype(np.complex64) * (n / 2)  # x[t] = Re sum c_p e^(2 pi j p t / n)
    want = np.fft.irfft(spec, n, axis=0)
    assert np.abs(got - want).max() <= 2e-6 * np.abs(want).max()


def test_the_arena_places_every_field_apart_aligned_and_typed():
    ar = K.Arena()
    ar.add(K.F_PARAMS, np.float64, K.N_PARAMS)
    ar.add(K.F_STAGE, np.int8, 40)
    ar.add(K.F_TABLES, np.float32, (40, 2, TABLE_MAX + 1))
    ar.add(K.F_PHASE, np.uint32, 40)
    ar.build()
    views = [ar.view(f) for f in (K.F_PARAMS, K.F_STAGE, K.F_TABLES, K.F_PHASE)]
    assert [v.dtype for v in views] == [np.float64, np.int8, np.float32, np.uint32]
    assert views[2].shape == (40, 2, TABLE_MAX + 1)
    assert all(ar.layout[f] % 64 == 0 for f in (K.F_PARAMS, K.F_STAGE, K.F_TABLES, K.F_PHASE))
    for i, v in enumerate(views):  # writing one field leaves every other as it was
        v[...] = 7
        assert all(not np.any(w) for j, w in enumerate(views) if j > i)
    assert all(np.all(v == 7) for v in views)
    assert all(np.shares_memory(v, ar.buffer) for v in views)


def test_adsr_steps_like_the_numpy_envelope():
    rng = np.random.default_rng(1)
    stage = rng.integers(0, 6, 40).astype(np.int8)
    level = rng.random(40).astype(np.float32)
    level[stage == env.SUSTAIN] = 0.6
    ref_stage, ref_level = stage.copy(), level.copy()
    for i in range(400):  # attack, decay to sustain, release and fades to the end
        if i == 200:
            stage[stage == env.SUSTAIN] = ref_stage[ref_stage == env.SUSTAIN] = env.RELEASE
        params = (0.00267, 0.02 + i * 1e-4, 0.3, 0.6, 0.2, 0.006)
        K._adsr(stage, level, 40, *params)
        env.advance_adsr(ref_stage, ref_level, *params)
        np.testing.assert_array_equal(stage, ref_stage)
        # float32 levels stepped 400 times: numpy 1 and 2 round the scalar arithmetic
        # differently (NEP 50), a few ulps apart; a wrong envelope is off by far more
        np.testing.assert_allclose(level, ref_level, rtol=1e-5, atol=1e-8)
    assert np.all(stage == env.IDLE)


@pytest.mark.parametrize("note, size", [(21, 2048), (36, 1024), (52.3, 512), (70, 256),
                                        (108, 256), (130, 256)])
def test_pitch_cache_matches_the_oscillator_and_envelope_interpolation(note, size):
    sr, k, n_env = 48000.0, 64, 24
    incv = np.zeros(4, np.int64)
    npart = np.zeros(4, np.int64)
    pgv = np.zeros((4, MAX_PARTIALS), np.float32)
    eiv = np.zeros((4, MAX_PARTIALS - k), np.int32)
    ewv = np.zeros((4, MAX_PARTIALS - k), np.float32)
    lo, hi = band_edges_hz(sr)
    K._pitch(2, float(int(note)), note - int(note), float(size), sr, lo, hi, k, n_env,
             MAX_PARTIALS, incv, npart, pgv, eiv, ewv, erb_rate(envelope_centres(n_env)),
             K.droop_gains(size, MAX_PARTIALS))
    f0 = 440.0 * 2 ** ((note - 69) / 12)
    assert incv[2] == phase_increment(np.array([f0]), sr)[0]
    n = npart[2]
    assert n == min(int(np.floor(hi / f0)), MAX_PARTIALS, int(0.3 * size))
    want = partial_gains(np.array([f0]), np.array([size]), MAX_PARTIALS, sr)[0]
    np.testing.assert_allclose(pgv[2, :n], want[:n], rtol=1e-6, atol=1e-7)
    assert np.all(want[n:] < 1e-6)  # what the kernel leaves out is (next to) nothing
    if n > k:
        ei, ew = envelope_interp(np.array([f0]), k + 1, MAX_PARTIALS - k, n_env)
        np.testing.assert_array_equal(eiv[2, :n - k], ei[0, :n - k])
        np.testing.assert_allclose(ewv[2, :n - k], ew[0, :n - k], atol=1e-6)


def test_db_to_linear_matches_numpy_exp_and_keeps_inf_and_nan():
    db = np.concatenate([np.linspace(-130.0, 40.0, 1001), [-1e4, 1e4, np.inf, -np.inf, np.nan]])
    db = db.astype(np.float32)
    out = np.zeros(len(db), np.float32)
    K.db_to_linear(db, out, np.zeros(len(db), np.int32), len(db))
    with np.errstate(over="ignore", invalid="ignore"):
        want = np.exp(db * np.float32(np.log(10.0) / 20.0))
    np.testing.assert_allclose(out[:1001], want[:1001], rtol=2e-6)
    assert out[1001] == 0.0 and out[1002] == np.inf and out[1003] == np.inf
    assert out[1004] == 0.0 and np.isnan(out[1005])


@pytest.mark.parametrize("n", [256, 1000, 3, 2**32 - 5])
def test_noise_picks_follow_numpys_generator(n):
    """The compiled engine steps numpy's PCG64 itself: the same integers as
    ``Generator.integers(n)``, one by one or in a batch, continuing any state."""
    rng = np.random.default_rng(7)
    rng.integers(256)  # a half-used 64-bit output: the buffered upper 32 bits come first
    s = rng.bit_generator.state
    full = (1 << 64) - 1
    st = np.array([s["state"]["state"] >> 64, s["state"]["state"] & full, s["state"]["inc"] >> 64,
                   s["state"]["inc"] & full, s["has_uint32"], s["uinteger"]], np.uint64)
    got = [K.pcg64_integer(st, n) for _ in range(3000)]
    assert got == [int(rng.integers(n)) for _ in range(3000)]


def test_the_limiter_rides_and_clips_like_the_soft_limiter():
    rng = np.random.default_rng(3)
    bs = 128
    lim = SoftLimiter(bs, 48000.0)
    prm = np.zeros(K.N_PARAMS)
    prm[[K.P_LIM_GAIN, K.P_LIM_RECOVER, K.P_LIM_THRESHOLD, K.P_LIM_KNEE, K.P_LIM_CEILING]] = (
        lim.gain, lim._recover, lim.threshold, lim.knee, lim.ceiling)
    ramp = lim._ramp
    for level in (0.1, 0.5, 1.0, 3.0, 8.0, 0.2, 0.05, 0.05, 0.05):
        for _ in range(5):
            x = (rng.normal(size=bs) * level).astype(np.float32)
            want = lim.process(x.copy())
            got = x.copy()
            K._limit(got, ramp, bs, prm)
            np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7)
            assert prm[K.P_LIM_GAIN] == pytest.approx(lim.gain, rel=1e-12)
    assert np.abs(want).max() < 1.0


def test_the_render_kernel_takes_only_the_types_it_was_compiled_for():
    """Compiled ahead of time for one set of argument types: anything else is refused instead
    of compiled in the audio path."""
    assert len(K.render.signatures) == 1
    a = np.zeros(64, np.uint8)
    lay = np.zeros(K.N_FIELDS, np.int64)
    grid64 = np.zeros((4, 8))  # float64: not the grid's float32
    with pytest.raises(TypeError):
        K.render(a, lay, grid64, grid64, grid64, np.zeros(4, np.float32), np.zeros(4))
    assert len(K.render.signatures) == 1
