"""Pack building on real instrument notes: small packs, checked member by member."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from morphbox.device.packs.format import load_pack
from morphbox.host_tools.packbuild import InstrumentSpec, PackSettings, build_pack
from morphbox.kernels.quant import dequantize_db


def _wav_folder(tmp_path):
    folder = tmp_path / "glass"
    folder.mkdir()
    sr = 44100
    t = np.arange(int(2.5 * sr)) / sr
    for pitch in (48, 64):
        f0 = 440 * 2 ** ((pitch - 69) / 12)
        tone = sum(np.sin(2 * np.pi * k * f0 * t) / k**2 for k in (1, 2, 3, 5))
        tone *= np.exp(-t / 1.5)
        sf.write(folder / f"glass_{pitch}.wav", np.stack([tone, tone], 1) * 0.3, sr)
    return folder


@pytest.fixture(scope="module")
def small_settings(tmp_path_factory):
    folder = _wav_folder(tmp_path_factory.mktemp("wav"))
    return PackSettings(
        name="small",
        instruments=(InstrumentSpec("Cello", program=42), InstrumentSpec("Flute", program=73),
                     InstrumentSpec("Contrabass", program=43),
                     InstrumentSpec("Glass", wav_folder=str(folder))),
        corners={"NW": 0, "NE": 1, "SW": 2, "SE": 3}, anchors=(40, 64, 88), grid_size=3)


@pytest.fixture(scope="module")
def small_pack(small_settings, tmp_path_factory):
    return build_pack(tmp_path_factory.mktemp("packs") / "small", small_settings, jobs=1,
                      progress=False)


def test_small_pack_verifies_and_describes_its_sources(small_pack):
    pack = load_pack(small_pack)
    m = pack.manifest
    assert m["mode"] == "spectral" and m["pitch_anchors"] == [40, 64, 88]
    assert pack.instrument_names == ["Cello", "Flute", "Contrabass", "Glass"]
    assert m["instruments"][0]["source"] == {"kind": "soundfont", "soundfont": "FluidR3_GM.sf2",
                                             "program": 42}
    assert m["instruments"][3]["source"]["kind"] == "wav_folder"
    # the WAV instrument uses its nearest note for each anchor
    assert [n["pitch"] for n in m["instruments"][3]["notes"]] == [48, 64, 64]
    # the contrabass has no note at MIDI 88 in FluidR3: that anchor is borrowed, not silent
    bass = m["instruments"][2]["notes"]
    assert bass[2].get("borrowed") and not bass[0].get("borrowed")
    harm = pack.arrays["instruments_harmonics"]
    assert np.array_equal(harm[2, 2], harm[2, 1])
    # rendered notes are in tune (pyin) and actually have partials
    cents = pack.arrays["instruments_pitch_cents"]
    assert np.nanmax(np.abs(cents[:2])) < 25
    assert (dequantize_db(harm[:, :, 40, 0]) > -40).all()


def test_spectral_grid_corners_are_the_instruments(small_pack):
    pack = load_pack(small_pack)
    grid = pack.arrays["grid_harmonics"]
    harm = pack.arrays["instruments_harmonics"]
    corners = pack.corners
    for name, (iy, ix) in {"NW": (0, 0), "NE": (0, 2), "SW": (2, 0), "SE": (2, 2)}.items():
        assert np.array_equal(grid[iy, ix], harm[corners[name]]), name
    # the centre is the corners' dB mix (the same shape) levelled up to their power mix:
    # one gain per frame, never a loss
    centre = dequantize_db(grid[1, 1])
    mean = dequantize_db(harm).mean(axis=0)
    gain = centre - mean
    audible = (centre > -100) & (mean > -100)
    spread = np.nanmax(np.where(audible, gain, np.nan), axis=-1) - \
        np.nanmin(np.where(audible, gain, np.nan), axis=-1)
    assert np.nanmax(spread) <= 1.0  # quantisation steps only
    assert np.nanmin(np.where(audible, gain, np.nan)) >= -0.75


def test_build_is_deterministic(small_pack, small_settings, tmp_path):
    again = build_pack(tmp_path / "again", small_settings, jobs=2, progress=False)
    a = json.loads((small_pack / "manifest.json").read_text())["members"]
    b = json.loads((again / "manifest.json").read_text())["members"]
    assert {k: v["sha256"] for k, v in a.items()} == {k: v["sha256"] for k, v in b.items()}


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="corners"):
        build_pack(tmp_path / "x", PackSettings(corners={"NW": 0}), progress=False)
    assert not (tmp_path / "x").exists()
