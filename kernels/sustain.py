"""What a held note does past its analysed frames: decay rates, the loop seam, loop time.

Pure numpy; shared by the pack build (each analysed note), the grid build (each grid point)
and the engine (each voice, every block). Frames are in dB (any channels: partials, envelope,
noise), at the frame times of :mod:`morphbox.kernels.features`.

A pack stores each note up to a few seconds. A voice held longer goes on from the loop start
(frame ``ls``, time ``T_s``) after the loop end (frame ``le``, time ``T_e``, loop length
``L = T_e - T_s``): at time ``t > T_e`` it plays the frames at ``tt = t - n L``
(``n = floor((t - T_s) / L)``) plus

    ``r (t - T_e) + s (T_e - tt)`` dB per channel,

``s`` (dB/s) being the loop's own slope and ``r`` (dB/s, <= 0) the rate the note decays at
past the analysed frames (measured further on in the source). Each pass thus repeats the
loop's life (vibrato, bow, beating) with the loop's own trend replaced by ``r``, and joins the
next seamlessly because the loop's last frame is its first plus ``s L``
(:func:`make_loopable`). So:

* a *sustaining* note (its level falls by less than ``SUSTAIN_DB_PER_S`` over the loop) gets
  ``r = s = 0``: the loop repeats its last second, no pumping;
* a *decaying* note keeps decaying, each partial at its own rate (strings lose their upper
  partials first), never rising: rates are at most a quarter of the note's overall rate, and
  the frames' total level never rises after the peak (:func:`monotone`; a source's own
  swells, beats or sample loops, are levelled to within ``RISE_DB``).

A bilinear mix of loopable notes with the mixed rates is loopable too (everything is linear in
dB), so a grid stays seamless.
"""

from __future__ import annotations

import numpy as np

SUSTAIN_DB_PER_S = 1.0  # a note whose level falls slower than this sustains (loops flat)
MAX_DECAY_DB_PER_S = 60.0
RISE_DB = 0.5  # a decaying note's frames never rise more than this after its peak
_FIT_FLOOR_DB = -100.0


