"""ADSR envelopes for many voices, advanced one block at a time.

Stages: attack rises linearly to 1 in ``attack_s``; decay falls exponentially towards the
sustain level with time constant ``decay_s / 5`` (within 1 % after ``decay_s``); release falls
exponentially, -60 dB after ``release_s``; a stolen voice fades linearly to 0 in ``fade_s``.
Within a block the level is ramped linearly from its start to its end value, so a stage
change never makes a step. Levels below -80 dB in release or fade end the voice (IDLE).
"""

from __future__ import annotations

import numpy as np

IDLE, ATTACK, DECAY, SUSTAIN, RELEASE, FADE = 0, 1, 2, 3, 4, 5
_END_LEVEL = 1e-4  # -80 dB


def advance_adsr(stage: np.ndarray, level: np.ndarray, dt: float, attack_s: float,
                 decay_s: float, sustain: float, release_s: float,
                 fade_s: float) -> None:
    """Advance ``stage`` (int8) and ``level`` (float32, 0..1) of ``(voices,)`` in place by
    ``dt`` seconds. Times in seconds (clamped to >= 1 ms), ``sustain`` linear 0..1."""
    attack_s, decay_s, release_s, fade_s = (max(t, 1e-3) for t in
                                            (attack_s, decay_s, release_s, fade_s))
    sustain = min(max(float(sustain), 0.0), 1.0)
    counts = np.bincount(stage, minlength=6)
    if counts[SUSTAIN]:
        level[stage == SUSTAIN] = sustain
    d = stage == DECAY if counts[DECAY] else None  # before attack: a voice reaching 1 holds it
    if counts[ATTACK]:
        a = stage == ATTACK
        lv = level[a] + dt / attack_s
        done = lv >= 1.0 - 1e-6
        lv[done] = 1.0
        level[a] = lv
        st = stage[a]
        st[done] = DECAY
        stage[a] = st
    if d is not None:
        k = np.exp(-dt * 5.0 / decay_s)
        lv = sustain + (level[d] - sustain) * k
        st = stage[d]
        st[np.abs(lv - sustain) < 1e-3] = SUSTAIN
        level[d] = lv
        stage[d] = st
    if counts[RELEASE]:
        r = stage == RELEASE
        level[r] *= np.exp(-dt * np.log(1000.0) / release_s)
    if counts[FADE]:
        f = stage == FADE
        level[f] = np.maximum(level[f] - dt / fade_s, 0.0)
    if counts[RELEASE] or counts[FADE]:
        ended = (stage >= RELEASE) & (level < _END_LEVEL)
        level[ended] = 0.0
        stage[ended] = IDLE
