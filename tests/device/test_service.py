"""The device service running for real: paced output or a JACK server, simulated inputs."""

from __future__ import annotations

import mido
import numpy as np
import pytest

from morphbox.device.midi.files import MidiFilePart
from morphbox.device.panel.paths import TouchPathPart, circle
from morphbox.device.service import Service, ServiceConfig
from tests.helpers import wait_until


def _chord_events():
    return [(0.0, mido.Message("note_on", note=n, velocity=100)) for n in (48, 55, 60)] + [
        (0.8, mido.Message("note_off", note=n)) for n in (48, 55, 60)]


def test_service_runs_inputs_and_audio_in_real_time_without_a_sound_card():
    service = Service(ServiceConfig(audio="none"))
    peaks, xs, voices = [], [], []

    def tap(block):  # the audio thread: what it played, where the touch was, who sounded
        peaks.append(float(np.abs(block).max()))
        xs.append(service.controls.snapshot.x)
        voices.append(service.engine.active_voices)

    service.engine.add_tap(tap)
    midi = service.add(MidiFilePart(service.engine, _chord_events()))
    service.add(TouchPathPart(service.controls, circle(period_s=1.0)))
    service.start()
    try:
        wait_until(lambda: not midi.running, what="the MIDI file played to its end")
        wait_until(lambda: service.engine.active_voices == 0 and voices and voices[-1] == 0,
                   what="the chord released")
        wait_until(lambda: len(set(xs)) > 3, what="the simulated touch moving")
        status = service.status()
    finally:
        service.stop()
    assert max(voices) == 3  # the three notes sounded together ...
    assert max(peaks) > 0.05
    assert service.engine.active_voices == 0  # ... and were released
    assert status["blocks"] > 0 and status["errors"] == 0  # late blocks: see the benches
    assert status["corners"] == {"NW": "Cello", "NE": "Flute", "SW": "Acoustic Grand Piano",
                                 "SE": "Church Organ"}


@pytest.mark.parametrize("audio_process", ["no", "yes"])
def test_service_plays_through_jack(jack_server, tmp_path, audio_process):
    """A chord through a real JACK server, rendered in the service or in its audio process."""
    service = Service(ServiceConfig(audio="device", host_api="JACK", rt_priority=0,
                                    audio_process=audio_process, state_dir=tmp_path))
    heard = []
    service.engine.add_tap(lambda block: heard.append(float(np.abs(block).max())))
    service.add(MidiFilePart(service.engine, _chord_events()))
    service.start()
    try:
        wait_until(lambda: heard and max(heard) > 0.05, what="the chord through JACK")
        status = service.status()
    finally:
        service.stop()
    assert "system" in service.output.device_name
    assert status["blocks"] > 0 and status["errors"] == 0


def test_program_change_recalls_a_saved_patch_through_the_router(tmp_path):
    """MIDI program 0..3 -> patch 1..4, through the real router thread and the service."""
    from morphbox.device.midi.router import attach
    service = Service(ServiceConfig(audio="none", state_dir=tmp_path))
    setup = attach(service, {"alsa": False, "jack": False})
    c = service.controls
    c.set_adsr(attack_s=1.5, release_s=2.5)
    c.set_volume(0.33)
    c.set_touch(0.2, 0.9)
    c.set_morph_mode("latch")
    service.select_corners({"NE": 7})
    assert service.corners.wait(60) and service.corners.corners["NE"] == 7
    service.save_patch(2)
    assert (tmp_path / "patch-2.json").exists()
    c.set_adsr(attack_s=0.01, release_s=0.1)
    c.set_volume(0.9)
    c.set_touch(0.7, 0.1)
    setup.router.handle(mido.Message("control_change", control=86, value=127))  # mpe
    assert c.snapshot.morph_mode == "mpe"
    service.select_corners({"NE": 3})
    assert service.corners.wait(60) and service.corners.corners["NE"] == 3
    service.start()
    try:
        setup.router.put(mido.Message("program_change", program=1))
        assert setup.router.wait_idle(60)
        assert service.corners.wait(60)
        s = c.snapshot
        assert (s.attack_s, s.release_s, s.volume, s.x, s.y) == (1.5, 2.5, 0.33, 0.2, 0.9)
        assert s.morph_mode == "latch"
        assert service.corners.corners["NE"] == 7
        setup.router.put(mido.Message("program_change", program=3))  # slot 4: empty
        setup.router.put(mido.Message("program_change", program=90))  # no such patch
        assert setup.router.wait_idle(60)
        assert c.snapshot.volume == 0.33 and setup.router.errors == 0  # nothing changed
    finally:
        service.stop()
