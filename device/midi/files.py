"""MIDI files: read one into timed messages, render it offline, or play it live as an input.

:func:`midi_events` reads a file defensively: a file that is not a regular file, larger than
:data:`MAX_MIDI_BYTES`, not MIDI, truncated, of type 2, with 0 or SMPTE time division, or that
mido cannot decode raises :class:`MidiFileError` with one line naming the file and the problem.
Long stretches without a note sounding are shortened to ``max_silence_s`` (3 s) and any gap
between two events to ``max_gap_s`` (30 s), so a one-byte delta of an hour costs nothing; a
piece longer than ``max_duration_s`` (2 h) is refused. :func:`render_blocks` yields the audio a
block at a time, so a caller writing to a file needs memory for one block, not the piece.

:func:`play` renders offline, feeding the MIDI messages through
:func:`morphbox.device.midi.router.dispatch` and the touch through ``Controls.set_touch`` at
``touch_rate`` Hz, exactly as live MIDI and the touch surface do; events take effect at the
next block boundary. :class:`MidiFilePart` plays a file live into a running service.

Owns: reading MIDI files for playback. Imports: mido, numpy, :mod:`morphbox.device.midi.router`,
:mod:`morphbox.device.common`.
"""

from __future__ import annotations

import io
import math
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from morphbox.device.common import ThreadPart, monotonic
from morphbox.device.midi.router import MpeZones, dispatch, dispatch_router

ASSETS = Path(__file__).resolve().parents[1] / "assets"
DEMO_MIDI = ASSETS / "bach_bwv269.mid"


#: Largest MIDI file read (a symphony is a few hundred kB; mido keeps every message as an
#: object, ~300 bytes each).
MAX_MIDI_BYTES = 2 << 20
MAX_SILENCE_S = 3.0
MAX_GAP_S = 30.0
MAX_DURATION_S = 2 * 3600.0


class MidiFileError(ValueError):
    """A MIDI file that cannot be played; the message is one line naming the file and why."""


def _read_midi(path: Path):
    import mido
    try:
        st = os.stat(path)
    except OSError as exc:
        raise MidiFileError(f"{path}: cannot read the MIDI file: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise MidiFileError(f"{path}: not a regular file")
    if st.st_size > MAX_MIDI_BYTES:
        raise MidiFileError(f"{path}: {st.st_size} bytes is larger than the "
                            f"{MAX_MIDI_BYTES} a MIDI file may have here")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_MIDI_BYTES + 1)
    except OSError as exc:
        raise MidiFileError(f"{path}: cannot read the MIDI file: {exc.strerror}") from None
    try:
        mf = mido.MidiFile(file=io.BytesIO(data))
    except EOFError:
        if len(data) < 14:
            raise MidiFileError(f"{path}: not a MIDI file ({len(data)} bytes, shorter than "
                                "a MIDI header)") from None
        raise MidiFileError(f"{path}: truncated MIDI file (it ends inside a track)") from None
    except Exception as exc:  # noqa: BLE001 - mido raises OSError, ValueError, KeyError...
        reason = str(exc).split("\n")[0] or type(exc).__name__
        raise MidiFileError(f"{path}: not a readable MIDI file: {reason}") from None
    if mf.type == 2:
        raise MidiFileError(f"{path}: MIDI file type 2 (independent sequences) cannot be "
                            "played; save it as type 0 or 1")
    if mf.ticks_per_beat <= 0:
        raise MidiFileError(f"{path}: time division {mf.ticks_per_beat} is not ticks per beat "
                            "(0 or SMPTE time code); save it with ticks per beat")
    return mf


def midi_events(path: str | Path, max_silence_s: float = MAX_SILENCE_S,
                max_gap_s: float = MAX_GAP_S,
                max_duration_s: float = MAX_DURATION_S) -> list:
    """``[(time_s, mido.Message)]`` of a MIDI file, all tracks merged, tempo applied, meta
    messages dropped. A stretch with no note sounding (sustain pedal up) longer than
    ``max_silence_s`` is shortened to it, and any gap between events to ``max_gap_s``.

    Raises :class:`MidiFileError` (a ``ValueError``) with one line naming the file and the
    problem: missing, not a regular file, too large, not MIDI, truncated, type 2, 0 or SMPTE
    time division, undecodable, or longer than ``max_duration_s`` after shortening.
    """
    path = Path(path)
    mf = _read_midi(path)
    events, now, last = [], 0.0, 0.0
    sounding: set[tuple[int, int]] = set()
    pedal: set[int] = set()
    t_in = 0.0
    try:
        for msg in mf:
            t_in += msg.time
            if msg.is_meta:
                continue
            gap = t_in - last
            last = t_in
            limit = max_gap_s if (sounding or pedal) else max_silence_s
            now += min(max(gap, 0.0), limit)
            if now > max_duration_s:
                raise MidiFileError(f"{path}: plays longer than {max_duration_s / 60:.0f} min "
                                    "even with long silences shortened")
            if msg.type == "note_on" and msg.velocity > 0:
                sounding.add((msg.channel, msg.note))
            elif msg.type in ("note_on", "note_off"):
                sounding.discard((msg.channel, msg.note))
            elif msg.type == "control_change" and msg.control == 64:
                (pedal.add if msg.value >= 64 else pedal.discard)(msg.channel)
            elif msg.type == "control_change" and msg.control in (120, 123):
                sounding = {k for k in sounding if k[0] != msg.channel}
            events.append((now, msg.copy(time=0)))
    except MidiFileError:
        raise
    except Exception as exc:  # noqa: BLE001 - a malformed file: one line, not a traceback
        raise MidiFileError(f"{path}: cannot decode the MIDI file: "
                            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                            ) from None
    return events


