"""The polyphonic morphing engine: voices -> mix -> limiter, one block at a time.

:meth:`Engine.render_block` is the one render function: the live audio callback calls it once
per block and offline rendering calls it in a loop. It never takes a lock, reads a file or
waits: note events arrive through a ``collections.deque`` (append/popleft are atomic), the
control state is an immutable snapshot (:mod:`morphbox.device.engine.controls`) and the active grid
is swapped by assigning one attribute.

Each voice carries its own expression: a morph position ``(x, y)``, a pitch bend (semitones,
added to the global bend), a pressure and a timbre (CC 74), both 0..1. Where a voice sits
depends on the morph mode (:data:`morphbox.device.engine.controls.MORPH_MODES`): on the touch
(``follow``), where the touch was when the note started (``latch``), or on the touch moved by
the voice's timbre and pressure (``mpe``, :class:`morphbox.device.engine.controls.Expression`).
Per-voice controls arrive by (channel, note) or by channel (an MPE member channel) through
:meth:`Engine.voice_control`.

Per block, for all sounding voices at once (numpy, no per-voice Python loop):

1. Each voice's morph position is smoothed towards its target (one-pole per voice,
   ``morph_smoothing_s``) and picks that voice's grid cell; its four neighbouring grid points
   are gathered and mixed bilinearly, and its two frames around its time in the note
   linearly, in dB (:func:`_mix_voices`), giving the voice's partial levels, harmonic
   envelope and noise band gains (:mod:`morphbox.kernels.features`). Its velocity layers
   (interpolated by velocity) are added the same way, and past the loop end the decay of
   the passes it has made (:mod:`morphbox.kernels.sustain`): a held note sustains or keeps
   decaying as its source does, never swelling back.
2. Partials above the band limit at the voice's played pitch (MIDI note + global bend +
   its own bend, each smoothed) are removed; the first 64 partials take their own levels,
   the rest (up to 20 kHz: several hundred for a low note) the envelope's at their frequency;
   a single-cycle table is built per voice (:mod:`morphbox.kernels.oscillator`, its size
   following the pitch) and read with the previous block's table crossfaded into it over the
   block, so timbre moves without zipper noise while a note is held.
3. ADSR (:mod:`morphbox.kernels.envelope`, its release from wherever the note is) times the
   pressure gain shape each voice; one filtered-noise stream carries every voice's noise
   (:mod:`morphbox.kernels.noise`, ERB bands to 20 kHz).
4. Master volume (ramped), then the soft limiter (:mod:`morphbox.kernels.limiter`).

Velocity: within the grid's velocity layers the level and timbre are the layers' (a pack
analyses its sources at several velocities); below the lowest layer and above the highest,
the DLS curve ``(v / v_layer)^2`` scales the level.

Voices: up to ``max_voices`` sound at once; a note-on beyond that steals the oldest voice,
which fades out over ``steal_fade_s`` in one of ``fade_voices`` spare slots while the new note
starts. Each voice plays its note's nearest pitch anchor from its onset, its frames following
the time since its note-on (``position`` skips into the note).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from morphbox.device.engine.compiled import attach as attach_render
from morphbox.device.engine.controls import Controls
from morphbox.device.packs.format import Grid
from morphbox.kernels import envelope as env
from morphbox.kernels.features import DB_FLOOR, envelope_interp
from morphbox.kernels.limiter import SoftLimiter
from morphbox.kernels.noise import NoiseSynth
from morphbox.kernels.oscillator import (
    MAX_PARTIALS,
    TABLE_MAX,
    WavetableBank,
    band_edges_hz,
    partial_gains,
    phase_increment,
    read_crossfade,
    table_shifts,
    table_sizes,
)
from morphbox.kernels.sustain import loop_time

_NOTE_ON, _NOTE_OFF, _ALL_NOTES_OFF, _ALL_SOUND_OFF, _VOICE = range(5)
_PITCH_MIN, _PITCH_MAX = -60.0, 135.0  # played pitch clamp, MIDI (135 is ~19.9 kHz)
_NAN = float("nan")


@dataclass(frozen=True)
class EngineConfig:
    """Engine settings.

    Attributes:
        sample_rate: Hz. block_size: frames per block (128 default; 64 works).
        channels: output channels (the mono mix is copied to each).
        max_voices: notes sounding at once before stealing; fade_voices: spare slots for
        stolen voices fading out; steal_fade_s: that fade, seconds.
        morph_smoothing_s: time constant of the morph/bend/volume smoothing, seconds (the
            per-voice morph positions too).
        expression_smoothing_s: time constant of each voice's own bend and pressure,
            seconds (short, so MPE vibrato keeps its depth).
        voice_gain: linear gain of one full-velocity voice before the limiter.
        seed: noise seed (offline renders are deterministic).
        kernel: the render: "compiled" (numba, :mod:`morphbox.kernels.compiled`), "numpy"
            (the reference) or "auto" (compiled when numba is there); ``$MORPHBOX_ENGINE``
            overrides it (:mod:`morphbox.device.engine.compiled`).
    """

    sample_rate: int = 48000
    block_size: int = 128
    channels: int = 2
    max_voices: int = 32
    fade_voices: int = 8
    steal_fade_s: float = 0.006
    morph_smoothing_s: float = 0.03
    expression_smoothing_s: float = 0.005
    voice_gain: float = 0.5
    seed: int = 0
    kernel: str = "auto"


class Engine:
    """Polyphonic voice engine over a :class:`morphbox.device.packs.format.Grid`.

    Args:
        grid: the active morph grid.
        config: :class:`EngineConfig`.
        controls: shared :class:`morphbox.device.engine.controls.Controls` (one is made if omitted).

    Entry points for inputs (any thread, never block): :meth:`note_on`, :meth:`note_off`,
    :meth:`voice_control`, :meth:`all_notes_off`, :meth:`all_sound_off`, ``controls.*``,
    :meth:`set_grid`.
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
        self._t = np.zeros(cap, np.float64)  # seconds into the note
        self._vel = np.ones(cap, np.float64)  # velocity (1..127)
        self._vl = np.zeros(cap, np.int64)  # velocity layer below the velocity
        self._vf = np.zeros(cap, np.float32)  # fraction towards the next layer
        self._size = np.full(cap, 256, np.int64)  # table size
        self._shift = table_shifts(self._size)
        self._anchor = np.zeros(cap, np.int64)
        self._fresh = np.zeros(cap, bool)
        # per-voice expression, whole-slot arrays (updated for every slot at once: cheaper
        # than gathering the live ones): morph position (x, y) smoothed and its latched
        # target; own bend (semitones) and pressure (0..1), smoothed towards their targets;
        # timbre (CC 74, 0..1); pressure gain at the end of the last block (ramped from there)
        self._pos = np.zeros((2, cap), np.float64)
        self._latch = np.zeros((2, cap), np.float64)
        self._expr = np.zeros((2, cap), np.float64)     # [bend, pressure], smoothed
        self._ctl = np.zeros((3, cap), np.float64)      # [bend, pressure, timbre] targets
        self._ctl[2] = 0.5
        self._expr_to = self._ctl[:2]
        self._timbre = self._ctl[2]
        # channel-addressed voice controls of this block, [bend, pressure, timbre] x 16
        # channels, NaN = unchanged: applied together (one masked copy however many messages)
        self._pending = np.full((3, 16), np.nan)
        self._pending_any = False
        self._tp = np.zeros((4, cap), np.float64)       # scratch for the mpe morph targets
        self._mpe_expr = self._mpe_matrix = None
        self._pgain = np.ones(cap, np.float32)
        self._glide = 0       # blocks some voice's bend or pressure may still be gliding
        self._bend_glide = 0  # ... its bend (the pitch is recomputed meanwhile)
        self._pgain_on = False     # some voice's pressure gain may differ from 1
        self._spread = False       # follow mode: some voice is not (yet) on the touch
        # per-voice pitch: f0 (Hz), phase increment, band-limit gains, recomputed only when a
        # bend moved or a note started
        self._f0v = np.zeros(cap, np.float64)
        self._incv = np.zeros(cap, np.uint32)
        self._npart = np.zeros(cap, np.int64)  # partials below the band limit
        self._pgv = np.zeros((cap, MAX_PARTIALS), np.float32)  # band limit x droop
        self._eiv = np.zeros((cap, 0), np.int64)  # envelope band of each partial above K
        self._ewv = np.zeros((cap, 0), np.float32)  # ... and the fraction to the next one
        self._pitch_dirty = True
        self._pitch_bend = None
        self._counter = 0
        self._bank = WavetableBank()
        self._tables = np.zeros((cap, TABLE_MAX + 1), np.float32)
        self._scratch = np.zeros((cap, TABLE_MAX + 1), np.float32)
        self._noise = NoiseSynth(cfg.block_size, grid.n_noise_bands, cfg.sample_rate,
                                 grid.source_rate, seed=cfg.seed)
        self._limiter = SoftLimiter(cfg.block_size, cfg.sample_rate)
        self._events: deque = deque()
        self._dt = cfg.block_size / cfg.sample_rate
        self._smooth = float(1.0 - np.exp(-self._dt / max(cfg.morph_smoothing_s, 1e-4)))
        self._smooth_expr = float(1.0 - np.exp(-self._dt
                                               / max(cfg.expression_smoothing_s, 1e-4)))
        # blocks until a glide is within 1e-7 of its jump (then it lands on its target)
        self._glide_len = int(np.ceil(np.log(1e-7) / np.log1p(-min(self._smooth_expr, 0.999))))
        self._ramp = (np.arange(1, cfg.block_size + 1) / cfg.block_size).astype(np.float32)
        snap = self.controls.snapshot
        self._x, self._y, self._bend, self._volume = snap.x, snap.y, snap.bend, snap.volume
        self._mode = snap.morph_mode
        self._spread = self._mode != "follow"
        self._log2k = np.log2(np.arange(1, MAX_PARTIALS + 1)).astype(np.float32)
        self._out = np.zeros((cfg.block_size, cfg.channels), np.float32)
        self._taps: tuple = ()
        self.blocks = 0
        self.nonfinite_blocks = 0  # blocks that came out NaN/inf and were played as silence
        # the render after the block's inputs are gathered: numpy (below) or compiled (one
        # kernel call; it moves the per-voice arrays above into its arena)
        self._render = self._render_numpy
        #: "compiled" or "numpy": which render this engine uses
        self.kernel = attach_render(self)

    # ---- input entry points (producer threads) -------------------------------------------
    def note_on(self, note: int, velocity: int, channel: int = 0, bend: float = 0.0,
                pressure: float = 0.0, timbre: float = 0.5) -> None:
        """Start ``note`` (MIDI 0..127) at ``velocity`` (1..127; 0 means note off).

        ``bend``: the voice's own pitch bend, semitones, added to the global bend (an MPE
        member channel's bend); ``pressure`` 0..1 and ``timbre`` 0..1 (CC 74 / 127): the
        voice's starting expression (a member channel's state before the note). Values are
        clipped; a non-finite one is replaced by its default.
        """
        if velocity <= 0:
            self.note_off(note, channel)
        else:
            self._events.append((_NOTE_ON, int(note) & 127, min(int(velocity), 127),
                                 int(channel), _finite(bend, 0.0, -96.0, 96.0),
                                 _finite(pressure, 0.0, 0.0, 1.0),
                                 _finite(timbre, 0.5, 0.0, 1.0)))

    def note_off(self, note: int, channel: int = 0) -> None:
        """Release every held voice of ``note`` on ``channel`` (its ADSR release starts)."""
        self._events.append((_NOTE_OFF, int(note) & 127, 0, int(channel)))

    def voice_control(self, channel: int, note: int | None = None, *,
                      bend: float | None = None, pressure: float | None = None,
                      timbre: float | None = None) -> None:
        """Set per-voice expression of every sounding voice (held or releasing) on
        ``channel``, or only those of ``note`` on it (polyphonic aftertouch).

        ``bend``: semitones added to the global bend (-96..96); ``pressure``, ``timbre``:
        0..1. None leaves a value as it is; values are clipped, non-finite ones ignored.
        Bend and pressure are smoothed per voice (``expression_smoothing_s``), the morph
        position a timbre/pressure change moves (``mpe`` mode) by ``morph_smoothing_s``.
        """
        self._events.append((_VOICE, -1 if note is None else int(note) & 127, 0,
                             int(channel), _finite(bend, _NAN, -96.0, 96.0),
                             _finite(pressure, _NAN, 0.0, 1.0),
                             _finite(timbre, _NAN, 0.0, 1.0)))

    def all_notes_off(self) -> None:
        """Release every voice (MIDI CC 123)."""
        self._events.append((_ALL_NOTES_OFF, 0, 0, 0))

    def all_sound_off(self) -> None:
        """Fade every voice out within ``steal_fade_s`` (MIDI CC 120)."""
        self._events.append((_ALL_SOUND_OFF, 0, 0, 0))

    def set_grid(self, grid: Grid) -> None:
        """Swap in another grid; takes effect at the next block boundary."""
        if (grid.n_harmonics, grid.n_envelope, grid.n_noise_bands) != (
                self.grid.n_harmonics, self.grid.n_envelope, self.grid.n_noise_bands):
            raise ValueError("new grid has a different number of harmonics, envelope or "
                             "noise bands")
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

    def voice_positions(self) -> np.ndarray:
        """``(voices, 2)`` float64 morph positions ``(x, y)`` (0..1) of the sounding voices,
        oldest note first, as of the last rendered block (for displays and tests; read from
        another thread it may mix two blocks)."""
        live = np.flatnonzero(self._stage)
        live = live[np.argsort(self._age[live], kind="stable")]
        if not self._spread:  # follow mode, every voice on the touch
            return np.tile([self._x, self._y], (len(live), 1))
        return self._pos[:, live].T.copy()

    # ---- the audio thread ------------------------------------------------------------------
    def _start_voice(self, note: int, velocity: int, channel: int, bend: float,
                     pressure: float, timbre: float) -> None:
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
        self._vel[slot] = velocity
        self._age[slot] = self._counter
        self._held[slot] = True
        self._phase[slot] = 0
        grid = self.grid
        self._t[slot] = self.controls.snapshot.position * grid.frame_times[grid.loop_start]
        self._anchor[slot] = np.argmin(np.abs(grid.anchors - note))
        self._set_velocity(grid, np.array([slot]))
        pitch = min(max(note + bend + self._bend, _PITCH_MIN), _PITCH_MAX)
        self._size[slot] = table_sizes(np.array([440.0 * 2.0 ** ((pitch - 69.0) / 12.0)]),
                                       self.config.sample_rate)[0]
        self._shift[slot] = table_shifts(self._size[slot:slot + 1])[0]
        self._fresh[slot] = True
        # expression: the voice starts where its mode puts it (no glide in from elsewhere)
        snap = self.controls.snapshot
        x, y = self._x, self._y  # the smoothed touch
        self._latch[:, slot] = x, y
        if snap.morph_mode == "mpe":
            x, y = _mpe_position(x, y, timbre, pressure, snap.expression)
        self._pos[:, slot] = x, y
        self._expr[:, slot] = self._expr_to[:, slot] = bend, pressure
        self._timbre[slot] = timbre
        self._pgain[slot] = _pressure_gain(pressure, snap.expression.pressure_loudness)
        self._pitch_dirty = True

    def _voice_event(self, note: int, channel: int, bend: float, pressure: float,
                     timbre: float) -> None:
        hit = (self._stage != env.IDLE) & (self._channel == channel)
        if note >= 0:
            hit &= self._note == note
        if bend == bend:  # not NaN
            self._expr_to[0, hit] = bend
            self._glide = self._bend_glide = self._glide_len
        if pressure == pressure:
            self._expr_to[1, hit] = pressure
            self._glide = self._glide_len
        if timbre == timbre:
            self._timbre[hit] = timbre

    def _flush_pending(self) -> None:
        """Apply the block's channel-addressed voice controls to every sounding voice on
        those channels, in one masked copy."""
        p = self._pending
        vals = p[:, self._channel]
        ok = vals == vals  # not NaN
        ok &= self._stage != env.IDLE
        np.copyto(self._ctl, vals, where=ok)
        p.fill(np.nan)
        self._pending_any = False

    def _drain_events(self) -> None:
        events = self._events
        pending = self._pending
        while events:
            ev = events.popleft()
            kind, note, velocity, channel = ev[:4]
            if kind == _VOICE:
                if note < 0 and 0 <= channel < 16:  # by channel: coalesced, in message order
                    bend, pressure, timbre = ev[4:]
                    if bend == bend:  # not NaN
                        pending[0, channel] = bend
                        self._glide = self._bend_glide = self._glide_len
                    if pressure == pressure:
                        pending[1, channel] = pressure
                        self._glide = self._glide_len
                    if timbre == timbre:
                        pending[2, channel] = timbre
                    self._pending_any = True
                    continue
                if self._pending_any:
                    self._flush_pending()
                self._voice_event(note, channel, *ev[4:])
                continue
            if self._pending_any and kind == _NOTE_ON:
                self._flush_pending()  # what came before a note-on does not reach it
            if kind == _NOTE_ON:
                self._start_voice(note, velocity, channel, *ev[4:])
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
        if self._pending_any:
            self._flush_pending()

    def _set_velocity(self, grid: Grid, slots: np.ndarray) -> None:
        """Velocity layer, fraction and DLS gain (outside the layers) of ``slots``."""
        layers = grid.velocity_layers
        v = self._vel[slots]
        pos = np.interp(v, layers, np.arange(len(layers), dtype=np.float64))
        l0 = np.minimum(pos.astype(np.int64), max(len(layers) - 2, 0))
        self._vl[slots] = l0
        self._vf[slots] = np.minimum(pos - l0, 1.0) if len(layers) > 1 else 0.0
        edge = np.clip(v, layers[0], layers[-1])
        self._gain[slots] = (v / edge) ** 2

    def _adopt_grid(self, grid: Grid) -> None:
        """A new grid arrived: re-pick anchors and velocity layers of live voices."""
        self._anchor[:] = np.argmin(np.abs(grid.anchors[None, :] - self._note[:, None]), axis=1)
        self._set_velocity(grid, np.arange(len(self._vel)))
        # rows of (point, anchor, frame), (point, anchor), (point, anchor, layer): views of
        # the C-contiguous arrays Grid makes
        c = grid.frames_db.shape[-1]
        self._flat = grid.frames_db.reshape(-1, c)
        self._flat_decay = grid.decay_db.reshape(-1, c)
        self._flat_hold = grid.hold.reshape(-1)
        self._flat_vel = grid.velocity_db.reshape(-1, c)
        self._loop_s = (float(grid.frame_times[grid.loop_start]),
                        float(grid.frame_times[grid.loop_end]))
        self._frame_index = np.arange(grid.n_frames, dtype=np.float64)
        self._grid_seen = grid
        self._pitch_dirty = True

    def render_block(self) -> np.ndarray:
        """Render one block: ``(block_size, channels)`` float32 in -1..1 (a reused buffer)."""
        self._drain_events()
        grid = self.grid
        if grid is not self._grid_seen:
            self._adopt_grid(grid)
        snap = self.controls.snapshot
        if snap.morph_mode != self._mode:  # before the touch moves: voices were on _x, _y
            self._change_mode(snap.morph_mode)
        a = self._smooth
        self._x += (snap.x - self._x) * a
        self._y += (snap.y - self._y) * a
        if self._bend != snap.bend:
            self._bend += (snap.bend - self._bend) * a
            if abs(snap.bend - self._bend) < 1e-4:
                self._bend = snap.bend
        vol0 = self._volume
        self._volume = vol1 = vol0 + (snap.volume - vol0) * a
        self._render(grid, snap, vol0, vol1)
        self.blocks += 1
        for tap in self._taps:
            tap(self._out)
        return self._out

    def _render_numpy(self, grid: Grid, snap, vol0: float, vol1: float) -> None:
        """The reference render: every voice, noise, volume ramp ``vol0 -> vol1``, limiter,
        into ``self._out`` (inputs gathered by :meth:`render_block`)."""
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
            self._noise.reset()  # its overlap-add tail carries the bad values on
        self._limiter.process(mono)
        self._out[:] = mono[:, None]

    def _change_mode(self, mode: str) -> None:
        if not self._spread:  # the voices were all on the (smoothed) touch
            self._pos[0] = self._x
            self._pos[1] = self._y
        if mode == "latch":  # sounding voices stay where they are now
            self._latch[:] = self._pos
        self._spread = True  # follow mode clears it once every voice has reached the touch
        self._mode = mode

    def _positions(self, live: np.ndarray, snap) -> tuple:
        """Smooth each voice's morph position towards its mode's target; returns the live
        voices', ``(voices,)`` x and y, or the smoothed touch (two floats) while every voice
        is on it (``follow`` mode)."""
        mode = snap.morph_mode
        if mode == "follow" and not self._spread:
            return self._x, self._y
        pos = self._pos
        if mode == "latch":
            target = self._latch
        elif mode == "mpe":
            e = snap.expression
            if e is not self._mpe_expr:
                self._mpe_expr = e
                self._mpe_matrix = np.array([[e.timbre_x, e.pressure_x, 1.0, 0.0],
                                             [e.timbre_y, e.pressure_y, 0.0, 1.0]])
            tp = self._tp  # [timbre - centre, pressure, touch x, touch y]
            np.subtract(self._timbre, e.timbre_centre, out=tp[0])
            tp[1] = self._expr_to[1]
            tp[2] = snap.x
            tp[3] = snap.y
            target = self._mpe_matrix @ tp
            np.minimum(np.maximum(target, 0.0, out=target), 1.0, out=target)
        else:
            target = np.array([[snap.x], [snap.y]])
        d = target - pos
        pos += d * self._smooth
        np.copyto(pos, target, where=np.abs(d) < 1e-12)  # arrived: no tail into denormals
        xy = pos[:, live]
        if mode == "follow" and np.abs(xy - [[self._x], [self._y]]).max() < 1e-9:
            self._spread = False  # all arrived: back on the shared touch from the next block
        return xy[0], xy[1]

    def _smooth_expression(self) -> None:
        """One-pole step of every voice's bend and pressure towards its target, for
        ``_glide_len`` blocks after the last change; then they land on it (no endless tail,
        no denormals)."""
        x = self._expr
        self._glide -= 1
        if self._glide:
            x += (self._expr_to - x) * self._smooth_expr
        else:
            x[:] = self._expr_to
            self._pitch_dirty = True
        if self._bend_glide:
            self._bend_glide -= 1
            self._pitch_dirty = True

    def _update_pitch(self, grid: Grid) -> None:
        """f0 (Hz), phase increments, partial count, partial gains (band limit, table
        headroom, droop) and envelope interpolation of every voice at its played pitch:
        note + global bend + own bend (clamped to MIDI -60..135)."""
        sr = self.config.sample_rate
        pitch = self._note + (self._expr[0] + self._bend)
        np.minimum(np.maximum(pitch, _PITCH_MIN, out=pitch), _PITCH_MAX, out=pitch)
        self._f0v = f0 = 440.0 * np.exp2((pitch - 69.0) / 12.0)
        self._incv = phase_increment(f0, sr)
        k = grid.n_harmonics
        cap = MAX_PARTIALS if grid.n_envelope else min(k, MAX_PARTIALS)
        top = np.floor(band_edges_hz(sr)[1] / f0).astype(np.int64)
        self._npart = np.minimum(np.minimum(top, cap), (0.3 * self._size).astype(np.int64))
        self._pgv = partial_gains(f0, self._size, MAX_PARTIALS, sr)
        if grid.n_envelope and MAX_PARTIALS > k:
            self._eiv, self._ewv = envelope_interp(f0, k + 1, MAX_PARTIALS - k, grid.n_envelope)
        self._pitch_dirty = False
        self._pitch_bend = self._bend

    def _render_voices(self, grid: Grid, live: np.ndarray, snap) -> np.ndarray:
        cfg = self.config
        env_start = self._level[live]
        env.advance_adsr(self._stage, self._level, self._dt, snap.attack_s, snap.decay_s,
                         snap.sustain, snap.release_s, cfg.steal_fade_s)
        env_end = self._level[live]
        expr = snap.expression
        if self._glide:
            self._smooth_expression()
        # timbre: each voice's 4 neighbouring grid points (bilinear) and 2 frames, in dB,
        # plus its velocity layers and, past the loop end, the decay of its passes
        vx, vy = self._positions(live, snap)
        t = self._t[live] + self._dt  # the block's tables are the note at the block's end,
        tt, past_a, past_b = loop_time(t, *self._loop_s)  # crossfaded from its start
        fpos = np.interp(tt, grid.frame_times, self._frame_index)
        i0 = np.minimum(fpos.astype(np.int64), grid.n_frames - 2)
        fr = fpos - i0
        frames_db = _mix_voices(self._flat, grid.frames_db.shape, vx, vy, self._anchor[live],
                                i0, fr, self._flat_vel, grid.velocity_db.shape[3],
                                self._vl[live], self._vf[live],
                                self._flat_decay if past_a.max() > 0.0 else None,
                                (past_a, past_b), self._flat_hold, grid.loop_end)
        k, e = grid.n_harmonics, grid.n_envelope
        if self._pitch_dirty or self._bend != self._pitch_bend:
            self._update_pitch(grid)
        # every partial's level (dB): its own for the first K, the envelope's above
        m = int(self._npart[live].max())
        if m > k:
            ei = self._eiv[live, :m - k]
            ei += (np.arange(len(live)) * frames_db.shape[1] + k)[:, None]  # flat rows
            flat = frames_db.reshape(-1)
            lo = flat.take(ei)
            hi = flat.take(ei + 1)
            hi -= lo
            hi *= self._ewv[live, :m - k]
            lo += hi
            amps_db = np.concatenate([frames_db[:, :k], lo], axis=1)
        else:
            amps_db = frames_db[:, :max(m, 1)]
        if expr.pressure_brightness > 0.0:  # tilt: -d (1 - p) log2(k) dB
            dark = expr.pressure_brightness * (1.0 - self._expr[1, live])
            amps_db = amps_db - dark[:, None].astype(np.float32) * self._log2k[:amps_db.shape[1]]
        floor = np.float32(DB_FLOOR)
        audible = amps_db > floor  # the floor (code 0) and below is silence, as in kernels.synth
        amps_db = amps_db * np.float32(np.log(10.0) / 20.0)  # dB -> nepers
        amps = np.exp(amps_db)
        amps *= audible
        amps *= self._pgv[live, :amps.shape[1]]
        sizes = self._size[live]
        tables = self._bank.build(amps, sizes, self._scratch[:len(live)])
        fresh = self._fresh[live]
        prev = self._tables[live]
        if fresh.any():  # a new note fades in over its first block (its attack's first part)
            prev[fresh] = 0.0
            self._fresh[live] = False
        inc = self._incv[live]
        phase = self._phase[live]
        wave = read_crossfade(prev, tables, phase, inc, cfg.block_size, self._ramp,
                              self._shift[live])
        gain = self._gain[live] * np.float32(cfg.voice_gain)
        end = env_end * gain
        if expr.pressure_loudness > 0.0 or self._pgain_on:
            g1 = _pressure_gain(self._expr[1, live].astype(np.float32),
                                expr.pressure_loudness)
            start = env_start * gain * self._pgain[live]
            end *= g1
            self._pgain[live] = g1
            self._pgain_on = expr.pressure_loudness > 0.0
            amp = start[:, None] + (end - start)[:, None] * self._ramp
        else:
            amp = (env_start * gain)[:, None] + ((env_end - env_start) * gain)[:, None] \
                * self._ramp
        wave *= amp
        mono = wave.sum(axis=0)
        noise_db = frames_db[:, k + e:]
        band = np.exp(noise_db * np.float32(np.log(10.0) / 20.0)) * end[:, None]
        band *= noise_db > floor
        mono += self._noise.render(np.einsum("vb,vb->b", band, band))
        # advance oscillator and note time
        self._tables[live] = tables
        self._phase[live] = phase + inc * np.uint32(cfg.block_size)
        self._t[live] = t
        return mono


