"""Expression per note, on rendered audio: MPE per-note bend and CC 74, latch mode, MCM zones,
a recorded MPE performance replayed, and no click when a voice's position jumps.

Pitches are measured by spectral peak interpolation (Blackman window, 4x zero padding,
parabolic fit on log magnitude) on offline renders. Where notes sound together, their pitches
are chosen so that every measured partial (the first 8) is at least 20 Hz from every partial
of the other notes (checked by :func:`_separation`), and partial levels are read from a
1-second spectrum (1 Hz bins, the Blackman main lobe is +-3 Hz wide).
"""

from __future__ import annotations

import mido
import numpy as np
import pytest

from morphbox.device.engine.controls import Controls, ControlState, Expression
from morphbox.device.engine.voices import Engine, EngineConfig, render_offline
from morphbox.device.midi.files import midi_events, play
from morphbox.device.midi.recorder import Recorder
from morphbox.device.midi.router import MidiRouter, MpeZones, dispatch_router
from morphbox.device.packs.format import load_default_grid
from morphbox.kernels.pitch import midi_to_hz

SR = 48000


@pytest.fixture(scope="module")
def grid():
    return load_default_grid()


def make_engine(grid, x=0.0, y=0.0, mode="follow", expression=None) -> Engine:
    state = ControlState(x=x, y=y, attack_s=0.005, decay_s=0.1, sustain=1.0, release_s=0.1,
                         volume=1.0, morph_mode=mode,
                         expression=expression or Expression())
    return Engine(grid, EngineConfig(), Controls(state))


def mono(engine: Engine, seconds: float) -> np.ndarray:
    bs = engine.config.block_size
    return render_offline(engine, int(round(seconds * SR / bs)) * bs)[:, 0].copy()


def on(note, ch, vel=90):
    return mido.Message("note_on", note=note, velocity=vel, channel=ch)


def bend(semitones, ch, bend_range=48.0):
    pitch = int(round(semitones / bend_range * 8192))
    return mido.Message("pitchwheel", pitch=max(-8192, min(8191, pitch)), channel=ch)


def cc(control, value, ch):
    return mido.Message("control_change", control=control, value=value, channel=ch)


def _spectrum(audio: np.ndarray, pad: int = 4) -> tuple[np.ndarray, float]:
    """Log magnitude of a Blackman-windowed, zero-padded FFT and its bin width, Hz."""
    n = len(audio) * pad
    spec = np.abs(np.fft.rfft(audio * np.blackman(len(audio)), n=n))
    return np.log(spec + 1e-12), SR / n


def peak_hz(audio: np.ndarray, near_hz: float, cents: float = 60.0) -> float:
    """Frequency of the strongest peak within ``cents`` of ``near_hz``, by parabolic
    interpolation of the log magnitude around the peak bin."""
    logmag, df = _spectrum(audio)
    lo = int(near_hz * 2 ** (-cents / 1200) / df)
    hi = int(near_hz * 2 ** (cents / 1200) / df) + 1
    k = lo + int(np.argmax(logmag[lo:hi]))
    a, b, c = logmag[k - 1], logmag[k], logmag[k + 1]
    return (k + 0.5 * (a - c) / (a - 2 * b + c)) * df


def cents_off(hz: float, note: float) -> float:
    return float(1200 * np.log2(hz / midi_to_hz(note)))


def partial_levels(audio: np.ndarray, note: float, n: int = 8) -> np.ndarray:
    """dB of partials 1..n of ``note`` (peak within +-3 Hz of k f0 in a 1 Hz-bin spectrum
    of ``audio``, 1 s at 48 kHz), relative to the strongest."""
    logmag, df = _spectrum(audio[:SR], pad=1)
    f0 = float(midi_to_hz(note))
    db = np.array([20 / np.log(10) * logmag[int((k * f0 - 3) / df):int((k * f0 + 3) / df) + 1]
                   .max() for k in range(1, n + 1)])
    return db - db.max()


