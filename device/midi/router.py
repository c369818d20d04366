"""MIDI performance: messages -> engine and control entry points.

:class:`MidiRouter` owns the performance state of a player at a keyboard and turns
``mido.Message`` objects into engine events:

* note on / note off (note on with velocity 0 is note off); a note-on for a key that is still
  sounding (held or sustained) releases the old voice first, so a retriggered key never stacks
  voices;
* sustain pedal (CC 64, down at value >= 64): note-offs that arrive while the pedal is down are
  deferred until it lifts; the keys keep sounding meanwhile;
* pitch bend, scaled to ``bend_range`` semitones (default +-2), which RPN 0 (pitch bend
  sensitivity: CC 101 = 0, CC 100 = 0, CC 6 = semitones, CC 38 = cents) can change;
* CC 7 volume, CC 120 all sound off, CC 121 reset all controllers (bend 0, pedal up),
  CC 123 all notes off (also CC 124..127, the mode messages, which imply it);
* program change -> the ``on_program_change(program)`` hook (patch recall);
* a configurable CC map (:data:`DEFAULT_CC_MAP`): morph X/Y, the morph mode, the ADSR, the
  corner instruments, recording start/stop;
* per-voice expression: channel pressure and CC 74 (timbre) apply to the voices of their
  channel, polyphonic aftertouch to one note's voices (the engine's
  :meth:`~morphbox.device.engine.voices.Engine.voice_control`);
* MPE (MIDI Polyphonic Expression 1.0): zones (:class:`MpeZones`; lower zone with 15 member
  channels by default, changed by the MPE Configuration Message, RPN 6 on a master channel).
  A member channel's pitch bend (+-48 semitones by default, RPN 0 on a member channel
  changes it for the zone) is that channel's notes' own bend, added to the global bend that
  the master channel (and any channel outside the zones) sets as before (+-2); its pressure
  and CC 74 are its notes' own; the state a member channel had before a note-on (bend,
  pressure, CC 74) applies to the note from its start. Master-channel messages apply to the
  zone: its sustain pedal holds the member channels' notes too, its pressure and CC 74 add
  to the members' (CC 74 around 64). Everything outside the zones' member channels is
  handled as without MPE;
* a channel filter (``channel`` 0..15, mido's numbering = MIDI channel 1..16) or omni (None);
  with a filter there are no MPE zones (MPE needs every channel).

Clock, active sensing, SysEx and every other message are ignored harmlessly.

Threads: inputs (:mod:`morphbox.device.midi.inputs`) put messages into the router's one
``queue.SimpleQueue`` (:meth:`MidiRouter.put`, any thread, never blocks); the router consumes it
on its own thread (a service part: :meth:`MidiRouter.start` / :meth:`MidiRouter.stop`), never
in the audio callback. :meth:`MidiRouter.handle` may also be called directly (it serialises on
a lock).

:func:`dispatch` keeps the older one-call API (used by offline rendering and the MIDI-file
player): one router per engine, with the default MPE zone and a CC map of only volume and the
morph mode, so files keep their sustain pedal, bend and MPE data but never move the morph.

:func:`attach` wires a router, the MIDI inputs and a recorder into a
:class:`morphbox.device.service.Service`.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import tomllib
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from morphbox.device.common import ThreadPart
from morphbox.device.engine.controls import MORPH_MODES, Expression, adsr_from_pots
from morphbox.kernels.grid import CORNERS

log = logging.getLogger("morphbox.midi")

DEFAULT_BEND_RANGE = 2.0  # semitones
MPE_MEMBER_BEND_RANGE = 48.0  # semitones: MPE's default for member channels
SUSTAIN_CC = 64
TIMBRE_CC = 74  # MPE's third dimension (Y, "timbre"); also sound controller 5 (brightness)

#: CC number -> target. Targets: ``morph_x``, ``morph_y`` (0..127 -> 0..1), ``volume``,
#: ``attack``, ``decay``, ``sustain``, ``release`` (0..127 as the ADSR pots, see
#: :func:`morphbox.device.engine.controls.adsr_from_pots`), ``corner_NW`` ... ``corner_SE`` (value
#-> that : corner's instrument index, modulo the pack's instrument count), ``corner_next_NW`` ...
#: (step that corner one instrument on at each press), ``record`` (each press, value rising
#: through 64, toggles recording: works with momentary and latching buttons), ``morph_mode``
#: (0..42 follow, 43..85 latch, 86..127 mpe: :data:`MORPH_MODE_VALUES`).
DEFAULT_CC_MAP: dict[int, str] = {
    1: "morph_x",      # mod wheel
    2: "morph_y",      # breath controller
    16: "morph_x",     # general purpose 1
    17: "morph_y",     # general purpose 2
    7: "volume",       # channel volume
    73: "attack",      # sound controller 4: attack time
    75: "decay",       # sound controller 6: decay time
    79: "sustain",     # sound controller 10 (no standard sustain-level CC)
    72: "release",     # sound controller 3: release time
    102: "corner_NW",  # undefined CCs 102..105: the four corner instruments
    103: "corner_NE",
    104: "corner_SW",
    105: "corner_SE",
    85: "record",      # undefined: record start/stop
    86: "morph_mode",  # undefined: follow / latch / mpe
}

TARGETS = frozenset({"morph_x", "morph_y", "volume", "attack", "decay", "sustain", "release",
                     "record", "morph_mode"} | {f"corner_{c}" for c in CORNERS}
                    | {f"corner_next_{c}" for c in CORNERS})

#: The value the ``morph_mode`` CC sends for each mode (the middle of its third of 0..127).
MORPH_MODE_VALUES = {"follow": 21, "latch": 64, "mpe": 106}

_ADSR_KEYS = {"attack": "attack_s", "decay": "decay_s", "sustain": "sustain",
              "release": "release_s"}


class MidiConfigError(ValueError):
    """A MIDI configuration value is invalid (unknown CC target, channel out of range...)."""


@dataclass(frozen=True)
class MpeZones:
    """MPE zone layout (MPE 1.0): member-channel counts and the member bend range.

    Attributes:
        lower: member channels of the lower zone, 0..15: master channel 1 (mido 0), members
            2..1+lower. 0: no lower zone.
        upper: member channels of the upper zone, 0..15: master channel 16 (mido 15),
            members 15 downwards. 0: no upper zone. ``lower + upper`` is at most 14 when
            both exist (a zone never takes the other's master channel); 15 in one zone
            leaves no room for the other.
        member_bend_range: semitones at full pitch bend on member channels (RPN 0 on a member
            channel changes it live for its zone).

    The default, a lower zone of 15 member channels, is what MPE controllers
    (Linnstrument, Seaboard, Osmose...) send out of the box.
    """

    lower: int = 15
    upper: int = 0
    member_bend_range: float = MPE_MEMBER_BEND_RANGE

    def __post_init__(self):
        for name in ("lower", "upper"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 15:
                raise MidiConfigError(f"mpe {name}: member channels must be 0..15, got {v!r}")
        if self.lower and self.upper and self.lower + self.upper > 14:
            raise MidiConfigError(f"mpe zones overlap: lower {self.lower} + upper "
                                  f"{self.upper} member channels > 14")
        r = self.member_bend_range
        if isinstance(r, bool) or not isinstance(r, int | float) or not 0 <= r <= 96:
            raise MidiConfigError(f"mpe bend_range must be 0..96 semitones, got {r!r}")

    @classmethod
    def off(cls) -> MpeZones:
        """No zones: every channel is handled as without MPE."""
        return cls(lower=0, upper=0)


@dataclass
class RouterConfig:
    """Performance settings.

    Attributes:
        channel: 0..15 (mido numbering; MIDI channel 1..16) to listen to, or None for omni.
        bend_range: semitones at full pitch-bend deflection (RPN 0 may change it live); the
            MPE zones' master channels use it too.
        cc_map: CC number (0..119) -> target name (see :data:`DEFAULT_CC_MAP`).
        mpe: :class:`MpeZones` at start (MCM messages change them live).
        morph_mode: ``follow``, ``latch``, ``mpe`` published to the controls when the router
            is made, or None to leave the controls' mode alone.
        expression: :class:`~morphbox.device.engine.controls.Expression` published likewise,
            or None.
    """

    channel: int | None = None
    bend_range: float = DEFAULT_BEND_RANGE
    cc_map: dict[int, str] = field(default_factory=lambda: dict(DEFAULT_CC_MAP))
    mpe: MpeZones = field(default_factory=MpeZones)
    morph_mode: str | None = None
    expression: Expression | None = None

    def __post_init__(self):
        if self.channel is not None and not 0 <= int(self.channel) <= 15:
            raise MidiConfigError(f"channel must be 0..15 or None (omni), got {self.channel}")
        if self.morph_mode is not None and self.morph_mode not in MORPH_MODES:
            raise MidiConfigError(f"morph_mode must be one of {', '.join(MORPH_MODES)}, got "
                                  f"{self.morph_mode!r}")
        for cc, target in self.cc_map.items():
            if not 0 <= int(cc) <= 119:
                raise MidiConfigError(f"CC {cc}: only CCs 0..119 can be mapped")
            if target not in TARGETS:
                raise MidiConfigError(f"CC {cc}: unknown target {target!r}; "
                                      f"known: {', '.join(sorted(TARGETS))}")
        self.cc_map = {int(k): v for k, v in self.cc_map.items()}


class MidiRouter(ThreadPart):
    """MIDI performance state -> ``engine`` (a :class:`morphbox.device.engine.voices.Engine`) entry
    points.

    Args:
        engine: the engine (``note_on``, ``note_off``, ``all_notes_off``, ``all_sound_off``,
            ``controls``).
        config: :class:`RouterConfig` (defaults: omni, +-2 semitones, :data:`DEFAULT_CC_MAP`).
        corners: optional :class:`morphbox.device.engine.corners.CornerSelector`
        (``select``/``step``) for the     corner CCs; without it those CCs are ignored.
        on_program_change: optional ``f(program)`` (0..127) hook, called on the router thread.
        on_record: optional ``f()`` hook, called when the ``record`` CC is pressed.

    Attributes:
        listeners: ``f(msg)`` callables called with every accepted message after it was
            applied (e.g. the recorder); exceptions are logged, never propagated.
        received, ignored, errors: message counters.
    """

    name = "midi-router"

    def __init__(self, engine, config: RouterConfig | None = None, corners=None,
                 on_program_change: Callable[[int], None] | None = None,
                 on_record: Callable[[], None] | None = None):
        super().__init__()
        self.engine = engine
        self.controls = engine.controls
        self.config = config or RouterConfig()
        self.corners = corners
        self.on_program_change = on_program_change
        self.on_record = on_record
        self.listeners: list[Callable] = []
        self.bend_range = float(self.config.bend_range)
        self.received = self.ignored = self.errors = 0
        self._lock = threading.RLock()
        self._held: set[tuple[int, int]] = set()       # (channel, note) keys down
        self._sustained: set[tuple[int, int]] = set()  # released while the pedal is down
        self._pedal = [False] * 16
        self._rpn = [(127, 127)] * 16                  # (MSB, LSB) selected per channel
        self._cc_last: dict[int, int] = {}
        # per-channel expression: own bend (semitones; member channels), pressure, timbre
        self._bend = [0.0] * 16
        self._pressure = [0.0] * 16
        self._timbre = [0.5] * 16
        self._set_zones(self.config.mpe if self.config.channel is None else MpeZones.off())
        if self.config.morph_mode is not None:
            self.controls.set_morph_mode(self.config.morph_mode)
        if self.config.expression is not None:
            self.controls.set_expression(self.config.expression)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()

    # ---- state, for tests, the OLED and the HTTP API --------------------------------------
    @property
    def held_notes(self) -> set[tuple[int, int]]:
        """``(channel, note)`` keys physically down."""
        with self._lock:
            return set(self._held)

    @property
    def sustained_notes(self) -> set[tuple[int, int]]:
        """``(channel, note)`` keys released while the pedal was down, still sounding."""
        with self._lock:
            return set(self._sustained)

    def pedal_down(self, channel: int = 0) -> bool:
        return self._pedal[channel]

    @property
    def zones(self) -> MpeZones:
        """The MPE zone layout in force (the configured one, or the last MCM's)."""
        return self._zones

    def channel_role(self, channel: int) -> str:
        """``"lower master"``, ``"lower member"``, ``"upper master"``, ``"upper member"`` or
        ``"none"`` (handled as without MPE) for ``channel`` 0..15 (mido numbering)."""
        zone, master = self._zone_of[channel]
        if zone is None:
            return "none"
        return f"{('lower', 'upper')[zone]} {'master' if master else 'member'}"

    def state_messages(self) -> list:
        """Messages that bring a fresh router (e.g. :func:`dispatch` replaying a recording)
        to this router's MPE and expression state: the MCMs of the zones, the bend ranges
        (RPN 0) where they differ from the defaults an MCM sets, each channel's bend,
        pressure and CC 74 where not at rest, pedals that are down, and the morph mode (its
        :data:`DEFAULT_CC_MAP` CC, 86). The recorder writes them at the start of a recording.
        """
        import mido
        with self._lock:
            out = []

            def cc(ch, control, value):
                out.append(mido.Message("control_change", channel=ch, control=control,
                                        value=int(value)))

            def rpn(ch, number, semis):
                s = int(semis)
                for control, value in ((101, 0), (100, number), (6, s),
                                       (38, round((semis - s) * 100)), (101, 127),
                                       (100, 127)):
                    cc(ch, control, value)

            z = self._zones
            if self.config.channel is None:
                # an MCM for each master; the lower zone's last, so an upper zone never
                # shrinks it on the way
                rpn(15, 6, z.upper)
                rpn(0, 6, z.lower)
            for zone, (_, members) in enumerate(self._zone_channels()):
                if members and self._member_range[zone] != MPE_MEMBER_BEND_RANGE:
                    rpn(members[0], 0, self._member_range[zone])
            plain = [ch for ch in range(16) if self._zone_of[ch][0] is None
                     or self._zone_of[ch][1]]  # masters and channels outside the zones
            if self.config.channel is not None:
                plain = [self.config.channel]
            if self.bend_range != DEFAULT_BEND_RANGE and plain:
                rpn(plain[0], 0, self.bend_range)  # one range for all of them
            for ch in range(16):
                zone, master = self._zone_of[ch]
                if zone is not None and not master and self._bend[ch]:
                    wheel = round(self._bend[ch] / max(self._member_range[zone], 1e-9) * 8192)
                    out.append(mido.Message("pitchwheel", channel=ch,
                                            pitch=max(-8192, min(8191, wheel))))
                if self._pressure[ch]:
                    out.append(mido.Message("aftertouch", channel=ch,
                                            value=round(self._pressure[ch] * 127)))
                if self._timbre[ch] != 0.5:
                    cc(ch, TIMBRE_CC, round(self._timbre[ch] * 127))
                if self._pedal[ch]:
                    cc(ch, SUSTAIN_CC, 127)
            bend = self.controls.snapshot.bend
            if bend and plain:
                wheel = round(bend / max(self.bend_range, 1e-9) * 8192)
                out.append(mido.Message("pitchwheel", channel=plain[0],
                                        pitch=max(-8192, min(8191, wheel))))
            ch = self.config.channel if self.config.channel is not None else 0
            cc(ch, 86, MORPH_MODE_VALUES[self.controls.snapshot.morph_mode])
            return out

    # ---- the input queue -------------------------------------------------------------------
    def put(self, msg) -> None:
        """Queue ``msg`` (a ``mido.Message``) for the router thread; any thread, never blocks."""
        self._queue.put(msg)

    def stop(self) -> None:
        """Stop the thread (messages still queued are applied first) and release all notes."""
        if self.running:
            self._queue.put(None)
        super().stop()
        self.panic()

    def wait_idle(self, timeout: float = 2.0) -> bool:
        """Block until every message queued so far was applied (tests, benchmarks)."""
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def loop(self) -> None:
        q = self._queue
        while True:
            msg = q.get()
            if msg is None:
                return
            if isinstance(msg, threading.Event):
                msg.set()
                continue
            self.handle(msg)

    # ---- messages --------------------------------------------------------------------------
    def handle(self, msg) -> None:
        """Apply one ``mido.Message``. Never raises: a failure is logged and counted."""
        try:
            with self._lock:
                accepted = self._apply(msg)
        except Exception:  # noqa: BLE001 - input never dies
            self.errors += 1
            log.exception("MIDI message %r", msg)
            return
        if accepted:
            self.received += 1
            for f in self.listeners:
                try:
                    f(msg)
                except Exception:  # noqa: BLE001
                    log.exception("MIDI listener %r", f)
        else:
            self.ignored += 1

    def _apply(self, msg) -> bool:
        kind = msg.type
        ch = getattr(msg, "channel", None)
        if ch is None:
            return False  # clock, active sensing, SysEx, song position...: ignored
        if self.config.channel is not None and ch != self.config.channel:
            return False
        if kind == "note_on" and msg.velocity > 0:
            self._note_on(ch, msg.note, msg.velocity)
        elif kind in ("note_on", "note_off"):
            self._note_off(ch, msg.note)
        elif kind == "pitchwheel":
            zone, master = self._zone_of[ch]
            if zone is None or master:
                self.controls.set_bend(msg.pitch / 8192.0 * self.bend_range)
            else:  # member channel: its notes' own bend
                self._bend[ch] = msg.pitch / 8192.0 * self._member_range[zone]
                self.engine.voice_control(ch, bend=self._bend[ch])
        elif kind == "control_change":
            self._control(ch, msg.control, msg.value)
        elif kind == "aftertouch":  # channel pressure
            self._pressure[ch] = msg.value / 127.0
            self._expression_changed(ch, pressure=True)
        elif kind == "polytouch":  # one note's pressure
            self.engine.voice_control(ch, msg.note, pressure=msg.value / 127.0)
        elif kind == "program_change":
            if self.on_program_change is not None:
                self.on_program_change(msg.program)
        else:
            return False
        return True

    # ---- MPE -------------------------------------------------------------------------------
    def set_zones(self, zones: MpeZones) -> None:
        """Adopt ``zones`` now (as an MCM would); ``MpeZones(0, 0)`` turns MPE off."""
        with self._lock:
            self._set_zones(zones)

    def _set_zones(self, zones: MpeZones) -> None:
        """Adopt a zone layout: channel roles, member bend ranges back to the zones' value."""
        self._zones = zones
        self._member_range = [float(zones.member_bend_range)] * 2
        zone_of: list[tuple[int | None, bool]] = [(None, False)] * 16
        if zones.lower:
            zone_of[0] = (0, True)
            for ch in range(1, 1 + zones.lower):
                zone_of[ch] = (0, False)
        if zones.upper:
            zone_of[15] = (1, True)
            for ch in range(15 - zones.upper, 15):
                zone_of[ch] = (1, False)
        self._zone_of = zone_of

    def _zone_channels(self) -> list[tuple[int, list[int]]]:
        """``[(master, [members])]`` of the lower and upper zone (empty members: no zone)."""
        z = self._zones
        return [(0, list(range(1, 1 + z.lower))), (15, list(range(15 - z.upper, 15)))]

    def _mcm(self, ch: int, members: int) -> None:
        """MPE Configuration Message (RPN 6 on channel 1 or 16): set that zone's member
        count; an overlapped other zone shrinks (MPE 1.0). Bend ranges return to +-48 for
        members and +-2 for masters; the zones' channel states are reset."""
        members = min(int(members), 15)
        z = self._zones
        if ch == 0:
            lower, upper = members, z.upper
            if lower and upper and lower + upper > 14:
                upper = max(0, 14 - lower)
        else:
            lower, upper = z.lower, members
            if lower and upper and lower + upper > 14:
                lower = max(0, 14 - upper)
        self._set_zones(MpeZones(lower=lower, upper=upper))
        self.bend_range = DEFAULT_BEND_RANGE
        for master, chans in self._zone_channels():
            for c in [master, *chans] if chans else []:
                self._bend[c], self._pressure[c], self._timbre[c] = 0.0, 0.0, 0.5
                self.engine.voice_control(c, bend=0.0, pressure=0.0, timbre=0.5)
        log.info("MPE zones: lower %d, upper %d member channels", lower, upper)

    def _voice_expression(self, ch: int) -> tuple[float, float, float]:
        """(bend, pressure, timbre) of a note on ``ch``: a member channel's own values with
        its zone master's pressure added and CC 74 offset (around 64); other channels'
        own pressure and timbre, no own bend (theirs is the global bend)."""
        zone, master = self._zone_of[ch]
        if zone is None or master:
            return 0.0, self._pressure[ch], self._timbre[ch]
        m = (0, 15)[zone]
        return (self._bend[ch], min(1.0, self._pressure[ch] + self._pressure[m]),
                min(1.0, max(0.0, self._timbre[ch] + self._timbre[m] - 0.5)))

    def _expression_changed(self, ch: int, pressure: bool = False,
                            timbre: bool = False) -> None:
        """Send ``ch``'s new pressure/timbre to its voices; a master's to its whole zone."""
        zone, master = self._zone_of[ch]
        chans = [ch]
        if zone is not None and master:
            chans += self._zone_channels()[zone][1]
        for c in chans:
            _, p, t = self._voice_expression(c)
            self.engine.voice_control(c, pressure=p if pressure else None,
                                      timbre=t if timbre else None)

    def _note_on(self, ch: int, note: int, velocity: int) -> None:
        key = (ch, note)
        if key in self._held or key in self._sustained:
            self.engine.note_off(note, ch)  # retrigger: release the old voice first
            self._sustained.discard(key)
        self._held.add(key)
        bend, pressure, timbre = self._voice_expression(ch)
        if bend or pressure or timbre != 0.5:
            self.engine.note_on(note, velocity, ch, bend=bend, pressure=pressure,
                                timbre=timbre)
        else:
            self.engine.note_on(note, velocity, ch)

    def _held_by_pedal(self, ch: int) -> bool:
        """The channel's pedal is down, or its zone master's (MPE: the master's applies to
        the zone)."""
        zone, master = self._zone_of[ch]
        return self._pedal[ch] or (zone is not None and self._pedal[(0, 15)[zone]])

    def _note_off(self, ch: int, note: int) -> None:
        key = (ch, note)
        self._held.discard(key)
        if self._held_by_pedal(ch):
            self._sustained.add(key)
        else:
            self.engine.note_off(note, ch)

    def _pedal_up(self, ch: int) -> None:
        self._pedal[ch] = False
        zone, master = self._zone_of[ch]
        chans = {ch}
        if zone is not None and master:
            chans.update(self._zone_channels()[zone][1])
        for key in sorted(k for k in self._sustained if k[0] in chans):
            if not self._held_by_pedal(key[0]):
                self._sustained.discard(key)
                self.engine.note_off(key[1], key[0])

    def panic(self) -> None:
        """Release every note and forget the pedal (all notes off)."""
        with self._lock:
            self._held.clear()
            self._sustained.clear()
            self._pedal = [False] * 16
        self.engine.all_notes_off()

    def _control(self, ch: int, cc: int, value: int) -> None:
        last = self._cc_last.get(cc, 0)
        self._cc_last[cc] = value
        if cc == SUSTAIN_CC:
            if value >= 64:
                self._pedal[ch] = True
            elif self._pedal[ch]:
                self._pedal_up(ch)
            return
        if cc == 120:
            self._held.clear()
            self._sustained.clear()
            self.engine.all_sound_off()
            return
        if cc == 121:  # reset all controllers: bend, pressure, CC 74, pedal
            zone, master = self._zone_of[ch]
            if zone is None or master:
                self.controls.set_bend(0.0)
            else:
                self._bend[ch] = 0.0
                self.engine.voice_control(ch, bend=0.0)
            self._pressure[ch], self._timbre[ch] = 0.0, 0.5
            self._expression_changed(ch, pressure=True, timbre=True)
            self._pedal_up(ch)
            return
        if cc >= 123:  # all notes off; 124..127 (omni/mono/poly mode) imply it
            self._held.clear()
            self._sustained.clear()
            self.engine.all_notes_off()
            return
        if cc in (101, 100):  # RPN select
            msb, lsb = self._rpn[ch]
            self._rpn[ch] = (value, lsb) if cc == 101 else (msb, value)
        elif cc in (6, 38) and self._rpn[ch] == (0, 0):  # RPN 0: pitch bend sensitivity
            zone, master = self._zone_of[ch]
            member = zone is not None and not master
            old = self._member_range[zone] if member else self.bend_range
            semis = int(old)
            cents = round((old - semis) * 100)
            semis, cents = (value, cents) if cc == 6 else (semis, value)
            new = float(min(semis + min(cents, 99) / 100.0, 96.0))
            if member:  # MPE: a member channel's RPN 0 sets the range of the zone's members
                self._member_range[zone] = new
            else:
                self.bend_range = new
            return
        elif cc == 6 and self._rpn[ch] == (0, 6):  # RPN 6: MPE Configuration Message
            if ch in (0, 15) and self.config.channel is None:
                self._mcm(ch, value)
            return
        elif cc == TIMBRE_CC:
            self._timbre[ch] = value / 127.0
            self._expression_changed(ch, timbre=True)
        target = self.config.cc_map.get(cc)
        if target is None:
            return
        self._target(target, value, last)

    def _target(self, target: str, value: int, last: int) -> None:
        v = value / 127.0
        c = self.controls
        if target == "morph_x":
            c.update(x=v)
        elif target == "morph_y":
            c.update(y=v)
        elif target == "volume":
            c.set_volume(v)
        elif target in _ADSR_KEYS:
            key = _ADSR_KEYS[target]
            c.set_adsr(**{key: adsr_from_pots(v, v, v, v)[key]})
        elif target == "record":
            if value >= 64 > last and self.on_record is not None:
                self.on_record()
        elif target == "morph_mode":
            c.set_morph_mode(MORPH_MODES[min(value * 3 // 128, 2)])
        elif target.startswith("corner_next_"):
            if value >= 64 > last and self.corners is not None:
                self.corners.step(target[-2:], 1)
        elif target.startswith("corner_") and self.corners is not None:
            n = len(self.corners.pack.instrument_names)
            self.corners.select({target[-2:]: value % n})


# ---- the one-call API ---------------------------------------------------------------------
_routers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_routers_lock = threading.Lock()


#: CC map of :func:`dispatch`: a file never moves the morph, but keeps its volume and the
#: morph mode a recording starts with (:meth:`MidiRouter.state_messages`).
DISPATCH_CC_MAP = {7: "volume", 86: "morph_mode"}


def dispatch_router(engine) -> MidiRouter:
    """The :class:`MidiRouter` :func:`dispatch` keeps for ``engine`` (made on first use):
    omni, the default MPE zone, :data:`DISPATCH_CC_MAP`. Add listeners to it to see what a
    file played with :func:`morphbox.device.midi.files.play` does."""
    with _routers_lock:
        router = _routers.get(engine)
        if router is None:
            router = _routers[engine] = MidiRouter(
                engine, RouterConfig(cc_map=dict(DISPATCH_CC_MAP)))
        return router


def dispatch(engine, msg, bend_range: float | None = None) -> None:
    """Apply one ``mido.Message`` to ``engine`` (a :class:`morphbox.device.engine.voices.Engine`).

    Thin wrapper over :func:`dispatch_router`: notes, sustain pedal, pitch bend, RPN 0, MPE
    (zones, per-note bend, pressure, CC 74), CC 7 volume, CC 86 morph mode, CC 120/121/123.
    ``bend_range``: set the (non-member) pitch-bend range, semitones, before applying ``msg``;
    None keeps the one in force (+-2, or what the file's RPN 0 set).
    """
    router = dispatch_router(engine)
    if bend_range is not None:
        router.bend_range = float(bend_range)
    router.handle(msg)


# ---- configuration and wiring -------------------------------------------------------------
@dataclass
class MidiConfig:
    """Everything :func:`attach` sets up.

    Attributes:
        router: :class:`RouterConfig`.
        alsa: open every ALSA sequencer port (USB controllers), with hot-plug.
        jack: open every JACK MIDI output port while a JACK server runs, with hot-plug.
        din: serial device of the DIN MIDI input (e.g. ``/dev/serial0``) or None.
        ignore: substrings of port names never opened (``Midi Through``, our own ports).
        poll_s: seconds between port scans (hot-plug).
        recordings: directory for recordings (None: ``recordings/`` in the state dir).
        record: record the MIDI with the service's recorder (start/stop by the ``record``
            CC, a button or the CLI).
    """

    router: RouterConfig = field(default_factory=RouterConfig)
    alsa: bool = True
    jack: bool = True
    din: str | None = None
    ignore: tuple[str, ...] = ("Midi Through", "morphbox")
    poll_s: float = 0.5
    recordings: Path | None = None
    record: bool = True

    @classmethod
    def from_dict(cls, d: dict) -> MidiConfig:
        """From a TOML-like dict::

            channel = "omni"          # or 1..16 (MIDI numbering)
            bend_range = 2.0          # semitones
            alsa = true
            jack = true
            din = "/dev/serial0"      # or false
            ignore = ["Midi Through"]
            recordings = "/var/lib/morphbox/recordings"
            morph_mode = "mpe"        # follow | latch | mpe at start (default: as it is)
            [cc_map]                  # replaces the default map when given
            16 = "morph_x"
            [mpe]                     # or mpe = false: no zones
            lower = 15                # member channels of the lower zone (master channel 1)
            upper = 0                 # member channels of the upper zone (master channel 16)
            bend_range = 48           # member channels' pitch-bend range, semitones
            [expression]              # Expression fields: CC 74 / pressure -> morph, level
            pressure_loudness = 0.5

        Raises :class:`MidiConfigError` for unknown keys or bad values.
        """
        d = dict(d)
        known = {"channel", "bend_range", "cc_map", "alsa", "jack", "din", "ignore", "poll_s",
                 "recordings", "record", "mpe", "morph_mode", "expression"}
        unknown = set(d) - known
        if unknown:
            raise MidiConfigError(f"unknown MIDI setting(s) {sorted(unknown)}; "
                                  f"known: {sorted(known)}")
        ch = d.get("channel", "omni")
        if ch in (None, "omni", "all", 0):
            channel = None
        elif isinstance(ch, int) and 1 <= ch <= 16:
            channel = ch - 1
        else:
            raise MidiConfigError(f"channel must be 'omni' or 1..16, got {ch!r}")
        cc_map = d.get("cc_map")
        try:
            cc_map = (dict(DEFAULT_CC_MAP) if cc_map is None
                      else {int(k): str(v) for k, v in cc_map.items()})
        except (TypeError, ValueError, AttributeError) as e:
            raise MidiConfigError(f"cc_map: {e}") from None
        router = RouterConfig(channel=channel,
                              bend_range=float(d.get("bend_range", DEFAULT_BEND_RANGE)),
                              cc_map=cc_map, mpe=_mpe_zones(d.get("mpe", True)),
                              morph_mode=d.get("morph_mode"),
                              expression=_expression(d.get("expression")))
        din = d.get("din") or None
        rec = d.get("recordings")
        return cls(router=router, alsa=bool(d.get("alsa", True)), jack=bool(d.get("jack", True)),
                   din=din, ignore=tuple(d.get("ignore", cls.ignore)),
                   poll_s=float(d.get("poll_s", 0.5)),
                   recordings=Path(rec).expanduser() if rec else None,
                   record=bool(d.get("record", True)))

    @classmethod
    def load(cls, path: str | os.PathLike) -> MidiConfig:
        """From a TOML file (the keys of :meth:`from_dict`, top level or under ``[midi]``)."""
        with open(path, "rb") as f:
            data = tomllib.load(f)
        return cls.from_dict(data.get("midi", data))


def _mpe_zones(v) -> MpeZones:
    """``[mpe]`` of the MIDI config (a table, or true/false) -> :class:`MpeZones`."""
    if v is True:
        return MpeZones()
    if v is False:
        return MpeZones.off()
    if not isinstance(v, dict):
        raise MidiConfigError(f"mpe must be a table (lower, upper, bend_range) or true/false, "
                              f"got {v!r}")
    unknown = set(v) - {"lower", "upper", "bend_range"}
    if unknown:
        raise MidiConfigError(f"unknown mpe setting(s) {sorted(unknown)}; known: "
                              f"['bend_range', 'lower', 'upper']")
    return MpeZones(lower=v.get("lower", 15), upper=v.get("upper", 0),
                    member_bend_range=v.get("bend_range", MPE_MEMBER_BEND_RANGE))


def _expression(v) -> Expression | None:
    """``[expression]`` of the MIDI config -> :class:`Expression` (None if absent)."""
    if v is None:
        return None
    if not isinstance(v, dict):
        raise MidiConfigError(f"expression must be a table, got {v!r}")
    try:
        return Expression.from_dict(v)
    except ValueError as e:
        raise MidiConfigError(str(e)) from None


@dataclass
class MidiSetup:
    """What :func:`attach` added: the router, the input parts, the recorder (or None)."""

    router: MidiRouter
    inputs: list = field(default_factory=list)
    recorder: object | None = None


def attach(service, config: MidiConfig | dict | str | os.PathLike | None = None,
           extra_inputs: Iterable = ()) -> MidiSetup:
    """Add MIDI to a :class:`morphbox.device.service.Service`: the router (first, so it runs
    before the inputs feed it), then the inputs. Program change recalls patches
    (:meth:`~morphbox.device.service.Service.on_program_change`); the corner CCs go to the
    service's corner selector; with ``config.record`` the service's recorder records the MIDI
    and the ``record`` CC toggles it.

    ``config``: a :class:`MidiConfig`, a dict (:meth:`MidiConfig.from_dict`), a TOML path, or
    None (defaults). ``extra_inputs``: more input parts built on ``setup.router.put``.
    """
    from morphbox.device.midi import inputs as midi_inputs

    if config is None:
        config = MidiConfig()
    elif isinstance(config, dict):
        config = MidiConfig.from_dict(config)
    elif not isinstance(config, MidiConfig):
        config = MidiConfig.load(config)
    router = MidiRouter(service.engine, config.router, corners=service.corners,
                        on_program_change=service.on_program_change)
    setup = MidiSetup(router=router)
    service.add(router)
    if config.record:
        rec = service.recorder
        if config.recordings is not None:
            rec.directory = config.recordings
        morph = [next((k for k, v in config.router.cc_map.items() if v == t), None)
                 for t in ("morph_x", "morph_y")]
        rec.morph_ccs = (morph[0] if morph[0] is not None else 16,
                         morph[1] if morph[1] is not None else 17)
        router.listeners.append(rec.on_midi)
        rec.preamble = router.state_messages  # MPE zones, ranges, channel states, morph mode
        router.on_record = service.toggle_recording
        setup.recorder = rec
    parts = midi_inputs.default_inputs(router.put, alsa=config.alsa, jack=config.jack,
                                       din=config.din, ignore=config.ignore,
                                       poll_s=config.poll_s)
    for part in [*parts, *extra_inputs]:
        setup.inputs.append(service.add(part))
    return setup
