"""Control state: what the player has set, published to the audio callback as a snapshot.

Producers (touch surface, pots, MIDI, simulators) call :class:`Controls` methods from their own
threads; those serialise on a lock among themselves and publish a new immutable
:class:`ControlState`. The audio callback only reads ``Controls.snapshot`` -- a single attribute
load, atomic in CPython -- so it never waits for a producer.

ADSR pot curves follow the original NSynth Super (REFERENCE.md): attack ``max(1 ms, a^2 4 s)``,
decay ``d 1 s``, sustain ``s``, release ``0.001 + r^3 10 s``.

Morph modes (:data:`MORPH_MODES`) say where each voice sits on the morph grid:

* ``follow``: every voice follows the touch (the box's behaviour before per-voice morph);
* ``latch``: a voice keeps the (smoothed, continuous) position it started at, as on the
  original box but not snapped to grid points; new notes start where the touch is then;
* ``mpe``: the touch sets the base and each voice is moved around it by its own CC 74
  (timbre) and pressure through :class:`Expression` (per-note MPE dimensions).

Imports: the standard library only.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, fields, replace

MORPH_MODES = ("follow", "latch", "mpe")


@dataclass(frozen=True)
class Expression:
    """How a voice's own pressure and timbre (CC 74) shape it.

    Morph offset (``mpe`` morph mode only), in touch units (the surface is 0..1 on each axis),
    added to the touch position and clipped to the surface::

        dx = timbre_x * (timbre - timbre_centre) + pressure_x * pressure
        dy = timbre_y * (timbre - timbre_centre) + pressure_y * pressure

    ``timbre`` and ``pressure`` are 0..1 (CC 74 / 127, pressure / 127). The default moves a
    voice north as CC 74 rises (slide up on a Seaboard, finger away from you on a
    Linnstrument: +-0.5 around the touch, 64 is the centre) and east with pressure (up to
    +0.5 at full pressure).

    Pressure also drives, in every morph mode (0 = off, the default):

    * ``pressure_loudness`` 0..1: voice gain ``1 - d + d * pressure`` (1: no pressure is
      silent, as on an MPE VCA; velocity still sets the level of the attack);
    * ``pressure_brightness`` dB per octave, 0..24: partial k is lowered by
      ``d * (1 - pressure) * log2(k)`` dB, so pressing opens the sound up to the pack's own.

    Raises ``ValueError`` for a non-finite or out-of-range value.
    """

    timbre_x: float = 0.0
    timbre_y: float = -1.0
    pressure_x: float = 0.5
    pressure_y: float = 0.0
    timbre_centre: float = 0.5
    pressure_loudness: float = 0.0
    pressure_brightness: float = 0.0

    _RANGES = {"timbre_x": (-2.0, 2.0), "timbre_y": (-2.0, 2.0), "pressure_x": (-2.0, 2.0),
               "pressure_y": (-2.0, 2.0), "timbre_centre": (0.0, 1.0),
               "pressure_loudness": (0.0, 1.0), "pressure_brightness": (0.0, 24.0)}

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            lo, hi = self._RANGES[f.name]
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) \
                    or not lo <= v <= hi:
                raise ValueError(f"expression {f.name} must be a number in {lo}..{hi}, "
                                 f"got {v!r}")
            object.__setattr__(self, f.name, float(v))

    @classmethod
    def from_dict(cls, d: dict) -> Expression:
        """From a TOML-like dict of the fields; ``ValueError`` names an unknown key."""
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown expression setting(s) {sorted(unknown)}; known: "
                             f"{[f.name for f in fields(cls)]}")
        return cls(**d)


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
        morph_mode: one of :data:`MORPH_MODES` (``follow``, ``latch``, ``mpe``).
        expression: :class:`Expression`, how per-voice pressure and timbre act.
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
    morph_mode: str = "follow"
    expression: Expression = Expression()


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

    def set_morph_mode(self, mode: str) -> None:
        """``follow``, ``latch`` or ``mpe`` (:data:`MORPH_MODES`); ``ValueError`` otherwise."""
        if mode not in MORPH_MODES:
            raise ValueError(f"morph mode must be one of {', '.join(MORPH_MODES)}, got {mode!r}")
        self.update(morph_mode=mode)

    def set_expression(self, expression: Expression) -> None:
        """Publish a new :class:`Expression` mapping (pressure/timbre -> morph, loudness,
        brightness)."""
        if not isinstance(expression, Expression):
            raise TypeError(f"expected an Expression, got {type(expression).__name__}")
        self.update(expression=expression)

    def set_adsr(self, attack_s=None, decay_s=None, sustain=None, release_s=None) -> None:
        """Set any of the ADSR parameters (seconds; sustain 0..1)."""
        changes = {k: float(v) for k, v in (("attack_s", attack_s), ("decay_s", decay_s),
                                            ("sustain", sustain), ("release_s", release_s))
                   if v is not None}
        if "sustain" in changes:
            changes["sustain"] = _unit(changes["sustain"])
        self.update(**changes)
