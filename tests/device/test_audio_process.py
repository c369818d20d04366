"""The audio process: the same audio as the in-process engine, grids swapped at a block
boundary, a killed process restarted with every note reset, the service end to end with it
(paced null output and a real JACK server), and what it does when it cannot get real-time
scheduling. Waits are on conditions (tests.helpers.wait_until), never on durations."""

from __future__ import annotations

import dataclasses
import logging
import os
import threading

import mido
import numpy as np
import pytest

from morphbox.device.engine.controls import ControlState
from morphbox.device.engine.corners import build_grid
from morphbox.device.engine.process import (
    AudioProcess,
    AudioProcessConfig,
    ControlCodec,
    request_realtime,
)
from morphbox.device.engine.voices import Engine, EngineConfig
from morphbox.device.midi.files import MidiFilePart, play
from morphbox.device.packs.format import DEFAULT_PACK, load_default_grid, load_pack
from morphbox.device.panel.paths import TouchPathPart, circle
from morphbox.device.service import Service, ServiceConfig
from tests.helpers import wait_until

MANUAL = AudioProcessConfig(output="manual", rt_priority=0, lock_memory=False)
LIVE = AudioProcessConfig(output="none", rt_priority=0, lock_memory=False)


@pytest.fixture(scope="module")
def grid():
    return load_default_grid()


def _performance():
    """A few bars: a chord, bend, volume, sustain pedal, a note past the chord, all off."""
    m = mido.Message
    return [(0.0, m("note_on", note=48, velocity=100)), (0.0, m("note_on", note=55, velocity=80)),
            (0.05, m("note_on", note=64, velocity=120)), (0.3, m("pitchwheel", pitch=3000)),
            (0.4, m("control_change", control=64, value=127)),
            (0.5, m("note_off", note=55)), (0.6, m("control_change", control=7, value=70)),
            (0.7, m("note_on", note=71, velocity=90)), (0.8, m("control_change", control=64,
                                                               value=0)),
            (1.0, m("note_off", note=48)), (1.1, m("note_off", note=64)),
            (1.2, m("note_off", note=71)), (1.25, m("pitchwheel", pitch=0))]


def test_the_audio_process_renders_what_the_engine_renders(grid):
    """The same events, touch path and blocks, offline: the audio process's output equals
    the in-process engine's (same code, same seed) within float tolerance."""
    cfg = EngineConfig()
    events, path = _performance(), circle(period_s=0.7)
    ref = play(Engine(grid, cfg), events, path, tail_s=0.6)
    with AudioProcess(grid, cfg, MANUAL) as ap:
        got = play(ap, events, path, tail_s=0.6)
        st = ap.stats
    assert got.shape == ref.shape and np.abs(ref).max() > 0.05
    np.testing.assert_allclose(got, ref, atol=1e-6)
    assert st.blocks == len(ref) // cfg.block_size and st.errors == 0


def test_per_voice_expression_reaches_the_audio_process_exactly(grid):
    """MPE: notes with their own bend, pressure and timbre, per-voice controls by channel and
    by note, the mpe morph mode: the audio process plays what the engine plays, and reports
    the voices' morph positions."""
    cfg = EngineConfig()
    outs, positions = [], []
    for make in (lambda: Engine(grid, cfg), lambda: AudioProcess(grid, cfg, MANUAL)):
        e = make()
        e.controls.set_morph_mode("mpe")
        e.controls.set_touch(0.4, 0.6)
        e.note_on(60, 100, channel=1, bend=0.5, pressure=0.2, timbre=0.7)
        e.note_on(64, 90, channel=2, bend=-1.0, pressure=0.0, timbre=0.2)
        blocks = []
        for i in range(60):
            if i == 10:
                e.voice_control(1, bend=2.0, timbre=0.9)
            if i == 20:
                e.voice_control(2, 64, pressure=0.8)  # polyphonic aftertouch
            if i == 30:
                e.voice_control(2, bend=None, pressure=None, timbre=0.5)
            if i == 40:
                e.note_off(60, 1)
            blocks.append(e.render_block().copy())
        e.voice_positions()  # the audio process: publish them from the next block on
        e.render_block()
        pos = e.voice_positions()
        if isinstance(e, AudioProcess):
            e.close()
        outs.append(np.concatenate(blocks))
        positions.append(pos)
    assert np.abs(outs[0]).max() > 0.05
    np.testing.assert_allclose(outs[1], outs[0], atol=1e-6)
    assert positions[0].shape == (2, 2)
    np.testing.assert_allclose(positions[1], positions[0], atol=1e-9)


