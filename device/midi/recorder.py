"""Session recording: the MIDI played plus the morph movement (one MIDI file) and the audio
output (one WAV file), written so that a crash loses at most the last second.

Threads and real-time rules:

* Audio: :meth:`Recorder._tap` is added with :meth:`morphbox.device.engine.voices.Engine.add_tap`
and runs in   the audio callback. It only copies the block into a preallocated single-producer /
  single-consumer ring buffer (:class:`AudioRing`: no lock, no allocation, no I/O) and returns;
  if the ring is full the block is dropped and counted (``dropped_frames``), never waited for.
* MIDI: :meth:`Recorder.on_midi` is a :class:`morphbox.device.midi.router.MidiRouter` listener
(router   thread): it timestamps the message and queues it.
* The ``recorder`` writer thread drains both every 20 ms, samples the morph position
  (``controls.snapshot.x/y``) and writes a CC on ``morph_ccs`` (default 16/17, the router's
  morph X/Y CCs, so playing the file back through the router repeats the morph) whenever its
  7-bit value changes. Every ``flush_s`` (1 s) it patches the WAV header, flushes and fsyncs,
  and re-saves the MIDI file atomically (temp file + rename).

Files: ``<directory>/<YYYYmmdd-HHMMSS>.mid`` and ``.wav`` (16-bit PCM, the engine's rate
and channels). MIDI: type 0, 480 ticks per beat at 120 bpm (960 ticks per second); time 0 is
when recording started (the audio starts at the next rendered block, within a block of it).

Start/stop: :meth:`Recorder.start_recording` / :meth:`Recorder.stop_recording` /
:meth:`Recorder.toggle`, called through the service's operations
(:meth:`morphbox.device.service.Service.start_recording`: a button, the router's ``record``
CC, or ``morphbox record start|stop`` through the HTTP API).

Owns: the recording files. Imports: mido, numpy, :mod:`morphbox.device.common`.
"""

from __future__ import annotations

import io
import logging
import os
import queue
import struct
import threading
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import mido
import numpy as np

from morphbox.device.common import atomic_write, monotonic

log = logging.getLogger("morphbox.recorder")

TICKS_PER_BEAT = 480
TEMPO = 500_000  # microseconds per beat (120 bpm)
TICKS_PER_SECOND = TICKS_PER_BEAT * 1_000_000 / TEMPO


class AudioRing:
    """Lock-free single-producer/single-consumer ring of ``(frames, channels)`` float32.

    The producer (audio thread) only advances ``_w``, the consumer only ``_r``; each is one
    attribute store, atomic in CPython, so neither waits for the other.
    """

    def __init__(self, frames: int, channels: int):
        self._buf = np.zeros((frames, channels), np.float32)
        self._cap = frames
        self._w = 0
        self._r = 0
        self.dropped_frames = 0

    def write(self, block: np.ndarray) -> bool:
        """Copy ``block`` in (audio thread). False (and counted) if there is no room."""
        n = len(block)
        w = self._w
        if w - self._r + n > self._cap:
            self.dropped_frames += n
            return False
        i = w % self._cap
        k = min(n, self._cap - i)
        self._buf[i:i + k] = block[:k]
        if k < n:
            self._buf[:n - k] = block[k:]
        self._w = w + n
        return True

    def read(self) -> np.ndarray:
        """Everything written since the last read, ``(n, channels)`` (a copy; n may be 0)."""
        w, r = self._w, self._r
        n = w - r
        i = r % self._cap
        k = min(n, self._cap - i)
        out = np.concatenate([self._buf[i:i + k], self._buf[:n - k]]) if k < n else \
            self._buf[i:i + n].copy()
        self._r = w
        return out