_WEIGHT_FLOOR = 1e-9  # bilinear/frame factors below are 0: products stay clear of denormals


def _mix_voices(flat: np.ndarray, shape: tuple, x: np.ndarray, y: np.ndarray,
                anchor: np.ndarray, i0: np.ndarray, fr: np.ndarray,
                flat_vel: np.ndarray | None = None, n_layers: int = 1,
                layer: np.ndarray | None = None, layer_fr: np.ndarray | None = None,
                flat_decay: np.ndarray | None = None, past: tuple | None = None,
                flat_hold: np.ndarray | None = None, loop_end: int = 0) -> np.ndarray:
    """Each voice's bilinear grid look-up, ``(voices, bins)`` float32 dB.

    ``flat``: :attr:`Grid.frames_db` ``(G, G, anchors, frames, bins)`` viewed as
    ``(G * G * anchors * frames, bins)``, ``shape`` its 5-d shape; ``x``, ``y`` ``(voices,)``
    morph positions 0..1 (or two floats: every voice at one position); ``anchor``, ``i0``
    ``(voices,)`` pitch anchor and first frame;
    ``fr`` ``(voices,)`` fraction towards frame ``i0 + 1``. Voice v mixes the 4 points of its
    cell with the weights of :func:`morphbox.kernels.grid.grid_cell` at ``(x[v], y[v])`` and
    its two frames linearly: one gather of ``(voices, 8, bins)`` rows and one batched
    ``(1, 8) @ (8, bins)`` product. Factors under 1e-9 count as 0 (a voice close to a grid
    line), which keeps the products out of denormal floats (a 10x slower matmul on x86).

    With ``flat_vel`` (:attr:`Grid.velocity_db` viewed as ``(G * G * anchors * layers,
    bins)``, ``n_layers`` layers), each voice's layers ``layer`` and ``layer + 1`` are added,
    mixed by ``layer_fr`` (a second ``(1, 8) @ (8, bins)``). With ``flat_decay``
    (:attr:`Grid.decay_db` as ``(G * G * anchors * 2, bins)``), ``past = (a, b)``
    ``(voices,)`` seconds by which each point's decay rate and loop slope are multiplied
    (:func:`morphbox.kernels.sustain.loop_time`; a third ``(1, 8) @ (8, bins)``), and
    ``flat_hold`` (:attr:`Grid.hold`, flat) each point's hold weight: a voice past the loop
    end takes that share of each point from its frame ``loop_end`` instead of the loop (and
    none of its loop slope; the gather grows to 12 rows).
    """
    size, _, n_anchors, n_frames, bins = shape
    n = len(anchor)
    fx = np.minimum(np.maximum(x, 0.0), 1.0) * (size - 1)
    fy = np.minimum(np.maximum(y, 0.0), 1.0) * (size - 1)
    ix0 = np.minimum(fx.astype(np.int64), size - 2)
    iy0 = np.minimum(fy.astype(np.int64), size - 2)
    f = np.empty((3, 2, n))  # (y, x, frame) factors, (1 - a, a)
    np.subtract(fy, iy0, out=f[0, 1])
    np.subtract(fx, ix0, out=f[1, 1])
    f[2, 1] = fr
    np.subtract(1.0, f[:, 1], out=f[:, 0])
    f[f < _WEIGHT_FLOOR] = 0.0
    w4 = (f[0][:, None, None] * f[1][None, :, None]).reshape(4, n)  # points, row order
    point = (iy0 * size + ix0) * n_anchors + anchor  # (point, anchor) row of the cell's NW
    corners = np.array([0, 1, size, size + 1]) * n_anchors
    cell = point[:, None] + corners  # (voices, 4) rows of (point, anchor)
    beta = None
    if flat_decay is not None and flat_hold is not None:
        beta = flat_hold.take(cell) * (np.asarray(past[0]) > 0.0)[:, None]  # (voices, 4)
        if not beta.any():
            beta = None
    loop_w = w4 if beta is None else w4 * (1.0 - beta.T)
    w = (loop_w[:, None] * f[2][None]).reshape(8, n).T
    rows = (cell * n_frames + i0[:, None])[:, :, None] + np.array([0, 1])  # (voices, 4, 2)
    rows = rows.reshape(n, 8)
    if beta is not None:  # past the loop end, held notes play their last frame
        w = np.concatenate([w, (w4 * beta.T).T], axis=1)
        rows = np.concatenate([rows, cell * n_frames + loop_end], axis=1)
    k = rows.shape[1]
    rows = flat.take(rows.ravel(), axis=0).reshape(n, k, bins)
    out = np.matmul(w.astype(np.float32)[:, None, :], rows).reshape(n, bins)
    if flat_vel is not None:
        lf = np.empty((2, n), np.float64)
        lf[1] = layer_fr
        lf[0] = 1.0 - lf[1]
        lf[lf < _WEIGHT_FLOOR] = 0.0
        wl = (w4[:, None] * lf[None]).reshape(8, n).T.astype(np.float32)[:, None, :]
        vrows = np.empty((n, 4, 2), np.int64)
        vrows[:, :, 0] = cell * n_layers + layer[:, None]
        np.add(vrows[:, :, 0], (layer < n_layers - 1)[:, None], out=vrows[:, :, 1])
        vrows = flat_vel.take(vrows.ravel(), axis=0).reshape(n, 8, bins)
        out += np.matmul(wl, vrows).reshape(n, bins)
    if flat_decay is not None:
        ab = np.stack([w4 * past[0], (w4 if beta is None else loop_w) * past[1]], axis=1)
        wd = ab.reshape(8, n).T.astype(np.float32)[:, None, :]  # (point, [r, s]) order
        drows = (cell * 2)[:, :, None] + np.array([0, 1])
        drows = flat_decay.take(drows.ravel(), axis=0).reshape(n, 8, bins)
        out += np.matmul(wd, drows).reshape(n, bins)
    return out


def _mpe_position(x, y, timbre, pressure, expr) -> tuple:
    """The ``mpe`` morph mode: touch ``(x, y)`` moved by ``timbre`` and ``pressure`` (0..1,
    scalars or ``(voices,)``) through :class:`Expression`, clipped to 0..1."""
    t = timbre - expr.timbre_centre
    px = np.clip(x + expr.timbre_x * t + expr.pressure_x * pressure, 0.0, 1.0)
    py = np.clip(y + expr.timbre_y * t + expr.pressure_y * pressure, 0.0, 1.0)
    return px, py


def _pressure_gain(pressure, depth: float):
    """Voice gain from pressure (0..1): ``1 - depth + depth * pressure``."""
    return np.float32(1.0 - depth) + np.float32(depth) * pressure


def _finite(v, default: float, lo: float, hi: float) -> float:
    """``v`` as a float clipped to lo..hi; ``default`` if it is None or not finite."""
    if v is None:
        return default
    v = float(v)
    if not math.isfinite(v):
        return default
    return min(max(v, lo), hi)


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