def test_a_new_grid_is_swapped_in_at_a_block_boundary(grid):
    """Corners change under a held note: the audio process plays the new grid from the
    block after set_grid, exactly as the engine does."""
    other = build_grid(load_pack(DEFAULT_PACK), {"NW": 5, "NE": 9, "SW": 2, "SE": 14})
    cfg = EngineConfig()
    outs = []
    for make in (lambda: Engine(grid, cfg), lambda: AudioProcess(grid, cfg, MANUAL)):
        e = make()
        e.controls.set_touch(0.3, 0.6)
        e.note_on(60, 100)
        blocks = [e.render_block().copy() for _ in range(40)]
        e.set_grid(other)
        assert e.grid.name == other.name
        blocks += [e.render_block().copy() for _ in range(40)]
        outs.append(np.concatenate(blocks))
        if isinstance(e, AudioProcess):
            gen = int(e._sh.stats["grid_generation"])
            e.close()
    np.testing.assert_allclose(outs[1], outs[0], atol=1e-6)
    assert gen == 2  # the second grid posted is the one playing


def test_a_grid_that_does_not_fit_is_refused_and_the_old_one_plays_on(grid):
    small = dataclasses.replace(grid, frames_db=grid.frames_db[..., 1:], name="odd")
    ap = AudioProcess(grid, EngineConfig(), MANUAL)
    try:
        with pytest.raises(ValueError, match="different number"):
            ap.set_grid(small)
        assert ap.grid.name == grid.name
        ap.note_on(60, 100)
        assert np.abs(np.concatenate([ap.render_block().copy() for _ in range(20)])).max() > 0.01
    finally:
        ap.close()


def test_a_killed_audio_process_is_restarted_with_every_note_off(grid):
    with AudioProcess(grid, EngineConfig(), LIVE) as ap:
        ap.controls.set_adsr(release_s=5.0)  # a note that would ring on for seconds
        ap.note_on(60, 100)
        ap.note_on(64, 100)
        wait_until(lambda: ap.active_voices == 2, what="two notes sounding")
        first = ap.pid
        restarted = threading.Event()
        ap.restart_listeners.append(restarted.set)
        ap.kill()
        wait_until(restarted.is_set, what="the audio process restarted")
        assert ap.pid != first and ap.restarts == 1 and ap.active
        blocks = ap.stats.blocks
        wait_until(lambda: ap.stats.blocks > blocks + 10, what="the new process playing")
        assert ap.active_voices == 0  # nothing hangs: the notes went with the process
        assert ap.controls.snapshot.release_s == 5.0  # the controls survived it
        ap.note_on(67, 90)  # and it plays on
        wait_until(lambda: ap.active_voices == 1, what="a new note in the new process")
        ap.note_off(67)
        wait_until(lambda: ap.active_voices == 0, timeout=30, what="the new note released")


