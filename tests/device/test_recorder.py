"""Recording: ring buffer, WAV/MIDI round trip, crash safety, CC / button / CLI start-stop.

Time is the rendered audio (blocks x period), driven by the tests: no sleeps, no wall clock.
"""

from __future__ import annotations

import wave

import mido
import numpy as np
import pytest

from morphbox.device.engine.voices import Engine
from morphbox.device.midi.recorder import (
    TICKS_PER_SECOND,
    AudioRing,
    Recorder,
)
from morphbox.device.midi.router import MidiRouter, attach
from morphbox.device.packs.format import load_default_grid
from morphbox.device.service import Service, ServiceConfig

SR = 48000


@pytest.fixture(scope="module")
def grid():
    return load_default_grid()


def _read_wav(path):
    with wave.open(str(path)) as w:
        assert w.getframerate() == SR and w.getsampwidth() == 2
        ch = w.getnchannels()
        x = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, ch)
    return x / 32768.0


def _midi_events(path):
    """(seconds, message) of every non-meta message."""
    mf = mido.MidiFile(str(path))
    t, out = 0.0, []
    for m in mf:  # iterating a MidiFile yields delta times in seconds
        t += m.time
        if not m.is_meta:
            out.append((t, m))
    return out


def test_audio_ring_wraps_and_drops_when_full():
    ring = AudioRing(10, 2)
    a = np.arange(12, dtype=np.float32).reshape(6, 2)
    assert ring.write(a)
    assert np.array_equal(ring.read(), a)
    assert ring.write(a)  # wraps: 4 at the end, 2 at the start
    assert not ring.write(a)  # 6 + 6 > 10: dropped, counted
    assert ring.dropped_frames == 6
    assert np.array_equal(ring.read(), a)
    assert ring.read().shape == (0, 2)


class _Clock:
    """Time as the engine renders it: blocks x block period (no wall clock in these tests)."""

    def __init__(self, engine):
        self.engine = engine

    def __call__(self) -> float:
        return self.engine.blocks * self.engine.config.block_size / SR


def _render(engine, rec, seconds):
    """Render ``seconds`` of audio, with a writer pass every 20 ms of audio (as the thread)."""
    n = int(round(seconds * SR / engine.config.block_size))
    for i in range(n):
        engine.render_block()
        if rec is not None and i % 8 == 7:
            rec.step()


def test_a_recording_round_trips_notes_morph_and_audio(grid, tmp_path):
    engine = Engine(grid)
    engine.controls.set_adsr(attack_s=0.005, release_s=0.05)
    router = MidiRouter(engine)
    rec = Recorder(engine, directory=tmp_path, clock=_Clock(engine), writer=False)
    router.listeners.append(rec.on_midi)
    router.on_record = rec.toggle
    router.handle(mido.Message("control_change", control=85, value=127))  # record button
    assert rec.recording
    _render(engine, rec, 0.2)
    router.handle(mido.Message("note_on", note=60, velocity=100))
    router.handle(mido.Message("control_change", control=16, value=0))  # morph by CC
    _render(engine, rec, 0.5)
    for i in range(1, 6):  # morph by touch
        engine.controls.set_touch(i / 5, 0.25)
        _render(engine, rec, 0.06)
    router.handle(mido.Message("note_off", note=60))
    _render(engine, rec, 0.3)
    router.handle(mido.Message("control_change", control=85, value=0))
    router.handle(mido.Message("control_change", control=85, value=127))  # stop
    assert not rec.recording
    done = rec.last
    assert done is not None and done.dropped_frames == 0
    events = _midi_events(done.midi)
    notes = [(t, m) for t, m in events if m.type in ("note_on", "note_off")]
    assert [m.type for _, m in notes] == ["note_on", "note_off"]
    assert notes[0][1].note == 60 and notes[0][1].velocity == 100
    # 0.5 s + 5 x 0.06 s of audio between them, to the block (and the 960 ticks/s MIDI grid)
    assert abs(notes[1][0] - notes[0][0] - 0.8) < 6 * 128 / SR
    xs = [m.value for _, m in events if m.type == "control_change" and m.control == 16]
    ys = [m.value for _, m in events if m.type == "control_change" and m.control == 17]
    assert xs[0] == 64  # the initial position, then the CC, then every touch step
    assert xs[1:] == [0] + [round(i / 5 * 127) for i in range(1, 6)]
    assert ys[-1] == round(0.25 * 127)
    assert done.morph_events >= 5
    wav = _read_wav(done.wav)
    assert wav.shape[1] == 2
    assert abs(len(wav) / SR - done.seconds) < 1e-6
    assert done.seconds == engine.blocks * 128 / SR  # every block rendered while recording
    t_on = notes[0][0]
    loud = np.flatnonzero(np.abs(wav[:, 0]) > 0.01)
    assert loud.size > SR // 4, "the note is not in the WAV"
    assert abs(loud[0] / SR - t_on) < 0.02  # audio and MIDI line up
    # replaying the MIDI file through a router repeats the morph
    e2 = Engine(grid)
    r2 = MidiRouter(e2)
    for _, m in events:
        r2.handle(m)
    assert (e2.controls.snapshot.x, e2.controls.snapshot.y) == (1.0, round(0.25 * 127) / 127)


