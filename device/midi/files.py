"""MIDI files: read one into timed messages, render it offline, or play it live as an input.

:func:`play` renders offline, feeding the MIDI messages through
:func:`morphbox.device.midi.router.dispatch` and the touch through ``Controls.set_touch`` at
``touch_rate`` Hz, exactly as live MIDI and the touch surface do; events take effect at the
next block boundary. :class:`MidiFilePart` plays a file live into a running service.

Owns: reading MIDI files for playback. Imports: mido, numpy, :mod:`morphbox.device.midi.router`,
:mod:`morphbox.device.common`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from morphbox.device.common import ThreadPart, monotonic
from morphbox.device.midi.router import dispatch

ASSETS = Path(__file__).resolve().parents[1] / "assets"
DEMO_MIDI = ASSETS / "bach_bwv269.mid"


def midi_events(path: str | Path) -> list:
    """``[(time_s, mido.Message)]`` of a MIDI file, all tracks merged, tempo applied.

    Meta messages are dropped. Raises ``OSError``/``ValueError`` from mido for bad files.
    """
    import mido
    events, now = [], 0.0
    for msg in mido.MidiFile(str(path)):
        now += msg.time
        if not msg.is_meta:
            events.append((now, msg.copy(time=0)))
    return events


def play(engine, events: list, path=None, duration_s: float | None = None,
         tail_s: float = 2.0, touch_rate: float = 200.0, on_block=None) -> np.ndarray:
    """Render ``events`` (``[(time_s, mido.Message)]``) with the touch following ``path``.

    Returns ``(samples, channels)`` float32. ``duration_s`` defaults to the last event plus
    ``tail_s``. ``on_block(t)`` is called before each block (for recording the touch path).
    """
    cfg = engine.config
    if duration_s is None:
        duration_s = (events[-1][0] if events else 0.0) + tail_s
    bs = cfg.block_size
    n_blocks = int(math.ceil(duration_s * cfg.sample_rate / bs))
    out = np.empty((n_blocks * bs, cfg.channels), np.float32)
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
        out[b * bs:(b + 1) * bs] = engine.render_block()
    return out


class MidiFilePart(ThreadPart):
    """Simulated MIDI input: plays a file's messages in real time through
    :func:`morphbox.device.midi.router.dispatch`, looping if ``loop`` (a service part)."""

    name = "sim-midi"

    def __init__(self, engine, events: list, loop: bool = False, clock=monotonic):
        super().__init__()
        self.engine, self.events, self.repeat, self.clock = engine, events, loop, clock

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
