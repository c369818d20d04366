"""Tests of device/packs/neural.py: the TFLite decoder on the device side.

The model files are made by TensorFlow in a *subprocess* (the device never imports
TensorFlow, and tflite-runtime breaks when TensorFlow was imported first in the process), with
the Keras outputs of a fixed input saved next to them for comparison.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from morphbox.device.packs.neural import ModelError, NeuralDecoder

pytest.importorskip("ai_edge_litert")

_MAKE = textwrap.dedent("""
    import sys
    from pathlib import Path
    import keras
    import numpy as np
    from morphbox.host_tools.model.export import export_tflite
    from morphbox.host_tools.model.network import ModelConfig, build_decoder, build_encoder
    from morphbox.kernels.pitch import hz_to_midi

    out = Path(sys.argv[1])
    keras.utils.set_random_seed(0)
    small = ModelConfig(encoder_channels=16, encoder_layers=1, decoder_channels=32,
                        decoder_layers=2)
    enc, dec = build_encoder(small), build_decoder(small)
    export_tflite(enc, dec, out / "decoder.tflite", signatures=("decode",))
    export_tflite(enc, dec, out / "encoder_only.tflite", signatures=("encode",))
    z8 = ModelConfig(z_dims=8, encoder_channels=16, encoder_layers=1, decoder_channels=32,
                     decoder_layers=2)
    export_tflite(build_encoder(z8), build_decoder(z8), out / "z8.tflite",
                  signatures=("decode",))
    rng = np.random.default_rng(0)
    z = rng.uniform(-1, 1, (2, 30, 16)).astype(np.float32)
    f0 = np.stack([np.full(30, 220.0), np.linspace(100, 900, 30)]).astype(np.float32)
    loud = np.linspace(-60, -10, 60).reshape(2, 30).astype(np.float32)
    want = dec({"z": z, "f0_midi": hz_to_midi(f0).astype(np.float32), "loudness_db": loud})
    np.savez(out / "expected.npz", z=z, f0=f0, loud=loud,
             **{k: v.numpy() for k, v in want.items()})
