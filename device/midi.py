"""MIDI messages -> engine and control entry points.

:func:`dispatch` is the one place a MIDI message (a ``mido.Message``) becomes an engine event;
live ports, the DIN UART and MIDI files all go through it. Handled here: note on/off (note on
with velocity 0 is note off), pitch bend (``bend_range`` semitones), CC 7 volume, CC 120 all
sound off, CC 123 all notes off. Anything else is ignored harmlessly.
"""

from __future__ import annotations

DEFAULT_BEND_RANGE = 2.0  # semitones


def dispatch(engine, msg, bend_range: float = DEFAULT_BEND_RANGE) -> None:
    """Apply one ``mido.Message`` to ``engine`` (a :class:`device.engine.Engine`)."""
    kind = msg.type
    if kind == "note_on":
        engine.note_on(msg.note, msg.velocity, msg.channel)
    elif kind == "note_off":
        engine.note_off(msg.note, msg.channel)
    elif kind == "pitchwheel":
        engine.controls.set_bend(msg.pitch / 8192.0 * bend_range)
    elif kind == "control_change":
        if msg.control == 7:
            engine.controls.set_volume(msg.value / 127.0)
        elif msg.control == 120:
            engine.all_sound_off()
        elif msg.control == 123:
            engine.all_notes_off()
