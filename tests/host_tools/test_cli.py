"""The morphbox command: help, pack info, render and the demo, on real files."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import mido
import numpy as np
import soundfile as sf

from morphbox.device.packs.format import DEFAULT_PACK
from morphbox.host_tools.cli import main


def test_console_script_help_names_every_command():
    exe = Path(sys.executable).with_name("morphbox")
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True,
                         timeout=60).stdout
    for word in ("demo", "render", "play", "pack", "devices", "touch paths"):
        assert word in out


def test_pack_info_lists_instruments_and_corners(capsys, tmp_path):
    assert main(["pack", "info", "--picture", str(tmp_path / "grid.png")]) == 0
    out = capsys.readouterr().out
    assert "neural pack v3" in out and "grid 9x9" in out
    assert "model default_int8 (int8, z 16), corners anchored to the instruments" in out
    assert "Cello   <- corner NW" in out and "Church Organ   <- corner SE" in out
    assert (tmp_path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_corrupt_pack_is_refused_with_the_reason(capsys, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(DEFAULT_PACK, bad)
    member = bad / "grid_noise.npy"
    data = bytearray(member.read_bytes())
    data[-1] ^= 0x01
    member.write_bytes(bytes(data))
    assert main(["pack", "info", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "grid_noise.npy is corrupt" in err


def test_render_a_midi_file_with_a_csv_touch_path(tmp_path):
    mid = mido.MidiFile()
    track = mido.MidiTrack()
    mid.tracks.append(track)
    track.append(mido.Message("note_on", note=60, velocity=100, time=0))
    track.append(mido.Message("note_off", note=60, time=mid.ticks_per_beat * 2))  # 1 s
    mid.save(tmp_path / "c.mid")
    (tmp_path / "path.csv").write_text("time,x,y\n0,0,0\n1,1,1\n")
    out = tmp_path / "c.wav"
    assert main(["render", str(tmp_path / "c.mid"), "-o", str(out), "--path",
                 str(tmp_path / "path.csv"), "--block-size", "64"]) == 0
    audio, sr = sf.read(out)
    assert sr == 48000 and audio.shape[1] == 2
    assert 2.9 < len(audio) / sr < 3.2  # 1 s note + 2 s tail
    assert np.abs(audio[:48000]).max() > 0.05
    assert np.abs(audio[-4800:]).max() < 1e-3


def test_demo_writes_the_chorale_and_its_picture(tmp_path, capsys):
    assert main(["demo", "--live", "no", "--out", str(tmp_path)]) == 0
    audio, sr = sf.read(tmp_path / "demo.wav")
    assert sr == 48000
    assert 75 < len(audio) / sr < 82
    assert 0.2 < np.abs(audio).max() < 1.0
    # the chorale sounds throughout: no silent second until the final chord's release
    rms = np.sqrt(np.mean(audio[: 76 * sr, 0].reshape(76, sr) ** 2, axis=1))
    assert rms.min() > 0.005
    png = (tmp_path / "demo.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert "not played live" in capsys.readouterr().out


def test_run_the_whole_box_on_the_sim_profile(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MORPHBOX_STATE_DIR", str(tmp_path))
    mid = mido.MidiFile()
    track = mido.MidiTrack()
    mid.tracks.append(track)
    track.append(mido.Message("note_on", note=64, velocity=100, time=0))
    track.append(mido.Message("note_off", note=64, time=mid.ticks_per_beat))
    mid.save(tmp_path / "e.mid")
    assert main(["run", "--profile", "sim", "--midi", str(tmp_path / "e.mid"), "--audio", "none",
                 "--seconds", "1.5"]) == 0
    out = capsys.readouterr().out
    import re
    blocks, errors = map(int, re.search(r"played (\d+) blocks: .* (\d+) errors", out).groups())
    assert blocks > 0 and errors == 0  # rates and late blocks depend on load: see the benches


def test_run_refuses_an_unknown_profile(capsys):
    assert main(["run", "--profile", "no-such-box", "--audio", "none", "--seconds", "1"]) == 2
    assert "no hardware profile 'no-such-box'" in capsys.readouterr().err


def test_the_device_starts_itself_with_python_m(tmp_path):
    """``python -m morphbox.device`` (what systemd runs) builds the service from options."""
    res = subprocess.run([sys.executable, "-m", "morphbox.device", "--profile", "sim",
                          "--audio", "none", "--seconds", "1", "--state-dir", str(tmp_path),
                          "--api", "--bind", "127.0.0.1:0"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "morphbox running on none (paced null output) with pack 'default'" in res.stdout
    assert "0 errors" in res.stdout
    assert (tmp_path / "token").exists()  # the API made the pairing token
    bad = subprocess.run([sys.executable, "-m", "morphbox.device", "--pack",
                          str(tmp_path / "nope")], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and bad.stderr.startswith("error: ")


def test_pack_build_writes_beside_the_user_not_into_the_install(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    before = {p.name: p.stat().st_mtime_ns for p in DEFAULT_PACK.iterdir()}
    assert main(["pack", "build", "--name", "tiny", "--mode", "spectral", "--programs",
                 "0", "19", "40", "73", "--anchors", "60", "64", "4", "--grid-size", "3",
                 "--jobs", "1"]) == 0
    assert (tmp_path / "tiny.pack" / "manifest.json").exists()
    assert "built tiny.pack" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in DEFAULT_PACK.iterdir()} == before
