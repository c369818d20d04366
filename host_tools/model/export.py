"""Export of the trained encoder/decoder to TensorFlow Lite.

One ``.tflite`` file holds named signatures (a subset of):

* ``decode``: inputs ``z`` ``(B, T, 16)``, ``f0_midi`` ``(B, T)``, ``loudness_db`` ``(B, T)``;
  outputs ``amplitude_db`` ``(B, T)``, ``harmonic_db`` ``(B, T, 64)``, ``envelope_db``
  ``(B, T, 24)``, ``noise_db`` ``(B, T, 32)``
* ``encode``: inputs ``f0_midi``, ``loudness_db`` ``(B, T)``, ``harmonic_db`` ``(B, T, 64)``,
  ``envelope_db`` ``(B, T, 24)``, ``noise_db`` ``(B, T, 32)``; output ``z`` ``(B, T, 16)``

(units: :mod:`morphbox.host_tools.model.network`). ``B`` and ``T`` are dynamic (-1 in the shape
signature); the runtime resizes inputs per call. Converted models reorder inputs and lose
output names (REFERENCE.md), so callers must use ``interpreter.get_signature_runner(key)``
with named arguments, as :mod:`morphbox.device.packs.neural` does.

Quantisation:

* ``float32``: weights and activations float32.
* ``int8``: full-integer post-training quantisation (``TFLITE_BUILTINS_INT8`` only, so the
  conversion fails rather than silently leaving float ops) calibrated on a representative
  dataset of real feature crops (and the z the encoder makes of them). The interface stays
  float32 (a quantize op at the inputs, a dequantize op at the outputs), so the device code
  is the same for both files.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from morphbox.host_tools.model.network import DECODE_INPUTS, ENCODE_INPUTS

QUANTIZATIONS = ("float32", "int8")
SIGNATURES = ("decode", "encode")


class ExportError(Exception):
    """Conversion failed or was asked something it cannot do."""


def _frozen_call(const_fn, structure):
    import tensorflow as tf

    def call(*args):
        out = tf.nest.pack_sequence_as(structure, tf.nest.flatten(const_fn(*args)))
        return {k: tf.identity(v, name=k) for k, v in out.items()}
    return call


def _module(encoder, decoder, signatures):
    import tensorflow as tf

    cfg_z = decoder.inputs[0].shape[-1]
    n_h, n_e, n_b = (encoder.inputs[i].shape[-1] for i in (2, 3, 4))
    spec = {"z": tf.TensorSpec([None, None, cfg_z], tf.float32, name="z"),
            "f0_midi": tf.TensorSpec([None, None], tf.float32, name="f0_midi"),
            "loudness_db": tf.TensorSpec([None, None], tf.float32, name="loudness_db"),
            "harmonic_db": tf.TensorSpec([None, None, n_h], tf.float32, name="harmonic_db"),
            "envelope_db": tf.TensorSpec([None, None, n_e], tf.float32, name="envelope_db"),
            "noise_db": tf.TensorSpec([None, None, n_b], tf.float32, name="noise_db")}
    module = tf.Module()
    module.encoder, module.decoder = encoder, decoder

    @tf.function(input_signature=[spec[k] for k in DECODE_INPUTS])
    def decode(z, f0_midi, loudness_db):
        out = decoder({"z": z, "f0_midi": f0_midi, "loudness_db": loudness_db})
        return {k: tf.identity(v, name=k) for k, v in out.items()}

    @tf.function(input_signature=[spec[k] for k in ENCODE_INPUTS])
    def encode(f0_midi, loudness_db, harmonic_db, envelope_db, noise_db):
        out = encoder({"f0_midi": f0_midi, "loudness_db": loudness_db,
                       "harmonic_db": harmonic_db, "envelope_db": envelope_db,
                       "noise_db": noise_db})
        return {"z": tf.identity(out["z"], name="z")}

    # Freeze the weights into constants: a saved model with shared variables converts to
    # VAR_HANDLE/READ_VARIABLE ops, which int8 calibration cannot run.
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )
    frozen = tf.Module()
    fns = {}
    for name, fn, keys in (("decode", decode, DECODE_INPUTS),
                           ("encode", encode, ENCODE_INPUTS)):
        if name not in signatures:
            continue
        live = fn.get_concrete_function()
        fns[name] = tf.function(_frozen_call(convert_variables_to_constants_v2(live),
                                             live.structured_outputs),
                                input_signature=[spec[k] for k in keys])
        setattr(frozen, name, fns[name])
    return frozen, {k: fns[k].get_concrete_function() for k in signatures}


def representative_samples(encoder, feats, n: int = 64, frames: int = 50, seed: int = 0):
    """``n`` calibration samples per signature from
    :class:`~morphbox.host_tools.model.dataset.Features`:
    a list of ``(signature_key, {input: (1, frames, ...) float32})``, random crops of random
    notes (seeded), with z from ``encoder`` for ``decode``."""
    from morphbox.kernels.pitch import hz_to_midi

    rng = np.random.default_rng(seed)
    frames = min(frames, feats.loudness_db.shape[1])
    out = []
    for _ in range(n):
        i = int(rng.integers(len(feats)))
        s = int(rng.integers(feats.loudness_db.shape[1] - frames + 1))
        enc = {"f0_midi": np.full((1, frames), hz_to_midi(feats.f0_hz[i]), np.float32),
               "loudness_db": feats.loudness_db[i:i + 1, s:s + frames].astype(np.float32),
               "harmonic_db": feats.harmonic_db[i:i + 1, s:s + frames].astype(np.float32),
               "envelope_db": feats.envelope_db[i:i + 1, s:s + frames].astype(np.float32),
               "noise_db": feats.noise_db[i:i + 1, s:s + frames].astype(np.float32)}
        z = np.asarray(encoder(enc)["z"], np.float32)
        out.append(("encode", enc))
        out.append(("decode", {"z": z, "f0_midi": enc["f0_midi"],
                               "loudness_db": enc["loudness_db"]}))
    return out


def export_tflite(encoder, decoder, path: str | os.PathLike, quantization: str = "float32",
                  representative=None, signatures=SIGNATURES) -> Path:
    """Convert to a ``.tflite`` file at ``path`` with the named ``signatures``; returns the path.

    ``representative`` (required for ``int8``): a list of ``(signature_key, {input: array})``
    as made by :func:`representative_samples`. Raises :class:`ExportError`.
    """
    import tensorflow as tf

    if quantization not in QUANTIZATIONS:
        raise ExportError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}")
    unknown = set(signatures) - set(SIGNATURES)
    if unknown or not signatures:
        raise ExportError(f"signatures must be a non-empty subset of {SIGNATURES}")
    module, concrete = _module(encoder, decoder, signatures)
    with tempfile.TemporaryDirectory() as tmp:
        tf.saved_model.save(module, tmp, signatures=concrete)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp,
                                                             signature_keys=list(signatures))
        if quantization == "int8":
            if not representative:
                raise ExportError("int8 export needs a representative dataset")
            samples = [s for s in representative if s[0] in signatures]

            def gen():
                yield from samples
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = gen
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        try:
            blob = converter.convert()
        except Exception as exc:  # the converter raises several unrelated types
            raise ExportError(f"TFLite conversion ({quantization}) failed: {exc}") from exc
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(blob)
    return path
