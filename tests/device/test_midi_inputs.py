"""MIDI inputs: the byte parser (fuzzed), DIN on a pty, hot-plug, and JACK end to end."""

from __future__ import annotations

import logging
import os
import queue
import re
import shutil
import subprocess
import time
import wave

import mido
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from morphbox.device.midi.inputs import MidiParser, PortScanner, SerialMidiInput, rtmidi_scanner
from morphbox.device.midi.router import MidiRouter
from tests.helpers import wait_until

SR = 48000


def _wait(pred, timeout=None, what="condition"):
    wait_until(pred, 60 if timeout is None else max(timeout, 30), what)


# ---- the parser ------------------------------------------------------------------------------
channel_messages = st.one_of(
    st.builds(lambda c, n, v: mido.Message("note_on", channel=c, note=n, velocity=v),
              st.integers(0, 15), st.integers(0, 127), st.integers(0, 127)),
    st.builds(lambda c, n: mido.Message("note_off", channel=c, note=n),
              st.integers(0, 15), st.integers(0, 127)),
    st.builds(lambda c, k, v: mido.Message("control_change", channel=c, control=k, value=v),
              st.integers(0, 15), st.integers(0, 127), st.integers(0, 127)),
    st.builds(lambda c, p: mido.Message("pitchwheel", channel=c, pitch=p),
              st.integers(0, 15), st.integers(-8192, 8191)),
    st.builds(lambda c, p: mido.Message("program_change", channel=c, program=p),
              st.integers(0, 15), st.integers(0, 127)),
)


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    pos = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *pos], [*pos, len(data)], strict=True)]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.lists(st.integers(0, 1000), max_size=6))
def test_random_bytes_never_raise_and_only_give_valid_messages(data, cuts):
    p = MidiParser()
    out = []
    for chunk in _chunks(data, cuts):
        out += p.feed(chunk)
    for m in out:
        assert isinstance(m, mido.Message)
        assert 0 < len(m.bytes())  # re-encodable: a well-formed message


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=60), channel_messages, st.binary(max_size=60),
       st.lists(st.sampled_from([0xF8, 0xFE, 0xFA, 0xFC]), max_size=3))
def test_a_valid_message_around_garbage_is_delivered(before, msg, after, realtime):
    raw = msg.bytes()
    # real-time bytes may even sit inside the message
    spliced = bytes(raw[:1] + realtime + raw[1:])
    p = MidiParser()
    out = p.feed(before + spliced + after)
    assert msg in out


@settings(max_examples=100, deadline=None)
@given(st.lists(channel_messages, min_size=1, max_size=20))
def test_running_status_streams_parse_back(msgs):
    stream = bytearray()
    status = None
    for m in msgs:
        b = m.bytes()
        if b[0] == status:
            stream += bytes(b[1:])  # running status: the status byte is left out
        else:
            stream += bytes(b)
            status = b[0]
    p = MidiParser()
    assert p.feed(bytes(stream)) == msgs and p.malformed == 0


def test_parser_skips_and_counts_malformed_bytes():
    p = MidiParser()
    out = p.feed(bytes([5, 0x90, 60, 0xF4, 0xF7, 0xF0, 1, 2, 0xF7, 0xF9, 0xC0]) + bytes([7]))
    assert out == [mido.Message("sysex", data=[1, 2]), mido.Message("program_change",
                                                                    program=7)]
    assert p.malformed == 5  # 5 | 0x90 60 cut short | 0xF4 | stray 0xF7 | 0xF9
    assert p.feed([300, -1, 0x90, 61, 1]) == [mido.Message("note_on", note=61, velocity=1)]
    long = p.feed(bytes([0xF0]) + bytes(5000) + bytes([0xF7, 0x80, 1, 2]))
    assert long == [mido.Message("note_off", note=1, velocity=2)]


