"""The audio process: the engine's render and its output stream in a process of their own.

On the box the render and the PyAudio stream (or the paced null output) run in a dedicated
process that no other Python thread shares a GIL with: the service process keeps MIDI, the
control loop, the OLED, the HTTP API, the recorder and the grid rebuilds (TFLite), and talks
to the audio process only through shared memory (:mod:`morphbox.device.engine.shm`):

========================  ==========================  =========================================
what                      how                         direction
========================  ==========================  =========================================
note events, commands     :class:`~.shm.Ring` of      service -> audio; drained at each block
                          :data:`EVENT` records       start, in order (a full ring drops and
                                                      counts, never blocks)
control snapshot          :class:`~.shm.SeqLock`      service -> audio; every field of
                          (:class:`ControlCodec`)     :class:`~.controls.ControlState`, read
                                                      when its version changed
a new grid                a segment per grid          service -> audio; loaded by the audio
                          (:func:`~.shm.put_object`)  process's loader thread, swapped in at a
                          + a generation mailbox      block boundary; at most two segments live
                                                      (playing, next): a double buffer
taps (the recorder)       :class:`~.shm.Ring` of      audio -> service; only while a tap is
                          blocks + render time        registered
stats                     :class:`~.shm.Counters`     audio -> service: blocks, late, xruns,
                                                      errors, max/total render, voices, real-
                                                      time status, grid generation playing
========================  ==========================  =========================================

Per-voice expression (MPE): an :data:`EVENT` record carries a channel, a note and four
float64 values beside the velocity: a note-on's own bend, pressure and timbre, and a
``voice_control`` (by channel, or by channel and note; NaN = unchanged) travel as they are;
:class:`ControlCodec` packs every field of :class:`~.controls.ControlState` including the
morph mode and the :class:`~.controls.Expression` mapping; the voices' morph positions come
back through a seqlock when asked for (:meth:`AudioProcess.voice_positions`).

The audio process (:func:`audio_main`) asks for ``SCHED_FIFO`` at ``rt_priority`` and for
``mlockall`` (:func:`request_realtime`), and logs plainly when it cannot (no privileges: it
runs on at normal priority). The thread that renders is made SCHED_FIFO at its first block if
the output's library created it otherwise (libjack does, with a JACK server without real-time;
a real-time JACK server's own priority is kept). The render thread never takes a lock, never
reads a file, never logs; a loader thread, one real-time priority below it (so that other
processes cannot preempt it while it holds the GIL the render needs), maps new grids and
watches the service. If the service dies the audio process exits (within
:data:`CLOSE_TIMEOUT_S` of noticing, even when its output's close hangs); if the audio process dies
the service restarts it (:class:`AudioProcess`): the new one starts with no voices sounding
(the rings are reset, so no stale note-on replays and no note can hang) and the current
controls and grid.

:class:`AudioProcess` is the service side. It has the engine's public API (``note_on``,
``note_off``, ``all_notes_off``, ``all_sound_off``, ``controls``, ``set_grid``, ``grid``,
``add_tap``/``remove_tap``, ``config``, ``active_voices``, ``blocks``) and an output's life cycle
(``start``, ``stop``/``close``, ``stats``, ``device_name``), so the service, the MIDI router,
the recorder and the API use it exactly like the in-process
:class:`morphbox.device.engine.voices.Engine` + :class:`morphbox.device.engine.audio.
AudioStream` pair, which stays for offline rendering, tests and ``--audio-process no``. With
``output="manual"`` nothing is paced: :meth:`AudioProcess.render_block` renders one block in
the audio process and returns it (offline comparison with the in-process engine).

Processes are started with multiprocessing's ``forkserver`` (a clean, single-threaded server
that has imported this module once, so a restart takes milliseconds), else ``spawn``.

Owns: the audio process and the shared-memory protocol. Imports: numpy, the standard library,
:mod:`morphbox.device.engine` (voices, controls, audio, shm) and
:mod:`morphbox.device.packs.format` (types only).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import struct
import sys
import threading
import time
import types
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from morphbox.device.engine import shm
from morphbox.device.engine.audio import AudioError, AudioStats, AudioStream, PacedNullOutput
from morphbox.device.engine.controls import Controls, ControlState
from morphbox.device.engine.voices import Engine, EngineConfig

log = logging.getLogger("morphbox.audio")

__all__ = ["AudioProcess", "AudioProcessConfig", "ControlCodec", "EVENT", "audio_main",
           "lower_thread_priority", "request_realtime"]

# ---- records ------------------------------------------------------------------------------

#: An event record: kind, note, velocity, channel (uint8), count (uint32), four float64 values
#: (per-voice expression: a note-on's bend, pressure and timbre; a voice control's bend,
#: pressure and timbre, NaN = unchanged; one spare).
EVENT = struct.Struct("<BBBBIdddd")
NOTE_ON, NOTE_OFF, ALL_NOTES_OFF, ALL_SOUND_OFF, RENDER, VOICE = 1, 2, 3, 4, 5, 6
_ANY_NOTE = 255  # a voice control for every note of the channel
EVENT_CAPACITY = 4096  # 4 s of a 1000 messages/s storm if the audio process stalled
CLOSE_TIMEOUT_S = 2  # the audio process ends this long after it was told to, whatever hangs

_GRID_MSG = struct.Struct("<Q112s")  # generation, segment name
_TEXT = struct.Struct("<240s")  # device name / error text
_TAP_HDR = struct.Struct("<dQ")  # perf_counter at the end of the render, block index
TAP_SECONDS = 0.75  # audio the tap ring holds between the service's drains

#: Words the audio process writes (stats and state).
_STATS = ("blocks", "late_blocks", "xruns", "errors", "max_render_s", "render_s_total",
          "voices", "engine_blocks", "pid", "boot", "ready", "realtime", "rt_priority",
          "mlocked", "grid_generation", "last_block_time", "events", "output_latency_s",
          "controls_version", "nonfinite_blocks", "kernel_compiled", "kernel_load_s",
          "kernel_cached", "kernel_warm_s")
#: Words the service writes (requests).
_FLAGS = ("taps", "stop", "service_pid", "positions")


class ControlCodec:
    """:class:`ControlState` <-> one fixed-size record.

    Numbers become float64 (bool and int fields come back as such), a tuple field (per-channel
    data) as many float64 as its default has elements, a string field 32 bytes of UTF-8 (a
    mode name), and a nested dataclass field (:class:`~.controls.Expression`) its own fields
    in turn. The layout follows the dataclass, so a field added to :class:`ControlState` is
    carried without changes here.
    """

    _STR = 32

    def __init__(self, state_type=ControlState):
        self.state_type = state_type
        self._fields = self._plan(state_type)
        self.struct = struct.Struct("<" + self._format(self._fields))

    @classmethod
    def _format(cls, plan) -> str:
        return "".join(cls._format(sub) if sub is not None else
                       f"{cls._STR}s" if kind is str else "d" * width
                       for _, kind, width, sub in plan)

    @classmethod
    def _plan(cls, dc) -> list:
        """[(name, kind, width, sub-plan)] of dataclass ``dc`` (from its default instance)."""
        default = dc()
        plan = []
        for f in dataclasses.fields(dc):
            v = getattr(default, f.name)
            if dataclasses.is_dataclass(v):
                plan.append((f.name, type(v), 0, cls._plan(type(v))))
            elif isinstance(v, tuple):
                plan.append((f.name, tuple, len(v), None))
            elif isinstance(v, str):
                plan.append((f.name, str, 1, None))
            else:
                plan.append((f.name, type(v), 1, None))
        return plan

    def encode(self, state) -> tuple:
        out: list = []
        self._encode(state, self._fields, out)
        return tuple(out)

    def _encode(self, obj, plan, out: list) -> None:
        for name, kind, width, sub in plan:
            v = getattr(obj, name)
            if sub is not None:
                self._encode(v, sub, out)
            elif kind is tuple:
                vals = [float(x) for x in tuple(v)[:width]]
                out.extend(vals + [0.0] * (width - len(vals)))
            elif kind is str:
                out.append(str(v).encode("utf-8")[:self._STR])
            else:
                out.append(float(v))

    def decode(self, values) -> ControlState:
        state, _ = self._decode(self.state_type, self._fields, values, 0)
        return state

    def _decode(self, dc, plan, values, i: int):
        kw = {}
        for name, kind, width, sub in plan:
            if sub is not None:
                kw[name], i = self._decode(kind, sub, values, i)
                continue
            if kind is tuple:
                kw[name] = tuple(values[i:i + width])
                i += width
                continue
            v = values[i]
            i += 1
            if kind is str:
                kw[name] = v.rstrip(b"\0").decode("utf-8", "replace")
            elif kind is bool:
                kw[name] = bool(v)
            elif kind is int:
                kw[name] = int(v)
            else:
                kw[name] = float(v)
        return dc(**kw), i


# ---- real-time scheduling -----------------------------------------------------------------

_MCL_CURRENT, _MCL_FUTURE, _MCL_ONFAULT = 1, 2, 4  # <sys/mman.h>, Linux (x86, arm, aarch64)


@dataclass(frozen=True)
class RealtimeStatus:
    """What :func:`request_realtime` obtained: ``fifo`` (SCHED_FIFO at ``priority``),
    ``mlocked`` (mlockall), and the reasons when not."""

    fifo: bool
    priority: int
    mlocked: bool
    fifo_error: str = ""
    mlock_error: str = ""


def request_realtime(priority: int, lock_memory: bool = True) -> RealtimeStatus:
    """Ask for ``SCHED_FIFO`` at ``priority`` (1..99; 0 = do not ask) for the calling thread
    (threads it creates afterwards inherit it) and ``mlockall(MCL_CURRENT | MCL_FUTURE)``.
    Never raises: each refusal is logged at warning level with what would allow it."""
    fifo, fifo_error = False, ""
    if priority > 0:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(int(priority)))
            fifo = True
        except (OSError, AttributeError, ValueError) as exc:
            fifo_error = str(exc) or type(exc).__name__
            log.warning("audio process: SCHED_FIFO priority %d refused (%s): rendering at normal "
                        "priority; allow it with LimitRTPRIO= in the systemd unit (the box's "
                        "morphbox.service sets 95), an rtprio limit in "
                        "/etc/security/limits.d for the audio group, or CAP_SYS_NICE",
                        priority, fifo_error)
    mlocked, mlock_error = False, ""
    if lock_memory:
        # MCL_FUTURE only without a memlock limit: under a finite one it would make later
        # allocations (a new grid, Python's heap) fail; then lock what is mapped now
        flags = _MCL_CURRENT
        try:
            import resource
            unlimited = resource.getrlimit(resource.RLIMIT_MEMLOCK)[0] == resource.RLIM_INFINITY
        except (ImportError, OSError, ValueError):
            unlimited = False
        if unlimited or os.geteuid() == 0:
            flags |= _MCL_FUTURE
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            # MCL_ONFAULT (Linux 4.4+): lock pages as they are touched instead of filling every
            # mapping now (thread stacks, BLAS buffers: ~150 MB more on this machine); the
            # warm-up render before the output starts touches what the render uses
            for extra in (_MCL_ONFAULT, 0):
                if libc.mlockall(flags | extra) == 0:
                    mlocked = True
                    break
                mlock_error = os.strerror(ctypes.get_errno())
        except (OSError, AttributeError) as exc:
            mlock_error = str(exc)
        if not mlocked:
            log.warning("audio process: mlockall refused (%s): its memory may be paged out "
                        "under memory pressure; allow it with LimitMEMLOCK=infinity (the box's "
                        "unit sets it) or a memlock limit in /etc/security/limits.d",
                        mlock_error)
        elif not flags & _MCL_FUTURE:
            log.info("audio process: memory locked as it is now (a memlock limit is set, so "
                     "memory mapped later, e.g. new grids, is not locked)")
    return RealtimeStatus(fifo, int(priority) if fifo else 0, mlocked, fifo_error, mlock_error)


def lower_thread_priority(nice: int = 10) -> bool:
    """Make the calling thread a background thread: ``nice`` (Linux: per thread) -- for grid
    rebuilds, so the TFLite decoder yields the CPU to the audio and the inputs. Not
    ``SCHED_IDLE``: an idle-class thread holding the GIL on a busy machine would stall the
    service's MIDI thread behind it. Returns False where not possible (never raises)."""
    try:
        tid = threading.get_native_id()
        current = os.getpriority(os.PRIO_PROCESS, tid)
        if current < nice:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
        return True
    except (OSError, AttributeError):
        return False


