"""The device service running for real: paced output or a JACK server, simulated inputs."""

from __future__ import annotations

import time

import mido
import numpy as np

from morphbox.device.midi.files import MidiFilePart
from morphbox.device.panel.paths import TouchPathPart, circle
from morphbox.device.service import Service, ServiceConfig


def _chord_events():
    return [(0.0, mido.Message("note_on", note=n, velocity=100)) for n in (48, 55, 60)] + [
        (0.8, mido.Message("note_off", note=n)) for n in (48, 55, 60)]


def test_service_runs_inputs_and_audio_in_real_time_without_a_sound_card():
    service = Service(ServiceConfig(audio="none"))
    peaks = []
    service.engine.add_tap(lambda block: peaks.append(float(np.abs(block).max())))
    service.add(MidiFilePart(service.engine, _chord_events()))
    service.add(TouchPathPart(service.controls, circle(period_s=1.0)))
    service.start()
    time.sleep(0.4)
    voices = service.engine.active_voices
    x0 = service.controls.snapshot.x
    time.sleep(0.3)
    x1 = service.controls.snapshot.x
    time.sleep(1.0)
    status = service.status()
    service.stop()
    assert voices == 3
    assert x0 != x1  # the simulated touch moves
    assert 1.7 * 375 * 0.85 < status["blocks"] < 1.7 * 375 * 1.15
    assert status["errors"] == 0  # late blocks depend on machine load: see the benches
    assert max(peaks) > 0.05  # the chord sounded ...
    assert service.engine.active_voices == 0  # ... and was released
    assert status["corners"] == {"NW": "Cello", "NE": "Flute", "SW": "Acoustic Grand Piano",
                                 "SE": "Church Organ"}


def test_service_plays_through_jack(jack_server):
    service = Service(ServiceConfig(audio="device", host_api="JACK"))
    heard = []
    service.engine.add_tap(lambda block: heard.append(float(np.abs(block).max())))
    service.add(MidiFilePart(service.engine, _chord_events()))
    status = service.run(1.2)
    assert "system" in service.output.device_name
    assert status["blocks"] > 300 and status["errors"] == 0
    assert max(heard) > 0.05
