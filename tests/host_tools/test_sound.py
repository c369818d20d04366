"""The sound against the real thing (issue 11): notes rendered by the engine from packs built
here, measured against FluidSynth's own renders of the same notes at 48 kHz.

Short renders only (the long ones and the full tables live in ``bench/fidelity.py``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from morphbox.device.engine.controls import Controls, ControlState
from morphbox.device.engine.corners import build_grid
from morphbox.device.engine.voices import Engine, EngineConfig
from morphbox.device.packs.format import load_pack
from morphbox.host_tools.packbuild import InstrumentSpec, PackSettings, build_pack
from morphbox.kernels.pitch import midi_to_hz

SR = 48000
LAYERED = "/usr/share/sounds/sf3/MuseScore_General.sf3"


def engine_note(grid, pitch: int, velocity: int = 100, seconds: float = 1.0) -> np.ndarray:
    """One note held ``seconds`` at the NW corner, ADSR attack 1 ms, sustain 1; mono."""
    controls = Controls(ControlState(x=0.0, y=0.0, attack_s=0.001, sustain=1.0, volume=1.0))
    e = Engine(grid, EngineConfig(), controls)
    e.note_on(pitch, velocity)
    n = int(seconds * SR / 128)
    return np.concatenate([e.render_block()[:, 0].copy() for _ in range(n)])


def envelope(x: np.ndarray, pitch: int) -> np.ndarray:
    """RMS over one period (at least 1 ms), centred (bench/fidelity.py's envelope)."""
    w = max(int(round(SR / float(midi_to_hz(pitch)))), SR // 1000)
    c = np.concatenate([[0.0], np.cumsum(np.asarray(x, np.float64) ** 2)])
    return np.sqrt(np.maximum(np.pad((c[w:] - c[:-w]) / w, (w // 2, w - w // 2 - 1),
                                     mode="edge"), 0.0))


def rise_ms(x: np.ndarray, pitch: int) -> float:
    env = envelope(x[:SR], pitch)
    peak = env.max()
    return 1000.0 * (np.argmax(env >= 0.9 * peak) - np.argmax(env >= 0.1 * peak)) / SR


def centroid(x: np.ndarray) -> float:
    seg = x[:len(x) // 4096 * 4096].reshape(-1, 4096) * np.hanning(4096)
    p = (np.abs(np.fft.rfft(seg, axis=1)) ** 2).mean(axis=0)
    f = np.fft.rfftfreq(4096, 1 / SR)
    return float((f * p).sum() / p.sum())


def below_f0_db(x: np.ndarray, pitch: int) -> float:
    """Energy between 20 Hz and 0.7 f0 over the whole, dB (bench/fidelity.py's measure)."""
    seg = x[:len(x) // 8192 * 8192].reshape(-1, 8192) * np.hanning(8192)
    p = (np.abs(np.fft.rfft(seg, axis=1)) ** 2).mean(axis=0)
    f = np.fft.rfftfreq(8192, 1 / SR)
    sel = (f >= 20) & (f < 0.7 * float(midi_to_hz(pitch)))
    return float(10 * np.log10(p[sel].sum() / p.sum() + 1e-30))


@pytest.fixture(scope="module")
def renderer(skip_or_fail):
    from morphbox.host_tools.sources import SoundFontRenderer, SourceError
    try:
        with SoundFontRenderer() as r:
            yield r
    except SourceError as exc:
        skip_or_fail(str(exc))


@pytest.fixture(scope="module")
def plucked(tmp_path_factory, renderer):
    """A one-instrument pack: the nylon guitar at MIDI 60 and 72."""
    settings = PackSettings(name="plucked", instruments=(InstrumentSpec("Guitar", program=24),),
                            corners={"NW": 0, "NE": 0, "SW": 0, "SE": 0}, anchors=(60, 72),
                            grid_size=2)
    return load_pack(build_pack(tmp_path_factory.mktemp("p") / "p", settings, jobs=1,
                                progress=False))


@pytest.mark.parametrize("pitch", [60, 72])
def test_a_percussive_attack_is_as_quick_as_the_source(plucked, renderer, pitch):
    """A plucked string reaches 90 % of its peak within the source's rise time x 1.3 (or
    3 ms, a block and its crossfade): frames every millisecond over the attack."""
    src = renderer.render_audio(24, pitch, 100, 1.0, 1.0)
    eng = engine_note(build_grid(plucked, plucked.corners), pitch)
    want, got = rise_ms(src, pitch), rise_ms(eng, pitch)
    assert want < 30.0  # it is percussive
    assert got <= max(1.3 * want, want + 3.0), (got, want)


def test_a_velocity_layered_instrument_is_brighter_at_127_than_at_20(tmp_path, skip_or_fail):
    """MuseScore General's clarinet changes colour with velocity (its centroid grows ~2.4x
    from velocity 20 to 127); the pack's velocity layers carry that, not just the level."""
    if not Path(LAYERED).exists():
        skip_or_fail(f"{LAYERED} missing (apt install musescore-general-soundfont)")
    from morphbox.host_tools.sources import SoundFontRenderer
    settings = PackSettings(name="layered", instruments=(
        InstrumentSpec("Clarinet", program=71, soundfont=LAYERED),),
        corners={"NW": 0, "NE": 0, "SW": 0, "SE": 0}, anchors=(60, 64), grid_size=2)
    pack = load_pack(build_pack(tmp_path / "l", settings, jobs=1, progress=False))
    grid = build_grid(pack, pack.corners)
    eng = {v: centroid(engine_note(grid, 60, v)[SR // 10:]) for v in (20, 127)}
    with SoundFontRenderer(LAYERED) as r:
        src = {v: centroid(r.render_audio(71, 60, v, 1.0, 1.0)[SR // 10:]) for v in (20, 127)}
    assert eng[127] > 1.5 * eng[20]
    ratio, want = eng[127] / eng[20], src[127] / src[20]
    assert abs(ratio / want - 1) < 0.2, (ratio, want)


def test_a_dc_offset_wav_does_not_rumble(tmp_path):
    """A recording with a DC offset (0.3, larger than the note) and a slow drift: the
    source is high-passed before analysis, so the engine plays no more energy below the
    fundamental than for the clean recording."""
    rate = 44100  # a recording at its own rate (resampled to 48 kHz by the loader)
    t = np.arange(int(2.5 * rate)) / rate
    f0 = float(midi_to_hz(48))
    tone = sum(0.2 / k * np.sin(2 * np.pi * k * f0 * t) for k in range(1, 12))
    tone *= np.minimum(t / 0.01, 1.0) * np.exp(-t / 2.0)
    levels = {}
    for name, offset in (("clean", 0.0), ("dc", 0.3 + 0.05 * np.sin(2 * np.pi * 0.7 * t))):
        folder = tmp_path / name
        folder.mkdir()
        sf.write(folder / "C3.wav", tone + offset, rate)
        settings = PackSettings(name=name, instruments=(
            InstrumentSpec(name, wav_folder=str(folder)),),
            corners={"NW": 0, "NE": 0, "SW": 0, "SE": 0}, anchors=(48, 52), grid_size=2)
        pack = load_pack(build_pack(tmp_path / f"{name}.pack", settings, jobs=1,
                                    progress=False))
        levels[name] = below_f0_db(engine_note(build_grid(pack, pack.corners), 48, 100, 2.0),
                                   48)
    assert levels["clean"] < -50.0
    assert levels["dc"] < levels["clean"] + 3.0, levels