# ---- the shared layout --------------------------------------------------------------------

@dataclass(frozen=True)
class AudioProcessConfig:
    """How the audio process runs.

    Attributes:
        output: "auto" (a device if one exists, else paced null output), "device" (must
            exist), "none" (paced null output), "manual" (no pacing: :meth:`AudioProcess.
            render_block` renders on request; tests and offline comparison).
        device, host_api: the audio output (index or name part; PortAudio host API).
        rt_priority: SCHED_FIFO priority asked for (1..99; 0: normal scheduling).
        lock_memory: ask for mlockall.
        restart: restart the audio process if it dies; restart_backoff_s: the first wait
            before a restart (doubling up to 5 s while it keeps dying within 10 s).
        start_timeout_s: how long :meth:`AudioProcess.start` waits for the process to play.
        tap_poll_s: how often the service drains the tap ring while taps are registered.
    """

    output: str = "auto"
    device: str | int | None = None
    host_api: str | None = None
    rt_priority: int = 70
    lock_memory: bool = True
    restart: bool = True
    restart_backoff_s: float = 0.5
    start_timeout_s: float = 300.0  # a cold numba cache compiles the kernels first
    tap_poll_s: float = 0.005


@dataclass
class _Layout:
    """Offsets of everything in the control segment (the same on both sides)."""

    block_size: int
    channels: int
    sample_rate: int
    controls_payload: int
    tap_capacity: int
    voices: int = 40
    offsets: dict = field(default_factory=dict)
    total: int = 0

    def __post_init__(self):
        parts = [("stats", shm.Counters.size(_STATS)), ("flags", shm.Counters.size(_FLAGS)),
                 ("controls", shm.SeqLock.size(self.controls_payload)),
                 ("grid", shm.SeqLock.size(_GRID_MSG.size)),
                 ("device", shm.SeqLock.size(_TEXT.size)),
                 ("error", shm.SeqLock.size(_TEXT.size)),
                 ("positions", shm.SeqLock.size(self.positions.size)),
                 ("events", shm.Ring.size(EVENT.size, EVENT_CAPACITY)),
                 ("taps", shm.Ring.size(self.tap_payload, self.tap_capacity))]
        pos = 0
        for name, size in parts:
            self.offsets[name] = pos
            pos += -(-size // 64) * 64
        self.total = pos

    @property
    def tap_payload(self) -> int:
        return _TAP_HDR.size + self.block_size * self.channels * 4

    @property
    def positions(self) -> struct.Struct:
        """Voice count, then (x, y) of up to ``voices`` voices (``Engine.voice_positions``)."""
        return struct.Struct(f"<d{2 * self.voices}d")


class _Shared:
    """Views of the control segment (either side)."""

    def __init__(self, seg, layout: _Layout):
        o = layout.offsets
        buf = seg.buf
        self.seg = seg
        self.stats = shm.Counters(buf, _STATS, o["stats"])
        self.flags = shm.Counters(buf, _FLAGS, o["flags"])
        self.controls = shm.SeqLock(buf, layout.controls_payload, o["controls"])
        self.grid = shm.SeqLock(buf, _GRID_MSG.size, o["grid"])
        self.device = shm.SeqLock(buf, _TEXT.size, o["device"])
        self.error = shm.SeqLock(buf, _TEXT.size, o["error"])
        self.positions = shm.SeqLock(buf, layout.positions.size, o["positions"])
        self.events = shm.Ring(buf, EVENT.size, EVENT_CAPACITY, o["events"])
        self.taps = shm.Ring(buf, layout.tap_payload, layout.tap_capacity, o["taps"])

    def release(self) -> None:
        for part in (self.stats, self.flags, self.controls, self.grid, self.device, self.error,
                     self.positions, self.events, self.taps):
            part.release()


def _text(lock: shm.SeqLock) -> str:
    r = lock.read_struct(_TEXT)
    return r[0][0].rstrip(b"\0").decode("utf-8", "replace") if r else ""


def _put_text(lock: shm.SeqLock, text: str) -> None:
    lock.write_struct(_TEXT, text.encode("utf-8")[:_TEXT.size])


class _SharedStats:
    """:class:`AudioStats`' interface over the shared counters (the audio process writes)."""

    __slots__ = ("_c",)

    def __init__(self, counters: shm.Counters):
        self._c = counters

    def _get(name):  # noqa: N805 - property factory
        return property(lambda self: int(self._c[name]),
                        lambda self, v: self._c.__setitem__(name, v))

    blocks = _get("blocks")
    late_blocks = _get("late_blocks")
    xruns = _get("xruns")
    errors = _get("errors")
    del _get

    @property
    def max_render_s(self) -> float:
        return self._c["max_render_s"]

    @max_render_s.setter
    def max_render_s(self, v: float) -> None:
        self._c["max_render_s"] = v

    def count(self, render_s: float, period_s: float) -> None:
        c = self._c
        c.add("blocks")
        c.add("render_s_total", render_s)
        if render_s > c["max_render_s"]:
            c["max_render_s"] = render_s
        if render_s > period_s:
            c.add("late_blocks")

    def snapshot(self) -> AudioStats:
        c = self._c
        return AudioStats(blocks=int(c["blocks"]), late_blocks=int(c["late_blocks"]),
                          xruns=int(c["xruns"]), max_render_s=c["max_render_s"],
                          errors=int(c["errors"]))


# ---- the audio process --------------------------------------------------------------------

@dataclass(frozen=True)
class _Spec:
    control_name: str
    layout: _Layout
    engine: EngineConfig
    config: AudioProcessConfig
    service_pid: int
    boot: int
    env: dict


class _AudioSide:
    """Inside the audio process: the engine and its feeds from shared memory."""

    def __init__(self, spec: _Spec, sh: _Shared, grid_seg, grid, generation: int):
        self.spec, self.sh = spec, sh
        self.engine = Engine(grid, spec.engine)
        self.codec = ControlCodec()
        self._ctl_version = -1
        # the grid hand-over, one swap at a time: the loader fills ``pending``; the render
        # thread swaps it in at a block start and leaves the grid it replaced in ``swapped``;
        # the loader lets go of that once the engine has rendered with the new one
        self.pending = None  # (generation, grid, segment)
        self.playing = (generation, grid, grid_seg)
        self.swapped = None
        self.zombies: list = []  # replaced segments still to unmap (views were alive)
        self._loader_lock = threading.Lock()  # never taken by a live render thread
        self._failed = 0  # the last grid generation that could not be mapped
        self._swap_block = 0
        self._calls = 0  # render calls begun (blocks rendered or failed)
        shape = (spec.engine.block_size, spec.engine.channels)
        self._tap_buf = np.zeros(spec.layout.tap_payload, np.uint8)
        self._tap_hdr = memoryview(self._tap_buf)[:_TAP_HDR.size]
        self._tap_audio = self._tap_buf[_TAP_HDR.size:].view(np.float32).reshape(shape)
        self._events = sh.events
        self._stats = sh.stats
        self._flags = sh.flags
        self._manual = spec.config.output == "manual"
        self._tap_block: np.ndarray | None = None  # a manual render waiting to be counted
        self._pos_max = spec.layout.voices
        self._pos_buf = np.zeros(1 + 2 * spec.layout.voices)
        self.rt_priority = 0  # set when SCHED_FIFO was granted: the render thread asks too
        self.render_priority = 0  # the render thread's real-time priority, once it ran
        sh.stats["grid_generation"] = generation
        self._pull_controls()

    # -- the render thread ------------------------------------------------------------------
    def apply(self, ev) -> None:
        kind, note, velocity, channel, _count, a, b, c, _d = ev
        e = self.engine
        if kind == NOTE_ON:
            e.note_on(note, velocity, channel, bend=a, pressure=b, timbre=c)
        elif kind == NOTE_OFF:
            e.note_off(note, channel)
        elif kind == VOICE:
            e.voice_control(channel, None if note == _ANY_NOTE else note,
                            bend=None if a != a else a, pressure=None if b != b else b,
                            timbre=None if c != c else c)
        elif kind == ALL_NOTES_OFF:
            e.all_notes_off()
        elif kind == ALL_SOUND_OFF:
            e.all_sound_off()
        self._stats.add("events")

    def _drain(self) -> None:
        read = self._events.read_struct
        for _ in range(512):  # bounded: the rest waits for the next block
            ev = read(EVENT)
            if ev is None:
                return
            self.apply(ev)

    def _pull_controls(self) -> None:
        lock = self.sh.controls
        if lock.version == self._ctl_version:
            return
        r = lock.read_struct(self.codec.struct)
        if r is not None:
            self.engine.controls.snapshot = self.codec.decode(r[0])
            self._ctl_version = r[1]
            self._stats["controls_version"] = r[1]

    def render(self, drain: bool = True) -> np.ndarray:
        """One block (the stream callback's ``render_block``)."""
        self._calls += 1
        if self.rt_priority:
            self._realtime_here()
        if drain:
            self._drain()
        self._pull_controls()
        p = self.pending
        if p is not None and self.swapped is None:
            self.engine.set_grid(p[1])
            self._swap_block = self._calls
            self.swapped = self.playing
            self.playing = p
            self.pending = None
            self._stats["grid_generation"] = p[0]
        block = self.engine.render_block()
        st = self._stats
        st["voices"] = self.engine.active_voices
        st["engine_blocks"] = self.engine.blocks
        st["nonfinite_blocks"] = getattr(self.engine, "nonfinite_blocks", 0)
        if self._flags["positions"]:  # someone displays them: (x, y) of every voice
            self._publish_positions()
        now = time.perf_counter()
        st["last_block_time"] = now
        if self._manual:
            self._tap_block = block  # published once the block is counted (publish_tap)
        elif self._flags["taps"]:
            self.publish_tap(block, now)
        return block

    def publish_tap(self, block: np.ndarray | None = None, now: float | None = None) -> None:
        """Send ``block`` (default: the last manual render's) to the service's tap ring. Manual
        output calls it after the block is counted, so a caller woken by the tap reads stats
        that include it."""
        if block is None:
            block, self._tap_block = self._tap_block, None
            if block is None:
                return
        _TAP_HDR.pack_into(self._tap_hdr, 0, time.perf_counter() if now is None else now,
                           self.engine.blocks)
        np.copyto(self._tap_audio, block, casting="same_kind")
        self.sh.taps.write(self._tap_buf)

    def _publish_positions(self) -> None:
        pos = self.engine.voice_positions()[:self._pos_max]
        flat = self._pos_buf
        flat[0] = len(pos)
        flat[1:1 + 2 * len(pos)] = pos.reshape(-1)
        self.sh.positions.write_struct(self.spec.layout.positions, *flat)

    def _realtime_here(self) -> None:
        """First block: make the thread that calls us SCHED_FIFO if it is not real-time yet,
        and note its priority (the loader thread goes one below it). Threads the output
        creates itself inherit SCHED_FIFO, but libjack makes its process thread with normal
        scheduling when the JACK server runs without real-time (and with JACK's own priority
        when it does: then it is left alone). Two system calls, once."""
        prio, self.rt_priority = self.rt_priority, 0
        with contextlib.suppress(OSError, AttributeError):
            if os.sched_getscheduler(0) not in (os.SCHED_FIFO, os.SCHED_RR):
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(prio))
            self.render_priority = os.sched_getparam(0).sched_priority

    # -- the loader thread ------------------------------------------------------------------
    def housekeeping(self) -> None:
        """Map a newly posted grid (hand it to the render thread) and let go of replaced ones
        once the engine has moved past them (so no unmap ever happens in the render thread).
        The loader thread calls it every 10 ms; manual output also before each render (so a
        grid set before a block plays in that block, as in the engine)."""
        with self._loader_lock:
            self._housekeeping()

    def _housekeeping(self) -> None:
        old = self.swapped
        if old is not None:
            if self._calls <= self._swap_block:
                # the render call that swapped may still run with the old grid. Counted in
                # calls, not rendered blocks: a grid whose every render raises is replaced too
                return
            self.zombies.append(old[2])
            self.swapped = old = None  # the last references to the old grid's arrays
        if self.zombies:
            self.zombies = [seg for seg in self.zombies if not _try_close(seg)]
        if self.pending is not None:
            return  # not taken yet
        r = self.sh.grid.read_struct(_GRID_MSG)
        if r is None:
            return
        gen, raw = r[0]
        if gen <= self.playing[0] or gen == self._failed:
            return
        name = raw.rstrip(b"\0").decode()
        try:
            seg = shm.attach_segment(name)
            grid = shm.get_object(seg, readonly=False)
            _prefault(grid)
        except (OSError, ValueError) as exc:  # gone already (a newer one follows), no memory
            if not isinstance(exc, FileNotFoundError):
                log.warning("grid %d (%s) cannot be mapped: %s; the current grid plays on",
                            gen, name, exc)
            self._failed = gen
            return
        self.pending = (gen, grid, seg)