def distance(a: np.ndarray, b: np.ndarray, floor: float = -20.0) -> float:
    """Mean absolute dB difference of two partial-level vectors, floored at ``floor`` (in a
    mix, the other voices' noise part masks partials more than ~20 dB down)."""
    return float(np.mean(np.abs(np.maximum(a, floor) - np.maximum(b, floor))))


def _separation(notes, measured: int = 8, others: int = 30) -> float:
    """Smallest distance, Hz, from a measured partial of one note to any partial of another."""
    worst = np.inf
    for i, a in enumerate(notes):
        pa = float(midi_to_hz(a)) * np.arange(1, measured + 1)
        for j, b in enumerate(notes):
            if i != j:
                pb = float(midi_to_hz(b)) * np.arange(1, others + 1)
                worst = min(worst, np.abs(pa[:, None] - pb[None, :]).min())
    return worst


def test_member_channel_bends_move_their_own_notes_only(grid):
    """+2 and -2 semitones on two member channels (one bent before its note-on, one after):
    those fundamentals sit at the bent pitches; a third member channel's note stays in tune."""
    engine = make_engine(grid)
    router = MidiRouter(engine)  # default: MPE lower zone, 15 member channels, +-48
    router.handle(bend(+2.0, ch=1))  # member channel state before the note applies at note-on
    router.handle(on(57, ch=1))
    router.handle(on(64, ch=2))
    router.handle(on(69, ch=3))
    render_offline(engine, 128)
    router.handle(bend(-2.0, ch=2))  # and a bend while the note sounds
    audio = mono(engine, 1.4)[int(0.35 * SR):]
    for note, expected in ((57, 59.0), (64, 62.0), (69, 69.0)):
        got = cents_off(peak_hz(audio, float(midi_to_hz(expected))), expected)
        assert abs(got) < 5, f"note {note}: {got:+.1f} cents from MIDI {expected}"
    assert engine.controls.snapshot.bend == 0.0  # member bends are per voice, not global


def test_master_bend_adds_to_member_bends_and_rpn0_sets_the_member_range(grid):
    engine = make_engine(grid)
    router = MidiRouter(engine)
    for m in (cc(101, 0, 1), cc(100, 0, 1), cc(6, 12, 1), cc(38, 0, 1)):  # RPN 0 on a member
        router.handle(m)
    router.handle(bend(+3.0, ch=4, bend_range=12.0))  # another member of the zone: +-12 too
    router.handle(bend(+1.0, ch=0, bend_range=2.0))   # master: +-2, the whole zone
    router.handle(on(57, ch=4))
    router.handle(on(69, ch=5))
    audio = mono(engine, 1.4)[int(0.35 * SR):]
    for expected in (57 + 3 + 1, 69 + 1):
        got = cents_off(peak_hz(audio, float(midi_to_hz(expected))), expected)
        assert abs(got) < 5, f"MIDI {expected}: {got:+.1f} cents"


