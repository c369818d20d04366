"""MIDI inputs: USB (ALSA sequencer), JACK MIDI and DIN (UART) -> one event queue.

Every input is a service part (``start()``/``stop()``) that turns bytes into ``mido.Message``
objects with its own :class:`MidiParser` (running status is per byte stream) and hands them to
``put`` -- normally :meth:`morphbox.device.midi.router.MidiRouter.put`, the router's one
thread-safe queue. Nothing here runs in the audio callback.

* :class:`PortScanner`: hot-plug. Every ``poll_s`` seconds it lists the ports of a backend,
  opens each new one (a controller plugged in is playing within ``poll_s`` + open time, well
  under 2 s) and closes the ones that vanished. A backend that is missing (no ALSA sequencer,
  no JACK server) lists no ports; it is retried, never fatal.
* :class:`RtMidiBackend`: the lister/opener pair over python-rtmidi, for ``"alsa"`` (every ALSA
  sequencer port: USB controllers) or ``"jack"`` (every JACK MIDI output, while a server runs).
* :class:`SerialMidiInput`: DIN MIDI on a UART (``/dev/serial0`` on the Pi), re-opened if it
  goes away.

Malformed bytes are skipped and counted (``MidiParser.malformed``); an input loop never dies.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import time
from collections.abc import Callable, Iterable

import mido

from morphbox.device.common import ThreadPart

log = logging.getLogger("morphbox.midi")

Put = Callable[[mido.Message], None]

# data bytes following each channel-voice status (high nibble) and system-common status
_CHANNEL_LEN = {0x8: 2, 0x9: 2, 0xA: 2, 0xB: 2, 0xC: 1, 0xD: 1, 0xE: 2}
_COMMON_LEN = {0xF1: 1, 0xF2: 2, 0xF3: 1, 0xF6: 0}
MAX_SYSEX = 4096  # longer SysEx messages are dropped (they are ignored anyway)


class MidiParser:
    """MIDI 1.0 byte stream -> ``mido.Message`` list, with running status.

    Rules: a status byte (0x80..0xEF) sets the running status, so following data bytes
    without a status byte repeat it; system common messages (0xF1..0xF6) clear it; real-time
    bytes (0xF8..0xFF) may appear anywhere, even inside another message, and are emitted without
    disturbing it; SysEx (0xF0 .. 0xF7) is collected (up to :data:`MAX_SYSEX` bytes). Anything
    else -- a data byte with no running status, a message cut short by a new status byte, an
    undefined status (0xF4, 0xF5, 0xF9, 0xFD), a stray 0xF7, a value outside 0..255 -- is
    skipped and counted in :attr:`malformed`. :meth:`feed` never raises.
    """

    def __init__(self):
        self.malformed = 0
        self._status = 0        # running status (0: none)
        self._need = 0          # data bytes still missing for the current message
        self._buf: list[int] = []
        self._sysex: list[int] | None = None

    def feed(self, data: Iterable[int]) -> list[mido.Message]:
        """Parse ``data`` (bytes or ints 0..255); returns the messages completed by it."""
        out: list[mido.Message] = []
        for b in data:
            try:
                self._byte(int(b), out)
            except Exception:  # noqa: BLE001 - a malformed byte never stops input
                self.malformed += 1
                self._status, self._need, self._buf, self._sysex = 0, 0, [], None
        return out

    def _emit(self, raw: list[int], out: list) -> None:
        try:
            out.append(mido.Message.from_bytes(raw))
        except (ValueError, TypeError):
            self.malformed += 1

    def _byte(self, b: int, out: list) -> None:
        if not 0 <= b <= 255:
            self.malformed += 1
            return
        if b >= 0xF8:  # real-time: anywhere, state untouched
            if b in (0xF9, 0xFD):
                self.malformed += 1
            else:
                self._emit([b], out)
            return
        if self._sysex is not None:
            if b < 0x80:
                if len(self._sysex) < MAX_SYSEX:
                    self._sysex.append(b)
                else:
                    self.malformed += 1
                    self._sysex = None
                    self._status = 0
                return
            if b == 0xF7:
                raw = self._sysex
                self._sysex = None
                if len(raw) < MAX_SYSEX:
                    self._emit([0xF0, *raw, 0xF7], out)
                return
            self.malformed += 1  # SysEx cut short by a status byte: drop it, go on with b
            self._sysex = None
        if b >= 0x80:
            if self._need:
                self.malformed += 1  # previous message cut short
            self._buf = [b]
            if b < 0xF0:
                self._status = b
                self._need = _CHANNEL_LEN[b >> 4]
                return
            self._status = 0  # system common / SysEx clear running status
            self._need = 0
            if b == 0xF0:
                self._sysex = []
            elif b in _COMMON_LEN:
                self._need = _COMMON_LEN[b]
                if not self._need:
                    self._emit([b], out)
            else:  # 0xF4, 0xF5 undefined; 0xF7 stray end of SysEx
                self.malformed += 1
            return
        # data byte
        if not self._need:
            if not self._status:
                self.malformed += 1
                return
            self._buf = [self._status]  # running status
            self._need = _CHANNEL_LEN[self._status >> 4]
        self._buf.append(b)
        self._need -= 1
        if not self._need:
            self._emit(self._buf, out)
            self._buf = []


def _deliver(put: Put, parser: MidiParser, data) -> None:
    for msg in parser.feed(data):
        put(msg)


class PortScanner(ThreadPart):
    """Hot-plug over one backend.

    Args:
        put: where messages go (``router.put``).
        lister: ``() -> list[str]``, the port names present now (may raise: no ports).
        opener: ``(name, on_bytes) -> handle``: open port ``name`` so that each incoming MIDI
            message's bytes reach ``on_bytes(data)``; ``handle.close()`` closes it. May raise
            (the port is retried at the next scan).
        ignore: substrings of port names never opened.
        poll_s: seconds between scans.

    Attributes:
        open_ports: names of the ports open now.
        malformed: malformed bytes seen on closed and open ports.
    """

    def __init__(self, put: Put, lister: Callable[[], list[str]],
                 opener: Callable[[str, Callable], object], ignore: Iterable[str] = (),
                 poll_s: float = 0.5, name: str = "midi-ports"):
        super().__init__()
        self.put, self.lister, self.opener = put, lister, opener
        self.ignore = tuple(ignore)
        self.poll_s = poll_s
        self.name = name
        self._open: dict[str, tuple[object, MidiParser]] = {}
        self._closed_malformed = 0

    @property
    def open_ports(self) -> list[str]:
        return sorted(self._open)

    @property
    def malformed(self) -> int:
        return self._closed_malformed + sum(p.malformed for _, p in list(self._open.values()))

    def scan(self) -> None:
        """One hot-plug pass: open new ports, close vanished ones. Never raises."""
        try:
            names = [n for n in self.lister() if not any(s in n for s in self.ignore)]
        except Exception as e:  # noqa: BLE001 - a missing backend just has no ports
            log.debug("%s: listing failed: %s", self.name, e)
            names = []
        for gone in [n for n in self._open if n not in names]:
            self._close(gone)
            log.info("MIDI input %r unplugged", gone)
        for new in names:
            if new in self._open:
                continue
            parser = MidiParser()
            put = self.put

            def on_bytes(data, parser=parser, put=put):
                try:
                    _deliver(put, parser, data)
                except Exception:  # noqa: BLE001 - never raise into rtmidi's thread
                    parser.malformed += 1

            try:
                handle = self.opener(new, on_bytes)
            except Exception as e:  # noqa: BLE001
                log.warning("cannot open MIDI input %r: %s", new, e)
                continue
            self._open[new] = (handle, parser)
            log.info("MIDI input %r opened", new)

    def _close(self, name: str) -> None:
        handle, parser = self._open.pop(name)
        self._closed_malformed += parser.malformed
        try:
            handle.close()
        except Exception:  # noqa: BLE001
            log.debug("closing %r", name, exc_info=True)

    def loop(self) -> None:
        while True:
            self.scan()
            if self._stop.wait(self.poll_s):
                return

    def stop(self) -> None:
        super().stop()
        for name in list(self._open):
            self._close(name)


@contextlib.contextmanager
def _no_jack_autostart():
    """libjack would try to start a server when none runs: not from a MIDI scan."""
    old = os.environ.get("JACK_NO_START_SERVER")
    os.environ["JACK_NO_START_SERVER"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("JACK_NO_START_SERVER", None)
        else:
            os.environ["JACK_NO_START_SERVER"] = old


class _RtHandle:
    def __init__(self, midi_in):
        self.midi_in = midi_in

    def close(self) -> None:
        m, self.midi_in = self.midi_in, None
        if m is not None:
            m.cancel_callback()
            m.close_port()
            m.delete()


class RtMidiBackend:
    """Lister and opener for :class:`PortScanner` over python-rtmidi.

    ``api``: ``"alsa"`` (ALSA sequencer: USB and other hardware ports) or ``"jack"`` (JACK
    MIDI outputs of other clients). While the API is unavailable (no ``/dev/snd/seq``, no JACK
    server), :meth:`list` returns no ports and the client is retried every ``retry_s`` seconds;
    libjack's complaints on stderr are silenced and a JACK server is never autostarted.
    """

    def __init__(self, api: str = "alsa", client_name: str = "morphbox", retry_s: float = 2.0):
        import rtmidi

        self.api_name = api
        self.api = {"alsa": rtmidi.API_LINUX_ALSA, "jack": rtmidi.API_UNIX_JACK}[api]
        self.client_name = client_name
        self.retry_s = retry_s
        self._scan = None
        self._next_try = 0.0
        self._rtmidi = rtmidi

    def _client(self, name: str):
        from morphbox.device.engine.audio import (
            _quiet_stderr,  # the same fd-2 silencer the audio probe uses
        )

        if self.api_name == "alsa" and not os.path.exists("/dev/snd/seq"):
            raise OSError("no ALSA sequencer (/dev/snd/seq)")
        with _quiet_stderr(), _no_jack_autostart():
            return self._rtmidi.MidiIn(self.api, name=name)

    def list(self) -> list[str]:
        """Port names present now ([] while the API is unavailable)."""
        if self._scan is None:
            now = time.monotonic()
            if now < self._next_try:
                return []
            self._next_try = now + self.retry_s
            try:
                self._scan = self._client(f"{self.client_name}-scan")
            except Exception:  # noqa: BLE001 - rtmidi raises SystemError without a backend
                return []
        try:
            return list(self._scan.get_ports())
        except Exception:  # noqa: BLE001 - the server went away
            self._scan = None
            return []

    def open(self, name: str, on_bytes: Callable) -> _RtHandle:
        """Open port ``name``; each message's bytes go to ``on_bytes`` from rtmidi's thread."""
        m = self._client(self.client_name)
        try:
            ports = m.get_ports()
            if name not in ports:
                raise OSError(f"port {name!r} is gone")
            m.ignore_types(sysex=True, timing=True, active_sense=True)
            m.set_callback(lambda event, _data: on_bytes(event[0]))
            m.open_port(ports.index(name), name="in-" + name.replace(":", "-")[:40])
        except Exception:
            m.delete()
            raise
        return _RtHandle(m)


def rtmidi_scanner(put: Put, api: str = "alsa", ignore: Iterable[str] = (),
                   poll_s: float = 0.5) -> PortScanner:
    """A :class:`PortScanner` over every port of rtmidi's ``api`` (``"alsa"`` or ``"jack"``)."""
    backend = RtMidiBackend(api)
    return PortScanner(put, backend.list, backend.open, ignore=ignore, poll_s=poll_s,
                       name=f"midi-{api}")


