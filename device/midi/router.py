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
* a configurable CC map (:data:`DEFAULT_CC_MAP`): morph X/Y, the ADSR, the corner instruments,
  recording start/stop;
* a channel filter (``channel`` 0..15, mido's numbering = MIDI channel 1..16) or omni (None).

Clock, active sensing, SysEx and every other message are ignored harmlessly.

Threads: inputs (:mod:`morphbox.device.midi.inputs`) put messages into the router's one
``queue.SimpleQueue`` (:meth:`MidiRouter.put`, any thread, never blocks); the router consumes it
on its own thread (a service part: :meth:`MidiRouter.start` / :meth:`MidiRouter.stop`), never
in the audio callback. :meth:`MidiRouter.handle` may also be called directly (it serialises on
a lock).

:func:`dispatch` keeps the older one-call API (used by offline rendering and the MIDI-file
player): one router per engine, no CC map, so files keep their sustain pedal and bend.

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
from morphbox.device.engine.controls import adsr_from_pots
from morphbox.kernels.grid import CORNERS

log = logging.getLogger("morphbox.midi")

DEFAULT_BEND_RANGE = 2.0  # semitones
SUSTAIN_CC = 64

#: CC number -> target. Targets: ``morph_x``, ``morph_y`` (0..127 -> 0..1), ``volume``,
#: ``attack``, ``decay``, ``sustain``, ``release`` (0..127 as the ADSR pots, see
#: :func:`morphbox.device.engine.controls.adsr_from_pots`), ``corner_NW`` ... ``corner_SE`` (value
#-> that : corner's instrument index, modulo the pack's instrument count), ``corner_next_NW`` ...
#: (step that corner one instrument on at each press), ``record`` (each press, value rising
#: through 64, toggles recording: works with momentary and latching buttons).
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
}

TARGETS = frozenset({"morph_x", "morph_y", "volume", "attack", "decay", "sustain", "release",
                     "record"} | {f"corner_{c}" for c in CORNERS}
                    | {f"corner_next_{c}" for c in CORNERS})

_ADSR_KEYS = {"attack": "attack_s", "decay": "decay_s", "sustain": "sustain",
              "release": "release_s"}


class MidiConfigError(ValueError):
    """A MIDI configuration value is invalid (unknown CC target, channel out of range...)."""


@dataclass
class RouterConfig:
    """Performance settings.

    Attributes:
        channel: 0..15 (mido numbering; MIDI channel 1..16) to listen to, or None for omni.
        bend_range: semitones at full pitch-bend deflection (RPN 0 may change it live).
        cc_map: CC number (0..119) -> target name (see :data:`DEFAULT_CC_MAP`).
    """

    channel: int | None = None
    bend_range: float = DEFAULT_BEND_RANGE
    cc_map: dict[int, str] = field(default_factory=lambda: dict(DEFAULT_CC_MAP))

    def __post_init__(self):
        if self.channel is not None and not 0 <= int(self.channel) <= 15:
            raise MidiConfigError(f"channel must be 0..15 or None (omni), got {self.channel}")
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
            self.controls.set_bend(msg.pitch / 8192.0 * self.bend_range)
        elif kind == "control_change":
            self._control(ch, msg.control, msg.value)
        elif kind == "program_change":
            if self.on_program_change is not None:
                self.on_program_change(msg.program)
        else:
            return False  # aftertouch, polytouch
        return True

    def _note_on(self, ch: int, note: int, velocity: int) -> None:
        key = (ch, note)
        if key in self._held or key in self._sustained:
            self.engine.note_off(note, ch)  # retrigger: release the old voice first
            self._sustained.discard(key)
        self._held.add(key)
        self.engine.note_on(note, velocity, ch)

    def _note_off(self, ch: int, note: int) -> None:
        key = (ch, note)
        self._held.discard(key)
        if self._pedal[ch]:
            self._sustained.add(key)
        else:
            self.engine.note_off(note, ch)

    def _pedal_up(self, ch: int) -> None:
        self._pedal[ch] = False
        for key in sorted(k for k in self._sustained if k[0] == ch):
            self._sustained.discard(key)
            self.engine.note_off(key[1], ch)

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
        if cc == 121:  # reset all controllers
            self.controls.set_bend(0.0)
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
            semis = int(self.bend_range)
            cents = round((self.bend_range - semis) * 100)
            semis, cents = (value, cents) if cc == 6 else (semis, value)
            self.bend_range = float(semis + min(cents, 99) / 100.0)
            return
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
        elif target.startswith("corner_next_"):
            if value >= 64 > last and self.corners is not None:
                self.corners.step(target[-2:], 1)
        elif target.startswith("corner_") and self.corners is not None:
            n = len(self.corners.pack.instrument_names)
            self.corners.select({target[-2:]: value % n})


# ---- the one-call API ---------------------------------------------------------------------
_routers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_routers_lock = threading.Lock()


def dispatch(engine, msg, bend_range: float = DEFAULT_BEND_RANGE) -> None:
    """Apply one ``mido.Message`` to ``engine`` (a :class:`morphbox.device.engine.voices.Engine`).

    Thin wrapper over a :class:`MidiRouter` kept per engine with an empty CC map: notes,
    sustain pedal, pitch bend (``bend_range`` semitones), CC 7 volume, CC 120/121/123.
    """
    with _routers_lock:
        router = _routers.get(engine)
        if router is None:
            router = _routers[engine] = MidiRouter(
                engine, RouterConfig(bend_range=bend_range, cc_map={7: "volume"}))
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
            [cc_map]                  # replaces the default map when given
            16 = "morph_x"

        Raises :class:`MidiConfigError` for unknown keys or bad values.
        """
        d = dict(d)
        known = {"channel", "bend_range", "cc_map", "alsa", "jack", "din", "ignore", "poll_s",
                 "recordings", "record"}
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
                              cc_map=cc_map)
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
        router.on_record = service.toggle_recording
        setup.recorder = rec
    parts = midi_inputs.default_inputs(router.put, alsa=config.alsa, jack=config.jack,
                                       din=config.din, ignore=config.ignore,
                                       poll_s=config.poll_s)
    for part in [*parts, *extra_inputs]:
        setup.inputs.append(service.add(part))
    return setup