def level_db(frames_db: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Total level of each frame, ``frames_db.shape[:-1]`` dB: the power sum over channels,
    each weighted by ``weights`` ``(C,)`` (:func:`morphbox.kernels.features.channel_weights`
    of the note's f0: the frame's true power) or 1."""
    x = np.asarray(frames_db, np.float64)
    if weights is not None:
        x = x + 10.0 * np.log10(np.maximum(np.asarray(weights, np.float64), 1e-30))
    m = x.max(axis=-1, keepdims=True)
    return (m[..., 0] + 10.0 * np.log10(np.sum(10.0 ** ((x - m) / 10.0), axis=-1)))


def _slope(y: np.ndarray, t: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Weighted least-squares slope of ``y`` ``(F, C)`` over ``t`` ``(F,)``: ``(C,)``."""
    w = weight.astype(np.float64)
    sw = w.sum(axis=0)
    sw = np.where(sw > 0, sw, 1.0)
    tm = (w * t[:, None]).sum(axis=0) / sw
    ym = (w * y).sum(axis=0) / sw
    var = (w * (t[:, None] - tm) ** 2).sum(axis=0)
    cov = (w * (t[:, None] - tm) * (y - ym)).sum(axis=0)
    return np.divide(cov, var, out=np.zeros_like(cov), where=var > 0)


def decay_rates(frames_db: np.ndarray, times: np.ndarray, fit_from_s: float,
                sustain_db_per_s: float = SUSTAIN_DB_PER_S,
                weights: np.ndarray | None = None) -> np.ndarray:
    """Decay rate of each channel of one note, ``(C,)`` float32 dB/s (<= 0).

    ``frames_db`` ``(F, C)``; the rates are least-squares slopes over the frames from
    ``fit_from_s`` on (channels above -100 dB). A note whose overall level falls slower than
    ``sustain_db_per_s`` sustains: all rates 0. Otherwise each rate lies between
    ``-MAX_DECAY_DB_PER_S`` and a quarter of the overall rate (nothing rises, nothing stalls).
    ``weights``: the channels' powers (:func:`level_db`).
    """
    x = np.asarray(frames_db, np.float64)
    t = np.asarray(times, np.float64)
    sel = t >= fit_from_s - 1e-9
    if sel.sum() < 2:
        return np.zeros(x.shape[-1], np.float32)
    xs, ts = x[sel], t[sel]
    total = _slope(level_db(xs, weights)[:, None], ts, np.ones((len(ts), 1)))[0]
    if total > -sustain_db_per_s:
        return np.zeros(x.shape[-1], np.float32)
    rates = _slope(xs, ts, xs > _FIT_FLOOR_DB)
    audible = (xs > _FIT_FLOOR_DB).sum(axis=0) >= 2
    rates = np.where(audible, rates, total)
    return np.clip(rates, -MAX_DECAY_DB_PER_S, 0.25 * total).astype(np.float32)


def is_decaying(frames_db: np.ndarray, times: np.ndarray, fit_from_s: float,
                sustain_db_per_s: float = SUSTAIN_DB_PER_S,
                weights: np.ndarray | None = None) -> bool:
    """Whether the overall level (:func:`level_db`) of ``frames_db`` ``(F, C)`` falls faster
    than ``sustain_db_per_s`` over the frames from ``fit_from_s`` on."""
    t = np.asarray(times, np.float64)
    sel = t >= fit_from_s - 1e-9
    if sel.sum() < 2:
        return False
    total = _slope(level_db(np.asarray(frames_db, np.float64)[sel], weights)[:, None], t[sel],
                   np.ones((int(sel.sum()), 1)))[0]
    return bool(total <= -sustain_db_per_s)


def monotone(frames_db: np.ndarray, rise_db: float = RISE_DB,
             weights: np.ndarray | None = None) -> np.ndarray:
    """Frames ``(F, C)`` dB whose total level (:func:`level_db`) never rises more than
    ``rise_db`` above its lowest since the peak: a frame above that is lowered (every channel
    by the same dB). Returns a new float32 array."""
    x = np.array(frames_db, np.float32, copy=True)
    lv = level_db(x, weights)
    peak = int(np.argmax(lv))
    low = np.minimum.accumulate(lv[peak:])
    over = lv[peak:] - (low + rise_db)
    x[peak:] -= np.maximum(over, 0.0).astype(np.float32)[:, None]
    return x


def make_loopable(frames_db: np.ndarray, decay_db: np.ndarray, times: np.ndarray,
                  loop_start: int, loop_end: int, crossfade_s: float) -> np.ndarray:
    """Frames whose loop ``loop_start .. loop_end`` (frame indices) joins seamlessly.

    ``frames_db`` ``(..., F, C)`` dB, ``decay_db`` ``(..., C)`` dB/s (broadcast against the
    frames without their F axis). The frames in the last ``crossfade_s`` before the loop end
    are crossfaded (linearly in dB) towards ``frames[t - L] + L * decay`` (interpolated at
    ``t - L``), reaching it at the loop end. Returns a new float32 array.
    """
    x = np.array(frames_db, np.float32, copy=True)
    t = np.asarray(times, np.float64)
    length = t[loop_end] - t[loop_start]
    start = t[loop_end] - min(crossfade_s, length)
    zone = np.flatnonzero((t > start) & (np.arange(len(t)) <= loop_end))
    if length <= 0 or not len(zone):
        return x
    pos = np.interp(t[zone] - length, t, np.arange(len(t), dtype=np.float64))
    i0 = np.minimum(pos.astype(np.int64), len(t) - 2)
    fr = (pos - i0).astype(np.float32)[:, None]
    earlier = np.take(x, i0, axis=-2) * (1 - fr) + np.take(x, i0 + 1, axis=-2) * fr
    target = earlier + np.float32(length) * np.asarray(decay_db, np.float32)[..., None, :]
    a = ((t[zone] - start) / (t[loop_end] - start)).astype(np.float32)[:, None]
    x[..., zone, :] = np.take(x, zone, axis=-2) * (1 - a) + target * a
    return x


def loop_time(t: np.ndarray, loop_start_s: float, loop_end_s: float
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where a voice ``t`` seconds into its note plays: ``(tt, a, b)``, all like ``t``: the
    time within the stored frames (s), and the seconds by which the decay rate ``r`` and the
    loop's slope ``s`` are to be multiplied (module docstring: ``a = t - T_e``,
    ``b = T_e - tt`` past the loop end, both 0 before it)."""
    t = np.asarray(t, np.float64)
    length = loop_end_s - loop_start_s
    past = t > loop_end_s
    n = np.where(past, np.floor((t - loop_start_s) / length), 0.0)
    tt = t - n * length
    return tt, np.where(past, t - loop_end_s, 0.0), np.where(past, loop_end_s - tt, 0.0)