def test_cc74_moves_one_voice_and_leaves_the_other(grid):
    """MPE morph mode, touch at the west edge: both voices start at CC 74 = 127 (north, the
    NW instrument); CC 74 -> 0 on one member channel moves that voice to SW. Its partials
    then match a render of the same note at SW, not at NW; the other voice's are unchanged."""
    a, b = 64, 75
    assert _separation((a, b)) > 20
    expr = Expression(timbre_y=-1.0)  # CC 74 127 -> y - 0.5, 0 -> y + 0.5
    engine = make_engine(grid, 0.0, 0.5, mode="mpe", expression=expr)
    router = MidiRouter(engine)
    router.handle(cc(74, 127, ch=1))
    router.handle(cc(74, 127, ch=2))
    router.handle(on(a, ch=1))
    router.handle(on(b, ch=2))
    before = mono(engine, 1.5)[-SR:]
    router.handle(cc(74, 0, ch=1))
    mono(engine, 0.5)  # the voice glides (30 ms smoothing), then settles
    after = mono(engine, 1.0)
    refs = {}  # the note alone at each place, over the same stretch of its note
    for name, y in (("NW", 0.0), ("SW", 1.0)):
        e = make_engine(grid, 0.0, y)
        e.note_on(a, 90)
        alone = mono(e, 3.0)
        refs[name] = partial_levels(alone[SR // 2:], a), partial_levels(alone[2 * SR:], a)
    moved = partial_levels(after, a)
    d_sw, d_nw = distance(moved, refs["SW"][1]), distance(moved, refs["NW"][1])
    assert d_sw < 0.5 * d_nw, (d_sw, d_nw)
    first = partial_levels(before, a)
    assert distance(first, refs["NW"][0]) < 0.5 * distance(first, refs["SW"][0])
    # the other voice: the same place in its note before and after the move
    e = make_engine(grid, 0.0, 0.0)
    e.note_on(b, 90)
    alone = mono(e, 3.0)
    for got, ref in ((before, alone[SR // 2:]), (after, alone[2 * SR:])):
        assert distance(partial_levels(got, b), partial_levels(ref, b)) < 1.0


def test_latch_keeps_a_chord_where_it_was_struck(grid):
    """Latch: a chord struck at NW keeps NW while the touch moves to SE; a note struck
    after the move sounds SE."""
    chord, late = (60, 70), 71
    assert _separation((*chord, late)) > 20
    engine = make_engine(grid, 0.0, 0.0, mode="latch")
    router = MidiRouter(engine)
    for n in chord:
        router.handle(on(n, ch=0))
    mono(engine, 0.5)
    engine.controls.set_touch(1.0, 1.0)
    mono(engine, 0.5)
    router.handle(on(late, ch=0))
    audio = mono(engine, 2.0)[-SR:]

    def alone(note, x, y):
        e = make_engine(grid, x, y)
        e.note_on(note, 90)
        if note != late:
            mono(e, 1.0)  # the same place in the sustain loop as in the mix
        return partial_levels(mono(e, 2.0)[-SR:], note)

    for note in chord:
        got = partial_levels(audio, note)
        nw, se = alone(note, 0, 0), alone(note, 1, 1)
        assert distance(got, nw) < 0.5 * distance(got, se), (note, distance(got, nw),
                                                               distance(got, se))
    got = partial_levels(audio, late)
    nw, se = alone(late, 0, 0), alone(late, 1, 1)
    assert distance(got, se) < 0.5 * distance(got, nw), (distance(got, se), distance(got, nw))


def test_mcm_sets_the_zone_and_other_channels_stay_plain(grid):
    """MCM: lower zone of 3 member channels (MIDI 2..4). A bend on MIDI channel 3 bends its
    note alone (+-48); one on MIDI channel 6 is a plain global bend (+-2); an MCM sent on a
    non-master channel changes nothing; MCM 0 ends the zone."""
    engine = make_engine(grid)
    router = MidiRouter(engine)
    for m in (cc(101, 0, 0), cc(100, 6, 0), cc(6, 3, 0)):  # MCM on the lower master
        router.handle(m)
    assert router.zones == MpeZones(lower=3, upper=0)
    assert [router.channel_role(c) for c in (0, 1, 3, 4, 5)] == [
        "lower master", "lower member", "lower member", "none", "none"]
    for m in (cc(101, 0, 7), cc(100, 6, 7), cc(6, 9, 7)):  # not a master channel: ignored
        router.handle(m)
    assert router.zones == MpeZones(lower=3, upper=0)
    router.handle(bend(+1.0, ch=2))             # member: its note only, +-48
    router.handle(on(57, ch=2))
    router.handle(bend(-1.0, ch=5, bend_range=2.0))  # outside the zone: global, +-2
    router.handle(on(69, ch=5))
    assert engine.controls.snapshot.bend == pytest.approx(-1.0)
    audio = mono(engine, 1.4)[int(0.35 * SR):]
    for expected in (57 + 1 - 1, 69 - 1):
        got = cents_off(peak_hz(audio, float(midi_to_hz(expected))), expected)
        assert abs(got) < 5, f"MIDI {expected}: {got:+.1f} cents"
    # the upper zone takes channels 16 down to 12; asking for 13 members shrinks the lower
    for m in (cc(101, 0, 15), cc(100, 6, 15), cc(6, 13, 15)):
        router.handle(m)
    assert router.zones == MpeZones(lower=1, upper=13)
    for m in (cc(101, 0, 0), cc(100, 6, 0), cc(6, 0, 0)):  # lower zone off
        router.handle(m)
    assert [router.channel_role(c) for c in (0, 1, 2, 14, 15)] == [
        "none", "none", "upper member", "upper member", "upper master"]


class _BlockClock:
    """The recorder's clock in rendered time: blocks rendered (+ ``offset`` blocks), s."""

    def __init__(self, engine):
        self.engine, self.offset = engine, 0.0

    def __call__(self) -> float:
        return (self.engine.blocks + self.offset) * self.engine.config.block_size / SR


def test_a_recorded_mpe_performance_replays_to_the_same_audio(grid, tmp_path):
    """Play an MPE performance (per-note bends, pressure, CC 74, poly aftertouch, a master
    pedal, morph mode mpe) through the router that renders files, record its MIDI, then
    render the recorded file: the audio is the same, sample for sample within float
    tolerance."""
    rng = np.random.default_rng(3)
    events, t = [], 0.05
    for i, note in enumerate((52, 59, 64, 71)):
        ch = 1 + i
        events += [(t, bend(rng.uniform(-1, 1), ch)), (t, cc(74, int(rng.integers(128)), ch)),
                   (t + 0.001, on(note, ch))]
        for k in range(1, 30):  # a wobbling finger: bend, pressure and CC 74 every 10 ms
            tk = t + 0.01 * k
            events += [(tk, bend(0.5 * np.sin(k / 3 + i), ch)),
                       (tk, mido.Message("aftertouch", value=int(64 + 60 * np.sin(k / 5)),
                                         channel=ch)),
                       (tk, cc(74, int(64 + 60 * np.cos(k / 4 + i)), ch))]
        t += 0.15
    events += [(0.3, cc(64, 127, 0)), (0.4, mido.Message("note_off", note=52, channel=1)),
               (0.5, mido.Message("polytouch", note=59, value=100, channel=2)),
               (0.9, cc(64, 0, 0))]
    events.sort(key=lambda e: e[0])

    def start(mode: str) -> Engine:
        return make_engine(grid, 0.3, 0.6, mode=mode,
                           expression=Expression(pressure_loudness=0.5, pressure_brightness=6))

    engine = start("mpe")
    router = dispatch_router(engine)
    clock = _BlockClock(engine)
    rec = Recorder(engine, tmp_path, writer=False, clock=clock)
    rec.preamble = router.state_messages
    router.listeners.append(rec.on_midi)
    rec.start_recording("mpe")  # at time 0, the start of block 0
    clock.offset = 0.5  # messages arrive between block boundaries, as live ones do
    original = play(engine, events, duration_s=1.6, on_block=lambda _t: rec.step(), mpe="on")
    done = rec.stop_recording()
    recorded = midi_events(done.midi)
    kinds = {m.type for _, m in recorded}
    assert {"pitchwheel", "aftertouch", "polytouch", "note_on"} <= kinds
    assert any(m.type == "control_change" and m.control == 74 for _, m in recorded)

    replay_engine = start("follow")  # the file's preamble sets the morph mode to mpe
    replayed = play(replay_engine, recorded, duration_s=1.6)
    assert replay_engine.controls.snapshot.morph_mode == "mpe"
    assert np.abs(original).max() > 0.05
    np.testing.assert_allclose(replayed, original, rtol=0, atol=1e-6)


@pytest.mark.parametrize("how", ["cc74", "latch_to_follow"])
def test_a_voice_position_jump_makes_no_click(grid, how):
    """A voice's target jumps across the surface (CC 74 0 -> 127 in MPE mode; latch -> follow
    with the touch far away): its position glides, the waveform makes no step."""
    mode = "mpe" if how == "cc74" else "latch"
    engine = make_engine(grid, 0.0, 0.5 if how == "cc74" else 0.0, mode=mode,
                         expression=Expression(timbre_y=-1.0))
    router = MidiRouter(engine)
    router.handle(cc(74, 0, ch=1))
    router.handle(on(57, ch=1))
    before = mono(engine, 0.9)
    if how == "cc74":
        router.handle(cc(74, 127, ch=1))
    else:
        engine.controls.set_touch(1.0, 1.0)
        engine.controls.set_morph_mode("follow")
    after = mono(engine, 1.2)
    # a step in the waveform is a spike in its second difference (a smooth wave's is small):
    # without the smoothing and the table crossfade the CC 74 jump gives ~3x the steady one
    audio = np.concatenate([before, after])
    steady = max(np.abs(np.diff(before[SR // 2:], 2)).max(),
                 np.abs(np.diff(after[SR // 2:], 2)).max())
    jump = np.abs(np.diff(audio[len(before) - 2048:len(before) + 4096], 2)).max()
    assert jump < 1.5 * steady, f"step {jump:.5f} vs steady {steady:.5f}"
    # and it did move: the spectrum changed
    assert distance(partial_levels(before, 57), partial_levels(after[-SR:], 57)) > 2


def test_morphbox_render_plays_an_mpe_file(tmp_path):
    """An MPE file (MCM, per-note bends on member channels) rendered by ``morphbox render``:
    each note sounds at its own bent pitch."""
    import soundfile as sf

    from morphbox.host_tools.cli import main
    track = mido.MidiTrack()
    for m in (cc(101, 0, 0), cc(100, 6, 0), cc(6, 4, 0),  # MCM: lower zone, 4 members
              bend(+1.0, ch=1), bend(-2.0, ch=2), on(57, ch=1), on(64, ch=2)):
        track.append(m.copy(time=0))
    track.append(mido.Message("note_off", note=57, channel=1, time=960))  # 1 s at 120 bpm
    track.append(mido.Message("note_off", note=64, channel=2, time=0))
    mid = tmp_path / "mpe.mid"
    mido.MidiFile(tracks=[track], ticks_per_beat=480).save(mid)
    out = tmp_path / "mpe.wav"
    assert main(["render", str(mid), "-o", str(out), "--path", "circle",
                 "--morph-mode", "mpe"]) == 0
    audio, sr = sf.read(out)
    assert sr == SR
    seg = audio[int(0.3 * SR):int(0.95 * SR), 0]
    for expected in (58.0, 62.0):
        got = cents_off(peak_hz(seg, float(midi_to_hz(expected))), expected)
        assert abs(got) < 5, f"MIDI {expected}: {got:+.1f} cents"


def test_the_docs_mpe_example_moves_each_voice_its_own_way(tmp_path):
    """docs/mpe.png's phrase: the sliding voice ends north, the pressing one east, the third
    stays at the touch; the picture is written."""
    from morphbox.host_tools.demo import render_mpe_example
    from morphbox.host_tools.plots import plot_voices
    r = render_mpe_example()
    end = r["positions"][-1]
    np.testing.assert_allclose(end, [[0.5, 0.0], [1.0, 0.5], [0.5, 0.5]], atol=1e-6)
    assert np.isfinite(r["audio"]).all() and np.abs(r["audio"]).max() > 0.05
    out = plot_voices(r["audio"], r["sample_rate"], r["times"], r["positions"], r["notes"],
                      tmp_path / "mpe.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_plain_multichannel_file_plays_as_before_unless_mpe_is_asked_for(grid):
    """A General MIDI file bending a note on channel 2 (no MPE Configuration Message): in the
    default ``auto`` the bend is the plain +-2 range, exactly as before MPE; ``on`` reads
    channel 2 as an MPE member channel (+-48)."""
    events = [(0.0, bend(1.0, ch=1, bend_range=2.0)),  # full-scale/2: +1 semitone at +-2
              (0.0, on(57, ch=1))]
    expected = {"auto": 58.0, "off": 58.0, "on": 57.0 + 48.0 / 2.0}
    for mpe, want in expected.items():
        engine = make_engine(grid)
        audio = play(engine, events, duration_s=0.8, mpe=mpe)[int(0.3 * SR):, 0]
        got = cents_off(peak_hz(audio, float(midi_to_hz(want))), want)
        assert abs(got) < 5, f"mpe={mpe}: MIDI {want}: {got:+.1f} cents"