def _prefault(obj) -> None:
    """Touch every page of the grid's arrays now (loader thread), not in the render."""
    for v in vars(obj).values() if hasattr(obj, "__dict__") else ():
        if isinstance(v, np.ndarray) and v.nbytes:
            flat = v.reshape(-1).view(np.uint8) if v.flags.c_contiguous else None
            if flat is not None:
                int(flat[::4096].sum())


class _ManualOutput:
    """``output="manual"``: renders only when a :data:`RENDER` event asks, applying the events
    queued before it first (so the order of events and blocks is the service's)."""

    device_name = "manual (rendered on request)"

    def __init__(self, side: _AudioSide, stats: _SharedStats, period_s: float):
        self.side, self.stats, self.period = side, stats, period_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="audio-manual", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        side, read = self.side, self.side.sh.events.read_struct
        idle = 0
        while not self._stop.is_set():
            ev = read(EVENT)
            if ev is None:
                idle += 1
                time.sleep(0 if idle < 200 else 0.0005)  # the audio process's own idle wait
                continue
            idle = 0
            if ev[0] != RENDER:
                side.apply(ev)
                continue
            side.housekeeping()
            for _ in range(max(1, ev[4])):
                t0 = time.perf_counter()
                try:
                    side.render(drain=False)
                except Exception:  # noqa: BLE001 - counted; the caller sees no block
                    self.stats.errors += 1
                self.stats.count(time.perf_counter() - t0, self.period)
                side.publish_tap()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)

    close = stop


