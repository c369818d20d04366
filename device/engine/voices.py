"""The polyphonic morphing engine: voices -> mix -> limiter, one block at a time.

:meth:`Engine.render_block` is the one render function: the live audio callback calls it once
per block and offline rendering calls it in a loop. It never takes a lock, reads a file or
waits: note events arrive through a ``collections.deque`` (append/popleft are atomic), the
control state is an immutable snapshot (:mod:`morphbox.device.engine.controls`) and the active grid
is swapped by assigning one attribute.

Per block, for all sounding voices at once (numpy, no per-voice Python loop):

1. The morph position (smoothed, one-pole, ``morph_smoothing_s``) picks the grid cell; the four
   neighbouring grid points are mixed bilinearly, and each voice's two nearest analysis frames
   linearly, in dB, giving harmonic amplitudes and noise band gains.
2. Partials that would pass Nyquist at the played pitch (MIDI note + bend) are removed; a
   single-cycle table is built per voice (:mod:`morphbox.kernels.oscillator`) and read with the
   previous block's table crossfaded into it over the block, so timbre moves without zipper
   noise while a note is held.
3. ADSR (:mod:`morphbox.kernels.envelope`) times velocity gain (DLS curve ``(v / 127)^2``) shape
each
   voice; one filtered-noise stream carries every voice's noise (:mod:`morphbox.kernels.noise`).
4. Master volume (ramped), then the soft limiter (:mod:`morphbox.kernels.limiter`).

Voices: up to ``max_voices`` sound at once; a note-on beyond that steals the oldest voice,
which fades out over ``steal_fade_s`` in one of ``fade_voices`` spare slots while the new note
starts. Each voice plays its note's nearest pitch anchor, its frames advancing in real time
and ping-ponging through the pack's sustain loop while it sounds.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from morphbox.device.engine.controls import Controls
from morphbox.device.packs.format import Grid
from morphbox.kernels import envelope as env
from morphbox.kernels.grid import grid_cell
from morphbox.kernels.limiter import SoftLimiter
from morphbox.kernels.noise import NoiseSynth
from morphbox.kernels.oscillator import (
    BANDLIMIT_LO,
    WavetableBank,
    bandlimit_gains,
    phase_increment,
    read_crossfade,
)

_NOTE_ON, _NOTE_OFF, _ALL_NOTES_OFF, _ALL_SOUND_OFF = range(4)


@dataclass(frozen=True)
class EngineConfig:
    """Engine settings.

    Attributes:
        sample_rate: Hz. block_size: frames per block (128 default; 64 works).
        channels: output channels (the mono mix is copied to each).
        max_voices: notes sounding at once before stealing; fade_voices: spare slots for
        stolen voices fading out; steal_fade_s: that fade, seconds.
        morph_smoothing_s: time constant of the morph/bend/volume smoothing, seconds.
        voice_gain: linear gain of one full-velocity voice before the limiter.
        seed: noise seed (offline renders are deterministic).
    """

    sample_rate: int = 48000
    block_size: int = 128
    channels: int = 2
    max_voices: int = 32
    fade_voices: int = 8
    steal_fade_s: float = 0.006
    morph_smoothing_s: float = 0.03
    voice_gain: float = 0.5
    seed: int = 0


class Engine:
    """Polyphonic voice engine over a :class:`morphbox.device.packs.format.Grid`.

    Args:
        grid: the active morph grid.
        config: :class:`EngineConfig`.
        controls: shared :class:`morphbox.device.engine.controls.Controls` (one is made if omitted).

    Entry points for inputs (any thread, never block): :meth:`note_on`, :meth:`note_off`,
    :meth:`all_notes_off`, :meth:`all_sound_off`, ``controls.*``, :meth:`set_grid`.
    """

    def __init__(self, grid: Grid, config: EngineConfig | None = None,
                 controls: Controls | None = None):
        self.config = cfg = config or EngineConfig()
        self.controls = controls or Controls()
        self.grid = grid
        self._grid_seen: Grid | None = None
        cap = cfg.max_voices + cfg.fade_voices
        self._stage = np.zeros(cap, np.int8)
        self._level = np.zeros(cap, np.float32)
        self._note = np.zeros(cap, np.int64)
        self._channel = np.zeros(cap, np.int64)
        self._gain = np.zeros(cap, np.float32)
        self._age = np.zeros(cap, np.int64)
        self._held = np.zeros(cap, bool)
        self._phase = np.zeros(cap, np.uint32)
        self._fpos = np.zeros(cap, np.float64)
        self._fdir = np.ones(cap, np.float64)
        self._anchor = np.zeros(cap, np.int64)
        self._fresh = np.zeros(cap, bool)
        self._counter = 0
        self._bank = WavetableBank(grid.n_harmonics)
        self._tables = np.zeros((cap, self._bank.table_size + 1), np.float32)
        self._noise = NoiseSynth(cfg.block_size, grid.n_noise_bands, cfg.sample_rate,
                                 grid.source_rate, seed=cfg.seed)
        self._limiter = SoftLimiter(cfg.block_size, cfg.sample_rate)
        self._events: deque = deque()
        self._dt = cfg.block_size / cfg.sample_rate
        self._smooth = float(1.0 - np.exp(-self._dt / max(cfg.morph_smoothing_s, 1e-4)))
        self._ramp = (np.arange(1, cfg.block_size + 1) / cfg.block_size).astype(np.float32)
        snap = self.controls.snapshot
        self._x, self._y, self._bend, self._volume = snap.x, snap.y, snap.bend, snap.volume
        self._table_bend = None
        self._pitch_tables(grid.n_harmonics)
        self._out = np.zeros((cfg.block_size, cfg.channels), np.float32)
        self._taps: tuple = ()
        self.blocks = 0
        self.nonfinite_blocks = 0  # blocks that came out NaN/inf and were played as silence

    # ---- input entry points (producer threads) -------------------------------------------
    def note_on(self, note: int, velocity: int, channel: int = 0) -> None:
        """Start ``note`` (MIDI 0..127) at ``velocity`` (1..127; 0 means note off)."""
        if velocity <= 0:
            self.note_off(note, channel)
        else:
            self._events.append((_NOTE_ON, int(note) & 127, min(int(velocity), 127),
                                 int(channel)))

    def note_off(self, note: int, channel: int = 0) -> None:
        """Release every held voice of ``note`` on ``channel`` (its ADSR release starts)."""
        self._events.append((_NOTE_OFF, int(note) & 127, 0, int(channel)))

    def all_notes_off(self) -> None:
        """Release every voice (MIDI CC 123)."""
        self._events.append((_ALL_NOTES_OFF, 0, 0, 0))

    def all_sound_off(self) -> None:
        """Fade every voice out within ``steal_fade_s`` (MIDI CC 120)."""
        self._events.append((_ALL_SOUND_OFF, 0, 0, 0))

    def set_grid(self, grid: Grid) -> None:
        """Swap in another grid; takes effect at the next block boundary."""
        if (grid.n_harmonics, grid.n_noise_bands) != (self.grid.n_harmonics,
                                                       self.grid.n_noise_bands):
            raise ValueError("new grid has a different number of harmonics or noise bands")
        self.grid = grid

    def add_tap(self, tap) -> None:
        """Call ``tap(block)`` with every rendered block (read-only ``(block_size, channels)``
        float32, valid only during the call), from the audio thread: it must copy what it
        needs and return at once (e.g. into a ring buffer a recorder thread drains)."""
        self._taps = (*self._taps, tap)

    def remove_tap(self, tap) -> None:
        self._taps = tuple(t for t in self._taps if t is not tap)

    @property
    def active_voices(self) -> int:
        """Voices currently sounding (including ones in release or fading)."""
        return int(np.count_nonzero(self._stage))

    # ---- the audio thread ------------------------------------------------------------------
    def _start_voice(self, note: int, velocity: int, channel: int) -> None:
        cfg = self.config
        stage = self._stage
        playing = (stage != env.IDLE) & (stage != env.FADE)
        if np.count_nonzero(playing) >= cfg.max_voices:
            victims = np.flatnonzero(playing)
            oldest = victims[np.argmin(self._age[victims])]
            stage[oldest] = env.FADE
            self._held[oldest] = False
        free = np.flatnonzero(stage == env.IDLE)
        if free.size:
            slot = free[0]
        else:  # every slot busy: reuse the quietest fading voice
            fading = np.flatnonzero(stage == env.FADE)
            slot = fading[np.argmin(self._level[fading])]
        self._counter += 1
        stage[slot] = env.ATTACK
        self._level[slot] = 0.0
        self._note[slot] = note
        self._channel[slot] = channel
        self._gain[slot] = (velocity / 127.0) ** 2
        self._age[slot] = self._counter
        self._held[slot] = True
        self._phase[slot] = 0
        self._fpos[slot] = self.controls.snapshot.position * self.grid.loop_start
        self._fdir[slot] = 1.0
        self._anchor[slot] = np.argmin(np.abs(self.grid.anchors - note))
        self._fresh[slot] = True

    def _drain_events(self) -> None:
        events = self._events
        while events:
            kind, note, velocity, channel = events.popleft()
            if kind == _NOTE_ON:
                self._start_voice(note, velocity, channel)
            elif kind == _NOTE_OFF:
                hit = self._held & (self._note == note) & (self._channel == channel)
                self._stage[hit & (self._stage != env.FADE)] = env.RELEASE
                self._held[hit] = False
            elif kind == _ALL_NOTES_OFF:
                sounding = (self._stage != env.IDLE) & (self._stage != env.FADE)
                self._stage[sounding] = env.RELEASE
                self._held[:] = False
            elif kind == _ALL_SOUND_OFF:
                self._stage[self._stage != env.IDLE] = env.FADE
                self._held[:] = False

    def _adopt_grid(self, grid: Grid) -> None:
        """A new grid arrived: re-pick anchors and clamp frame positions of live voices."""
        self._anchor[:] = np.argmin(np.abs(grid.anchors[None, :] - self._note[:, None]), axis=1)
        np.clip(self._fpos, 0.0, grid.n_frames - 1.001, out=self._fpos)
        self._grid_seen = grid

    def render_block(self) -> np.ndarray:
        """Render one block: ``(block_size, channels)`` float32 in -1..1 (a reused buffer)."""
        self._drain_events()
        grid = self.grid
        if grid is not self._grid_seen:
            self._adopt_grid(grid)
        snap = self.controls.snapshot
        a = self._smooth
        self._x += (snap.x - self._x) * a
        self._y += (snap.y - self._y) * a
        if self._bend != snap.bend:
            self._bend += (snap.bend - self._bend) * a
            if abs(snap.bend - self._bend) < 1e-4:
                self._bend = snap.bend
        vol0 = self._volume
        self._volume = vol1 = vol0 + (snap.volume - vol0) * a
        live = np.flatnonzero(self._stage)
        if live.size:
            mono = self._render_voices(grid, live, snap)
        else:
            mono = self._noise.silence()
        mono *= (vol0 + (vol1 - vol0) * self._ramp)
        if not np.isfinite(mono).all():  # never to the DAC or the limiter: count, drop, silence
            self.nonfinite_blocks += 1
            mono[:] = 0.0
            self._stage[:] = env.IDLE
        self._limiter.process(mono)
        self._out[:] = mono[:, None]
        self.blocks += 1
        for tap in self._taps:
            tap(self._out)
        return self._out

    def _pitch_tables(self, n_harmonics: int) -> None:
        """f0 (Hz), phase increments and band-limit gains ``(128, K)`` of every MIDI note at
        the current bend, recomputed only when the (smoothed) bend has moved."""
        if self._bend != self._table_bend:
            self._table_bend = self._bend
            self._f0 = 440.0 * np.exp2((np.arange(128) + self._bend - 69.0) / 12.0)
            self._inc = phase_increment(self._f0, self.config.sample_rate)
            self._bandlimit = bandlimit_gains(self._f0, n_harmonics, self.config.sample_rate)

    def _render_voices(self, grid: Grid, live: np.ndarray, snap) -> np.ndarray:
        cfg = self.config
        env_start = self._level[live]
        env.advance_adsr(self._stage, self._level, self._dt, snap.attack_s, snap.decay_s,
                         snap.sustain, snap.release_s, cfg.steal_fade_s)
        env_end = self._level[live]
        # timbre: bilinear over the 4 neighbouring grid points, linear between 2 frames, in dB
        iy0, ix0, w = grid_cell(self._x, self._y, grid.size)
        fpos = self._fpos[live]
        i0 = np.minimum(fpos.astype(np.int64), grid.n_frames - 2)
        fr = (fpos - i0).astype(np.float32)[:, None]
        frames_db = _mix(grid.frames_db[iy0:iy0 + 2, ix0:ix0 + 2], w, self._anchor[live], i0,
                         fr)
        frames_db *= np.float32(np.log(10.0) / 20.0)  # dB -> nepers
        mags = np.exp(frames_db)
        k = grid.n_harmonics
        amps = mags[:, :k]
        notes = self._note[live]
        self._pitch_tables(k)
        f0 = self._f0[notes]
        if f0.max() * k > BANDLIMIT_LO * cfg.sample_rate:
            amps *= self._bandlimit[notes]
        tables = self._bank.build(amps)
        fresh = self._fresh[live]
        prev = self._tables[live]
        if fresh.any():
            prev[fresh] = tables[fresh]
            self._fresh[live] = False
        inc = self._inc[notes]
        phase = self._phase[live]
        wave = read_crossfade(prev, tables, phase, inc, cfg.block_size, self._ramp)
        gain = self._gain[live] * np.float32(cfg.voice_gain)
        amp = (env_start * gain)[:, None] + ((env_end - env_start) * gain)[:, None] * self._ramp
        wave *= amp
        mono = wave.sum(axis=0)
        band = mags[:, k:] * (env_end * gain)[:, None]
        mono += self._noise.render(np.einsum("vb,vb->b", band, band))
        # advance oscillator and frame state
        self._tables[live] = tables
        self._phase[live] = phase + inc * np.uint32(cfg.block_size)
        step = grid.frame_rate * self._dt
        fpos = fpos + self._fdir[live] * step
        fdir = self._fdir[live]
        over = fpos > grid.loop_end
        fpos[over] = 2.0 * grid.loop_end - fpos[over]
        fdir[over] = -1.0
        under = (fdir < 0) & (fpos < grid.loop_start)
        fpos[under] = 2.0 * grid.loop_start - fpos[under]
        fdir[under] = 1.0
        self._fpos[live] = fpos
        self._fdir[live] = fdir
        return mono


def _mix(cell: np.ndarray, w: np.ndarray, anchor: np.ndarray, i0: np.ndarray,
         fr: np.ndarray) -> np.ndarray:
    """``cell`` (2, 2, anchors, frames, bins) dB -> (voices, bins): bilinear in the cell with
    weights ``w`` (2, 2), linear between frames ``i0`` and ``i0 + 1`` with fraction ``fr``."""
    n = len(i0)
    rows = cell[:, :, np.concatenate([anchor, anchor]), np.concatenate([i0, i0 + 1])]
    ab = w.reshape(1, 4) @ rows.reshape(4, -1)
    ab = ab.reshape(2, n, -1)
    a, b = ab[0], ab[1]
    b -= a
    b *= fr
    a += b
    return a


def render_offline(engine: Engine, n_samples: int) -> np.ndarray:
    """Render ``n_samples`` frames with :meth:`Engine.render_block`, ``(n, channels)`` float32.

    For inputs that change over time use :func:`morphbox.device.midi.files.play` instead.
    """
    bs = engine.config.block_size
    n_blocks = -(-n_samples // bs)
    out = np.empty((n_blocks * bs, engine.config.channels), np.float32)
    for i in range(n_blocks):
        out[i * bs:(i + 1) * bs] = engine.render_block()
    return out[:n_samples]
