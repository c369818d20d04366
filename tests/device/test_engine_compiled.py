"""The compiled engine against the numpy engine (the reference) on real renders.

Both engines get the same note events and control moves block by block and must give the same
audio. Tolerance: the compiled kernel builds its tables and noise frames with float32 inverse
FFTs where numpy computes in float64 (everything else follows the numpy engine's float32 /
float64 arithmetic), so the two outputs differ by 1e-7 .. 2e-6 of full scale (more for louder
chords); the tests allow ``TOL`` = 1e-5 (-100 dB re full scale), far below anything audible,
while a wrong partial, frame, gain or phase shows up at 1e-3 or more.

Most grids are built here so that every path runs: several anchors and frames, 64 partials,
an envelope and noise bands, velocity layers, decay rates and loop slopes, points that hold
their last frame and points that loop, and a second grid to swap in; one test plays the
shipped default pack (real instruments, real model output) through both engines.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from morphbox.device.engine.controls import Controls, ControlState, Expression
from morphbox.device.engine.voices import Engine, EngineConfig
from morphbox.device.packs.format import Grid
from morphbox.kernels.features import frame_times

TOL = 1e-5
SR = 48000


def make_grid(seed: int = 0, size: int = 3, anchors=(24, 48, 72, 96)) -> Grid:
    """A full-band grid with the structure of a real one (falling partials, an attack and a
    decay over the frames, envelope and noise bands, 3 velocity layers, decays, holds)."""
    rng = np.random.default_rng(seed)
    t = frame_times(1.2)
    f, a = len(t), len(anchors)
    k = np.arange(1, 65)
    tilt = -rng.uniform(4.0, 9.0, (size, size, a, 1, 1)) * np.log2(k)
    shape = np.minimum(t / 0.01, 1.0)[:, None]  # 10 ms attack
    fall = rng.uniform(3, 15, (size, size, a, 1, 1))  # dB/s
    level = 20 * np.log10(np.maximum(shape, 1e-3)) - fall * t[:, None]
    harm = (-6.0 + tilt + level + rng.normal(0, 2.0, (size, size, a, f, 64))).astype(np.float32)
    env = (-45.0 - 1.5 * np.arange(24) + level + rng.normal(0, 2.0, (size, size, a, f, 24)))
    noise = (-75.0 + rng.normal(0, 4.0, (size, size, a, 1, 32)) + level * 0.5
             + rng.normal(0, 1.0, (size, size, a, f, 32)))
    frames = np.concatenate([harm, env, noise], axis=-1).astype(np.float32)
    c = frames.shape[-1]
    decay = np.zeros((size, size, a, 2, c), np.float32)
    decaying = rng.random((size, size, a, 1)) > 0.3
    decay[..., 0, :] = -rng.uniform(0, 20, (size, size, a, 1)) * decaying
    decay[..., 1, :] = rng.normal(0, 1.0, (size, size, a, c))
    hold = rng.choice([0.0, 1.0, 0.5], (size, size, a)).astype(np.float32)
    vel = np.zeros((size, size, a, 3, c), np.float32)
    vel[..., 0, :] = -12.0 + rng.normal(0, 1.5, (size, size, a, c))
    vel[..., 2, :] = 4.0 + rng.normal(0, 1.5, (size, size, a, c))
    ls = int(np.searchsorted(t, 0.6))
    return Grid(frames_db=frames, n_harmonics=64, n_envelope=24, anchors=np.array(anchors),
                frame_times=t, loop_start=ls, loop_end=f - 2, source_rate=48000.0,
                decay_db=decay, hold=hold, velocity_db=vel,
                velocity_layers=np.array([40.0, 80.0, 120.0]), name=f"synthetic{seed}")


@pytest.fixture(scope="module")
def grid() -> Grid:
    return make_grid(0)


class Pair:
    """A numpy engine and a compiled one fed alike."""

    def __init__(self, grid, state: ControlState | None = None, **cfg):
        state = state or ControlState(attack_s=0.005, decay_s=0.2, sustain=0.7, release_s=0.2,
                                      volume=1.0)
        self.engines = [Engine(grid, EngineConfig(kernel=k, **cfg), Controls(state))
                        for k in ("numpy", "compiled")]
        assert [e.kernel for e in self.engines] == ["numpy", "compiled"]
        self.out: list[list[np.ndarray]] = [[], []]

    def __getattr__(self, name):
        """``pair.note_on(...)``, ``pair.controls_set_touch(...)``: call on both engines."""
        def both(*args, **kw):
            for e in self.engines:
                if name.startswith("controls_"):
                    getattr(e.controls, name[9:])(*args, **kw)
                else:
                    getattr(e, name)(*args, **kw)
        return both

    def render(self, seconds: float) -> None:
        bs = self.engines[0].config.block_size
        for _ in range(max(int(round(seconds * SR / bs)), 1)):
            for out, e in zip(self.out, self.engines):
                out.append(e.render_block().copy())

    def check(self, min_rms: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
        ref, got = (np.concatenate(o) for o in self.out)
        assert np.all(np.isfinite(got))
        rms = float(np.sqrt(np.mean(ref ** 2)))
        assert rms > min_rms, f"the scenario is nearly silent (rms {rms:.2e})"
        err = np.abs(got - ref)
        worst = int(np.argmax(err.max(axis=1)))
        assert err.max() <= TOL, (f"compiled differs from numpy by {err.max():.2e} at sample "
                                  f"{worst} (block {worst // self.engines[0].config.block_size}"
                                  f"; rms {rms:.3f})")
        return ref, got


@pytest.mark.parametrize("block_size", [128, 64])
def test_notes_across_the_range_velocities_and_note_offs(grid, block_size):
    p = Pair(grid, block_size=block_size)
    for i, note in enumerate(range(21, 109, 5)):
        p.note_on(note, 1 + (i * 37) % 127)
        p.render(0.03)
        if i % 3 == 2:
            p.note_off(note - 10)
    p.render(0.3)
    p.all_notes_off()
    p.render(0.4)
    p.check()


def test_velocity_layers_and_the_dls_curve_outside_them(grid):
    p = Pair(grid)
    for v in (1, 20, 40, 55, 80, 101, 120, 127):
        p.note_on(60, v)
        p.render(0.08)
        p.note_off(60)
        p.render(0.02)
    p.check()


def test_voice_stealing_and_all_sound_off(grid):
    p = Pair(grid, max_voices=6, fade_voices=2)
    for i in range(20):
        p.note_on(40 + (i * 5) % 40, 100)
        p.render(0.01)
    p.render(0.2)
    p.all_sound_off()
    p.render(0.05)
    for i in range(4):  # after a silence (the noise tails flush) notes start again
        p.note_on(50 + i, 90)
    p.render(0.1)
    p.check()


def test_global_bend_touch_moves_and_held_notes_past_the_loop(grid):
    p = Pair(grid, state=ControlState(attack_s=0.002, decay_s=0.1, sustain=1.0, release_s=0.1,
                                      volume=0.8, x=0.2, y=0.7))
    for n in (28, 43, 55, 67, 79, 91):
        p.note_on(n, 100)
    for i in range(60):  # 3 s: past the loop end, decaying points and holding ones
        p.controls_set_touch(0.5 + 0.45 * np.cos(i / 6), 0.5 + 0.45 * np.sin(i / 5))
        if i % 10 == 0:
            p.controls_set_bend(2.0 * np.sin(i / 7))
        p.render(0.05)
    p.check()


def test_independent_positions_per_voice_bends_pressure_and_timbre(grid):
    expr = Expression(pressure_loudness=0.6, pressure_brightness=4.0)
    p = Pair(grid, state=ControlState(attack_s=0.003, decay_s=0.1, sustain=0.9, release_s=0.1,
                                      volume=1.0, morph_mode="mpe", expression=expr))
    for ch in range(8):
        p.note_on(36 + 6 * ch, 90, channel=ch + 1, bend=0.1 * ch, pressure=ch / 8,
                  timbre=1 - ch / 8)
    for i in range(40):
        ch = 1 + i % 8
        p.voice_control(ch, bend=0.5 * np.sin(i / 3), pressure=0.5 + 0.5 * np.cos(i / 4))
        p.voice_control(ch, timbre=0.5 + 0.5 * np.sin(i / 2))
        if i % 7 == 0:
            p.voice_control(ch, 36 + 6 * (ch - 1), pressure=1.0)  # poly aftertouch
        p.render(0.02)
    p.note_off(42, channel=2)
    p.render(0.1)
    p.check()


def test_latch_and_follow_modes_and_switching_between_them(grid):
    p = Pair(grid, state=ControlState(attack_s=0.003, sustain=1.0, volume=1.0))
    p.note_on(48, 100)
    p.render(0.05)
    for mode in ("latch", "follow", "mpe", "follow"):
        p.controls_set_morph_mode(mode)
        p.controls_set_touch(np.random.default_rng(len(mode)).random(), 0.3)
        p.note_on(52 + len(mode), 100)
        p.render(0.15)
    p.check()


def test_grid_swap_while_notes_sound(grid):
    other = make_grid(1)
    p = Pair(grid)
    for n in (36, 60, 84):
        p.note_on(n, 110)
    p.render(0.1)
    p.set_grid(other)
    p.render(0.1)
    p.note_on(72, 70)
    p.set_grid(grid)
    p.render(0.1)
    p.check()


def test_position_skips_the_attack_and_the_limiter_rides_a_loud_chord(grid):
    state = ControlState(attack_s=0.001, sustain=1.0, volume=1.0, position=0.5)
    p = Pair(grid, state=state, voice_gain=4.0)
    for n in range(30, 100, 3):
        p.note_on(n, 127)
    p.render(0.3)
    ref, _ = p.check()
    assert np.abs(ref).max() > 0.85  # the soft clipper worked


def test_floor_levels_are_silence_and_non_finite_blocks_are_dropped_alike(grid):
    """Partials and noise bands at the floor (pack code 0, -120 dB) or below are silent in
    both engines (a voice gain of 100 makes them 1e-4 each if they were not: far above TOL);
    a grid that renders NaN is dropped block by block, counted, the voices and the noise tail
    cleared, and a good grid plays again, alike."""
    import dataclasses

    from morphbox.kernels.features import DB_FLOOR
    fd = np.full_like(grid.frames_db, DB_FLOOR)
    fd[..., 0] = -60.0  # the fundamental: 0.1 at a voice gain of 100
    fd[..., 20:60] = DB_FLOOR - 5.0
    fd[..., 64 + 24 + 10:64 + 24 + 20] = DB_FLOOR - 5.0
    zero = {"decay_db": np.zeros_like(grid.decay_db),
            "velocity_db": np.zeros_like(grid.velocity_db)}
    quiet = dataclasses.replace(grid, frames_db=fd, **zero)
    bad = fd.copy()
    bad[:, :, 1] = np.nan  # the second anchor's points
    broken = dataclasses.replace(grid, frames_db=bad, **zero)
    p = Pair(quiet, voice_gain=100.0)
    for n in (30, 48, 70, 90):
        p.note_on(n, 80)
    p.render(0.2)
    p.set_grid(broken)
    p.note_on(50, 80)  # nearest the NaN anchor (48)
    p.render(0.05)
    counts = [e.nonfinite_blocks for e in p.engines]
    assert counts[0] >= 1 and counts == [counts[0]] * 2
    assert [e.active_voices for e in p.engines] == [0, 0]
    p.set_grid(quiet)
    p.note_on(60, 80)
    p.render(0.2)
    p.check(min_rms=1e-3)
    assert [e.nonfinite_blocks for e in p.engines] == counts


def test_the_shipped_pack_plays_alike_in_both_engines():
    """The default pack (real instruments): a phrase across the range with velocities, a bend,
    touch moves, note-offs, then MPE voices each on its own position."""
    from morphbox.device.packs.format import load_default_grid
    real = load_default_grid()
    p = Pair(real, state=ControlState(attack_s=0.004, decay_s=0.2, sustain=0.8, release_s=0.15,
                                      volume=1.0, x=0.3, y=0.6))
    for i, note in enumerate((24, 36, 48, 55, 60, 67, 72, 84, 96, 103)):
        p.note_on(note, 30 + (i * 29) % 98)
        p.controls_set_touch((i * 0.37) % 1.0, (i * 0.61) % 1.0)
        if i == 4:
            p.controls_set_bend(-1.5)
        p.render(0.04)
        if i % 2:
            p.note_off(note)
    p.render(0.4)
    p.all_notes_off()
    p.render(0.2)
    p.controls_set_morph_mode("mpe")
    for ch in range(4):
        p.note_on(40 + 9 * ch, 100, channel=ch + 1, bend=0.3 * ch, pressure=0.5, timbre=ch / 4)
    for i in range(20):
        p.voice_control(1 + i % 4, bend=np.sin(i / 3), pressure=0.5 + 0.5 * np.cos(i / 4))
        p.render(0.02)
    p.check()


def test_the_compiled_engine_is_the_default_and_numpy_can_be_chosen(grid, monkeypatch):
    assert Engine(grid).kernel == "compiled"
    assert Engine(grid, EngineConfig(kernel="numpy")).kernel == "numpy"
    monkeypatch.setenv("MORPHBOX_ENGINE", "numpy")
    assert Engine(grid, EngineConfig(kernel="compiled")).kernel == "numpy"
    monkeypatch.setenv("MORPHBOX_ENGINE", "fast")
    with pytest.raises(ValueError, match="MORPHBOX_ENGINE"):
        Engine(grid)
    monkeypatch.delenv("MORPHBOX_ENGINE")
    with pytest.raises(ValueError, match="kernel"):
        Engine(grid, EngineConfig(kernel="c"))


def _python(code: str, **env) -> subprocess.CompletedProcess:
    full = {**os.environ, **env}
    for k, v in env.items():
        if v is None:
            full.pop(k)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=600, env=full)


def test_without_numba_the_engine_falls_back_to_numpy_and_says_so():
    code = ("import logging, sys\n"
            "logging.basicConfig(level=logging.INFO)\n"
            "sys.modules['numba'] = None  # as if numba were not installed\n"
            "from tests.device.test_engine_compiled import make_grid\n"
            "from morphbox.device.engine.voices import Engine, EngineConfig\n"
            "e = Engine(make_grid())\n"
            "e.note_on(60, 100)\n"
            "assert abs(e.render_block()).max() > 0\n"
            "print('render', e.kernel)\n"
            "try:\n"
            "    Engine(make_grid(), EngineConfig(kernel='compiled'))\n"
            "except ImportError as exc:\n"
            "    print('refused:', exc)\n")
    res = _python(code, MORPHBOX_ENGINE=None)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "render numpy" in res.stdout
    assert "refused: the compiled engine needs numba" in res.stdout
    assert "engine: numpy render, the compiled kernel is unavailable" in res.stderr


def test_a_second_process_loads_the_kernels_from_the_cache(grid):
    Engine(grid)  # compiled (or loaded) here, into this session's cache
    code = ("from morphbox.device.engine.compiled import load_kernels, kernel_status\n"
            "load_kernels()\n"
            "s = kernel_status()\n"
            "print(s['cached'], s['load_s'], s['cache_dir'])\n")
    res = _python(code)
    assert res.returncode == 0, res.stderr[-2000:]
    cached, _, where = res.stdout.split()
    assert cached == "True", res.stdout
    assert where == os.environ.get("NUMBA_CACHE_DIR", where)


def test_odd_grid_dimensions(tmp_path):
    """A grid with few partials, envelope and noise bands (a small pack's)."""
    from morphbox.device.packs.format import grid_from_pack, load_pack, write_pack
    from tests.device.test_pack import tiny_pack_parts
    small = grid_from_pack(load_pack(write_pack(tmp_path / "tiny", *tiny_pack_parts())))
    p = Pair(small)
    for n in (30, 47, 60, 77, 100):
        p.note_on(n, 90)
        p.render(0.05)
    p.render(0.3)
    p.check(min_rms=1e-4)


def test_the_service_keeps_the_cache_in_its_state_dir_and_reports_the_render(tmp_path):
    from morphbox.device.packs.format import write_pack
    from tests.device.test_pack import tiny_pack_parts
    pack = write_pack(tmp_path / "tiny", *tiny_pack_parts())
    code = ("import logging, os\n"
            "logging.basicConfig(level=logging.INFO)\n"
            "from morphbox.device.service import Service, ServiceConfig\n"
            f"s = Service(ServiceConfig(audio='none', pack={str(pack)!r}, "
            f"state_dir={str(tmp_path / 'state')!r}))\n"
            "print(os.environ['NUMBA_CACHE_DIR'])\n"
            "print(s.status()['engine'])\n")
    # numpy render: this checks where the cache goes without compiling the kernels again
    res = _python(code, NUMBA_CACHE_DIR=None, MORPHBOX_ENGINE="numpy")
    assert res.returncode == 0, res.stderr[-2000:]
    where, engine = res.stdout.splitlines()
    assert where == str(tmp_path / "state" / "numba-cache")
    assert engine == "{'render': 'numpy'}"
    assert "engine: numpy render (MORPHBOX_ENGINE=numpy)" in res.stderr


def test_a_fresh_service_process_loads_and_warms_the_kernels_and_logs_it(tmp_path):
    """A service started in a new process (as after a reboot) loads the kernels from numba's
    cache (the tests' shared one), renders its warm-up block, and logs and reports both."""
    from morphbox.device.packs.format import write_pack
    from tests.device.test_pack import tiny_pack_parts
    Engine(make_grid())  # the kernels are in the tests' cache
    pack = write_pack(tmp_path / "tiny", *tiny_pack_parts())
    code = ("import logging\n"
            "logging.basicConfig(level=logging.INFO)\n"
            "from morphbox.device.service import Service, ServiceConfig\n"
            f"s = Service(ServiceConfig(audio='none', pack={str(pack)!r}, "
            f"state_dir={str(tmp_path / 'state')!r}))\n"
            "e = s.status()['engine']\n"
            "print(e['render'], e['cached'], e['load_s'] > 0, e['warm_s'] > 0)\n")
    res = _python(code, MORPHBOX_ENGINE=None)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == ["compiled", "True", "True", "True"], res.stdout
    assert "engine: compiled render kernel loaded from the cache in" in res.stderr
    assert "engine: compiled render warmed up" in res.stderr


def test_the_service_reports_the_compiled_render_and_its_load_time(tmp_path):
    from morphbox.device.packs.format import write_pack
    from morphbox.device.service import Service, ServiceConfig
    from tests.device.test_pack import tiny_pack_parts
    pack = write_pack(tmp_path / "tiny", *tiny_pack_parts())
    service = Service(ServiceConfig(audio="none", pack=pack, state_dir=tmp_path / "state"))
    engine = service.status()["engine"]
    assert engine["render"] == "compiled"
    assert engine["load_s"] > 0 and engine["warm_s"] > 0
    assert isinstance(engine["cached"], bool)


def test_the_install_step_compiles_into_the_cache_and_prints_the_status(tmp_path, grid):
    """``python -m morphbox.device.engine.compiled``: what setup.sh runs so the first start of
    a box does not compile. (The tests' shared cache is set, so this loads from it; where the
    cache goes without it is the service test's above.)"""
    import json
    Engine(grid)  # the kernels are in the tests' cache
    res = subprocess.run([sys.executable, "-m", "morphbox.device.engine.compiled",
                          "--state-dir", str(tmp_path)], capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    status = json.loads(res.stdout.splitlines()[-1])
    assert status["cached"] is True and status["load_s"] > 0
    assert status["cache_dir"] == os.environ["NUMBA_CACHE_DIR"]
    assert "engine: compiled render kernel loaded from the cache" in res.stderr


def test_engine_status_of_an_engine_rendering_elsewhere_is_its_own_answer(grid):
    """The service reports ``engine_status(service.engine)``; an engine that renders in an
    audio process of its own answers with what that process published."""
    from morphbox.device.engine.compiled import engine_status

    class Elsewhere:
        kernel = None

        def render_status(self):
            return {"render": "compiled", "load_s": 1.5, "cached": True, "warm_s": 0.004}

    assert engine_status(Elsewhere())["load_s"] == 1.5
    assert engine_status(Engine(grid, EngineConfig(kernel="numpy"))) == {"render": "numpy"}
    assert engine_status(Engine(grid))["render"] == "compiled"


@pytest.mark.parametrize("field", ["frame_times", "velocity_layers"])
def test_a_grid_the_kernel_cannot_index_is_refused_at_render_not_read_out_of_bounds(grid, field):
    """Frame times or velocity layers that are not finite and increasing: the compiled render
    raises (as the numpy one fails on them) instead of indexing by them; the engine stays
    usable with a good grid."""
    import dataclasses
    bad = dataclasses.replace(grid, **{field: np.full_like(getattr(grid, field), np.nan)})
    e = Engine(grid, EngineConfig(kernel="compiled"))
    e.note_on(60, 100)
    e.render_block()
    e.set_grid(bad)
    with pytest.raises(ValueError, match="not finite and increasing"), \
            np.errstate(invalid="ignore"):  # the engine's own layer lookup casts NaN first
        e.render_block()
    e.set_grid(grid)
    e.note_on(64, 100)
    assert np.abs(np.concatenate([e.render_block().copy() for _ in range(20)])).max() > 1e-3