class WavWriter:
    """16-bit PCM WAV written incrementally; :meth:`flush` patches the RIFF/data sizes so the
    file on disk is always a valid WAV of everything flushed so far."""

    def __init__(self, path: Path, sample_rate: int, channels: int):
        self.path = Path(path)
        self.sample_rate, self.channels = sample_rate, channels
        self.frames = 0
        self._f = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        self._f.write(self._header(0))

    def _header(self, data_bytes: int) -> bytes:
        block_align = 2 * self.channels
        return (b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE"
                + b"fmt " + struct.pack("<IHHIIHH", 16, 1, self.channels, self.sample_rate,
                                        self.sample_rate * block_align, block_align, 16)
                + b"data" + struct.pack("<I", data_bytes))

    def write(self, audio: np.ndarray) -> None:
        """Append ``(frames, channels)`` float audio in -1..1 (clipped)."""
        if not len(audio):
            return
        pcm = np.clip(np.rint(audio * 32767.0), -32768, 32767).astype("<i2")
        self._f.write(pcm.tobytes())
        self.frames += len(audio)

    def flush(self) -> None:
        f = self._f
        end = f.tell()
        f.seek(0)
        f.write(self._header(self.frames * 2 * self.channels))
        f.seek(end)
        f.flush()
        os.fsync(f.fileno())

    def close(self) -> None:
        if not self._f.closed:
            self.flush()
            self._f.close()


@dataclass
class Recording:
    """One finished (or running) recording: paths, length in seconds, events written."""

    midi: str
    wav: str
    seconds: float = 0.0
    midi_events: int = 0
    morph_events: int = 0
    dropped_frames: int = 0


class _Session:
    def __init__(self, rec: Recorder, stem: Path):
        self.rec = rec
        cfg = rec.engine.config
        self.midi_path = stem.with_suffix(".mid")
        self.wav = WavWriter(stem.with_suffix(".wav"), cfg.sample_rate, cfg.channels)
        self.ring = AudioRing(int(rec.ring_s * cfg.sample_rate), cfg.channels)
        # the router's state at the start (MPE zones, bend ranges, channel expression, morph
        # mode), so the file replays from the same state
        self.events: list[tuple[float, mido.Message]] = [
            (0.0, m) for m in (rec.preamble() if rec.preamble is not None else ())]
        self.midi_events = self.morph_events = 0
        self.t0 = rec.clock()
        self.last_morph: list[int | None] = [None, None]
        self.saved_count = -1
        self.next_flush = self.t0 + rec.flush_s
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, name="recorder", daemon=True) \
            if rec.writer else None

    def info(self) -> Recording:
        return Recording(str(self.midi_path), str(self.wav.path),
                         self.wav.frames / self.wav.sample_rate, self.midi_events,
                         self.morph_events, self.ring.dropped_frames)

    def _drain(self) -> None:
        self.wav.write(self.ring.read())
        ccs = self.rec.morph_ccs
        while True:
            try:
                t, msg = self.rec._midi_q.get_nowait()
            except queue.Empty:
                break
            if t < self.t0:
                continue
            if msg.type == "control_change" and msg.control in ccs:
                self.last_morph[ccs.index(msg.control)] = msg.value
            self.events.append((t - self.t0, msg.copy(time=0)))
            self.midi_events += 1
        snap = self.rec.engine.controls.snapshot
        t = self.rec.clock() - self.t0
        for i, v in enumerate((snap.x, snap.y)):
            q = int(round(v * 127))
            if q != self.last_morph[i]:
                self.last_morph[i] = q
                self.events.append((t, mido.Message("control_change", control=ccs[i],
                                                    value=q)))
                self.morph_events += 1

    def save_midi(self) -> None:
        if len(self.events) == self.saved_count:
            return
        self.saved_count = len(self.events)
        track = mido.MidiTrack([mido.MetaMessage("track_name", name="morphbox session"),
                                mido.MetaMessage("set_tempo", tempo=TEMPO)])
        last = 0
        for t, msg in sorted(self.events, key=lambda e: e[0]):
            tick = int(round(t * TICKS_PER_SECOND))
            track.append(msg.copy(time=max(0, tick - last)))
            last = max(last, tick)
        mf = mido.MidiFile(type=0, ticks_per_beat=TICKS_PER_BEAT, tracks=[track])
        buf = io.BytesIO()
        mf.save(file=buf)
        atomic_write(self.midi_path, buf.getvalue())

    def step(self) -> None:
        self._drain()
        now = self.rec.clock()
        if now >= self.next_flush:
            self.next_flush = now + self.rec.flush_s
            self.wav.flush()
            self.save_midi()

    def run(self) -> None:
        while not self.stop.wait(0.02):
            try:
                self.step()
            except Exception:  # noqa: BLE001 - keep recording what can be recorded
                log.exception("recorder")

    def finish(self) -> Recording:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=5)
        self._drain()
        self.wav.close()
        self.save_midi()
        return self.info()