def test_when_the_service_does_not_drain_taps_the_audio_goes_on_and_drops_are_counted(grid):
    """The service stalls (its tap thread is stuck): the audio process keeps rendering, the
    tap ring fills and the blocks it cannot take are dropped and counted, never waited for."""
    release = threading.Event()
    taken = []

    def slow_tap(block):
        taken.append(float(np.abs(block).max()))
        release.wait(60)

    with AudioProcess(grid, EngineConfig(), LIVE) as ap:
        ap.add_tap(slow_tap)
        ring = ap._sh.taps
        b0 = ap.stats.blocks
        wait_until(lambda: ring.dropped > 0, what="the tap ring overflowing")
        wait_until(lambda: ap.stats.blocks > b0 + ring.capacity + 50,
                   what="the audio going on regardless")
        release.set()
        wait_until(lambda: ring.pending == 0, what="the service catching up")
        assert ap.info()["tap_dropped"] == ring.dropped > 0
        assert ap.stats.errors == 0
        ap.remove_tap(slow_tap)
        assert ap._sh.flags["taps"] == 0


def test_only_the_playing_and_the_next_grid_stay_in_shared_memory(grid):
    def segments():
        return sorted(f for f in os.listdir("/dev/shm")
                      if f.startswith(f"morphbox-{os.getpid()}-grid"))

    with AudioProcess(grid, EngineConfig(), LIVE) as ap:
        for _ in range(5):
            ap.set_grid(grid)
        assert len(segments()) <= 3  # playing, next, and at most one being replaced
        wait_until(lambda: ap._sh.stats["grid_generation"] == 6, what="the last grid playing")
        wait_until(lambda: len(segments()) == 1, what="the old grids freed")
    assert segments() == []


def test_the_control_codec_carries_every_field_and_per_channel_tuples():
    from morphbox.device.engine.controls import Expression
    codec = ControlCodec()
    s = ControlState(x=0.1, y=0.9, touching=True, volume=0.3, attack_s=2.0, decay_s=0.2,
                     sustain=0.4, release_s=7.5, bend=-1.25, position=0.6, morph_mode="latch",
                     expression=Expression(timbre_x=0.25, pressure_loudness=0.5))
    assert codec.decode(codec.encode(s)) == s
    assert codec.decode(codec.encode(s)).touching is True

    @dataclasses.dataclass(frozen=True)
    class MpeState:  # what per-voice expression could add: fixed-length per-channel data
        x: float = 0.5
        pressure: tuple = (0.0,) * 16
        channel: int = 0

    codec = ControlCodec(MpeState)
    m = MpeState(x=0.25, pressure=tuple(i / 16 for i in range(16)), channel=3)
    assert codec.struct.size == 8 * 18 and codec.decode(codec.encode(m)) == m


def test_realtime_refusals_are_logged_and_harmless(caplog):
    caplog.set_level(logging.WARNING, "morphbox.audio")
    nothing = request_realtime(0, lock_memory=False)  # not asked
    assert not nothing.fifo and not nothing.mlocked and caplog.records == []
    bad = request_realtime(1000, lock_memory=False)  # no such priority: refused
    assert not bad.fifo and bad.priority == 0 and bad.fifo_error
    assert "SCHED_FIFO priority 1000 refused" in caplog.text and "LimitRTPRIO" in caplog.text


def test_without_privileges_the_audio_process_still_plays(tmp_path):
    """Without CAP_SYS_NICE/CAP_IPC_LOCK and with zero rtprio and a small memlock limit,
    SCHED_FIFO and mlockall are refused: the audio process says so and plays on at normal
    priority."""
    import shutil
    import subprocess
    import sys
    script = (
        "import resource\n"
        "resource.setrlimit(resource.RLIMIT_RTPRIO, (0, 0))\n"
        "resource.setrlimit(resource.RLIMIT_MEMLOCK, (65536, 65536))\n"
        "from morphbox.device.engine.process import AudioProcess, AudioProcessConfig\n"
        "from morphbox.device.packs.format import load_default_grid\n"
        "from tests.helpers import wait_until\n"
        "with AudioProcess(load_default_grid(), config=AudioProcessConfig(output='none',\n"
        "        rt_priority=70, lock_memory=True)) as ap:\n"
        "    ap.note_on(60, 100)\n"
        "    wait_until(lambda: ap.active_voices == 1 and ap.stats.blocks > 20)\n"
        "    i = ap.info()\n"
        "    print(i['sched_fifo'], i['mlocked'], ap.stats.errors)\n")
    cmd = [sys.executable, "-c", script]
    setpriv = shutil.which("setpriv")
    if os.geteuid() == 0:  # root: drop every capability first (or there is nothing to refuse)
        if setpriv is None:
            pytest.skip("running as root and setpriv (util-linux) is missing")
        cmd = [setpriv, "--bounding-set=-all", "--inh-caps=-all", "--securebits=+noroot", *cmd]
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=repo)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["False", "False", "0"]
    assert "SCHED_FIFO priority 70 refused" in res.stderr and "mlockall refused" in res.stderr
    assert "normal scheduling" in res.stderr


