"""Tests for morphbox.host_tools.sources: SoundFont rendering, WAV loading and pitch helpers.

Rendering tests need FluidSynth + FluidR3_GM.sf2 (skipped otherwise).  Pitch is
checked two ways: the module's pyin-based pitch_error_cents and an independent
zero-padded FFT peak of the fundamental.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf

from morphbox.host_tools import sources
from morphbox.host_tools.sources import (
    GM_PROGRAM_NAMES,
    NOTE_SAMPLES,
    SOURCE_SAMPLE_RATE,
    SoundFontRenderer,
    SourceError,
    SourceNote,
    detect_pitch,
    find_soundfont,
    load_wav,
    load_wav_folder,
    pitch_error_cents,
    pitch_from_filename,
)

SR = SOURCE_SAMPLE_RATE


def midi_hz(pitch: float) -> float:
    return 440.0 * 2.0 ** ((pitch - 69.0) / 12.0)


def fft_cents(audio: np.ndarray, pitch: float, start: float = 0.2, stop: float = 1.2) -> float:
    """Independent check: interpolated FFT peak of the fundamental vs the MIDI pitch."""
    seg = audio[int(start * SR) : int(stop * SR)] * np.hanning(int((stop - start) * SR))
    n = 1 << 20
    spec = np.abs(np.fft.rfft(seg, n))
    freqs = np.fft.rfftfreq(n, 1.0 / SR)
    f0 = midi_hz(pitch)
    band = np.flatnonzero((freqs > f0 * 0.97) & (freqs < f0 * 1.03))
    i = band[np.argmax(spec[band])]
    a, b, c = np.log(spec[i - 1 : i + 2])
    f = freqs[i] + 0.5 * (a - c) / (a - 2 * b + c) * freqs[1]
    return 1200.0 * math.log2(f / f0)


def level_db(audio: np.ndarray, freq: float, start: float, stop: float) -> float:
    """Spectral magnitude near ``freq`` relative to the strongest bin, in dB."""
    seg = audio[int(start * SR) : int(stop * SR)] * np.hanning(int((stop - start) * SR))
    spec = np.abs(np.fft.rfft(seg, 1 << 16))
    freqs = np.fft.rfftfreq(1 << 16, 1.0 / SR)
    return 20 * math.log10(spec[np.abs(freqs - freq) < 5].max() / spec.max())


def rms(audio: np.ndarray, start: float, stop: float) -> float:
    return float(np.sqrt(np.mean(audio[int(start * SR) : int(stop * SR)] ** 2)))


def tone(pitch: float, sr: int, seconds: float, channels: int = 1) -> np.ndarray:
    """Harmonic test tone (6 partials, 10 ms attack, exponential decay), peak 0.8."""
    t = np.arange(int(seconds * sr)) / sr
    x = sum(np.sin(2 * np.pi * midi_hz(pitch) * k * t + k) / k for k in range(1, 7))
    x *= np.minimum(t / 0.01, 1.0) * np.exp(-t / 1.5)
    x = 0.8 * x / np.abs(x).max()
    return x if channels == 1 else np.stack([x, 0.5 * x], axis=1)  # stereo: R = L/2


# ----------------------------------------------------------------------------- rendering


@pytest.fixture(scope="module")
def renderer():
    try:
        find_soundfont()
        r = SoundFontRenderer()
    except SourceError as e:
        pytest.skip(str(e))
    yield r
    r.close()


@pytest.mark.parametrize("program,pitch", [(0, 48), (0, 60), (0, 67), (73, 67), (73, 72), (73, 79)])
def test_rendered_note_shape_peak_pitch_and_decay(renderer, program, pitch):
    note = renderer.render_note(program, pitch, velocity=100)
    a = note.audio
    assert a.shape == (NOTE_SAMPLES,) and a.dtype == np.float32
    assert 0.01 < np.max(np.abs(a)) < 1.0  # its own level, not normalised
    assert abs(float(np.mean(a))) < 1e-4  # DC removed
    assert (note.pitch, note.velocity, note.pitch_source) == (pitch, 100, "midi")
    assert note.instrument == GM_PROGRAM_NAMES[program]
    assert note.gain == 1.0
    assert abs(pitch_error_cents(a, SR, pitch)) <= 10
    assert abs(fft_cents(a, pitch)) <= 10
    # A wrong-pitch hypothesis is not voiced within +-1 semitone, or reads far off.
    wrong = pitch_error_cents(a, SR, pitch + 1.5)
    assert math.isnan(wrong) or abs(wrong) > 30
    # Note is sounding at the end of the hold, and decays after the note-off at 4 s.
    hold, release = rms(a, 3.5, 3.9), rms(a, 4.3, 4.5)
    assert hold > 1e-4
    assert release < 0.05 * hold


def test_render_is_deterministic_and_history_free(renderer):
    first = renderer.render_note(73, 79).audio
    assert np.array_equal(first, renderer.render_note(73, 79).audio)
    # Long-release pad (still sounding at 4.5 s) then the flute again: no bleed.
    pad = renderer.render_note(89, 48).audio
    assert rms(pad, 4.3, 4.5) > 1e-4, "test premise: the pad's release outlasts the note"
    after = renderer.render_note(73, 79).audio
    assert np.array_equal(first, after)
    assert level_db(after, midi_hz(48), 0.0, 0.25) < -60
    # A fresh renderer (context manager) gives the same samples.
    with SoundFontRenderer() as other:
        assert np.array_equal(first, other.render_note(73, 79).audio)
        assert np.array_equal(pad, other.render_note(89, 48).audio)
    with pytest.raises(SourceError, match="closed"):
        other.render_note(73, 79)


def test_bleed_check_is_sensitive(renderer):
    """The no-bleed assertions above can fail: two notes on one un-silenced synth leak."""
    clean = renderer.render_note(73, 79).audio
    with renderer._fresh_synth() as (synth, sfid):
        renderer._play(synth, sfid, 89, 48, 100, 0, "pad")
        stereo = renderer._play(synth, sfid, 73, 79, 100, 0, "flute")  # pad still releasing
    dirty = sources._finish(stereo.mean(axis=1), renderer.render_rate, "flute", 1e-6)[0]
    assert not np.array_equal(clean, dirty)
    assert level_db(dirty, midi_hz(48), 0.0, 0.25) > -60


def test_render_velocity_and_names(renderer):
    soft, loud = renderer.render_note(0, 60, velocity=30), renderer.render_note(0, 60, velocity=120)
    assert np.max(np.abs(soft.audio)) < 0.3 * np.max(np.abs(loud.audio))  # levels kept
    assert renderer.render_note(42, 48).instrument == "Cello"
    drums = renderer.render_note(0, 38, bank=128)  # GM drum kit, snare
    assert drums.instrument and drums.pitch_source == "midi"


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"program": 128, "pitch": 60}, "program"),
        ({"program": -1, "pitch": 60}, "program"),
        ({"program": 0, "pitch": 128}, "pitch"),
        ({"program": 0, "pitch": 60, "velocity": 0}, "velocity"),
        ({"program": 0, "pitch": 60, "velocity": 128}, "velocity"),
        ({"program": 0, "pitch": 60.0}, "pitch"),
        ({"program": 0, "pitch": 60, "bank": 5}, "preset not in SoundFont"),
        ({"program": 0, "pitch": 127}, "silent"),  # no piano sample zone covers key 127
    ],
)
def test_render_errors(renderer, kwargs, match):
    with pytest.raises(SourceError, match=match):
        renderer.render_note(**kwargs)


def test_find_soundfont(tmp_path, monkeypatch):
    sf2 = tmp_path / "x.sf2"
    sf2.write_bytes(b"RIFF")
    assert find_soundfont(str(sf2)) == sf2
    with pytest.raises(SourceError, match="missing.sf2"):
        find_soundfont(str(tmp_path / "missing.sf2"))
    monkeypatch.setenv("MORPHBOX_SOUNDFONT", str(sf2))
    assert find_soundfont() == sf2
    monkeypatch.setenv("MORPHBOX_SOUNDFONT", str(tmp_path / "gone.sf2"))
    with pytest.raises(SourceError, match="MORPHBOX_SOUNDFONT"):
        find_soundfont()
    monkeypatch.delenv("MORPHBOX_SOUNDFONT")
    monkeypatch.setattr(sources, "_DEFAULT_SOUNDFONTS", (tmp_path / "none.sf2",))
    with pytest.raises(SourceError, match="install fluid-soundfont-gm"):
        find_soundfont()


def test_gm_program_names():
    assert len(GM_PROGRAM_NAMES) == 128 == len(set(GM_PROGRAM_NAMES))
    assert GM_PROGRAM_NAMES[0] == "Acoustic Grand Piano"
    assert (GM_PROGRAM_NAMES[42], GM_PROGRAM_NAMES[73], GM_PROGRAM_NAMES[127]) == (
        "Cello",
        "Flute",
        "Gunshot",
    )


def test_source_note_validates():
    ok = np.zeros(NOTE_SAMPLES, np.float32)
    SourceNote(ok, 60, 100, "x", 1.0, "midi")
    with pytest.raises(SourceError, match="float32"):
        SourceNote(np.zeros(100, np.float32), 60, 100, "x", 1.0, "midi")
    with pytest.raises(SourceError, match="float32"):
        SourceNote(ok.astype(np.float64), 60, 100, "x", 1.0, "midi")
    with pytest.raises(SourceError, match="velocity"):
        SourceNote(ok, 60, 0, "x", 1.0, "midi")
    with pytest.raises(SourceError, match="pitch_source"):
        SourceNote(ok, 60, 100, "x", 1.0, "guess")


# ----------------------------------------------------------------------------- WAV files


@pytest.fixture(scope="module")
def wav_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wavs") / "MyCello"
    folder.mkdir()
    sf.write(
        folder / "60.wav", tone(60, 44100, 5.0, channels=2), 44100, subtype="PCM_16"
    )  # > 4 s: trimmed
    sf.write(folder / "C#4.wav", tone(61, 22050, 3.0), 22050, subtype="FLOAT")
    sf.write(folder / "cello-067-100.wav", tone(67, 44100, 4.0, channels=2), 44100, subtype="FLOAT")
    sf.write(folder / "mystery.wav", tone(62, 22050, 2.5), 22050, subtype="PCM_16")  # < 4 s: padded
    sf.write(folder / "Bb3.FLAC", tone(58, 16000, 4.0), 16000, subtype="PCM_24")
    (folder / "notes.txt").write_text("not audio")
    return folder


def test_load_wav_folder(wav_folder):
    notes = load_wav_folder(wav_folder)
    assert [n.pitch for n in notes] == [58, 60, 61, 62, 67]
    assert [n.pitch_source for n in notes] == [
        "filename",
        "filename",
        "filename",
        "detected",
        "filename",
    ]
    for n in notes:
        assert n.audio.shape == (NOTE_SAMPLES,) and n.audio.dtype == np.float32
        assert 0.5 < np.max(np.abs(n.audio)) < 0.9  # the file's level (tone peaks 0.8)
        assert n.instrument == "MyCello" and n.velocity == 100 and n.gain == 1.0
        # Resampled correctly to 48 kHz: the tone is at its nominal pitch.
        assert abs(pitch_error_cents(n.audio, SR, n.pitch)) <= 3
        assert abs(fft_cents(n.audio, n.pitch)) <= 3
    by_pitch = {n.pitch: n for n in notes}
    # Stereo (L, L/2) mixes to 0.75 L -> peak 0.6; mono peaks 0.8: levels as recorded
    # (the 20 Hz high-pass turns the waveform's low partials a little: peaks move by a few %)
    assert np.max(np.abs(by_pitch[60].audio)) == pytest.approx(0.6, rel=0.1)
    assert np.max(np.abs(by_pitch[61].audio)) == pytest.approx(0.8, rel=0.1)
    # 2.5 s file padded (the high-pass leaves only a decaying tail); 5 s file trimmed with a
    # fade to 0.
    assert np.abs(by_pitch[62].audio[int(2.6 * SR):]).max() < 1e-3
    assert by_pitch[60].audio[-1] == 0.0 and rms(by_pitch[60].audio, 4.3, 4.48) > 1e-3


def test_load_wav_pitch_priority_and_detection(wav_folder):
    mystery = wav_folder / "mystery.wav"
    pitch, voiced = detect_pitch(sf.read(mystery)[0], 22050)
    assert abs(pitch - 62) <= 0.05 and voiced > 0.5
    given = load_wav(mystery, pitch=50, velocity=64, instrument="Thing")
    assert (given.pitch, given.pitch_source, given.velocity, given.instrument) == (
        50,
        "argument",
        64,
        "Thing",
    )
    assert load_wav(wav_folder / "C#4.wav").instrument == "MyCello"
    with pytest.raises(SourceError, match="pitch"):
        load_wav(mystery, pitch=200)


def test_wav_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    with pytest.raises(SourceError, match="no audio files"):
        load_wav_folder(empty)
    with pytest.raises(SourceError, match="not a folder"):
        load_wav_folder(tmp_path / "nope")
    bad = tmp_path / "bad"
    bad.mkdir()
    sf.write(bad / "60.wav", tone(60, 16000, 1.0), 16000)
    (bad / "broken_62.wav").write_bytes(b"RIFF\x00\x00\x00\x00garbage" * 10)
    with pytest.raises(SourceError, match="broken_62.wav"):
        load_wav_folder(bad)
    silent = tmp_path / "silent_60.wav"
    sf.write(silent, np.zeros(16000), 16000)
    with pytest.raises(SourceError, match="silent_60.wav.*silent"):
        load_wav(silent)
    noise = tmp_path / "hiss.wav"  # no pitch in name, nothing voiced
    sf.write(noise, np.zeros(16000) + np.r_[1.0, np.zeros(15999)] * 0.5, 16000)
    with pytest.raises(SourceError, match="hiss.wav"):
        load_wav(noise)


# ----------------------------------------------------------------------------- pitch helpers


@pytest.mark.parametrize(
    "name,expected",
    [
        ("60.wav", 60),
        ("cello_60.wav", 60),
        ("cello_60_100.wav", 60),
        ("cello-060-100.wav", 60),
        ("cello-067-100", 67),
        ("guitar_acoustic_010-060-100.wav", 60),
        ("C4.wav", 60),
        ("c#3.wav", 49),
        ("Db5_soft.wav", 73),
        ("Bb3.FLAC", 58),
        ("E4 soft.aiff", 64),
        ("A0.wav", 21),
        ("A-1.wav", 9),  # "-1" right after a note letter is octave -1
        ("C-1.wav", 0),
        ("G9.wav", 127),
        ("G#9.wav", None),  # 128: out of MIDI range
        ("piano_200_61.wav", 61),  # first delimited number in 0..127
        ("/some/dir/72.flac", 72),
        ("mystery.wav", None),
        ("cello60.wav", None),  # numbers glued to letters are ignored
        ("take2_v100.wav", None),
        ("A440.wav", None),
    ],
)
def test_pitch_from_filename(name, expected):
    assert pitch_from_filename(name) == expected


def test_detect_pitch_and_error_cents_on_synthetic_tones():
    for pitch, sr in [(45.3, 16000), (57.0, 44100), (81.8, 22050)]:
        x = tone(pitch, sr, 4.0)
        detected, voiced = detect_pitch(x, sr)
        assert abs(detected - pitch) <= 0.03 and voiced > 0.5
        assert abs(pitch_error_cents(x, sr, round(pitch)) - 100 * (pitch - round(pitch))) <= 3
    assert math.isnan(pitch_error_cents(np.zeros(SR * 2), SR, 60))
    with pytest.raises(SourceError, match="voiced"):
        detect_pitch(np.zeros(SR * 2), SR)
    with pytest.raises(SourceError):
        detect_pitch(np.zeros((2, 100)), SR)
