"""MidiRouter: notes, sustain, bend, CC map, channel filter, hooks, MPE routing and config;
the dispatch wrapper. (MPE on rendered audio: test_mpe.py.)"""

from __future__ import annotations

import threading

import mido
import numpy as np
import pytest

from morphbox.device.engine.controls import Controls, Expression, adsr_from_pots
from morphbox.device.engine.voices import Engine, render_offline
from morphbox.device.midi.inputs import MidiParser
from morphbox.device.midi.router import (
    DEFAULT_CC_MAP,
    MidiConfig,
    MidiConfigError,
    MidiRouter,
    MpeZones,
    RouterConfig,
    dispatch,
)
from morphbox.device.packs.format import load_default_grid

SR = 48000


class FakeEngine:
    """Records the entry-point calls in order."""

    def __init__(self):
        self.controls = Controls()
        self.calls: list[tuple] = []

    def note_on(self, note, velocity, channel=0, **expression):
        self.calls.append(("on", note, velocity, channel, expression) if expression
                          else ("on", note, velocity, channel))

    def voice_control(self, channel, note=None, **values):
        self.calls.append(("voice", channel, note,
                           {k: v for k, v in values.items() if v is not None}))

    def note_off(self, note, channel=0):
        self.calls.append(("off", note, channel))

    def all_notes_off(self):
        self.calls.append(("all_notes_off",))

    def all_sound_off(self):
        self.calls.append(("all_sound_off",))


class FakePack:
    instrument_names = [f"i{i}" for i in range(16)]


class FakeCorners:
    pack = FakePack()

    def __init__(self):
        self.selected: list[dict] = []
        self.steps: list[tuple] = []

    def select(self, corners):
        self.selected.append(corners)

    def step(self, corner, delta):
        self.steps.append((corner, delta))


def on(note, vel=100, ch=0):
    return mido.Message("note_on", note=note, velocity=vel, channel=ch)


def off(note, ch=0):
    return mido.Message("note_off", note=note, channel=ch)


def cc(control, value, ch=0):
    return mido.Message("control_change", control=control, value=value, channel=ch)


@pytest.fixture(scope="module")
def grid():
    return load_default_grid()


def test_notes_and_velocity_zero_is_note_off():
    e = FakeEngine()
    r = MidiRouter(e)
    for m in (on(60, 90), on(60, 0), on(62, 1, ch=3), off(62, ch=3)):
        r.handle(m)
    assert e.calls == [("on", 60, 90, 0), ("off", 60, 0), ("on", 62, 1, 3), ("off", 62, 3)]
    assert r.held_notes == set()


def test_running_status_bytes_reach_the_engine():
    e = FakeEngine()
    r = MidiRouter(e)
    p = MidiParser()
    # one status byte, then three notes on and their offs as velocity-0 note-ons
    for m in p.feed(bytes([0x90, 60, 100, 64, 90, 67, 80, 60, 0, 64, 0, 67, 0])):
        r.handle(m)
    assert e.calls == [("on", 60, 100, 0), ("on", 64, 90, 0), ("on", 67, 80, 0),
                       ("off", 60, 0), ("off", 64, 0), ("off", 67, 0)]
    assert p.malformed == 0


def test_sustain_defers_note_offs_until_the_pedal_lifts():
    e = FakeEngine()
    r = MidiRouter(e)
    r.handle(on(60))
    r.handle(cc(64, 127))
    r.handle(off(60))
    r.handle(on(64))
    r.handle(off(64))
    assert [c for c in e.calls if c[0] == "off"] == []
    assert r.sustained_notes == {(0, 60), (0, 64)}
    r.handle(on(67))  # held through the pedal release: must keep sounding
    r.handle(cc(64, 0))
    assert sorted(c for c in e.calls if c[0] == "off") == [("off", 60, 0), ("off", 64, 0)]
    assert r.held_notes == {(0, 67)} and r.sustained_notes == set()
    r.handle(off(67))
    assert e.calls[-1] == ("off", 67, 0)