def _chord():
    return [(0.0, mido.Message("note_on", note=n, velocity=100)) for n in (48, 55, 60)] + [
        (0.8, mido.Message("note_off", note=n)) for n in (48, 55, 60)]


def test_the_service_runs_end_to_end_with_the_audio_process(tmp_path):
    service = Service(ServiceConfig(audio="none", audio_process="yes", rt_priority=0,
                                    state_dir=tmp_path))
    peaks, voices = [], []

    def tap(block):
        peaks.append(float(np.abs(block).max()))
        voices.append(service.engine.active_voices)

    service.engine.add_tap(tap)
    midi = service.add(MidiFilePart(service.engine, _chord()))
    service.add(TouchPathPart(service.controls, circle(period_s=1.0)))
    service.start()
    try:
        assert isinstance(service.engine, AudioProcess) and service.output is service.engine
        wait_until(lambda: not midi.running, what="the MIDI file played")
        wait_until(lambda: voices and max(voices) == 3 and service.engine.active_voices == 0,
                   what="the chord sounding and released")
        service.select_corners({"NW": 4})
        wait_until(lambda: service.corners.corners["NW"] == 4, what="the corner rebuilt")
        wait_until(lambda: service.engine._sh.stats["grid_generation"] == 2,
                   what="the new grid playing in the audio process")
        status = service.status()
    finally:
        service.stop()
    assert max(peaks) > 0.05
    assert status["blocks"] > 0 and status["errors"] == 0
    ap = status["audio_process"]
    assert ap["pid"] and ap["restarts"] == 0 and ap["events_dropped"] == 0
    assert not service.engine.active


def test_choosing_the_audio_process(monkeypatch):
    from morphbox.device.service import use_audio_process
    assert use_audio_process("yes") and not use_audio_process("no")
    monkeypatch.setenv("MORPHBOX_AUDIO_PROCESS", "yes")
    assert use_audio_process("auto") and not use_audio_process("no")
    monkeypatch.setenv("MORPHBOX_AUDIO_PROCESS", "no")
    assert not use_audio_process("auto") and use_audio_process("yes")
    with pytest.raises(ValueError, match="auto, yes or no"):
        use_audio_process("maybe")