def _open_output(side: _AudioSide, spec: _Spec, stats: _SharedStats):
    cfg, e = spec.config, spec.engine
    if cfg.output == "manual":
        return _ManualOutput(side, stats, e.block_size / e.sample_rate)
    if cfg.output != "none":
        if cfg.output == "device" or AudioStream.available(cfg.host_api):
            return AudioStream(side.render, sample_rate=e.sample_rate, block_size=e.block_size,
                               channels=e.channels, device=cfg.device, host_api=cfg.host_api,
                               stats=stats)
        log.warning("no audio output found: rendering to a paced null output")
    return PacedNullOutput(side.render, e.sample_rate, e.block_size, stats=stats)


def _warm_up(grid, config: EngineConfig) -> None:
    """Render a chord on a throwaway engine: the code paths, the heap the render reuses and the
    grid's pages are touched (and, with mlockall, locked) before the first real block."""
    engine = Engine(grid, config)
    for i, note in enumerate(range(36, 96, 6)):
        engine.note_on(note, 100, channel=i % 16)
    for _ in range(8):
        engine.render_block()


def _publish_kernel(st: shm.Counters, engine) -> None:
    """Which render the audio process's engine uses and, compiled, how its kernels were
    loaded (:func:`morphbox.device.engine.compiled.kernel_status`), for the service's status."""
    compiled = getattr(engine, "kernel", "numpy") == "compiled"
    st["kernel_compiled"] = 1.0 if compiled else 0.0
    if not compiled:
        return
    try:
        from morphbox.device.engine.compiled import kernel_status
    except ImportError:  # an engine without the compiled path
        return
    ks = kernel_status()
    st["kernel_load_s"] = float(ks.get("load_s") or 0.0)
    st["kernel_cached"] = 1.0 if ks.get("cached") else 0.0
    st["kernel_warm_s"] = float(ks.get("warm_s") or 0.0)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except OSError:
        return True


