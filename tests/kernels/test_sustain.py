"""Tests of kernels/sustain.py: decay rates, levelling, seamless loops, loop time."""

from __future__ import annotations

import numpy as np
import pytest

from morphbox.kernels import sustain as su
from morphbox.kernels.features import frame_times

TIMES = frame_times(2.5)
LS, LE = int(np.argmin(np.abs(TIMES - 1.5))), len(TIMES) - 1


def decaying(rates_db_s, wobble=0.0, seed=0):
    """Frames (F, C): each channel falls at its own rate from 0 dB, plus a wobble."""
    rng = np.random.default_rng(seed)
    x = np.outer(TIMES, rates_db_s)
    x += wobble * np.sin(2 * np.pi * 3.3 * TIMES)[:, None] * rng.uniform(0.5, 1, len(rates_db_s))
    return (x - 20.0).astype(np.float32)


def test_decay_rates_are_each_channels_own():
    rates = np.array([-3.0, -6.0, -12.0, -20.0])
    r = su.decay_rates(decaying(rates), TIMES, 1.0)
    assert r.dtype == np.float32 and r.shape == (4,)
    np.testing.assert_allclose(r, rates, atol=0.05)


def test_a_sustaining_note_gets_zero_rates():
    x = decaying(np.array([-0.5, -0.2, 0.3]), wobble=1.0)
    np.testing.assert_array_equal(su.decay_rates(x, TIMES, 1.0), 0.0)
    assert not su.is_decaying(x, TIMES, 1.0)
    assert su.is_decaying(decaying(np.array([-5.0, -5.0])), TIMES, 1.0)


def test_rates_never_rise_and_never_stall():
    x = decaying(np.array([-10.0, +2.0, -70.0]))
    x[:, 1] -= 40.0  # a quiet channel that rises in a note that decays
    r = su.decay_rates(x, TIMES, 1.0)
    lv = su.level_db(x)
    sel = TIMES >= 1.0
    total = np.polyfit(TIMES[sel], lv[sel], 1)[0]  # the note's overall rate, ~ -10 dB/s
    assert total < -9  # the rising channel decays at least a quarter as fast as the note
    assert r[1] == pytest.approx(0.25 * total, abs=0.01)
    assert r[2] == -su.MAX_DECAY_DB_PER_S


def test_monotone_levels_swells_after_the_peak():
    x = decaying(np.array([-4.0, -4.0]), wobble=3.0)
    level = su.level_db(x)
    peak = int(np.argmax(level))
    assert np.max(level[peak:] - np.minimum.accumulate(level[peak:])) > 2.0
    y = su.monotone(x)
    lv = su.level_db(y)
    assert np.max(lv[peak:] - np.minimum.accumulate(lv[peak:])) <= su.RISE_DB + 1e-4
    np.testing.assert_array_equal(y[:peak + 1], x[:peak + 1])  # the attack is untouched


@pytest.mark.parametrize("rate", [0.0, -8.0])
def test_a_loop_made_loopable_joins_seamlessly(rate):
    x = decaying(np.array([rate, rate * 1.5, rate * 0.5]), wobble=1.5, seed=3)
    s = su.decay_rates(x, TIMES, 1.0, sustain_db_per_s=0.0) if rate else np.zeros(3)
    y = su.make_loopable(x, s, TIMES, LS, LE, 0.3)
    length = TIMES[LE] - TIMES[LS]
    np.testing.assert_allclose(y[LE], y[LS] + length * s, atol=1e-4)
    np.testing.assert_array_equal(y[:LE - 15], x[:LE - 15])  # only the last 0.3 s changed
    # and played past the loop end (loop_time) there is no step: the first frames of the
    # next pass continue the last of this one
    t = np.arange(TIMES[LE] - 0.2, TIMES[LE] + 3.0, 0.02)
    tt, a, b = su.loop_time(t, TIMES[LS], TIMES[LE])
    pos = np.interp(tt, TIMES, np.arange(len(TIMES)))
    i0 = np.minimum(pos.astype(int), len(TIMES) - 2)
    fr = (pos - i0)[:, None]
    played = y[i0] * (1 - fr) + y[i0 + 1] * fr + a[:, None] * s + b[:, None] * s
    natural = np.abs(np.diff(x[LS - 40:LE], axis=0)).max()  # the note's own frame steps
    assert np.abs(np.diff(played, axis=0)).max() < 1.2 * natural


def test_loop_time_before_and_after_the_loop():
    tt, a, b = su.loop_time(np.array([0.3, 2.5, 2.6, 3.5, 5.05]), 1.5, 2.5)
    np.testing.assert_allclose(tt, [0.3, 2.5, 1.6, 1.5, 2.05], atol=1e-9)
    np.testing.assert_allclose(a, [0, 0, 0.1, 1.0, 2.55], atol=1e-9)
    np.testing.assert_allclose(b, [0, 0, 0.9, 1.0, 0.45], atol=1e-9)