""")


@pytest.fixture(scope="session")
def models(tf_subprocess) -> Path:
    return tf_subprocess(_MAKE, "neural")


def test_device_module_does_not_import_tensorflow():
    code = ("import sys, morphbox.device.packs.neural; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')]; "
            "sys.exit(1 if bad else 0)")
    root = Path(__file__).resolve().parents[2]
    assert subprocess.run([sys.executable, "-c", code], cwd=root, timeout=60).returncode == 0


def test_decoder_matches_keras_and_makes_frames(models):
    ref = np.load(models / "expected.npz")
    dec = NeuralDecoder(models / "decoder.tflite")
    assert (dec.z_dims, dec.harmonics, dec.envelope_bands, dec.noise_bands) == (16, 64, 24, 32)
    raw = dec.decode_db(ref["z"], ref["f0"], ref["loud"])
    for k in ("amplitude_db", "harmonic_db", "envelope_db", "noise_db"):
        np.testing.assert_allclose(raw[k], ref[k], atol=1e-3)
    frames = dec.decode_frames(ref["z"], ref["f0"], ref["loud"])
    assert frames.shape == (2, 30, 64 + 24 + 32) and frames.dtype == np.float32
    # the partials are amplitude x distribution: they sum (linearly) to the amplitude
    partials = 10 ** (frames[..., :64].astype(np.float64) / 20)
    np.testing.assert_allclose(20 * np.log10(partials.sum(-1)), ref["amplitude_db"], atol=1e-3)
    np.testing.assert_allclose(frames[..., 64:88], ref["envelope_db"]
                               + ref["amplitude_db"][..., None], atol=1e-3)
    np.testing.assert_allclose(frames[..., 88:], ref["noise_db"], atol=1e-3)
    # one note without a batch axis, and another length (the runner resizes)
    one = dec.decode_db(ref["z"][1, :7], ref["f0"][1, :7], ref["loud"][1, :7])
    np.testing.assert_allclose(one["harmonic_db"], ref["harmonic_db"][1, :7], atol=1e-3)


def test_decoder_refuses_wrong_models(models, tmp_path):
    with pytest.raises(ModelError, match="no 'decode' signature"):
        NeuralDecoder(models / "encoder_only.tflite")
    with pytest.raises(ModelError, match="8 z size, expected 16"):
        NeuralDecoder(models / "z8.tflite")
    assert NeuralDecoder(models / "z8.tflite", z_dims=None).z_dims == 8
    with pytest.raises(ModelError, match="64 harmonics, expected 60"):
        NeuralDecoder(models / "decoder.tflite", harmonics=60)
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"not a flatbuffer" * 10)
    with pytest.raises(ModelError, match="not a loadable TFLite model"):
        NeuralDecoder(junk)
    with pytest.raises(ModelError, match="not a loadable"):
        NeuralDecoder(tmp_path / "missing.tflite")


def test_decoder_refuses_bad_inputs(models):
    dec = NeuralDecoder(models / "decoder.tflite")
    z = np.zeros((1, 10, 16), np.float32)
    with pytest.raises(ValueError, match="expected z"):
        dec.decode_frames(np.zeros((1, 10, 8)), np.full((1, 10), 220.0), np.zeros((1, 10)))
    with pytest.raises(ValueError, match="expected z"):
        dec.decode_frames(z, np.full((1, 9), 220.0), np.zeros((1, 10)))
    with pytest.raises(ValueError, match="positive"):
        dec.decode_frames(z, np.zeros((1, 10)), np.zeros((1, 10)))


# ------------------------------------------------------------------------------ shipped files


def test_shipped_default_model_is_small_complete_and_in_the_default_pack():
    """The committed default model (issue 3): int8 <= 2 MB, both signatures, and the very file
    the default pack carries and was built with."""
    from morphbox.device.packs.format import DEFAULT_MODEL, load_pack
    f32 = DEFAULT_MODEL.with_name("default_f32.tflite")
    assert DEFAULT_MODEL.stat().st_size <= 2_000_000
    for path in (DEFAULT_MODEL, f32):
        dec = NeuralDecoder(path)  # decode signature, 16 z dims, 64 partials, 24 + 32 bands
        assert (dec.z_dims, dec.harmonics, dec.envelope_bands, dec.noise_bands) == \
            (16, 64, 24, 32)
        from ai_edge_litert.interpreter import Interpreter
        assert sorted(Interpreter(model_path=str(path)).get_signature_list()) == \
            ["decode", "encode"]
    pack = load_pack("device/packs/default")
    assert pack.blobs["decoder"] == DEFAULT_MODEL.read_bytes()


def test_shipped_int8_decoder_tracks_float32_on_the_default_pack():
    """int8 and float32 decode the default pack's instruments alike: the partials within 60 dB
    of each frame's strongest differ by a few int8 steps (0.55 dB each) on average: 3.1 dB
    measured, where a badly calibrated export is off by tens of dB."""
    from morphbox.device.packs.format import DEFAULT_MODEL, load_pack
    from morphbox.kernels.pitch import midi_to_hz
    pack = load_pack("device/packs/default")
    n = pack.manifest["frames"]
    z = pack.z_corners(list(range(len(pack.instrument_names)))).reshape(-1, n, 16)
    loud = pack.arrays["instruments_loudness"].reshape(-1, n)
    anchors = np.array(pack.manifest["pitch_anchors"], np.float64)
    f0 = np.broadcast_to(midi_to_hz(anchors)[None, :, None],
                         (len(pack.instrument_names), len(anchors), n)).reshape(-1, n)
    db = [NeuralDecoder(p).decode_frames(z, f0, loud)[..., :64]
          for p in (DEFAULT_MODEL.with_name("default_f32.tflite"), DEFAULT_MODEL)]
    audible = db[0] > db[0].max(axis=-1, keepdims=True) - 60
    diff = np.abs(db[1] - db[0])[audible].mean()
    assert 0 < diff < 4.0, diff
