"""Control state: what the player has set, published to the audio callback as a snapshot.

Producers (touch surface, pots, MIDI, simulators) call :class:`Controls` methods from their own
threads; those serialise on a lock among themselves and publish a new immutable
:class:`ControlState`. The audio callback only reads ``Controls.snapshot`` -- a single attribute
load, atomic in CPython -- so it never waits for a producer.

ADSR pot curves follow the original NSynth Super (REFERENCE.md): attack ``max(1 ms, a^2 4 s)``,
decay ``d 1 s``, sustain ``s``, release ``0.001 + r^3 10 s``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class ControlState:
    """One immutable snapshot.

    Attributes:
        x, y: morph position, 0..1 (x west->east, y north->south).
        touching: a finger is on the surface (the position holds when it lifts).
        volume: master volume, linear 0..1.
        attack_s, decay_s, release_s: ADSR times, seconds; sustain: level 0..1.
        bend: pitch bend, semitones (already scaled by the bend range).
        position: where new notes start in their source note, 0 = the onset, 1 = the start
            of the sustain loop (the original box's "position" pot: skips the attack).
    """

    x: float = 0.5
    y: float = 0.5
    touching: bool = False
    volume: float = 0.8
    attack_s: float = 0.01
    decay_s: float = 0.3
    sustain: float = 0.8
    release_s: float = 0.4
    bend: float = 0.0
    position: float = 0.0


def _unit(v: float) -> float:
    return min(1.0, max(0.0, float(v)))


def adsr_from_pots(a: float, d: float, s: float, r: float) -> dict:
    """Pot positions 0..1 -> ADSR times (s) and sustain level, the original box's curves."""
    a, d, s, r = map(_unit, (a, d, s, r))
    return {"attack_s": max(0.001, a * a * 4.0), "decay_s": max(0.001, d * 1.0),
            "sustain": s, "release_s": 0.001 + r**3 * 10.0}


class Controls:
    """Thread-safe producer side; ``snapshot`` is the lock-free consumer side."""

    def __init__(self, state: ControlState | None = None):
        self._lock = threading.Lock()
        self.snapshot = state or ControlState()

    def update(self, **changes) -> ControlState:
        """Publish a snapshot with ``changes`` applied (fields of :class:`ControlState`)."""
        with self._lock:
            self.snapshot = replace(self.snapshot, **changes)
            return self.snapshot

    def set_touch(self, x: float, y: float, touching: bool = True) -> None:
        """Finger at ``(x, y)`` (0..1, clipped)."""
        self.update(x=_unit(x), y=_unit(y), touching=touching)

    def release_touch(self) -> None:
        """Finger lifted: the morph position stays where it was."""
        self.update(touching=False)

    def set_volume(self, volume: float) -> None:
        self.update(volume=_unit(volume))

    def set_position(self, position: float) -> None:
        """Start point of new notes, 0..1 (clipped): onset .. sustain loop start."""
        self.update(position=_unit(position))

    def set_bend(self, semitones: float) -> None:
        self.update(bend=float(semitones))

    def set_adsr(self, attack_s=None, decay_s=None, sustain=None, release_s=None) -> None:
        """Set any of the ADSR parameters (seconds; sustain 0..1)."""
        changes = {k: float(v) for k, v in (("attack_s", attack_s), ("decay_s", decay_s),
                                            ("sustain", sustain), ("release_s", release_s))
                   if v is not None}
        if "sustain" in changes:
            changes["sustain"] = _unit(changes["sustain"])
        self.update(**changes)