def audio_main(spec: _Spec) -> None:
    """The audio process's entry point (multiprocessing target)."""
    os.environ.clear()
    os.environ.update(spec.env)  # the service's environment now (JACK server name, ...)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO,
                            format="%(levelname)s audio[%(process)d] %(message)s")
    sys.setswitchinterval(0.0005)  # bound any wait for the GIL behind the loader thread
    seg = shm.attach_segment(spec.control_name)
    sh = _Shared(seg, spec.layout)
    st = sh.stats
    try:
        st["pid"] = os.getpid()
        st["boot"] = spec.boot
        r = sh.grid.read_struct(_GRID_MSG)
        if r is None:
            raise RuntimeError("no grid posted")
        gen, raw = r[0]
        grid_seg = shm.attach_segment(raw.rstrip(b"\0").decode())
        grid = shm.get_object(grid_seg, readonly=False)
        _prefault(grid)
        side = _AudioSide(spec, sh, grid_seg, grid, gen)  # builds (and warms) its render
        _publish_kernel(st, side.engine)
        rt = request_realtime(spec.config.rt_priority, spec.config.lock_memory)
        st["realtime"] = 1.0 if rt.fifo else 0.0
        st["rt_priority"] = rt.priority
        st["mlocked"] = 1.0 if rt.mlocked else 0.0
        _warm_up(grid, spec.engine)
        stats = _SharedStats(st)
        side.rt_priority = rt.priority if rt.fifo else 0
        output = _open_output(side, spec, stats)
        output.start()  # its thread is created now and inherits SCHED_FIFO
    except Exception as exc:  # noqa: BLE001 - reported to the service, which raises/logs it
        _put_text(sh.error, f"{type(exc).__name__}: {exc}")
        log.error("audio process could not start: %s", exc)
        sh.release()
        seg.close()
        os._exit(3)
    # this thread becomes the loader: below the render thread, but still real-time, so the
    # other processes of a busy machine cannot preempt it while it holds the GIL the render
    # thread needs (a priority inversion through the GIL); it sleeps 10 ms between passes
    loader_priority = -1
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    _put_text(sh.device, getattr(output, "device_name", "?"))
    st["output_latency_s"] = getattr(output, "output_latency_s", 0.0)
    log.info("audio process %d: %s, %s, %s", os.getpid(), output.device_name,
             f"SCHED_FIFO priority {rt.priority}" if rt.fifo else "normal scheduling",
             "memory locked" if rt.mlocked else "memory not locked")
    st["ready"] = spec.boot
    next_watch = 0.0
    try:
        while not sh.flags["stop"]:
            if rt.fifo and side.render_priority != loader_priority:
                loader_priority = side.render_priority
                with contextlib.suppress(OSError, AttributeError):
                    if loader_priority > 1:
                        os.sched_setscheduler(0, os.SCHED_FIFO,
                                              os.sched_param(loader_priority - 1))
            side.housekeeping()
            now = time.monotonic()
            if now >= next_watch:
                next_watch = now + 0.25
                if not _alive(spec.service_pid):
                    log.warning("the service (pid %d) is gone: audio process exits",
                                spec.service_pid)
                    break
            time.sleep(0.01)
    finally:
        # closing the output may never return: PortAudio's JACK close waits for a process
        # callback that a JACK server gone with the service never runs. A kernel alarm (its
        # default action ends the process; it needs no thread and no GIL) bounds it
        with contextlib.suppress(ValueError, OSError):
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.alarm(CLOSE_TIMEOUT_S)
        with contextlib.suppress(Exception):
            output.close()
        side.pending = side.swapped = None
        side.zombies.clear()
    os._exit(0)  # skip interpreter teardown (views into shared memory, PortAudio)


