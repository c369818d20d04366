"""The engine on real outputs: pitch in cents, spectra, sample-to-sample jumps, peaks."""

from __future__ import annotations

import numpy as np
import pytest

from morphbox.device.engine.controls import Controls, ControlState
from morphbox.device.engine.voices import Engine, EngineConfig, render_offline
from morphbox.device.packs.format import Grid, load_default_grid
from morphbox.host_tools.sources import pitch_error_cents
from morphbox.kernels.analysis import harmonic_amplitudes
from morphbox.kernels.pitch import midi_to_hz
from morphbox.kernels.quant import amplitude_to_db, dequantize_db

SR = 48000


@pytest.fixture(scope="module")
def grid() -> Grid:
    return load_default_grid()


def bright_grid(n_frames: int = 20, envelope_db: float = -120.0) -> Grid:
    """All 64 partials at 1/k (a sawtooth), every point, anchor and frame alike; the partials
    above the 64th at ``envelope_db`` (silent by default); one velocity layer (100)."""
    k = np.arange(1, 65)
    h = np.broadcast_to(amplitude_to_db(0.5 / k), (2, 2, 3, n_frames, 64)).copy()
    e = np.full((2, 2, 3, n_frames, 24), envelope_db, np.float32)
    n = np.full((2, 2, 3, n_frames, 32), -120.0, np.float32)
    return Grid.from_parts(h, n, e, anchors=[36, 72, 108], frame_rate=50.0, loop_start=5,
                           loop_end=n_frames - 2, source_rate=48000.0, name="bright")


def make_engine(grid, x=0.0, y=0.0, **cfg) -> Engine:
    controls = Controls(ControlState(x=x, y=y, attack_s=0.005, decay_s=0.1, sustain=1.0,
                                     release_s=0.1, volume=1.0))
    return Engine(grid, EngineConfig(**cfg), controls)


def mono(engine: Engine, seconds: float) -> np.ndarray:
    """Render whole blocks (so consecutive calls join seamlessly), channel 0."""
    bs = engine.config.block_size
    return render_offline(engine, int(round(seconds * SR / bs)) * bs)[:, 0].copy()


def partials_db(audio: np.ndarray, note: float, n: int = 24) -> np.ndarray:
    """dB of the first ``n`` partials of ``audio`` (48 kHz), averaged over 50 Hz frames away
    from the ends, normalised so the strongest is 0 dB."""
    amps = harmonic_amplitudes(audio, SR, float(midi_to_hz(note)), frame_rate=50.0,
                               n_harmonics=n)
    db = amplitude_to_db(amps[2:-2]).mean(axis=0)
    return db - db.max()


def spectral_distance(a: np.ndarray, b: np.ndarray, floor: float = -40.0) -> float:
    """Mean absolute dB difference over partials, levels floored at ``floor`` (below it the
    pack's noise part, which is rendered as noise, masks the partials)."""
    return float(np.mean(np.abs(np.maximum(a, floor) - np.maximum(b, floor))))


@pytest.mark.parametrize("note", [43, 60, 76])
def test_rendered_pitch_within_5_cents(grid, note):
    e = make_engine(grid)
    e.note_on(note, 110)
    audio = mono(e, 1.4)
    cents = pitch_error_cents(audio, SR, note)
    assert abs(cents) < 5, f"MIDI {note} rendered {cents:+.1f} cents off"


def test_pitch_bend_moves_pitch_two_semitones(grid):
    e = make_engine(grid)
    e.controls.set_bend(2.0)
    e.note_on(60, 110)
    audio = mono(e, 1.4)
    assert abs(pitch_error_cents(audio, SR, 62)) < 5