class Recorder:
    """Records sessions of one engine (owned by the service, which stops it at shutdown).

    Args:
        engine: the :class:`morphbox.device.engine.voices.Engine` (its ``add_tap``, ``controls``,
        ``config``).
        directory: where files land (created on demand).
        morph_ccs: the CC numbers the morph X/Y is written as.
        flush_s: seconds between flushes to disk (the most a crash can lose).
        ring_s: seconds of audio the ring holds between writer passes.
        clock: seconds, increasing (MIDI and morph timestamps; tests pass their own).
        writer: run the writer thread (every 20 ms: drain, sample the morph, flush every
            ``flush_s``); False: the caller calls :meth:`step` (tests drive time).

    Attributes:
        preamble: optional ``f()`` returning messages written at time 0 of each recording
            (the router's :meth:`~morphbox.device.midi.router.MidiRouter.state_messages`:
            MPE zones and channel states, so a replay starts where the recording did).
    """

    def __init__(self, engine, directory: str | os.PathLike,
                 morph_ccs: tuple[int, int] = (16, 17), flush_s: float = 1.0,
                 ring_s: float = 4.0, clock=monotonic, writer: bool = True):
        self.engine = engine
        self.clock, self.writer = clock, writer
        self.directory = Path(directory)
        self.morph_ccs = tuple(morph_ccs)
        self.flush_s, self.ring_s = flush_s, ring_s
        self.preamble = None
        self.last: Recording | None = None
        self._session: _Session | None = None
        self._lock = threading.Lock()
        self._midi_q: queue.SimpleQueue = queue.SimpleQueue()

    # ---- recording -----------------------------------------------------------------------
    @property
    def recording(self) -> bool:
        return self._session is not None

    def _tap(self, block: np.ndarray) -> None:  # audio thread: copy and return
        s = self._session
        if s is not None:
            s.ring.write(block)

    def on_midi(self, msg) -> None:
        """Router listener: queue ``msg`` with its arrival time (dropped when not recording)."""
        if self._session is not None:
            self._midi_q.put((self.clock(), msg))

    def start_recording(self, name: str | None = None) -> Recording:
        """Start a recording (no-op if one runs); returns its paths. Raises OSError if the
        directory cannot be created or written."""
        with self._lock:
            if self._session is not None:
                return self._session.info()
            directory = self.directory
            directory.mkdir(parents=True, exist_ok=True)
            stem = name or datetime.now().strftime("%Y%m%d-%H%M%S")
            path = directory / stem
            n = 1
            while path.with_suffix(".wav").exists() or path.with_suffix(".mid").exists():
                n += 1
                path = directory / f"{stem}-{n}"
            while True:  # forget MIDI queued before this start
                try:
                    self._midi_q.get_nowait()
                except queue.Empty:
                    break
            s = _Session(self, path)
            self._session = s
            self.engine.add_tap(self._tap)
            if s.thread is not None:
                s.thread.start()
            log.info("recording to %s(.mid, .wav)", path)
            return s.info()

    def stop_recording(self) -> Recording | None:
        """Stop and close the files; returns the finished :class:`Recording` (None if idle)."""
        with self._lock:
            s = self._session
            if s is None:
                return None
            self.engine.remove_tap(self._tap)
            self._session = None
            self.last = s.finish()
            log.info("recorded %.1f s to %s", self.last.seconds, self.last.wav)
            return self.last

    def step(self) -> None:
        """One writer pass (without the writer thread): drain the audio ring and the MIDI
        queue, sample the morph position, flush to disk when ``flush_s`` has passed."""
        s = self._session
        if s is not None:
            s.step()

    def toggle(self) -> Recording | None:
        """Start if idle, else stop (a record button)."""
        if self.recording:
            return self.stop_recording()
        return self.start_recording()

    def status(self) -> dict:
        s = self._session
        return {"recording": s is not None, "current": asdict(s.info()) if s else None,
                "last": asdict(self.last) if self.last else None}