# ---- the service side ---------------------------------------------------------------------

_CONTEXT = None
_LIVE: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    """At interpreter exit stop every audio process we started (before multiprocessing's own
    exit hook terminates them, which the supervisors would take for a crash)."""
    for ap in list(_LIVE):
        with contextlib.suppress(Exception):
            ap.stop()


def _context():
    """forkserver (preloaded with this module: restarts in milliseconds), else spawn."""
    global _CONTEXT
    if _CONTEXT is None:
        if "forkserver" in multiprocessing.get_all_start_methods():
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(["morphbox.device.engine.process"])
        else:  # pragma: no cover - not Linux
            ctx = multiprocessing.get_context("spawn")
        _CONTEXT = ctx
    return _CONTEXT


@contextlib.contextmanager
def _without_main():
    """Start a process without it re-importing the service's ``__main__`` (a script, pytest,
    a bench): multiprocessing does that unless ``__main__`` has neither ``__spec__`` nor
    ``__file__``; the audio process needs only this module."""
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main


class _SharedControls(Controls):
    """The service's :class:`Controls`: every published snapshot also goes to the seqlock
    (under the producers' lock, so the seqlock has one writer at a time)."""

    def __init__(self, publish: Callable[[ControlState], None], state=None):
        self._publish = publish
        super().__init__(state)
        self._publish(self.snapshot)

    def update(self, **changes) -> ControlState:
        with self._lock:
            new = dataclasses.replace(self.snapshot, **changes)
            self._publish(new)  # the audio process's copy first, then this process's
            self.snapshot = new
            return new