class SerialMidiInput(ThreadPart):
    """DIN MIDI from a serial device (a UART at 31250 baud, 8N1).

    ``device``: e.g. ``/dev/ttyAMA0`` (UART0 on GPIO 14/15 on every Pi model with the boot
    config ``deploy/setup.sh`` writes; ``/dev/serial0`` points to it on a Pi 3/4 but to the
    debug UART on a Pi 5). Linux termios has no 31250 baud constant: on the Pi the
    ``midi-uart0`` (``midi-uart0-pi5``) overlay makes the UART run at 31250 when 38400 is
    asked for, which is what this sets (``baud`` may name another standard rate for other
    adapters). If the device is missing or fails, it is re-opened every ``reopen_s`` seconds.
    """

    name = "midi-din"

    def __init__(self, put: Put, device: str = "/dev/serial0", baud: int = 38400,
                 reopen_s: float = 2.0):
        super().__init__()
        self.put, self.device, self.baud, self.reopen_s = put, device, baud, reopen_s
        self.parser = MidiParser()
        self.is_open = False
        self.open_failures = 0  # in a row; the first is logged as a warning

    def _open(self) -> int:
        import termios
        import tty

        fd = os.open(self.device, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            tty.setraw(fd)
            attrs = termios.tcgetattr(fd)
            speed = getattr(termios, f"B{self.baud}", termios.B38400)
            attrs[4] = attrs[5] = speed
            termios.tcsetattr(fd, termios.TCSANOW, attrs)
        except termios.error:
            pass  # not a tty (a FIFO in tests): read it as it is
        return fd

    def loop(self) -> None:
        while not self._stop.is_set():
            try:
                fd = self._open()
            except OSError as e:
                self.open_failures += 1
                (log.warning if self.open_failures == 1 else log.debug)(
                    "DIN MIDI %s cannot be opened (retrying every %g s): %s", self.device,
                    self.reopen_s, e)
                if self._stop.wait(self.reopen_s):
                    return
                continue
            self.is_open = True
            if self.open_failures:
                log.info("DIN MIDI %s open", self.device)
            self.open_failures = 0
            try:
                while not self._stop.is_set():
                    ready, _, _ = select.select([fd], [], [], 0.2)
                    if not ready:
                        continue
                    data = os.read(fd, 512)
                    if not data:  # EOF: writer closed (FIFO/pty) -> reopen
                        break
                    _deliver(self.put, self.parser, data)
            except OSError as e:
                log.warning("DIN MIDI %s: %s", self.device, e)
            finally:
                self.is_open = False
                os.close(fd)
            if self._stop.wait(0.05):
                return


def default_inputs(put: Put, *, alsa: bool = True, jack: bool = True, din: str | None = None,
                   ignore: Iterable[str] = ("Midi Through", "morphbox"),
                   poll_s: float = 0.5) -> list:
    """The box's inputs: ALSA hot-plug, JACK hot-plug, DIN, as configured (not started)."""
    parts: list = []
    try:
        import rtmidi  # noqa: F401
        have_rtmidi = True
    except ImportError:
        have_rtmidi = False
        log.warning("python-rtmidi is not installed: no USB/JACK MIDI input")
    if have_rtmidi and alsa:
        parts.append(rtmidi_scanner(put, "alsa", ignore, poll_s))
    if have_rtmidi and jack:
        parts.append(rtmidi_scanner(put, "jack", ignore, poll_s))
    if din:
        parts.append(SerialMidiInput(put, din))
    return parts