def test_files_on_disk_are_valid_while_recording(grid, tmp_path):
    """A crash loses at most the last flush period: the files are readable mid-recording."""
    engine = Engine(grid)
    engine.controls.set_adsr(attack_s=0.005)
    rec = Recorder(engine, directory=tmp_path, flush_s=0.5, clock=_Clock(engine),
                   writer=False)
    info = rec.start_recording("crash")
    rec.on_midi(mido.Message("note_on", note=64, velocity=90))
    engine.note_on(64, 90)
    _render(engine, rec, 2.0)
    wav = _read_wav(info.wav)  # no stop: what a crash now would leave
    events = _midi_events(info.midi)
    rec.stop_recording()
    assert len(wav) / SR >= 2.0 - 0.5 - 0.03
    assert np.abs(wav[:, 0]).max() > 0.01
    assert any(m.type == "note_on" and m.note == 64 for _, m in events)
    assert mido.MidiFile(info.midi).ticks_per_beat * 2 == TICKS_PER_SECOND


def test_cc_button_and_cli_start_and_stop_through_the_service(tmp_path):
    """``morphbox record start|stop`` asks the running service's API; the record CC and a
    button reach the same recorder."""
    from morphbox.device.api.server import attach_api
    from morphbox.host_tools.flash import FlashError, record
    service = Service(ServiceConfig(audio="none", state_dir=tmp_path, store=True))
    setup = attach(service, {"alsa": False, "jack": False})
    api = attach_api(service, service.store, "127.0.0.1", 0)
    assert setup.router in service._parts and setup.recorder is service.recorder
    service.start()
    where = f"127.0.0.1:{api.port}"
    try:
        status = record("start", where, state_dir=tmp_path)  # `morphbox record start`
        assert status["recording"] and service.recorder.recording
        setup.router.put(mido.Message("note_on", note=67, velocity=80))
        setup.router.put(mido.Message("control_change", control=102, value=4))  # NW corner
        assert setup.router.wait_idle(30)
        status = record("stop", where, state_dir=tmp_path)
        assert not status["recording"] and status["last"]["midi"].endswith(".mid")
        first_midi = status["last"]["midi"]
        with pytest.raises(FlashError, match="401|missing pairing token"):
            record("start", where, state_dir=tmp_path / "elsewhere")  # no token there
        service.toggle_recording()  # a button
        assert service.recorder.recording
        setup.router.put(mido.Message("control_change", control=85, value=127))  # the CC
        assert setup.router.wait_idle(30)
        assert not service.recorder.recording
    finally:
        service.stop()
    files = sorted(p.name for p in (tmp_path / "recordings").iterdir())
    assert len(files) == 4 and all(f.endswith((".mid", ".wav")) for f in files)
    first = _midi_events(first_midi)
    assert any(m.type == "note_on" and m.note == 67 for _, m in first)
    assert service.corners.wait(60)  # the CC's corner change (a neural rebuild) is applied
    assert service.corners.corners["NW"] == 4 and service.corners.last_error is None
    with pytest.raises(FlashError, match="unreachable"):
        record("start", where, state_dir=tmp_path)  # nobody listening any more


def test_the_tap_never_blocks_on_a_slow_writer(grid, tmp_path):
    engine = Engine(grid)
    rec = Recorder(engine, directory=tmp_path, ring_s=0.05, writer=False)
    rec.start_recording("tiny")
    for _ in range(200):  # nobody drains: the tap drops and counts, it never waits
        rec._tap(np.ones((128, 2), np.float32))
    done = rec.stop_recording()
    assert done.dropped_frames == 200 * 128 - int(0.05 * SR) // 128 * 128