# ---- DIN on a pseudo-terminal --------------------------------------------------------------
class Sink:
    def __init__(self):
        self.q: queue.SimpleQueue = queue.SimpleQueue()

    def __call__(self, msg):
        self.q.put(msg)

    def take(self, n, timeout=60.0):
        return [self.q.get(timeout=timeout) for _ in range(n)]


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.binary(min_size=1, max_size=200))
def test_din_input_survives_garbage_and_keeps_playing(garbage):
    master, slave = os.openpty()
    sink = Sink()
    din = SerialMidiInput(sink, os.ttyname(slave))
    din.start()
    try:
        _wait(lambda: din.is_open, 5, "the DIN port open")
        os.write(master, garbage)
        os.write(master, bytes([0x90, 60, 100, 62, 90]))  # running status after the garbage
        got = []
        deadline = time.monotonic() + 5
        while (mido.Message("note_on", note=62, velocity=90) not in got
               and time.monotonic() < deadline):
            try:
                got.append(sink.q.get(timeout=0.2))
            except queue.Empty:
                pass
        assert mido.Message("note_on", note=60, velocity=100) in got
        assert mido.Message("note_on", note=62, velocity=90) in got
        assert din.running
    finally:
        din.stop()
        os.close(master)
        os.close(slave)


def test_din_input_waits_for_a_missing_device_without_crashing(tmp_path, caplog):
    sink = Sink()
    din = SerialMidiInput(sink, str(tmp_path / "no-serial"), reopen_s=0.01)
    with caplog.at_level(logging.WARNING, logger="morphbox.midi"):
        din.start()
        try:
            _wait(lambda: din.open_failures >= 3, 30, "three reopen attempts")
            assert din.running and not din.is_open
        finally:
            din.stop()
    warned = [r for r in caplog.records if "no-serial" in r.getMessage()]
    assert len(warned) == 1 and warned[0].levelno == logging.WARNING  # said once, not spammed


# ---- hot-plug ------------------------------------------------------------------------------
class FakeBackend:
    """A port lister/opener whose ports come and go like USB controllers."""

    def __init__(self):
        self.ports: list[str] = []
        self.callbacks: dict[str, object] = {}
        self.closed: list[str] = []
        self.fail_open: set[str] = set()
        self.fail_list = False

    def list(self):
        if self.fail_list:
            raise OSError("sequencer went away")
        return list(self.ports)

    def open(self, name, on_bytes):
        if name in self.fail_open:
            raise OSError("busy")
        self.callbacks[name] = on_bytes
        backend = self

        class Handle:
            def close(self):
                backend.closed.append(name)
                backend.callbacks.pop(name, None)

        return Handle()

    def send(self, name, data):
        self.callbacks[name](data)


def test_hot_plug_opens_new_controllers_at_the_next_scan_and_survives_unplugging():
    """Each scan() is one hot-plug pass (the thread runs one every poll_s, 0.5 s by default:
    a controller plugged in plays within one poll period plus its open time)."""
    sink = Sink()
    fake = FakeBackend()
    scanner = PortScanner(sink, fake.list, fake.open, ignore=["Midi Through"])
    assert scanner.poll_s <= 1.0
    fake.ports = ["Midi Through:0", "KeyStep:0"]
    scanner.scan()
    assert scanner.open_ports == ["KeyStep:0"]  # at the first scan; Midi Through is ignored
    fake.send("KeyStep:0", [0x90, 60, 100])
    assert sink.take(1) == [mido.Message("note_on", note=60, velocity=100)]
    fake.fail_open.add("Launchkey:0")
    fake.ports.append("Launchkey:0")
    scanner.scan()  # refused: retried at the next scan, never fatal
    assert scanner.open_ports == ["KeyStep:0"]
    fake.fail_open.clear()
    scanner.scan()
    assert scanner.open_ports == ["KeyStep:0", "Launchkey:0"]
    fake.ports.remove("KeyStep:0")
    scanner.scan()
    assert "KeyStep:0" in fake.closed and scanner.open_ports == ["Launchkey:0"]
    fake.fail_list = True
    scanner.scan()  # the backend went away: no ports, no exception
    assert scanner.open_ports == []
    fake.fail_list = False
    fake.ports = ["Launchkey:0"]
    scanner.scan()
    assert scanner.open_ports == ["Launchkey:0"]
    fake.send("Launchkey:0", bytes([0xB0, 64, 127, 0xFF]))  # garbage-free + reset
    fake.send("Launchkey:0", [0xF5, 0x80])  # malformed: skipped, no exception
    assert mido.Message("control_change", control=64, value=127) in sink.take(2)
    assert scanner.malformed >= 1