class AudioProcess:
    """The audio process, seen from the service (module docstring).

    Args:
        grid: the first grid to play.
        engine: :class:`EngineConfig` of the engine in the audio process.
        config: :class:`AudioProcessConfig`.
        controls: initial :class:`ControlState` (default: the defaults).

    Raises :class:`AudioError` from :meth:`start` if the process cannot start or open its
    output (``output="device"`` with no device, ...), ``OSError`` if shared memory cannot be
    made.
    """

    def __init__(self, grid, engine: EngineConfig | None = None,
                 config: AudioProcessConfig | None = None, controls: ControlState | None = None):
        self.config = engine or EngineConfig()
        self.process_config = pc = config or AudioProcessConfig()
        if pc.output not in ("auto", "device", "none", "manual"):
            raise ValueError(f"output must be auto, device, none or manual, not {pc.output!r}")
        shm.remove_stale()
        e = self.config
        self.codec = ControlCodec()
        period = e.block_size / e.sample_rate
        self._layout = _Layout(e.block_size, e.channels, e.sample_rate,
                               self.codec.struct.size, max(8, int(TAP_SECONDS / period)),
                               e.max_voices + e.fade_voices)
        self._seg = shm.create_segment(self._layout.total, "audio")
        self._sh = _Shared(self._seg, self._layout)
        self._sh.flags["service_pid"] = os.getpid()
        self._ev_lock = threading.Lock()  # producers of events serialise (one ring producer)
        self._grid_lock = threading.Lock()
        self._grids: dict[int, object] = {}  # generation -> segment (playing and newest)
        self._zombies: list = []  # unlinked segments still mapped (someone holds a view)
        self._generation = 0
        self.grid = None
        self.controls = _SharedControls(self._publish_controls, controls)
        self._taps: tuple = ()
        self.tap_time = 0.0  # perf_counter when the block being tapped was rendered
        self.tap_block = 0
        self.restarts = 0
        #: ``f()`` callables run after the audio process was restarted (notes were reset).
        self.restart_listeners: list[Callable[[], None]] = []
        self._proc = None
        self._boot = 0
        self._mode = pc.output
        self._running = False
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._wake_r, self._wake_w = multiprocessing.Pipe(duplex=False)
        self._tap_buf = np.zeros(self._layout.tap_payload, np.uint8)
        self._tap_audio = self._tap_buf[_TAP_HDR.size:].view(np.float32).reshape(
            e.block_size, e.channels)
        self._tap_audio.flags.writeable = False
        self._closed = False
        self.set_grid(grid)

    # ---- the engine's API (any thread, never blocks on the audio) --------------------------
    def _event(self, kind: int, note: int = 0, velocity: int = 0, channel: int = 0,
               count: int = 0, a: float = 0.0, b: float = 0.0, c: float = 0.0,
               d: float = 0.0) -> bool:
        if self._closed:
            return False
        with self._ev_lock:
            return self._sh.events.write_struct(EVENT, kind, note, velocity, channel, count,
                                                a, b, c, d)

    def note_on(self, note: int, velocity: int, channel: int = 0, bend: float = 0.0,
                pressure: float = 0.0, timbre: float = 0.5) -> None:
        """Start ``note`` (MIDI 0..127) at ``velocity`` (1..127; 0 means note off) with the
        voice's own ``bend`` (semitones), ``pressure`` and ``timbre`` (0..1) -- as
        :meth:`morphbox.device.engine.voices.Engine.note_on`, which checks the values."""
        if velocity <= 0:
            self.note_off(note, channel)
        else:
            self._event(NOTE_ON, int(note) & 127, min(int(velocity), 127), int(channel) & 15,
                        0, _f64(bend, 0.0), _f64(pressure, 0.0), _f64(timbre, 0.5))

    def note_off(self, note: int, channel: int = 0) -> None:
        """Release every held voice of ``note`` on ``channel``."""
        self._event(NOTE_OFF, int(note) & 127, 0, int(channel) & 15)

    def voice_control(self, channel: int, note: int | None = None, *,
                      bend: float | None = None, pressure: float | None = None,
                      timbre: float | None = None) -> None:
        """Per-voice expression of the voices on ``channel`` (or of ``note`` on it), as
        :meth:`morphbox.device.engine.voices.Engine.voice_control`; None leaves a value."""
        nan = float("nan")
        self._event(VOICE, _ANY_NOTE if note is None else int(note) & 127, 0,
                    int(channel) & 15, 0, _f64(bend, nan), _f64(pressure, nan),
                    _f64(timbre, nan))

    def all_notes_off(self) -> None:
        """Release every voice (MIDI CC 123)."""
        self._event(ALL_NOTES_OFF)

    def all_sound_off(self) -> None:
        """Fade every voice out (MIDI CC 120)."""
        self._event(ALL_SOUND_OFF)

    def _publish_controls(self, state: ControlState) -> None:
        self._sh.controls.write_struct(self.codec.struct, *self.codec.encode(state))

    def set_grid(self, grid) -> None:
        """Play ``grid`` from a block boundary on. Raises ``ValueError`` (nothing changed) if
        it does not fit the engine (the engine's own rule). Copies the grid into a segment of
        its own; ``self.grid`` becomes a view of that copy."""
        if self.grid is not None:  # the engine's check, on a stand-in holding the current grid
            Engine.set_grid(types.SimpleNamespace(grid=self.grid), grid)
        seg = shm.put_object(grid, "grid")
        with self._grid_lock:
            self._generation += 1
            gen = self._generation
            self._grids[gen] = seg
            self.grid = shm.get_object(seg)
            self._sh.grid.write_struct(_GRID_MSG, gen, seg.name.encode())
            self._collect_grids()

    def _collect_grids(self) -> None:
        """Free grid segments that are neither playing nor the newest (a double buffer);
        call with ``_grid_lock`` held."""
        playing = int(self._sh.stats["grid_generation"])
        for gen in [g for g in self._grids if g not in (playing, self._generation)]:
            seg = self._grids.pop(gen)
            with contextlib.suppress(FileNotFoundError):
                seg.unlink()
            self._zombies.append(seg)
        self._zombies = [seg for seg in self._zombies if not _try_close(seg)]

    def add_tap(self, tap) -> None:
        """Call ``tap(block)`` with every rendered block (read-only ``(block_size, channels)``
        float32, valid during the call), from the service's tap thread, a few ms after the
        audio process rendered it (``self.tap_time`` holds when). Blocks the service could not
        take in time are dropped and counted (``stats()['tap_dropped']``)."""
        self._taps = (*self._taps, tap)
        self._sh.flags["taps"] = 1

    def remove_tap(self, tap) -> None:
        self._taps = tuple(t for t in self._taps if t is not tap)
        if not self._taps:
            self._sh.flags["taps"] = 0

    @property
    def active_voices(self) -> int:
        """Voices sounding at the last block (including releases and fades)."""
        return int(self._sh.stats["voices"])

    @property
    def blocks(self) -> int:
        """Blocks the current audio process's engine rendered."""
        return int(self._sh.stats["engine_blocks"])

    @property
    def nonfinite_blocks(self) -> int:
        """Blocks that came out non-finite and were played as silence (the engine's count)."""
        return int(self._sh.stats["nonfinite_blocks"])

    def voice_positions(self) -> np.ndarray:
        """``(voices, 2)`` morph positions of the sounding voices, oldest first, as of a
        recent block (:meth:`morphbox.device.engine.voices.Engine.voice_positions`). The
        first call asks the audio process to publish them (every block from then on) and
        returns an empty array until it has."""
        self._sh.flags["positions"] = 1
        r = self._sh.positions.read_struct(self._layout.positions)
        if r is None:
            return np.zeros((0, 2))
        values = r[0]
        n = int(values[0])
        return np.array(values[1:1 + 2 * n], np.float64).reshape(n, 2)

    def render_block(self) -> np.ndarray:
        """Render one block in the audio process (after every event sent so far) and return
        it, ``(block_size, channels)`` float32 (a reused buffer); registered taps are called
        with it. For ``output="manual"``, or before :meth:`start` (offline use of a service's
        engine: the audio process then runs unpaced until :meth:`start` makes it live).
        Raises ``RuntimeError`` while it plays live, :class:`AudioError` if it does not
        answer within ``start_timeout_s``."""
        if self._running and self._mode != "manual":
            raise RuntimeError("render_block: this audio process plays live and renders by "
                               "itself")
        if not self._running:
            self._start("manual")
        taps = self._sh.taps
        taps.reset()
        if not self._event(RENDER, count=1):
            raise AudioError("the audio process's event ring is full")
        deadline = time.monotonic() + self.process_config.start_timeout_s
        spins = 0
        while taps.read_into(self._tap_buf) <= 0:
            if self._proc is not None and not self._proc.is_alive():
                raise AudioError("the audio process died while rendering")
            if time.monotonic() > deadline:
                raise AudioError("the audio process did not render the block in time")
            spins += 1
            time.sleep(0 if spins < 200 else 0.0005)
        self.tap_time, self.tap_block = _TAP_HDR.unpack_from(self._tap_buf, 0)
        for tap in self._taps:
            tap(self._tap_audio)
        return self._tap_audio

    # ---- an output's life cycle -----------------------------------------------------------
    @property
    def stats(self) -> AudioStats:
        """The audio process's counters (cumulative across restarts)."""
        return _SharedStats(self._sh.stats).snapshot()

    def reset_max_render(self) -> None:
        self._sh.stats["max_render_s"] = 0.0

    @property
    def device_name(self) -> str:
        """The output the audio process plays to (known once it started)."""
        return _text(self._sh.device) or f"an audio process (output {self.process_config.output})"

    @property
    def active(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def grid_playing(self) -> bool:
        """True once the audio process renders with the grid last given to :meth:`set_grid`
        (it is swapped in at the first block after its loader has mapped it: a note sent right
        after ``set_grid`` may start one block before the swap)."""
        return int(self._sh.stats["grid_generation"]) == self._generation

    @property
    def kernel(self) -> str:
        """The render the audio process's engine uses: "compiled" or "numpy" (as
        ``Engine.kernel``; known once it started)."""
        return "compiled" if self._sh.stats["kernel_compiled"] else "numpy"

    def engine_status(self) -> dict:
        """``{"render": "compiled" | "numpy", ...}`` of the audio process's engine, with how
        its compiled kernels were loaded there (``load_s``, ``cached``, ``warm_s``), as
        :func:`morphbox.device.engine.compiled.engine_status` reports an in-process engine."""
        st = self._sh.stats
        if not st["kernel_compiled"]:
            return {"render": "numpy"}
        return {"render": "compiled", "load_s": round(st["kernel_load_s"], 3),
                "cached": bool(st["kernel_cached"]), "warm_s": round(st["kernel_warm_s"], 6)}

    def info(self) -> dict:
        """For the service's status: pid, restarts, real-time status, rings' drops."""
        st = self._sh.stats
        return {"pid": self.pid, "restarts": self.restarts,
                "sched_fifo": bool(st["realtime"]), "rt_priority": int(st["rt_priority"]),
                "mlocked": bool(st["mlocked"]), "events_dropped": self._sh.events.dropped,
                "tap_dropped": self._sh.taps.dropped,
                "output_latency_ms": 1000 * st["output_latency_s"],
                "render_mean_ms": 1000 * st["render_s_total"] / max(1, st["blocks"]),
                "engine": self.engine_status()}

    def _spawn(self) -> None:
        self._boot += 1
        sh = self._sh
        sh.stats["ready"] = 0
        sh.error.write_struct(_TEXT, b"")
        sh.flags["stop"] = 0
        pc = self.process_config
        if self._mode != pc.output:
            pc = dataclasses.replace(pc, output=self._mode)
        spec = _Spec(self._seg.name, self._layout, self.config, pc, os.getpid(), self._boot,
                     dict(os.environ))
        proc = _context().Process(target=audio_main, args=(spec,), name="morphbox-audio",
                                  daemon=True)
        with _without_main():
            proc.start()
        self._proc = proc

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.process_config.start_timeout_s
        proc = self._proc
        while self._sh.stats["ready"] != self._boot:
            if not proc.is_alive():
                proc.join(1)
                why = _text(self._sh.error) or f"exit status {proc.exitcode}"
                raise AudioError(f"the audio process did not start: {why}")
            if time.monotonic() > deadline:
                raise AudioError("the audio process did not start within "
                                 f"{self.process_config.start_timeout_s:g} s")
            self._stopping.wait(0.005)

    def start(self) -> None:
        """Start the audio process and wait until it plays. Raises :class:`AudioError`."""
        if self._running and self._mode == "manual" != self.process_config.output:
            self.stop()  # an offline session (render_block before start): now live
        self._start(self.process_config.output)

    def _start(self, mode: str) -> None:
        if self._running:
            return
        if self._closed:
            raise AudioError("this audio process was closed")
        self._mode = mode
        self._stopping.clear()
        self._sh.taps.reset()  # (events sent before start play: the engine's semantics)
        self._spawn()
        try:
            self._wait_ready()
        except AudioError:
            self._terminate()
            raise
        self._running = True
        self._threads = [threading.Thread(target=self._supervise, name="audio-supervisor",
                                          daemon=True)]
        if mode != "manual":
            self._threads.append(threading.Thread(target=self._drain_taps, name="audio-taps",
                                                  daemon=True))
        for t in self._threads:
            t.start()
        _LIVE.add(self)

    def _supervise(self) -> None:
        """Restart the audio process if it dies (not when stopped)."""
        backoff = self.process_config.restart_backoff_s
        while not self._stopping.is_set():
            proc = self._proc
            multiprocessing.connection.wait([proc.sentinel, self._wake_r], timeout=1.0)
            if self._stopping.is_set():
                return
            if proc.is_alive():
                with self._grid_lock:  # the audio process moved on: free the old grid
                    self._collect_grids()
                continue
            born = time.monotonic()
            log.error("the audio process (pid %s) died (exit status %s)%s", proc.pid,
                      proc.exitcode, "; restarting it with every note off"
                      if self.process_config.restart else "; not restarting it")
            if not self.process_config.restart:
                return
            while not self._stopping.is_set():
                self._sh.events.reset()  # no stale note-on replays: notes start afresh
                self._sh.taps.reset()
                try:
                    self._spawn()
                    self._wait_ready()
                    break
                except (AudioError, OSError) as exc:
                    log.error("restarting the audio process failed: %s; again in %.1f s", exc,
                              backoff)
                    self._terminate()
                    if self._stopping.wait(backoff):
                        return
                    backoff = min(5.0, backoff * 2)
            self.restarts += 1
            if time.monotonic() - born > 10:
                backoff = self.process_config.restart_backoff_s
            log.warning("audio process restarted (pid %s, restart %d)", self._proc.pid,
                        self.restarts)
            for f in self.restart_listeners:
                try:
                    f()
                except Exception:  # noqa: BLE001
                    log.exception("restart listener %r", f)

    def _drain_taps(self) -> None:
        """The tap thread: hand every tapped block to the taps."""
        ring, buf = self._sh.taps, self._tap_buf
        poll = self.process_config.tap_poll_s
        while not self._stopping.is_set():
            got = False
            while ring.read_into(buf) > 0:
                got = True
                self.tap_time, self.tap_block = _TAP_HDR.unpack_from(buf, 0)
                for tap in self._taps:
                    try:
                        tap(self._tap_audio)
                    except Exception:  # noqa: BLE001 - a tap never stops the others
                        log.exception("tap %r", tap)
            if not got:
                self._stopping.wait(poll)

    def _terminate(self) -> None:
        proc = self._proc
        if proc is None:
            return
        self._sh.flags["stop"] = 1
        proc.join(3)
        if proc.is_alive():
            proc.terminate()
            proc.join(2)
        if proc.is_alive():
            proc.kill()
            proc.join(2)

    def stop(self) -> None:
        """Stop the audio process (its output closes). :meth:`start` starts a new one."""
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._wake_w.send_bytes(b"x")
        self._terminate()
        for t in self._threads:
            t.join(timeout=3)
        self._threads = []
        with contextlib.suppress(OSError):
            while self._wake_r.poll():
                self._wake_r.recv_bytes()
        self._running = False

    def close(self) -> None:
        """Stop and free the grids' shared memory. Idempotent. Stats, ``active_voices`` and
        ``blocks`` keep their last values (the small control segment is unlinked now and
        unmapped with this object)."""
        if self._closed:
            return
        self.stop()
        self._closed = True
        self.grid = None
        with self._grid_lock:
            for seg in self._grids.values():
                _close_segment(seg)
            for seg in self._zombies:
                _try_close(seg)
            self._grids.clear()
            self._zombies.clear()
        with contextlib.suppress(FileNotFoundError):
            self._seg.unlink()

    def kill(self) -> None:
        """SIGKILL the audio process (tests: the supervisor restarts it)."""
        if self._proc is not None and self._proc.pid:
            os.kill(self._proc.pid, 9)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()
        with contextlib.suppress(Exception):
            self._sh.release()
            _try_close(self._seg)


def _f64(v, default: float) -> float:
    """A number for an event record (the engine clips and checks it); None -> ``default``."""
    if v is None:
        return default
    try:
        return float(v)
    except (TypeError, ValueError):
        return default


def _try_close(seg) -> bool:
    """Unmap ``seg``; False while views of it are still alive (try again later)."""
    try:
        seg.close()
        return True
    except BufferError:
        return False


def _close_segment(seg) -> None:
    with contextlib.suppress(FileNotFoundError):
        seg.unlink()
    _try_close(seg)