def test_retriggering_a_held_or_sustained_note_releases_the_old_voice_first():
    e = FakeEngine()
    r = MidiRouter(e)
    r.handle(on(60, 80))
    r.handle(on(60, 90))  # held key struck again (no note-off in between)
    r.handle(cc(64, 100))
    r.handle(off(60))
    r.handle(on(60, 70))  # sustained key struck again
    assert e.calls == [("on", 60, 80, 0), ("off", 60, 0), ("on", 60, 90, 0),
                       ("off", 60, 0), ("on", 60, 70, 0)]
    r.handle(cc(64, 0))  # the retriggered key is held: the pedal lift leaves it alone
    assert e.calls[-1] == ("on", 60, 70, 0)


def test_sustained_notes_keep_sounding_in_the_engine_until_the_pedal_lifts(grid):
    engine = Engine(grid)
    engine.controls.set_adsr(attack_s=0.005, sustain=0.8, release_s=0.05)
    r = MidiRouter(engine)
    r.handle(cc(64, 127))
    r.handle(on(60))
    r.handle(on(64))
    render_offline(engine, SR // 10)
    r.handle(off(60))
    r.handle(off(64))
    during = render_offline(engine, SR // 2)  # 10 release times later
    assert engine.active_voices == 2
    tail = during[-SR // 10:, 0]
    assert np.sqrt(np.mean(tail**2)) > 0.01, "sustained notes went quiet"
    r.handle(cc(64, 0))
    after = render_offline(engine, SR // 2)
    assert engine.active_voices == 0
    assert np.abs(after[-SR // 10:, 0]).max() < 1e-3


def test_without_the_pedal_the_engine_releases(grid):
    engine = Engine(grid)
    engine.controls.set_adsr(attack_s=0.005, release_s=0.05)
    r = MidiRouter(engine)
    r.handle(on(60))
    render_offline(engine, SR // 10)
    r.handle(off(60))
    render_offline(engine, SR // 2)
    assert engine.active_voices == 0


def test_all_notes_off_and_all_sound_off_clear_held_and_sustained(grid):
    e = FakeEngine()
    r = MidiRouter(e)
    r.handle(on(60))
    r.handle(cc(64, 127))
    r.handle(on(62))
    r.handle(off(62))
    r.handle(cc(123, 0))
    assert e.calls[-1] == ("all_notes_off",)
    assert r.held_notes == set() and r.sustained_notes == set()
    r.handle(on(65))
    r.handle(cc(120, 0))
    assert e.calls[-1] == ("all_sound_off",) and r.held_notes == set()

    engine = Engine(grid)
    engine.controls.set_adsr(attack_s=0.005, release_s=0.05)
    r = MidiRouter(engine)
    for n in (48, 55, 60, 64):
        r.handle(on(n))
    render_offline(engine, SR // 10)
    assert engine.active_voices == 4
    r.handle(cc(123, 0))
    render_offline(engine, SR // 2)
    assert engine.active_voices == 0


def test_pitch_bend_range_and_rpn():
    e = FakeEngine()
    r = MidiRouter(e, RouterConfig(bend_range=12.0))
    r.handle(mido.Message("pitchwheel", pitch=8191))
    assert e.controls.snapshot.bend == pytest.approx(12.0, abs=0.01)
    r.handle(mido.Message("pitchwheel", pitch=-8192))
    assert e.controls.snapshot.bend == pytest.approx(-12.0)
    for m in (cc(101, 0), cc(100, 0), cc(6, 5), cc(38, 0)):  # RPN 0: +-5 semitones
        r.handle(m)
    assert r.bend_range == 5.0
    r.handle(mido.Message("pitchwheel", pitch=4096))
    assert e.controls.snapshot.bend == pytest.approx(2.5)
    r.handle(cc(121, 0))  # reset all controllers
    assert e.controls.snapshot.bend == 0.0


def test_cc_map_moves_morph_adsr_volume_corners_and_record():
    e = FakeEngine()
    corners = FakeCorners()
    pressed = []
    r = MidiRouter(e, corners=corners, on_record=lambda: pressed.append(1))
    r.handle(cc(16, 127))
    r.handle(cc(17, 0))
    s = e.controls.snapshot
    assert (s.x, s.y) == (1.0, 0.0)
    r.handle(cc(1, 64))  # mod wheel -> morph X
    assert e.controls.snapshot.x == pytest.approx(64 / 127)
    r.handle(cc(73, 127))
    r.handle(cc(75, 0))
    r.handle(cc(79, 127))
    r.handle(cc(72, 64))
    r.handle(cc(7, 0))
    s = e.controls.snapshot
    p = 64 / 127
    assert s.attack_s == pytest.approx(4.0) and s.decay_s == pytest.approx(0.001)
    assert s.sustain == 1.0 and s.release_s == pytest.approx(adsr_from_pots(0, 0, 0, p)
                                                             ["release_s"])
    assert s.volume == 0.0
    r.handle(cc(102, 3))
    r.handle(cc(105, 17))  # wraps modulo the 16 instruments
    assert corners.selected == [{"NW": 3}, {"SE": 1}]
    for v in (127, 127, 0, 100, 0):  # a press is a rise through 64
        r.handle(cc(85, v))
    assert pressed == [1, 1]
    assert r.received == 15 and r.errors == 0


def test_custom_cc_map_from_a_dict_and_toml(tmp_path):
    cfg = MidiConfig.from_dict({"channel": 2, "bend_range": 7, "cc_map": {"20": "morph_x",
                                                                          "21": "corner_next_NE"}})
    assert cfg.router.channel == 1 and cfg.router.bend_range == 7.0
    assert cfg.router.cc_map == {20: "morph_x", 21: "corner_next_NE"}
    e = FakeEngine()
    corners = FakeCorners()
    r = MidiRouter(e, cfg.router, corners=corners)
    r.handle(cc(16, 127, ch=1))  # not mapped any more
    r.handle(cc(20, 127, ch=1))
    r.handle(cc(21, 127, ch=1))
    assert e.controls.snapshot.x == 1.0 and corners.steps == [("NE", 1)]
    toml = tmp_path / "morphbox.toml"
    toml.write_text('[midi]\nchannel = "omni"\ndin = "/dev/serial0"\n'
                    '[midi.cc_map]\n30 = "volume"\n')
    cfg = MidiConfig.load(toml)
    assert cfg.router.channel is None and cfg.din == "/dev/serial0"
    assert cfg.router.cc_map == {30: "volume"}
    assert MidiConfig.from_dict({}).router.cc_map == DEFAULT_CC_MAP
    with pytest.raises(MidiConfigError, match="unknown target"):
        MidiConfig.from_dict({"cc_map": {"20": "warp_drive"}})
    with pytest.raises(MidiConfigError, match="channel"):
        MidiConfig.from_dict({"channel": 17})
    with pytest.raises(MidiConfigError, match="unknown MIDI setting"):
        MidiConfig.from_dict({"chanel": 1})


def test_channel_filter_and_omni():
    e = FakeEngine()
    r = MidiRouter(e, RouterConfig(channel=9))
    r.handle(on(60, ch=0))
    r.handle(on(61, ch=9))
    assert e.calls == [("on", 61, 100, 9)] and r.ignored == 1
    e = FakeEngine()
    r = MidiRouter(e)
    for ch in range(16):
        r.handle(on(60, ch=ch))
    assert len(e.calls) == 16


def test_program_change_hook_and_ignored_messages():
    e = FakeEngine()
    programs = []
    r = MidiRouter(e, on_program_change=programs.append)
    for m in (mido.Message("program_change", program=5), mido.Message("clock"),
              mido.Message("active_sensing"), mido.Message("sysex", data=[1, 2, 3]),
              mido.Message("start"), mido.Message("songpos", pos=3)):
        r.handle(m)
    assert programs == [5] and e.calls == [] and r.errors == 0 and r.ignored == 5


def test_a_failing_hook_or_listener_never_stops_the_router():
    e = FakeEngine()

    def boom(*_):
        raise RuntimeError("boom")

    r = MidiRouter(e, on_program_change=boom)
    r.listeners.append(boom)
    r.handle(mido.Message("program_change", program=1))
    r.handle(on(60))
    assert r.errors == 1 and e.calls == [("on", 60, 100, 0)]


def test_the_router_thread_applies_messages_from_many_threads_in_per_thread_order():
    e = FakeEngine()
    r = MidiRouter(e)
    r.start()

    def feed(ch):
        for n in range(100):
            r.put(on(n, ch=ch))
            r.put(off(n, ch=ch))

    threads = [threading.Thread(target=feed, args=(ch,)) for ch in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert r.wait_idle(60)
    assert len(e.calls) == 800
    for ch in range(4):
        mine = [c for c in e.calls if c[-1] == ch]
        assert mine[:2] == [("on", 0, 100, ch), ("off", 0, ch)]
    r.stop()
    assert e.calls[-1] == ("all_notes_off",)


def test_dispatch_wrapper_keeps_working_with_sustain_and_bend(grid):
    engine = Engine(grid)
    engine.controls.set_adsr(attack_s=0.005, release_s=0.05)
    dispatch(engine, cc(64, 127))
    dispatch(engine, on(60))
    dispatch(engine, off(60))
    dispatch(engine, mido.Message("pitchwheel", pitch=8191), bend_range=12.0)
    render_offline(engine, SR // 2)
    assert engine.active_voices == 1
    assert engine.controls.snapshot.bend == pytest.approx(12.0, abs=0.01)
    dispatch(engine, cc(64, 0))
    dispatch(engine, cc(16, 127))  # no CC map in the wrapper
    render_offline(engine, SR // 2)
    assert engine.active_voices == 0 and engine.controls.snapshot.x == 0.5


# ---- per-voice expression and MPE ---------------------------------------------------------
def pw(pitch, ch):
    return mido.Message("pitchwheel", pitch=pitch, channel=ch)


def test_mpe_member_channels_reach_their_voices():
    """Default zone (lower, 15 members): a member channel's bend (+-48), pressure and CC 74
    go to its voices and to its next note-on; the master channel's bend stays global (+-2)
    and its pressure adds to the members'."""
    e = FakeEngine()
    r = MidiRouter(e)
    r.handle(pw(4096, ch=1))            # member: +24 semitones
    r.handle(mido.Message("aftertouch", value=127, channel=1))
    r.handle(cc(74, 0, ch=1))
    r.handle(on(60, ch=1))
    assert e.calls == [("voice", 1, None, {"bend": 24.0}),
                       ("voice", 1, None, {"pressure": 1.0}),
                       ("voice", 1, None, {"timbre": 0.0}),
                       ("on", 60, 100, 1, {"bend": 24.0, "pressure": 1.0, "timbre": 0.0})]
    e.calls.clear()
    r.handle(pw(-8192, ch=0))           # master: global bend, +-2
    assert e.controls.snapshot.bend == -2.0 and e.calls == []
    r.handle(mido.Message("aftertouch", value=0, channel=1))
    r.handle(mido.Message("aftertouch", value=127 // 2, channel=0))  # master: the zone
    calls = [c for c in e.calls if c[0] == "voice" and "pressure" in c[3]]
    assert calls[0] == ("voice", 1, None, {"pressure": 0.0})
    assert ("voice", 0, None, {"pressure": 63 / 127}) in calls
    assert ("voice", 1, None, {"pressure": 63 / 127}) in calls  # member 0 + master 63
    assert len(calls) == 1 + 16  # the master and its 15 members
    e.calls.clear()
    r.handle(mido.Message("polytouch", note=60, value=127, channel=1))
    assert e.calls == [("voice", 1, 60, {"pressure": 1.0})]
    assert r.received == 8 and r.errors == 0


def test_plain_keyboard_on_the_master_channel_is_unchanged():
    """A one-channel keyboard on MIDI channel 1 (the default zone's master): notes, bend
    +-2, pedal exactly as without MPE; its channel pressure goes to its own notes."""
    e = FakeEngine()
    r = MidiRouter(e)
    r.handle(on(60))
    r.handle(pw(8191, ch=0))
    assert e.controls.snapshot.bend == pytest.approx(2.0, abs=1e-3)
    r.handle(mido.Message("aftertouch", value=127))
    r.handle(off(60))
    assert e.calls[0] == ("on", 60, 100, 0) and e.calls[-1] == ("off", 60, 0)
    assert ("voice", 0, None, {"pressure": 1.0}) in e.calls


def test_the_master_pedal_holds_member_notes():
    e = FakeEngine()
    r = MidiRouter(e)
    r.handle(on(60, ch=1))
    r.handle(on(64, ch=2))
    r.handle(cc(64, 127, ch=0))  # master pedal: the whole zone
    r.handle(off(60, ch=1))
    r.handle(off(64, ch=2))
    assert [c for c in e.calls if c[0] == "off"] == []
    assert r.sustained_notes == {(1, 60), (2, 64)}
    r.handle(cc(64, 0, ch=0))
    assert sorted(c for c in e.calls if c[0] == "off") == [("off", 60, 1), ("off", 64, 2)]


def test_rpn0_on_a_member_sets_the_zone_member_range_and_mcm_resets_it():
    e = FakeEngine()
    r = MidiRouter(e)
    for m in (cc(101, 0, 3), cc(100, 0, 3), cc(6, 12, 3)):
        r.handle(m)
    r.handle(pw(8192 // 2, ch=5))  # another member of the zone: +-12 now
    assert e.calls[-1] == ("voice", 5, None, {"bend": 6.0})
    assert r.bend_range == 2.0  # the master's range is its own
    for m in (cc(101, 0, 0), cc(100, 6, 0), cc(6, 15, 0)):  # MCM: back to +-48 / +-2
        r.handle(m)
    r.handle(pw(8192 // 2, ch=5))
    assert e.calls[-1] == ("voice", 5, None, {"bend": 24.0})


def test_mcm_zones_and_roles():
    r = MidiRouter(FakeEngine(), RouterConfig(mpe=MpeZones.off()))
    assert {r.channel_role(c) for c in range(16)} == {"none"}
    for m in (cc(101, 0, 15), cc(100, 6, 15), cc(6, 4, 15)):  # upper zone, 4 members
        r.handle(m)
    assert r.zones == MpeZones(lower=0, upper=4)
    assert [r.channel_role(c) for c in (15, 14, 11, 10, 0)] == [
        "upper master", "upper member", "upper member", "none", "none"]
    for m in (cc(101, 0, 0), cc(100, 6, 0), cc(6, 15, 0)):  # lower 15: the upper is gone
        r.handle(m)
    assert r.zones == MpeZones(lower=15, upper=0)
    # a channel filter means no MPE: every channel is plain
    r = MidiRouter(FakeEngine(), RouterConfig(channel=0))
    for m in (cc(101, 0, 0), cc(100, 6, 0), cc(6, 7, 0)):
        r.handle(m)
    assert r.zones == MpeZones.off() and r.channel_role(1) == "none"


def test_state_messages_bring_a_fresh_router_to_the_same_state():
    """What the recorder writes first: a router fed these messages has the same zones,
    ranges, channel expression, global bend, pedals and morph mode."""
    e = FakeEngine()
    r = MidiRouter(e)
    for m in (cc(101, 0, 15), cc(100, 6, 15), cc(6, 3, 15),   # upper zone of 3
              cc(101, 0, 0), cc(100, 6, 0), cc(6, 5, 0),      # lower zone of 5
              cc(101, 0, 2), cc(100, 0, 2), cc(6, 24, 2), cc(38, 50, 2),  # lower members 24.5
              cc(101, 0, 0), cc(100, 0, 0), cc(6, 7, 0),      # master range 7
              pw(-4096, ch=2), mido.Message("aftertouch", value=90, channel=3),
              cc(74, 20, ch=4), cc(64, 127, ch=0), pw(2048, ch=0), cc(86, 127, ch=0)):
        r.handle(m)
    e2 = FakeEngine()
    r2 = MidiRouter(e2, RouterConfig(mpe=MpeZones.off()))
    for m in r.state_messages():
        r2.handle(m)
    assert r2.zones == r.zones == MpeZones(lower=5, upper=3)
    assert r2._member_range == r._member_range == [24.5, 48.0]
    assert r2.bend_range == r.bend_range == 7.0
    assert r2._bend == r._bend and r2._pressure == r._pressure
    assert r2._timbre == r._timbre and r2._pedal == r._pedal
    assert e2.controls.snapshot.bend == pytest.approx(e.controls.snapshot.bend, abs=1e-3)
    assert e2.controls.snapshot.morph_mode == e.controls.snapshot.morph_mode == "mpe"


def test_morph_mode_cc_and_router_settings():
    e = FakeEngine()
    r = MidiRouter(e, RouterConfig(morph_mode="latch", expression=Expression(timbre_x=1.0)))
    s = e.controls.snapshot
    assert s.morph_mode == "latch" and s.expression.timbre_x == 1.0
    for value, mode in ((0, "follow"), (42, "follow"), (43, "latch"), (85, "latch"),
                        (86, "mpe"), (127, "mpe")):
        r.handle(cc(86, value))
        assert e.controls.snapshot.morph_mode == mode, value


def test_mpe_and_expression_config_from_dict_and_toml(tmp_path):
    cfg = MidiConfig.from_dict({})
    assert cfg.router.mpe == MpeZones(lower=15, upper=0, member_bend_range=48.0)
    assert cfg.router.morph_mode is None and cfg.router.expression is None
    assert MidiConfig.from_dict({"mpe": False}).router.mpe == MpeZones.off()
    toml = tmp_path / "midi.toml"
    toml.write_text('[midi]\nmorph_mode = "mpe"\n[midi.mpe]\nlower = 7\nupper = 7\n'
                    'bend_range = 24\n[midi.expression]\npressure_loudness = 0.5\n')
    cfg = MidiConfig.load(toml).router
    assert cfg.mpe == MpeZones(lower=7, upper=7, member_bend_range=24.0)
    assert cfg.morph_mode == "mpe" and cfg.expression.pressure_loudness == 0.5
    for bad, match in (({"mpe": {"lower": 10, "upper": 10}}, "overlap"),
                       ({"mpe": {"lower": 16}}, "0..15"),
                       ({"mpe": {"zones": 2}}, "unknown mpe setting"),
                       ({"mpe": {"bend_range": 200}}, "0..96"),
                       ({"mpe": "yes"}, "mpe must be"),
                       ({"morph_mode": "wobble"}, "morph_mode"),
                       ({"expression": {"pressure_loudness": 2}}, "pressure_loudness"),
                       ({"expression": {"brightness": 1}}, "unknown expression")):
        with pytest.raises(MidiConfigError, match=match):
            MidiConfig.from_dict(bad)


def test_expression_messages_are_recorded_by_listeners():
    """Pitch bend, channel and poly pressure, CC 74 and the MCM are accepted (so the recorder,
    a listener, keeps them)."""
    seen = []
    r = MidiRouter(FakeEngine())
    r.listeners.append(seen.append)
    msgs = [pw(100, ch=3), mido.Message("aftertouch", value=5, channel=3),
            mido.Message("polytouch", note=60, value=5, channel=3), cc(74, 9, ch=3),
            cc(101, 0, 0), cc(100, 6, 0), cc(6, 15, 0)]
    for m in msgs:
        r.handle(m)
    assert seen == msgs and r.ignored == 0