def test_the_scanner_thread_scans_until_stopped():
    sink = Sink()
    fake = FakeBackend()
    fake.ports = ["KeyStep:0"]
    scanner = PortScanner(sink, fake.list, fake.open, poll_s=0.05)
    scanner.start()
    try:
        _wait(lambda: scanner.open_ports == ["KeyStep:0"], 30, "KeyStep opened")
        assert scanner.running
    finally:
        scanner.stop()
    assert scanner.open_ports == [] and fake.closed == ["KeyStep:0"] and not scanner.running


# ---- JACK end to end -----------------------------------------------------------------------
PORT_RE = re.compile(r"^PortAudio[^:]*:out_(\d+)$")


def _jack_rec(path, seconds, skip_or_fail):
    jack_rec = shutil.which("jack_rec")
    if jack_rec is None:
        skip_or_fail("jack_rec is not installed (it comes with jackd2)")
    ports: list[str] = []

    def found():
        res = subprocess.run(["jack_lsp"], capture_output=True, text=True, timeout=10,
                             check=False)
        ports[:] = sorted((m[0] for m in map(PORT_RE.match, res.stdout.split("\n")) if m),
                          key=lambda s: int(PORT_RE.match(s)[1]))
        return len(ports) >= 1

    _wait(found, 10, "PortAudio's JACK output ports")
    cmd = [jack_rec, "-f", str(path), "-d", str(seconds), "-b", "16", ports[0]]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _read_wav(path):
    with wave.open(str(path)) as w:
        assert w.getframerate() == SR
        x = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, w.getnchannels())
    return x[:, 0] / 32768.0


def test_jack_virtual_keyboard_plays_the_engine_in_tune(jack_server, skip_or_fail, tmp_path):
    """virtual rtmidi JACK port -> hot-plug scanner -> router -> engine in a JACK AudioStream
    -> jack_rec: the note is heard at its pitch; velocity/bend/CC arrive too."""
    rtmidi = pytest.importorskip("rtmidi")
    from morphbox.device.engine.audio import AudioStream, list_output_devices
    from morphbox.device.engine.voices import Engine
    from morphbox.device.packs.format import load_default_grid
    from morphbox.host_tools.sources import pitch_error_cents

    _wait(lambda: bool(list_output_devices("JACK")), 15, "PortAudio sees JACK")
    engine = Engine(load_default_grid())
    engine.controls.set_adsr(attack_s=0.005, sustain=1.0)
    router = MidiRouter(engine)
    router.start()
    scanner = rtmidi_scanner(router.put, "jack", poll_s=0.25)
    keyboard = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, name="e2e-kbd")
    try:
        with AudioStream(engine.render_block, host_api="JACK") as stream:
            scanner.start()
            keyboard.open_virtual_port("keys")
            _wait(lambda: any("e2e-kbd" in p for p in scanner.open_ports), 2.0 + 1.0,
                  "the virtual keyboard opened")
            # JACK connects the ports at one of its next cycles: send morph X -> west until
            # it arrives (messages sent before the connection exists are lost, as on a wire)
            _wait(lambda kb=keyboard: kb.send_message([0xB0, 16, 0]) or router.received > 0, 5.0,
                  "MIDI flowing from the virtual keyboard")
            keyboard.send_message([0xE0, 0x00, 0x40])  # bend centre
            # the note is held for the whole recording, so however late jack_rec connects
            # under load, it records over a second of the held note
            rec = _jack_rec(tmp_path / "note.wav", 4, skip_or_fail)
            keyboard.send_message([0x90, 69, 110])
            out, _ = rec.communicate(timeout=40)
            assert rec.returncode == 0, out
            keyboard.send_message([0x90, 69, 0])
            assert router.wait_idle(60)
            stats = stream.stats
        assert router.received >= 4 and router.errors == 0
        assert engine.controls.snapshot.x == 0.0
        assert stats.errors == 0
        x = _read_wav(tmp_path / "note.wav")
        sounding = np.flatnonzero(np.abs(x) > 0.01)
        assert sounding.size > SR // 2, "the note was not heard"
        note = x[sounding[0] + SR // 10:sounding[0] + SR // 10 + SR]
        cents = pitch_error_cents(note, SR, 69)
        assert abs(cents) < 5, f"{cents:+.1f} cents"
    finally:
        scanner.stop()
        router.stop()
        keyboard.close_port()
        del keyboard
