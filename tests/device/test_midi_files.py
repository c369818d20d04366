"""MIDI files from outside (issue 13): malformed ones are refused with one line naming the
problem (``morphbox render``/``play``/``run --midi`` exit 2), long silences are shortened, and a
render streams to its file."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import mido
import pytest
import soundfile as sf

from morphbox.device.midi.files import (
    MAX_GAP_S,
    MAX_MIDI_BYTES,
    MAX_SILENCE_S,
    MidiFileError,
    midi_events,
)
from morphbox.host_tools.cli import main

NOTE = b"\x00\x90\x3c\x40\x60\x80\x3c\x00\x00\xff\x2f\x00"  # C4 for 96 ticks, end of track


def smf(fmt: int, division: int, *tracks: bytes) -> bytes:
    out = b"MThd" + struct.pack(">IHHh", 6, fmt, len(tracks), division)
    for t in tracks:
        out += b"MTrk" + struct.pack(">I", len(t)) + t
    return out


def vlq(n: int) -> bytes:
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(reversed(out))


HOSTILE = {
    "not MIDI": (b"hello, not a MIDI file at all", "not a readable MIDI file: MThd not found"),
    "ticks per beat 0": (smf(0, 0, NOTE), "time division 0 is not ticks per beat"),
    "SMPTE division": (smf(0, -(25 << 8) + 40, NOTE), "is not ticks per beat"),
    "type 2": (smf(2, 96, NOTE), "MIDI file type 2 (independent sequences) cannot be played"),
    "truncated": (smf(0, 96, NOTE)[:-5], "truncated MIDI file"),
    "data byte > 127": (smf(0, 96, b"\x00\x90\x3c\xc0" + NOTE[4:]),
                        "data byte must be in range 0..127"),
    "empty": (b"", "not a MIDI file (0 bytes, shorter than a MIDI header)"),
}


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    out = {}
    for name, (data, _) in HOSTILE.items():
        p = tmp_path / (name.replace(" ", "_").replace(">", "gt") + ".mid")
        p.write_bytes(data)
        out[name] = p
    return out


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_malformed_files_are_refused_naming_the_problem(files, name):
    with pytest.raises(MidiFileError) as exc:
        midi_events(files[name])
    msg = str(exc.value)
    assert HOSTILE[name][1] in msg and str(files[name]) in msg and "\n" not in msg


def test_what_is_not_a_file_is_refused(tmp_path):
    with pytest.raises(MidiFileError, match="cannot read the MIDI file: No such file"):
        midi_events(tmp_path / "missing.mid")
    with pytest.raises(MidiFileError, match="not a regular file"):
        midi_events(tmp_path)
    big = tmp_path / "big.mid"
    big.write_bytes(smf(0, 96, NOTE) + b"\0" * MAX_MIDI_BYTES)
    with pytest.raises(MidiFileError, match="larger than the"):
        midi_events(big)


def test_an_hour_of_silence_is_shortened(tmp_path):
    """42 bytes that used to mean an hour of rendering: the gap with no note sounding is cut to
    MAX_SILENCE_S; the music around it keeps its timing."""
    hour = 96 * 2 * 3600  # ticks at 120 bpm
    track = (b"\x00\x90\x3c\x40" + vlq(96) + b"\x80\x3c\x00" + vlq(hour)
             + b"\x90\x40\x40" + vlq(96) + b"\x80\x40\x00\x00\xff\x2f\x00")
    p = tmp_path / "gap.mid"
    p.write_bytes(smf(0, 96, track))
    times = [round(t, 3) for t, _ in midi_events(p)]
    assert times == [0.0, 0.5, 0.5 + MAX_SILENCE_S, 1.0 + MAX_SILENCE_S]


def test_a_note_held_across_a_huge_gap_is_cut_to_the_longest_gap(tmp_path):
    """The 49-byte file that asked for a 3.28 TiB buffer: tempo 16.7 s per beat, 1 tick per
    beat, a note held 2^28 ticks."""
    track = (b"\x00\xff\x51\x03\xff\xff\xff\x00\x90\x3c\x40" + vlq(0x0FFFFFFF)
             + b"\x80\x3c\x00\x00\xff\x2f\x00")
    p = tmp_path / "huge.mid"
    p.write_bytes(smf(0, 1, track))
    events = midi_events(p)
    assert [round(t, 3) for t, _ in events] == [0.0, MAX_GAP_S]


def test_a_real_file_keeps_its_timing(tmp_path):
    mid = mido.MidiFile()
    track = mido.MidiTrack()
    mid.tracks.append(track)
    for i in range(4):
        track.append(mido.Message("note_on", note=60 + i, velocity=90, time=0 if i == 0
                                  else mid.ticks_per_beat))
        track.append(mido.Message("note_off", note=60 + i, time=mid.ticks_per_beat))
    mid.save(tmp_path / "ok.mid")
    times = [round(t, 3) for t, m in midi_events(tmp_path / "ok.mid")]
    assert times == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]


@pytest.mark.parametrize("name", ["not MIDI", "ticks per beat 0", "type 2", "truncated"])
def test_render_refuses_with_one_line_and_exit_2(files, name, tmp_path, capsys):
    out = tmp_path / "out.wav"
    assert main(["render", str(files[name]), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and HOSTILE[name][1] in err
    assert not out.exists()


def test_play_and_run_refuse_before_any_audio_opens(files, capsys):
    assert main(["play", str(files["type 2"])]) == 2
    assert "type 2" in capsys.readouterr().err
    from morphbox.device.main import main as device_main
    assert device_main(["--midi", str(files["truncated"]), "--audio", "none"]) == 2
    assert "truncated MIDI file" in capsys.readouterr().err


def test_render_cli_in_a_process_prints_no_traceback(files, tmp_path):
    res = subprocess.run([sys.executable, "-m", "morphbox.host_tools.cli", "render",
                          str(files["ticks per beat 0"]), "-o", str(tmp_path / "x.wav")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().startswith("error: ") and len(res.stderr.strip().splitlines()) == 1


def test_render_streams_the_shortened_piece_to_its_file(tmp_path):
    hour = 96 * 2 * 3600
    track = (b"\x00\x90\x3c\x40" + vlq(96) + b"\x80\x3c\x00" + vlq(hour)
             + b"\x90\x40\x40" + vlq(96) + b"\x80\x40\x00\x00\xff\x2f\x00")
    (tmp_path / "gap.mid").write_bytes(smf(0, 96, track))
    out = tmp_path / "gap.wav"
    assert main(["render", str(tmp_path / "gap.mid"), "-o", str(out)]) == 0
    audio, sr = sf.read(out)
    assert sr == 48000 and audio.shape[1] == 2
    assert abs(len(audio) / sr - (1.0 + MAX_SILENCE_S + 2.0)) < 0.05  # + the 2 s tail
    assert abs(audio).max() > 1e-3
