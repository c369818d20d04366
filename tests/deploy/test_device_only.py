"""A device-only install (``pip install morphbox[device]``, no host extra): ``morphbox render``
writes its WAV without soundfile."""

from __future__ import annotations

import subprocess
import sys
import wave

import mido
import numpy as np

BLOCK_SOUNDFILE = (
    "import sys\n"
    "sys.modules['soundfile'] = None  # as on a box: the host extra is not installed\n"
    "from morphbox.host_tools.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n")


def test_render_without_soundfile_writes_a_16_bit_wav(tmp_path):
    mid = mido.MidiFile()
    track = mido.MidiTrack()
    mid.tracks.append(track)
    track += [mido.Message("note_on", note=60, velocity=100, time=0),
              mido.Message("note_off", note=60, time=480)]
    mid.save(tmp_path / "one.mid")
    out = tmp_path / "one.wav"
    res = subprocess.run([sys.executable, "-c", BLOCK_SOUNDFILE, "render",
                          str(tmp_path / "one.mid"), "-o", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "soundfile" not in res.stderr
    with wave.open(str(out)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (2, 2, 48000)
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, 2)
    assert len(pcm) >= 48000 * 2  # the note (0.5 s) and its 2 s tail
    assert np.abs(pcm).max() > 1000 and np.array_equal(pcm[:, 0], pcm[:, 1])
