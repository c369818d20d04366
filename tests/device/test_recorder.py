"""Recording: ring buffer, WAV/MIDI round trip, crash safety, CC / button / CLI start-stop."""

from __future__ import annotations

import threading
import time
import wave

import mido
import numpy as np
import pytest

from device.engine import Engine
from device.midi import MidiRouter, attach
from device.pack import load_default_grid
from device.recorder import TICKS_PER_SECOND, AudioRing, Recorder, recordings_dir, request
from device.service import PacedNullOutput, Service, ServiceConfig

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


def test_recordings_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MORPHBOX_STATE_DIR", str(tmp_path / "state"))
    assert recordings_dir() == tmp_path / "state" / "recordings"
    monkeypatch.delenv("MORPHBOX_STATE_DIR")
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    assert str(recordings_dir()).endswith(".local/state/morphbox/recordings")


def test_a_recording_round_trips_notes_morph_and_audio(grid, tmp_path):
    engine = Engine(grid)
    engine.controls.set_adsr(attack_s=0.005, release_s=0.05)
    out = PacedNullOutput(engine.render_block, SR, 128)
    router = MidiRouter(engine)
    rec = Recorder(engine, directory=tmp_path)
    router.listeners.append(rec.on_midi)
    router.on_record = rec.toggle
    out.start()
    router.start()
    try:
        router.put(mido.Message("control_change", control=85, value=127))  # record button
        assert router.wait_idle(2)
        assert rec.recording
        time.sleep(0.2)
        router.put(mido.Message("note_on", note=60, velocity=100))
        router.put(mido.Message("control_change", control=16, value=0))  # morph by CC
        time.sleep(0.5)
        for i in range(1, 6):  # morph by touch
            engine.controls.set_touch(i / 5, 0.25)
            time.sleep(0.06)
        router.put(mido.Message("note_off", note=60))
        time.sleep(0.3)
        router.put(mido.Message("control_change", control=85, value=0))
        router.put(mido.Message("control_change", control=85, value=127))  # stop
        assert router.wait_idle(5)
    finally:
        router.stop()
        out.stop()
    assert not rec.recording
    done = rec.last
    assert done is not None and done.dropped_frames == 0
    events = _midi_events(done.midi)
    notes = [(t, m) for t, m in events if m.type in ("note_on", "note_off")]
    assert [m.type for _, m in notes] == ["note_on", "note_off"]
    assert notes[0][1].note == 60 and notes[0][1].velocity == 100
    assert 0.6 < notes[1][0] - notes[0][0] < 1.6  # ~0.8 s apart (generous)
    xs = [m.value for _, m in events if m.type == "control_change" and m.control == 16]
    ys = [m.value for _, m in events if m.type == "control_change" and m.control == 17]
    assert xs[0] == 64 or 0 in xs  # initial position, then the CC
    assert 0 in xs and xs[-1] == 127 and 127 // 5 * 2 <= sorted(xs)[-2] < 127
    assert ys[-1] == round(0.25 * 127)
    assert done.morph_events >= 5
    wav = _read_wav(done.wav)
    assert wav.shape[1] == 2
    assert abs(len(wav) / SR - done.seconds) < 1e-6 and 1.2 < done.seconds < 3.0
    t_on = notes[0][0]
    loud = np.flatnonzero(np.abs(wav[:, 0]) > 0.01)
    assert loud.size > SR // 4, "the note is not in the WAV"
    assert abs(loud[0] / SR - t_on) < 0.15  # audio and MIDI line up
    # replaying the MIDI file through a router repeats the morph
    e2 = Engine(grid)
    r2 = MidiRouter(e2)
    for _, m in events:
        r2.handle(m)
    assert (e2.controls.snapshot.x, e2.controls.snapshot.y) == (1.0, round(0.25 * 127) / 127)


def test_files_on_disk_are_valid_while_recording(grid, tmp_path):
    """A crash loses at most the last second: the files are readable mid-recording."""
    engine = Engine(grid)
    engine.controls.set_adsr(attack_s=0.005)
    out = PacedNullOutput(engine.render_block, SR, 128)
    rec = Recorder(engine, directory=tmp_path, flush_s=0.5)
    out.start()
    try:
        info = rec.start_recording("crash")
        rec.on_midi(mido.Message("note_on", note=64, velocity=90))
        engine.note_on(64, 90)
        t0 = time.monotonic()
        time.sleep(2.0)
        wav = _read_wav(info.wav)  # no stop: what a crash now would leave
        elapsed = time.monotonic() - t0
        events = _midi_events(info.midi)
    finally:
        rec.stop()
        out.stop()
    assert len(wav) / SR > elapsed - 1.0
    assert np.abs(wav[:, 0]).max() > 0.01
    assert any(m.type == "note_on" and m.note == 64 for _, m in events)
    assert mido.MidiFile(info.midi).ticks_per_beat * 2 == TICKS_PER_SECOND


def test_attach_cc_button_and_cli_request_start_and_stop(tmp_path, monkeypatch):
    monkeypatch.setenv("MORPHBOX_STATE_DIR", str(tmp_path))
    service = Service(ServiceConfig(audio="none"))
    setup = attach(service, {"alsa": False, "jack": False})
    assert setup.router in service._parts and setup.recorder in service._parts
    service.start()
    try:
        status = request("start", timeout=5)  # what `morphbox record start` does
        assert status["recording"] and setup.recorder.recording
        setup.router.put(mido.Message("note_on", note=67, velocity=80))
        setup.router.put(mido.Message("control_change", control=102, value=4))  # NW corner
        time.sleep(0.5)
        status = request("stop", timeout=5)
        assert not status["recording"] and status["last"]["seconds"] > 0.3
        first_midi = status["last"]["midi"]
        setup.recorder.toggle()  # a button
        assert setup.recorder.recording
        setup.router.put(mido.Message("control_change", control=85, value=127))  # the CC
        assert setup.router.wait_idle(5)
        assert not setup.recorder.recording
    finally:
        service.stop()
    files = sorted(p.name for p in (tmp_path / "recordings").iterdir())
    assert len(files) == 4 and all(f.endswith((".mid", ".wav")) for f in files)
    first = _midi_events(first_midi)
    assert any(m.type == "note_on" and m.note == 67 for _, m in first)
    assert service.corners.wait(10)  # the CC's corner change (a neural rebuild) is applied
    assert service.corners.corners["NW"] == 4 and service.corners.last_error is None
    with pytest.raises(TimeoutError):
        request("start", timeout=0.3)  # nobody listening any more


def test_the_tap_never_blocks_on_a_slow_writer(grid, tmp_path):
    engine = Engine(grid)
    rec = Recorder(engine, directory=tmp_path, ring_s=0.05)
    rec.start_recording("tiny")
    lock = threading.Lock()
    with lock:  # the writer is busy elsewhere; the tap must not care
        t0 = time.perf_counter()
        for _ in range(200):
            rec._tap(np.ones((128, 2), np.float32))
        assert time.perf_counter() - t0 < 0.5
    done = rec.stop_recording()
    assert done.dropped_frames > 0  # a tiny ring overflowed and said so
