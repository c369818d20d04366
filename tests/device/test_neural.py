"""Tests of device/neural.py: the TFLite decoder on the device side.

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

from device.neural import ModelError, NeuralDecoder

pytest.importorskip("ai_edge_litert")

_MAKE = textwrap.dedent("""
    import sys
    from pathlib import Path
    import keras
    import numpy as np
    from host_tools.model.export import export_tflite
    from host_tools.model.network import ModelConfig, build_decoder, build_encoder
    from kernels.pitch import hz_to_midi

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
    code = ("import sys, device.neural; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')]; "
            "sys.exit(1 if bad else 0)")
    root = Path(__file__).resolve().parents[2]
    assert subprocess.run([sys.executable, "-c", code], cwd=root, timeout=60).returncode == 0


def test_decoder_matches_keras_and_makes_controls(models):
    ref = np.load(models / "expected.npz")
    dec = NeuralDecoder(models / "decoder.tflite")
    assert (dec.z_dims, dec.harmonics, dec.noise_bands) == (16, 64, 32)
    raw = dec.decode_db(ref["z"], ref["f0"], ref["loud"])
    for k in ("amplitude_db", "harmonic_db", "noise_db"):
        np.testing.assert_allclose(raw[k], ref[k], atol=1e-3)
    c = dec.decode(ref["z"], ref["f0"], ref["loud"])
    assert c.amplitude.shape == (2, 30) and c.noise_magnitudes.shape == (2, 30, 32)
    np.testing.assert_allclose(c.harmonic_distribution.sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(20 * np.log10(c.amplitude), ref["amplitude_db"], atol=1e-3)
    assert c.harmonic_amplitudes.shape == (2, 30, 64)
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
        dec.decode(np.zeros((1, 10, 8)), np.full((1, 10), 220.0), np.zeros((1, 10)))
    with pytest.raises(ValueError, match="expected z"):
        dec.decode(z, np.full((1, 9), 220.0), np.zeros((1, 10)))
    with pytest.raises(ValueError, match="positive"):
        dec.decode(z, np.zeros((1, 10)), np.zeros((1, 10)))