def test_high_note_has_no_aliasing():
    """A bright tone high up: every spectral peak sits on a harmonic of f0 below Nyquist; the
    energy between harmonics stays at a small floor (aliases would land there)."""
    e = make_engine(bright_grid())
    note = 100.3  # f0 ~ 2680 Hz, partials 8+ are near or above 0.4 * SR
    e.controls.set_bend(0.3)
    e.note_on(100, 127)
    audio = mono(e, 0.6)[SR // 10:]
    spec = np.abs(np.fft.rfft(audio * np.blackman(len(audio)))) ** 2
    freqs = np.fft.rfftfreq(len(audio), 1 / SR)
    f0 = float(midi_to_hz(note))
    harmonic = np.abs(freqs / f0 - np.round(freqs / f0)) * f0 < 30.0
    between = spec[~harmonic].sum() / spec.sum()
    between_db = 10 * np.log10(between)
    assert between_db < -60, f"inharmonic (aliased) energy {between_db:.1f} dB"
    top = freqs[harmonic & (spec > spec.max() * 1e-6)].max()
    assert top < 0.45 * SR, f"a partial at {top:.0f} Hz"
    # and the band-limit removed partials that would have crossed Nyquist, but kept the 7th
    kept = [spec[np.argmin(np.abs(freqs - k * f0))] for k in (1, 7, 9)]
    assert kept[1] > kept[0] * 1e-3 and kept[2] < kept[0] * 1e-8


def test_corner_sounds_like_its_instrument(grid):
    """At each corner a held note's partials match that corner instrument's analysis."""
    from morphbox.device.packs.format import load_pack
    pack = load_pack("device/packs/default")
    note, t = 60, 1.1
    a = int(np.argmin(np.abs(grid.anchors - note)))
    frames = slice(int(np.searchsorted(grid.frame_times, t - 0.2)) + 2,
                   int(np.searchsorted(grid.frame_times, t)) - 2)
    spectra, refs = {}, {}
    for name in ("NW", "NE", "SW", "SE"):
        ref = dequantize_db(pack.arrays["instruments_harmonics"][pack.corners[name], a, frames,
                                                                 :24]).mean(axis=0)
        refs[name] = ref - ref.max()
    for name, (x, y) in {"NW": (0, 0), "NE": (1, 0), "SW": (0, 1), "SE": (1, 1)}.items():
        e = make_engine(grid, x, y)
        e.note_on(note, 110)
        spectra[name] = partials_db(mono(e, t)[int((t - 0.2) * SR):], note)
        dist = {other: spectral_distance(spectra[name], ref) for other, ref in refs.items()}
        assert dist[name] < 3.0, (name, dist)
        assert min(dist, key=dist.get) == name, (name, dist)
    # the centre is none of the corners
    e = make_engine(grid, 0.5, 0.5)
    e.note_on(note, 110)
    centre = partials_db(mono(e, t)[int((t - 0.2) * SR):], note)
    for name, spec in spectra.items():
        assert spectral_distance(centre, spec) > 1.0, name  # corners are 3-8 dB apart


def test_held_note_follows_the_touch_without_clicks(grid):
    e = make_engine(grid, 0.0, 0.0)
    e.note_on(57, 110)
    before = mono(e, 0.9)
    e.controls.set_touch(1.0, 1.0)  # jump across the surface while the note is held
    after = mono(e, 0.9)
    d = spectral_distance(partials_db(before[-SR // 4:], 57), partials_db(after[-SR // 4:], 57))
    assert d > 4.0, f"spectrum moved only {d:.1f} dB"
    audio = np.concatenate([before, after])
    steady = np.abs(np.diff(before[SR // 2:])).max()
    jump = np.abs(np.diff(audio[len(before) - 2048:len(before) + 4096])).max()
    assert jump < 1.5 * steady + 1e-3, "touch move made a step in the waveform"
    assert np.sqrt(np.mean(after[:4096] ** 2)) > 0.2 * np.sqrt(np.mean(before[-4096:] ** 2))


def test_voice_stealing_is_click_free_and_bounded(grid):
    e = make_engine(grid, 0.3, 0.6, max_voices=1)
    e.note_on(50, 120)
    first = mono(e, 0.8)
    e.note_on(62, 120)  # steals the only voice
    second = mono(e, 0.5)
    audio = np.concatenate([first, second])
    steady = max(np.abs(np.diff(first[SR // 4:])).max(), np.abs(np.diff(second[SR // 4:])).max())
    around = np.abs(np.diff(audio[len(first) - 256:len(first) + 2048])).max()
    assert around < 1.5 * steady, f"steal jump {around:.4f} vs steady {steady:.4f}"
    assert e.active_voices == 1
    # the old note is gone: only the new pitch remains
    assert abs(pitch_error_cents(second, SR, 62)) < 10


def test_note_off_is_click_free_and_release_decays_to_silence(grid):
    e = make_engine(grid, 0.5, 0.5)
    e.controls.set_adsr(release_s=0.2)
    e.note_on(64, 120)
    held = mono(e, 0.7)
    e.note_off(64)
    tail = mono(e, 0.6)
    steady = np.abs(np.diff(held[SR // 4:])).max()
    assert np.abs(np.diff(np.concatenate([held[-64:], tail[:2048]]))).max() < 1.2 * steady
    rms = [np.sqrt(np.mean(tail[i:i + 2400] ** 2)) for i in range(0, 9600, 2400)]
    assert all(b < a for a, b in zip(rms, rms[1:])), rms
    assert np.abs(tail[int(0.35 * SR):]).max() < 1e-4  # -80 dB after the release
    assert e.active_voices == 0


def test_33_full_velocity_notes_stay_below_full_scale(grid):
    e = make_engine(grid, 1.0, 1.0)
    for i in range(33):
        e.note_on(36 + i, 127)
    audio = render_offline(e, SR)
    assert np.abs(audio).max() < 1.0
    assert np.abs(audio).max() > 0.5  # and it is loud, not silenced
    assert e.active_voices <= 33  # 32 playing + the stolen one fading (then gone)
    playing = np.count_nonzero(e._held)
    assert playing == 32


def test_velocity_outside_the_layers_follows_the_dls_curve():
    """A grid with one velocity layer (100): any other velocity scales the level by the DLS
    curve (v / 100)^2, timbre unchanged."""
    levels = []
    for vel in (100, 50):  # (quiet enough that the limiter stays out of the way)
        e = make_engine(bright_grid(), 0.2, 0.2)
        e.note_on(60, vel)
        levels.append(np.sqrt(np.mean(mono(e, 0.6)[SR // 4:] ** 2)))
    ratio_db = 20 * np.log10(levels[1] / levels[0])
    assert abs(ratio_db - 40 * np.log10(50 / 100)) < 0.3


def test_velocity_layers_set_level_and_timbre(grid):
    """Between the pack's layers the level follows the analysed source: a soft note is
    quieter by what the layers say for that note (the power of its frame with each layer's
    offsets), not by a fixed curve."""
    from morphbox.kernels.features import channel_weights, frame_power
    from morphbox.kernels.pitch import midi_to_hz
    a = int(np.argmin(np.abs(grid.anchors - 60)))
    layers = list(grid.velocity_layers)
    f = int(np.searchsorted(grid.frame_times, 0.6))
    w = channel_weights(midi_to_hz(np.array([60.0])))
    for x, y in ((0.0, 1.0), (1.0, 0.0)):  # piano (SW), flute (NE)
        iy, ix = int(y * (grid.size - 1)), int(x * (grid.size - 1))
        frame = grid.frames_db[iy, ix, a, f]
        power = {v: frame_power((frame + grid.velocity_db[iy, ix, a, layers.index(v)])
                                [None, None], w)[0, 0] for v in (60, 100)}
        want = 10 * np.log10(power[60] / power[100])
        levels = {}
        for vel in (100, 60):
            e = make_engine(grid, x, y)
            e.note_on(60, vel)
            levels[vel] = np.sqrt(np.mean(mono(e, 0.7)[int(0.5 * SR):] ** 2))
        got = 20 * np.log10(levels[60] / levels[100])
        assert got < -2.0 and abs(got - want) < 1.0, (x, y, got, want)


def test_master_volume_scales_output(grid):
    out = []
    for volume in (1.0, 0.5):
        e = make_engine(grid)
        e.controls.set_volume(volume)
        for n in (48, 52, 55):
            e.note_on(n, 60)  # quiet enough that the limiter stays out of the way
        out.append(mono(e, 0.5)[SR // 8:])
    ratio = np.sqrt(np.mean(out[1] ** 2) / np.mean(out[0] ** 2))
    assert abs(20 * np.log10(ratio) + 6.02) < 0.1


def test_all_notes_off_releases_everything(grid):
    e = make_engine(grid)
    for n in (48, 52, 55):
        e.note_on(n, 100)
    assert np.abs(mono(e, 0.3)).max() > 0.01
    e.all_notes_off()
    tail = mono(e, 1.0)
    assert e.active_voices == 0 and np.abs(tail[-SR // 4:]).max() < 1e-4


def test_block_size_64_renders_the_same_pitch(grid):
    e = make_engine(grid, block_size=64)
    e.note_on(69, 110)
    assert abs(pitch_error_cents(mono(e, 1.4), SR, 69)) < 5


def test_grid_swap_while_playing(grid):
    e = make_engine(grid)
    e.note_on(60, 110)
    a = mono(e, 0.3)
    e.set_grid(bright_grid(envelope_db=-60.0))
    b = mono(e, 0.3)
    assert np.isfinite(b).all() and np.abs(b).max() > 0.01
    steady = max(np.abs(np.diff(a[-4096:])).max(), np.abs(np.diff(b[-4096:])).max())
    assert np.abs(np.diff(np.concatenate([a[-64:], b[:256]]))).max() < 1.2 * steady


def test_position_skips_the_attack_of_new_notes(grid):
    """Position 1 starts notes at the sustain loop: the piano's onset transient is skipped,
    so the first 20 ms are much quieter than from the onset."""
    onsets = []
    for position in (0.0, 1.0):
        e = make_engine(grid, 0.0, 1.0)  # SW: piano
        e.controls.set_position(position)
        e.note_on(60, 110)
        onsets.append(np.abs(mono(e, 0.02)).max())
    assert onsets[1] < 0.5 * onsets[0]


# ------------------------------------------------------------------------------------------
# whole notes and the full band (issue 11), on the default pack


def levels_db(x: np.ndarray, win_s: float = 0.1) -> np.ndarray:
    """RMS level (dB) of consecutive ``win_s`` windows."""
    n = int(win_s * SR)
    seg = x[:len(x) // n * n].reshape(-1, n)
    return 10 * np.log10(np.mean(seg.astype(np.float64) ** 2, axis=1) + 1e-20)


def corner_engine(grid, x, y) -> Engine:
    controls = Controls(ControlState(x=x, y=y, attack_s=0.001, decay_s=0.1, sustain=1.0,
                                     release_s=0.3, volume=1.0))
    return Engine(grid, EngineConfig(), controls)


def test_a_held_piano_note_decays_for_5_s_and_never_swells(grid):
    """The piano (SW corner) held 5 s: past its analysed frames it keeps decaying at its own
    rate, each 100 ms quieter than the loudest before it (within 1 dB), 20 dB down or more
    by the end (the source loses ~30 dB), never back up as the old ping-pong loop did."""
    e = corner_engine(grid, 0.0, 1.0)
    e.note_on(60, 100)
    lv = levels_db(mono(e, 5.0))
    peak = int(np.argmax(lv))
    rise = lv[peak:] - np.minimum.accumulate(lv[peak:])
    assert rise.max() < 1.0, rise.max()
    assert lv[-1] < lv[peak] - 20.0
    assert lv[-1] > lv[peak] - 80.0  # still sounding: a decay, not a cut


def test_a_held_flute_note_stays_within_1_db(grid):
    """The flute (NE corner) sustains: held 5 s, its level over 1..5 s stays within 1 dB
    peak to peak (no pumping from the loop)."""
    e = corner_engine(grid, 1.0, 0.0)
    e.note_on(72, 100)
    lv = levels_db(mono(e, 5.0), 0.25)[4:]
    assert np.ptp(lv) <= 1.0, np.round(lv, 2)


def test_a_high_note_has_partials_above_8_khz_and_nothing_above_nyquist(grid):
    """MIDI 84 bent up: the sawtooth lead has its partials up to 20 kHz (the old 16 kHz packs
    stopped at 8 kHz), at exact multiples of f0: nothing folded back from above Nyquist. (Its
    level moves frame by frame, 50 times a second: that puts sidebands within ~100 Hz of each
    partial; an alias would land anywhere.)"""
    import dataclasses

    from morphbox.device.engine.corners import build_grid
    from morphbox.device.packs.format import load_pack
    pack = load_pack("device/packs/default")
    saw = pack.instrument_names.index("Lead 2 (sawtooth)")
    g = build_grid(pack, {c: saw for c in ("NW", "NE", "SW", "SE")})
    frames = g.frames_db.copy()
    frames[..., g.n_harmonics + g.n_envelope:] = -120.0  # its noise would fill the gaps
    e = corner_engine(dataclasses.replace(g, frames_db=frames), 0.0, 0.0)
    e.controls.set_bend(0.3)
    e.note_on(84, 127)
    audio = mono(e, 1.0)[SR // 5:]
    spec = np.abs(np.fft.rfft(audio * np.blackman(len(audio)))) ** 2
    freqs = np.fft.rfftfreq(len(audio), 1 / SR)
    f0 = float(midi_to_hz(84.3))
    above = spec[freqs > 8000].sum() / spec.sum()
    assert 10 * np.log10(above) > -30, 10 * np.log10(above)
    harmonic = np.abs(freqs / f0 - np.round(freqs / f0)) * f0 < 120.0
    between = 10 * np.log10(spec[~harmonic].sum() / spec.sum())
    assert between < -55, between
    assert freqs[spec > spec.max() * 1e-7].max() < 20500


# ---- per-voice expression ------------------------------------------------------------------
def test_per_voice_positions_match_the_shared_path(grid):
    """Every voice on the touch: the per-voice path (mpe mode with no offsets) renders what
    the shared path (follow mode) does, within float tolerance, while the touch moves."""
    from morphbox.device.engine.controls import Expression
    flat = Expression(timbre_x=0.0, timbre_y=0.0, pressure_x=0.0, pressure_y=0.0)
    out = []
    for mode in ("follow", "mpe"):
        e = make_engine(grid, 0.1, 0.2)
        e.controls.update(morph_mode=mode, expression=flat)
        for i, n in enumerate((45, 52, 60, 67, 74)):
            e.note_on(n, 100, channel=i, timbre=i / 4, pressure=i / 5)
        blocks = []
        for b in range(300):
            e.controls.set_touch(0.5 + 0.45 * np.cos(b / 40), 0.5 + 0.45 * np.sin(b / 25))
            blocks.append(e.render_block()[:, 0].copy())
        out.append(np.concatenate(blocks))
    assert np.abs(out[0]).max() > 0.05
    np.testing.assert_allclose(out[1], out[0], rtol=0, atol=2e-6)


def test_mix_voices_is_grid_cell_bilinear(grid):
    """The per-voice gather equals the bilinear look-up of kernels.grid.grid_cell, voice by
    voice (and between two frames), including points on grid lines and the far edge."""
    from morphbox.device.engine.voices import _mix_voices
    from morphbox.kernels.grid import grid_cell
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.random(20), [0.0, 1.0, 0.5, 0.125]])
    y = np.concatenate([rng.random(20), [1.0, 0.0, 0.25, 1.0]])
    n = len(x)
    anchor = rng.integers(0, len(grid.anchors), n)
    i0 = rng.integers(0, grid.n_frames - 1, n)
    fr = rng.random(n)
    f = grid.frames_db
    got = _mix_voices(f.reshape(-1, f.shape[-1]), f.shape, x, y, anchor, i0, fr)
    for v in range(n):
        iy0, ix0, w = grid_cell(x[v], y[v], grid.size)
        cell = f[iy0:iy0 + 2, ix0:ix0 + 2, anchor[v]]
        a = np.einsum("ij,ijb->b", w, cell[:, :, i0[v]])
        b = np.einsum("ij,ijb->b", w, cell[:, :, i0[v] + 1])
        np.testing.assert_allclose(got[v], a + (b - a) * fr[v], atol=2e-4)


def test_voice_bend_adds_to_the_global_bend_per_voice(grid):
    e = make_engine(grid)
    e.controls.set_bend(1.0)
    e.note_on(57, 110, channel=1, bend=2.0)
    assert abs(pitch_error_cents(mono(e, 1.4), SR, 60)) < 5
    e = make_engine(grid)
    e.note_on(57, 110, channel=3)
    e.note_on(64, 110, channel=3)
    mono(e, 0.05)
    e.voice_control(3, note=64, bend=-1.5)  # one note of the channel (poly)
    e.voice_control(3, bend=float("nan"))   # ignored
    audio = mono(e, 1.4)
    from morphbox.kernels.pitch import midi_to_hz
    spec = np.abs(np.fft.rfft(audio[SR // 4:SR // 4 + SR] * np.blackman(SR)))
    for note in (57, 62.5):
        f = float(midi_to_hz(note))
        near = spec[int(f * 0.99):int(f * 1.01) + 1]
        assert near.max() > 0.1 * spec.max(), note  # both pitches sound
    f = float(midi_to_hz(64))
    assert spec[int(f * 0.995):int(f * 1.005) + 1].max() < 0.01 * spec.max()  # 64 moved


def test_pressure_drives_loudness_and_brightness(grid):
    from morphbox.device.engine.controls import Expression
    levels, spectra = [], []
    for pressure in (0.5, 1.0):
        e = make_engine(grid, 0.2, 0.2)
        e.controls.set_expression(Expression(pressure_loudness=1.0))
        e.note_on(60, 64, pressure=pressure)
        levels.append(np.sqrt(np.mean(mono(e, 0.6)[SR // 4:] ** 2)))
    assert abs(20 * np.log10(levels[0] / levels[1]) + 6.02) < 0.3
    for pressure in (0.0, 1.0):
        e = make_engine(grid, 0.2, 0.2)
        e.controls.set_expression(Expression(pressure_brightness=6.0))
        e.note_on(60, 64)
        mono(e, 0.1)
        e.voice_control(0, pressure=pressure)
        spectra.append(partials_db(mono(e, 1.0)[SR // 2:], 60, n=4))
    tilt = spectra[0] - spectra[1]  # dB, relative to each note's strongest partial
    tilt -= tilt[0]
    # partial k is 6 log2(k) dB lower without pressure (2: -6 dB, 4: -12 dB); higher ones
    # sink into the noise part at this spot
    np.testing.assert_allclose(tilt[1:], 6 * -np.log2([2, 3, 4]), atol=1.0)


def test_latch_keeps_voices_where_they_were_when_the_mode_changed(grid):
    e = make_engine(grid, 0.2, 0.3)
    e.note_on(60, 100)
    mono(e, 0.3)
    e.controls.set_morph_mode("latch")
    e.controls.set_touch(0.9, 0.9)
    mono(e, 0.3)
    e.note_on(64, 100)  # starts at the (smoothed) touch, keeps it
    mono(e, 0.5)
    e.controls.set_touch(0.0, 0.0)
    mono(e, 0.5)
    pos = e.voice_positions()
    np.testing.assert_allclose(pos[0], [0.2, 0.3], atol=1e-6)
    np.testing.assert_allclose(pos[1], [0.9, 0.9], atol=1e-3)
    e.controls.set_morph_mode("follow")  # back on the touch, gliding
    mono(e, 0.6)
    np.testing.assert_allclose(e.voice_positions(), [[0, 0], [0, 0]], atol=1e-6)


def test_bad_expression_values_never_break_the_audio(grid):
    e = make_engine(grid)
    e.note_on(60, 100, bend=float("inf"), pressure=float("nan"), timbre=-5)
    e.voice_control(0, bend=1e9, pressure=-1, timbre=float("inf"))
    e.voice_control(99, bend=3.0)  # no such channel's voices: nothing happens
    audio = mono(e, 0.5)
    assert np.isfinite(audio).all() and np.abs(audio).max() > 0.01
