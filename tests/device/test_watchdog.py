"""Never silent, never stuck (issue 13): the sound check before a pack plays, the runtime
watchdog that rolls a pack back when the audio breaks, and a service that always starts.

The audio runs for real (paced null output at the block rate); the watchdog's clock is
driven by the test (``check(now)``), and conditions are polled with a generous deadline."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from morphbox.device.engine.voices import Engine, EngineConfig
from morphbox.device.packs.format import DEFAULT_PACK, PackError, grid_from_pack, load_pack
from morphbox.device.packs.store import BUILTIN, PackStore
from morphbox.device.service import (
    PROBE_POINTS,
    Service,
    ServiceConfig,
    SoundCheckError,
    sound_check,
)
from tests.device.test_api import _silent_pack
from tests.device.test_archive import archive_of, new_key, public_raw, small_pack
from tests.helpers import becomes_true


def two_packs(tmp_path):
    """A state dir whose store holds packs p120 and p200, activated in that order (p200 plays,
    p120 before it): ``(state dir, {level: pack id}, signing key)``."""
    key = new_key()
    state = tmp_path / "state"
    store = PackStore(state)
    store.add_key(public_raw(key))
    ids = {lvl: store.install_file(archive_of(small_pack(tmp_path / f"p{lvl}", f"p{lvl}",
                                                         level=lvl), key))
           for lvl in (120, 200)}
    store.activate(ids[120])
    store.activate(ids[200])
    return state, ids, key


@pytest.fixture
def boxed(tmp_path):
    """A service with a store (packs p120 then p200 activated: p200 plays, p120 before it),
    paced null audio, a note held."""
    state, ids, key = two_packs(tmp_path)
    service = Service(ServiceConfig(audio="none", state_dir=state, store=True))
    service.controls.set_touch(0.5, 0.5)
    service.start()
    service.engine.note_on(60, 100)
    yield {"service": service, "store": service.store, "ids": ids, "tmp": tmp_path,
           "key": key}
    service.stop()


# ---- the sound check ----------------------------------------------------------------------


def test_the_default_pack_passes_the_sound_check_everywhere():
    peaks = sound_check(grid_from_pack(load_pack(DEFAULT_PACK)))
    assert set(peaks) == set(PROBE_POINTS) | {"centre, sustain loop"}
    assert all(1e-3 < p <= 1.0 for p in peaks.values())


def test_a_silent_grid_fails_the_sound_check(tmp_path):
    grid = grid_from_pack(load_pack(_silent_pack(tmp_path / "silent")))
    with pytest.raises(SoundCheckError, match="silent at NW"):
        sound_check(grid)


@pytest.mark.parametrize("change, words", [
    ({"frame_times": "nan"}, "rendering failed at NW"),
    ({"source_rate": 1e-300}, "non-finite output at NW"),
    ({"frames_db": "nan"}, "non-finite output at NW"),
])
def test_a_grid_that_slipped_past_the_schema_fails_the_sound_check(tmp_path, change, words):
    """The engine's own grid object, broken the ways the issue's packs broke it: the sound
    check is the second line behind the schema."""
    grid = grid_from_pack(load_pack(small_pack(tmp_path / "p", "p")))
    if change.get("frame_times") == "nan":
        change = {"frame_times": np.full(grid.n_frames, np.nan)}
    if change.get("frames_db") == "nan":
        fd = grid.frames_db.copy()
        fd[0, 0, :, :, 0] = np.nan
        change = {"frames_db": fd}
    with pytest.raises(SoundCheckError, match=words):
        sound_check(dataclasses.replace(grid, **change))


def test_the_engine_plays_silence_instead_of_non_finite_blocks_and_counts_them(tmp_path):
    grid = grid_from_pack(load_pack(small_pack(tmp_path / "p", "p")))
    fd = grid.frames_db.copy()
    fd[...] = np.nan
    engine = Engine(dataclasses.replace(grid, frames_db=fd), EngineConfig())
    engine.note_on(60, 100)
    out = np.concatenate([engine.render_block().copy() for _ in range(5)])
    assert np.isfinite(out).all() and not out.any()
    # the voice is dropped; the noise filter's tail may carry it one block more
    assert 1 <= engine.nonfinite_blocks <= 2 and engine.active_voices == 0
    seen = engine.nonfinite_blocks
    engine.set_grid(grid)  # a good grid again: it plays
    engine.note_on(60, 100)
    out = np.concatenate([engine.render_block().copy() for _ in range(5)])
    assert np.abs(out).max() > 1e-3 and engine.nonfinite_blocks == seen


# ---- activation proves the sound ---------------------------------------------------------


def test_activating_a_silent_pack_is_refused_and_the_old_one_plays_on(boxed):
    store, service = boxed["store"], boxed["service"]
    arc = archive_of(_silent_pack(boxed["tmp"] / "silent"), boxed["key"])
    pid = store.install_file(arc)
    from morphbox.device.packs.store import StoreError
    with pytest.raises(StoreError, match="sound check: silent at NW") as e:
        service.activate_pack(pid)
    assert e.value.status == 422
    assert service.pack.name == "p200" and store.pointer()["active"] == boxed["ids"][200]


# ---- the runtime watchdog ----------------------------------------------------------------


def _play_until_broken(service) -> bool:
    """Keep playing notes (a player on a broken pack) until the watchdog has seen enough."""
    dog = service.watchdog

    def broken():
        service.engine.note_on(60, 100)
        return dog.bad_blocks() - dog.baseline >= dog.max_bad
    return becomes_true(broken)


def _break_the_grid(service, how: str) -> None:
    """What a pack that slipped through both checks would do to the live engine."""
    grid = service.engine.grid
    if how == "errors":  # every block with a note raises (an index out of range)
        bad = dataclasses.replace(grid, frame_times=np.full(grid.n_frames, np.nan))
    else:  # every block with a note comes out NaN
        fd = grid.frames_db.copy()
        fd[...] = np.nan
        bad = dataclasses.replace(grid, frames_db=fd)
    service.engine.set_grid(bad)


@pytest.mark.parametrize("how", ["errors", "nonfinite"])
def test_the_watchdog_rolls_back_a_pack_that_breaks_the_audio(boxed, how, caplog):
    service, store, ids = boxed["service"], boxed["store"], boxed["ids"]
    dog = service.watchdog
    dog.arm(now=100.0)
    _break_the_grid(service, how)
    assert _play_until_broken(service)
    caplog.set_level("ERROR")
    done = dog.check(101.0)
    assert done and f"pack {ids[200]} broke the audio" in done and f"back to {ids[120]}" in done
    assert f"rolled back to {ids[120]}" in caplog.text
    assert service.pack.name == "p120" and service.engine.grid.name == "p120"
    ptr = store.pointer()
    assert ptr["active"] == ids[120] and ids[200] in ptr["recovered_from"][0]
    # the box plays again: new notes sound, finite, and the audio keeps going
    bad_then = dog.bad_blocks()
    rms = []
    service.engine.add_tap(lambda b: rms.append(float(np.sqrt(np.mean(b ** 2)))))
    service.engine.note_on(64, 100)
    assert becomes_true(lambda: len(rms) > 40)
    assert max(rms[-20:]) > 1e-3 and np.isfinite(rms).all()
    assert dog.bad_blocks() - bad_then <= 2  # at most the blocks of the fade-out
    assert dog.check(102.0) is None  # disarmed: nothing more to do


def test_the_watch_ends_after_its_window(boxed):
    service = boxed["service"]
    dog = service.watchdog
    dog.arm(now=0.0)
    assert dog.check(dog.watch_s + 1.0) is None and dog.until is None
    dog.baseline = dog.bad_blocks()
    _break_the_grid(service, "nonfinite")
    assert _play_until_broken(service)
    assert dog.check(dog.watch_s + 2.0) is None  # a pack that played well for its window
    assert service.pack.name == "p200"


def test_a_switch_through_the_api_path_arms_the_watchdog(boxed):
    service, ids = boxed["service"], boxed["ids"]
    service.activate_pack(ids[120])
    dog = service.watchdog
    assert dog.until is not None and service._fallback.name == ids[200]


# ---- a service that always starts --------------------------------------------------------


def test_a_service_skips_an_active_pack_that_fails_the_sound_check(tmp_path, caplog):
    key = new_key()
    state = tmp_path / "state"
    store = PackStore(state)
    store.add_key(public_raw(key))
    good = store.install_file(archive_of(small_pack(tmp_path / "g", "g"), key))
    silent = store.install_file(archive_of(_silent_pack(tmp_path / "s"), key))
    store.activate(good)
    store.activate(silent)  # no service: only loading is checked here
    caplog.set_level("ERROR")
    service = Service(ServiceConfig(audio="none", state_dir=state, store=True))
    assert service.pack.name == "g"
    assert f"pack {silent} cannot play, falling back" in caplog.text
    assert "sound check: silent" in service.store.pointer()["recovered_from"][0]


@pytest.mark.parametrize("garbage", [b"\x00\xffgarbage", b"", b"[]", "dir"])
def test_a_service_starts_from_any_garbage_pointer(tmp_path, garbage):
    key = new_key()
    state = tmp_path / "state"
    store = PackStore(state)
    store.add_key(public_raw(key))
    a = store.install_file(archive_of(small_pack(tmp_path / "a", "a"), key))
    store.activate(a)
    ptr = state / "active.json"
    ptr.unlink()
    ptr.mkdir() if garbage == "dir" else ptr.write_bytes(garbage)
    service = Service(ServiceConfig(audio="none", state_dir=state, store=True))
    assert service.pack.name == "a"  # the backup pointer remembered it


def test_a_service_starts_with_packs_being_a_file(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "packs").write_text("oops")
    (state / "active.json").write_text(json.dumps({"active": "gone-0123456789ab"}))
    service = Service(ServiceConfig(audio="none", state_dir=state, store=True))
    assert service.pack.name == "default" and service.store.pointer()["active"] == BUILTIN


def test_an_explicit_pack_that_fails_the_sound_check_is_an_error(tmp_path):
    with pytest.raises(PackError, match="sound check: silent at NW"):
        Service(ServiceConfig(pack=_silent_pack(tmp_path / "s"), audio="none"))


def test_a_full_disk_stops_a_recording_and_refuses_a_new_one(boxed):
    service, store = boxed["service"], boxed["store"]
    service.start_recording()
    assert service.recorder.recording
    store.reserve_bytes = 1 << 62  # the disk is now "full"
    service.watchdog.check(0.0)
    assert not service.recorder.recording
    with pytest.raises(OSError, match="disk is full"):
        service.start_recording()
    store.reserve_bytes = 0
    assert service.start_recording()["recording"]
    service.stop_recording()


def test_the_sound_check_plays_each_corner_where_it_is(tmp_path):
    """A grid silent only at its SE point fails at SE, not elsewhere: the probe really moves
    the morph to each corner."""
    grid = grid_from_pack(load_pack(small_pack(tmp_path / "p", "p")))
    fd = grid.frames_db.copy()
    fd[-1, -1] = -120.0  # code 0: silence, partials and noise
    with pytest.raises(SoundCheckError, match="silent at SE"):
        sound_check(dataclasses.replace(grid, frames_db=fd))


def test_a_rollback_for_a_pack_no_longer_playing_does_nothing(boxed):
    service, ids = boxed["service"], boxed["ids"]
    watched = service.pack  # p200
    service.activate_pack(ids[120])  # the player moved on meanwhile
    assert service.roll_back("late report", watched) == ("the pack changed meanwhile: "
                                                         "nothing rolled back")
    assert service.pack.name == "p120" and boxed["store"].pointer()["active"] == ids[120]


def test_old_recordings_past_the_cap_are_pruned_while_recording(boxed):
    service = boxed["service"]
    rec = service.recorder.directory
    rec.mkdir(parents=True, exist_ok=True)
    old = rec / "20200101-000000.wav"
    old.write_bytes(b"x" * 5000)
    service.config.recordings_cap_bytes = 1000
    service.start_recording()  # past the cap before it starts: the old session goes
    assert not old.exists()
    old.write_bytes(b"x" * 5000)
    import os
    os.utime(old, (1, 1))
    service.watchdog.check(1e6)  # and while it runs (the running one stays)
    assert not old.exists() and service.recorder.recording
    service.stop_recording()