def test_the_audio_process_exits_when_the_service_and_its_jack_server_die(tmp_path):
    """The soak's crash: the service dies (an rtmidi segfault) and its JACK server goes with
    it. PortAudio's close then waits forever for a JACK cycle; the audio process must still
    exit (and with it the forkserver it keeps alive), not linger at real-time priority."""
    import shutil
    import signal
    import subprocess
    import sys

    from tests.conftest import _jack_ready, _stop_process
    jackd = shutil.which("jackd")
    if jackd is None:
        pytest.skip("jackd is not installed")
    name = f"morphbox-test-orphan-{os.getpid()}"
    env = dict(os.environ, JACK_DEFAULT_SERVER=name, JACK_NO_AUDIO_RESERVATION="1")
    jack = subprocess.Popen([jackd, "-n", name, "--no-realtime", "-d", "dummy", "-r", "48000",
                             "-p", "128"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    service = None
    try:
        wait_until(lambda: _jack_ready(env), what="jackd")
        script = (
            "import sys\n"
            "from morphbox.device.engine.process import AudioProcess, AudioProcessConfig\n"
            "from morphbox.device.packs.format import load_default_grid\n"
            "ap = AudioProcess(load_default_grid(), config=AudioProcessConfig(\n"
            "    output='device', host_api='JACK', rt_priority=0, lock_memory=False))\n"
            "ap.start()\n"
            "print(ap.pid, flush=True)\n"
            "sys.stdin.read()\n")
        repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        service = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True, env=env, cwd=repo)
        audio_pid = int(service.stdout.readline())
        os.kill(jack.pid, signal.SIGKILL)  # the server goes first, then the service
        jack.wait(10)
        os.kill(service.pid, signal.SIGKILL)
        service.wait(10)

        def gone() -> bool:
            try:
                with open(f"/proc/{audio_pid}/stat") as f:
                    return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # exited, unreaped
            except FileNotFoundError:
                return True
        wait_until(gone, what="the orphaned audio process to exit")
    finally:
        if service is not None:
            _stop_process(service)
        _stop_process(jack)
        # A SIGKILLed jackd leaves its entry in JACK's shared registry (8 servers at most per
        # machine), reclaimed only when a server of the same name registers: start one and
        # stop it cleanly, so repeated runs never end in "Too many servers already active".
        again = subprocess.Popen([jackd, "-n", name, "--no-realtime", "-d", "dummy", "-r",
                                  "48000", "-p", "128"], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                                 start_new_session=True)
        try:
            wait_until(lambda: _jack_ready(env) or again.poll() is not None,
                       what="jackd to reclaim its registry entry")
        finally:
            _stop_process(again)


@pytest.mark.parametrize("how", ["errors", "nonfinite"])
def test_the_watchdog_sees_the_audio_process_break_and_rolls_back(tmp_path, how):
    """The pack watchdog's counters (render errors, non-finite blocks) come from the audio
    process: a pack that breaks the audio there is rolled back, and the box plays again."""
    from tests.device.test_watchdog import _break_the_grid, _play_until_broken, two_packs

    state, ids, _ = two_packs(tmp_path)
    service = Service(ServiceConfig(audio="none", audio_process="yes", rt_priority=0,
                                    state_dir=state, store=True))
    service.controls.set_touch(0.5, 0.5)
    service.start()
    try:
        assert isinstance(service.engine, AudioProcess)
        dog = service.watchdog
        dog.arm(now=100.0)
        _break_the_grid(service, how)
        assert _play_until_broken(service)
        # counted in the audio process, read here (which counter depends on the render: the
        # compiled one may raise on a NaN grid where numpy plays a non-finite block)
        assert service.output.stats.errors + service.engine.nonfinite_blocks >= dog.max_bad
        done = dog.check(101.0)
        assert done and f"back to {ids[120]}" in done
        assert service.pack.name == "p120"
        assert service.engine.grid.name == "p120"
        wait_until(lambda: service.engine.grid_playing, what="the old grid playing")
        rms = []
        service.engine.add_tap(lambda b: rms.append(float(np.sqrt(np.mean(b ** 2)))))
        bad_then = dog.bad_blocks()
        service.engine.note_on(64, 100)
        wait_until(lambda: len(rms) > 40 and max(rms[-20:]) > 1e-3, what="sound again")
        assert np.isfinite(rms).all() and dog.bad_blocks() - bad_then <= 2
    finally:
        service.stop()


def test_the_audio_process_builds_and_warms_its_render_before_it_plays(grid):
    """The audio process's engine uses the render an in-process engine would (compiled when
    numba is there), built and warmed before its first block, and says so."""
    with AudioProcess(grid, EngineConfig(), LIVE) as ap:
        status = ap.engine_status()
        assert ap.kernel == status["render"] == ap.info()["engine"]["render"]
    assert status["render"] == getattr(Engine(grid, EngineConfig()), "kernel", "numpy")
    if status["render"] == "compiled":
        assert status["warm_s"] > 0 and status["load_s"] > 0