MPE_CHOICES = ("auto", "on", "off")


def has_mcm(events: list) -> bool:
    """True if ``events`` hold an MPE Configuration Message: RPN 6 (CC 101 = 0, CC 100 = 6,
    then CC 6) on a zone's master channel, 1 or 16 (mido 0 or 15)."""
    rpn: dict[int, tuple[int, int]] = {}
    for _, msg in events:
        if msg.type != "control_change" or msg.channel not in (0, 15):
            continue
        msb, lsb = rpn.get(msg.channel, (127, 127))
        if msg.control == 101:
            rpn[msg.channel] = (msg.value, lsb)
        elif msg.control == 100:
            rpn[msg.channel] = (msb, msg.value)
        elif msg.control == 6 and (msb, lsb) == (0, 6):
            return True
    return False


def use_mpe(engine, events: list, mpe: str = "auto") -> bool:
    """Set the MPE zones of the router that plays ``events`` on ``engine``
    (:func:`~morphbox.device.midi.router.dispatch_router`): ``on`` keeps the default lower
    zone (15 member channels: per-note bend, pressure, CC 74 on channels 2..16), ``off`` plays
    every channel as plain MIDI (one +-2 bend for all), ``auto`` is ``on`` only if the file
    carries an MPE Configuration Message (:func:`has_mcm`; a recording made on the box always
    does), so a multi-channel General MIDI file plays exactly as before MPE existed. Returns
    whether MPE is on. Raises ValueError for another ``mpe``."""
    if mpe not in MPE_CHOICES:
        raise ValueError(f"mpe must be one of {', '.join(MPE_CHOICES)}, got {mpe!r}")
    on = mpe == "on" or (mpe == "auto" and has_mcm(events))
    if not on:
        dispatch_router(engine).set_zones(MpeZones(lower=0, upper=0))
    return on


def render_blocks(engine, events: list, path=None, duration_s: float | None = None,
                  tail_s: float = 2.0, touch_rate: float = 200.0,
                  on_block=None, mpe: str = "auto") -> Iterator[np.ndarray]:
    """Render ``events`` (``[(time_s, mido.Message)]``) with the touch following ``path``,
    yielding one ``(block_size, channels)`` float32 block at a time (the engine's buffer:
    copy or write it before the next). ``duration_s`` defaults to the last event plus
    ``tail_s``. ``on_block(t)`` is called before each block (for recording the touch path).
    Messages go through :func:`morphbox.device.midi.router.dispatch` and the touch through
    ``Controls.set_touch`` at ``touch_rate`` Hz, as live MIDI and the touch surface do.
    ``mpe``: ``auto``, ``on`` or ``off`` (:func:`use_mpe`)."""
    use_mpe(engine, events, mpe)
    cfg = engine.config
    if duration_s is None:
        duration_s = (events[-1][0] if events else 0.0) + tail_s
    bs = cfg.block_size
    n_blocks = int(math.ceil(duration_s * cfg.sample_rate / bs))
    next_event = 0
    next_touch = 0.0
    for b in range(n_blocks):
        t = b * bs / cfg.sample_rate
        t_end = (b + 1) * bs / cfg.sample_rate
        if path is not None and t >= next_touch:
            engine.controls.set_touch(*path(t))
            next_touch += 1.0 / touch_rate
        while next_event < len(events) and events[next_event][0] < t_end:
            dispatch(engine, events[next_event][1])
            next_event += 1
        if on_block is not None:
            on_block(t)
        yield engine.render_block()


def play(engine, events: list, path=None, duration_s: float | None = None,
         tail_s: float = 2.0, touch_rate: float = 200.0, on_block=None,
         mpe: str = "auto") -> np.ndarray:
    """Render ``events`` (``[(time_s, mido.Message)]``) with the touch following ``path``
    (:func:`render_blocks`). Returns ``(samples, channels)`` float32: memory for the whole
    piece (to write a long one to a file, use :func:`render_blocks`)."""
    cfg = engine.config
    if duration_s is None:
        duration_s = (events[-1][0] if events else 0.0) + tail_s
    bs = cfg.block_size
    n_blocks = int(math.ceil(duration_s * cfg.sample_rate / bs))
    out = np.empty((n_blocks * bs, cfg.channels), np.float32)
    for b, block in enumerate(render_blocks(engine, events, path, duration_s,
                                            touch_rate=touch_rate, on_block=on_block,
                                            mpe=mpe)):
        out[b * bs:(b + 1) * bs] = block
    return out


class MidiFilePart(ThreadPart):
    """Simulated MIDI input: plays a file's messages in real time through
    :func:`morphbox.device.midi.router.dispatch`, looping if ``loop`` (a service part);
    ``mpe`` as in :func:`use_mpe`."""

    name = "sim-midi"

    def __init__(self, engine, events: list, loop: bool = False, clock=monotonic,
                 mpe: str = "auto"):
        super().__init__()
        self.engine, self.events, self.repeat, self.clock = engine, events, loop, clock
        use_mpe(engine, events, mpe)

    def loop(self) -> None:
        while True:
            t0 = self.clock()
            for when, msg in self.events:
                if self.wait(max(0.0, when - (self.clock() - t0))):
                    return
                dispatch(self.engine, msg)
            if not self.repeat or self.wait(1.0):
                return

    def stop(self) -> None:
        super().stop()
        self.engine.all_notes_off()
