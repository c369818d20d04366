"""The timbre autoencoder: encoder (features -> z) and decoder (z, f0, loudness -> controls).

A DDSP-style autoencoder (Engel et al., "DDSP: Differentiable Digital Signal Processing",
ICLR 2020, sec. 4.2) made small and streaming-friendly for the Raspberry Pi: both networks are
stacks of *causal* dilated Conv1D layers with residual connections (no GRU: REFERENCE.md, a
Keras GRU needs a fixed batch and crashed int8 calibration), so a frame's output depends only
on the current and past frames and the whole thing converts to full-integer int8 TFLite.

Frames are the analysis frames of :mod:`morphbox.kernels.analysis` (the layout of
:mod:`morphbox.kernels.features`: 250 per second over the attack, then 50).

Encoder ``encode(f0_midi, loudness_db, harmonic_db, envelope_db, noise_db) -> z``:

* ``f0_midi`` ``(B, T)`` fractional MIDI pitch, ``loudness_db`` ``(B, T)`` A-weighted dB,
* ``harmonic_db`` ``(B, T, 64)`` partial levels in dB,
* ``envelope_db`` ``(B, T, 24)`` the harmonic envelope (partials above the 64th) in dB,
* ``noise_db`` ``(B, T, 32)`` noise band gains in dB (the pack's dB values, floor -120),
* ``z`` ``(B, T, 16)`` in -1..1 (tanh), one per frame.

Decoder ``decode(z, f0_midi, loudness_db) -> amplitude_db, harmonic_db, envelope_db,
noise_db``: each head is a sigmoid scaled to its range in :mod:`morphbox.kernels.synth`
(``AMPLITUDE_DB_RANGE`` etc.), so int8 outputs keep ~0.5 dB resolution over the whole range.
``amplitude_db`` is the sum of the 64 partials' amplitudes, ``harmonic_db`` their "normalised
sigmoid" distribution in the dB domain (:func:`controls_from_db` and
:func:`morphbox.device.engine.corners.decode_grid` normalise it), ``envelope_db`` relative to
``amplitude_db``. A softmax was not used because an int8 softmax output (scale 1/256) would
flush every partial more than ~48 dB below the strongest to zero.

Inputs are in physical units (MIDI pitch, dB) and scaled inside the models by constant
affine maps (int8-friendly), so callers never need the training statistics.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import keras
import tensorflow as tf

from morphbox.kernels.synth import (
    AMPLITUDE_DB_RANGE,
    ENVELOPE_DB_RANGE,
    HARMONIC_DB_RANGE,
    NOISE_DB_RANGE,
)

Z_DIMS = 16
N_HARMONICS = 64
N_ENVELOPE = 24
N_NOISE_BANDS = 32
DB_FLOOR = -120.0
DECODE_INPUTS = ("z", "f0_midi", "loudness_db")
DECODE_OUTPUTS = ("amplitude_db", "harmonic_db", "envelope_db", "noise_db")
ENCODE_INPUTS = ("f0_midi", "loudness_db", "harmonic_db", "envelope_db", "noise_db")
ENCODE_OUTPUTS = ("z",)


@dataclass(frozen=True)
class ModelConfig:
    """Network sizes. ``dilations`` cycle over the layers (receptive field of the decoder with
    the defaults: 1 + 2 * (1 + 2 + 4 + 8) = 31 frames = 0.62 s)."""

    z_dims: int = Z_DIMS
    harmonics: int = N_HARMONICS
    envelope_bands: int = N_ENVELOPE
    noise_bands: int = N_NOISE_BANDS
    encoder_channels: int = 64
    encoder_layers: int = 3
    decoder_channels: int = 96
    decoder_layers: int = 4
    kernel_size: int = 3
    dilations: tuple = (1, 2, 4, 8)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        d = dict(d)
        if "dilations" in d:
            d["dilations"] = tuple(d["dilations"])
        return cls(**d)


def _scale(x, lo: float, hi: float, name: str):
    """Affine map of ``[lo, hi]`` to ``[0, 1]`` (a constant multiply-add)."""
    return keras.layers.Lambda(lambda t: (t - lo) / (hi - lo), name=name)(x)


def _expand(x, name: str):
    return keras.layers.Reshape((-1, 1), name=name)(x)


def _conv_stack(x, channels: int, layers: int, config: ModelConfig, prefix: str):
    x = keras.layers.Dense(channels, activation="relu", name=f"{prefix}_in")(x)
    for i in range(layers):
        d = config.dilations[i % len(config.dilations)]
        y = keras.layers.Conv1D(channels, config.kernel_size, padding="causal", dilation_rate=d,
                                activation="relu", name=f"{prefix}_conv{i}")(x)
        x = keras.layers.Add(name=f"{prefix}_res{i}")([x, y])
    return x


def _db_head(x, units: int, db_range: tuple[float, float], name: str):
    lo, hi = db_range
    y = keras.layers.Dense(units, activation="sigmoid", name=f"{name}_sigmoid")(x)
    return keras.layers.Lambda(lambda t: lo + (hi - lo) * t, name=name)(y)


def build_encoder(config: ModelConfig = ModelConfig()) -> keras.Model:
    """Encoder Keras model (inputs/outputs named as in the module docstring; any B and T)."""
    f0 = keras.Input((None,), name="f0_midi")
    loud = keras.Input((None,), name="loudness_db")
    harm = keras.Input((None, config.harmonics), name="harmonic_db")
    env = keras.Input((None, config.envelope_bands), name="envelope_db")
    noise = keras.Input((None, config.noise_bands), name="noise_db")
    x = keras.layers.Concatenate(name="enc_features")([
        _scale(_expand(f0, "enc_f0_x"), 0.0, 127.0, "enc_f0"),
        _scale(_expand(loud, "enc_loud_x"), DB_FLOOR, 0.0, "enc_loud"),
        _scale(harm, DB_FLOOR, 0.0, "enc_harm"),
        _scale(env, DB_FLOOR, 0.0, "enc_env"),
        _scale(noise, DB_FLOOR, 0.0, "enc_noise"),
    ])
    x = _conv_stack(x, config.encoder_channels, config.encoder_layers, config, "enc")
    z = keras.layers.Dense(config.z_dims, activation="tanh", name="z")(x)
    return keras.Model([f0, loud, harm, env, noise], {"z": z}, name="encoder")


def build_decoder(config: ModelConfig = ModelConfig()) -> keras.Model:
    """Decoder Keras model (inputs/outputs named as in the module docstring; any B and T)."""
    z = keras.Input((None, config.z_dims), name="z")
    f0 = keras.Input((None,), name="f0_midi")
    loud = keras.Input((None,), name="loudness_db")
    x = keras.layers.Concatenate(name="dec_features")([
        z,
        _scale(_expand(f0, "dec_f0_x"), 0.0, 127.0, "dec_f0"),
        _scale(_expand(loud, "dec_loud_x"), DB_FLOOR, 0.0, "dec_loud"),
    ])
    x = _conv_stack(x, config.decoder_channels, config.decoder_layers, config, "dec")
    amp = _db_head(x, 1, AMPLITUDE_DB_RANGE, "amplitude_db_x")
    amp = keras.layers.Reshape((-1,), name="amplitude_db")(amp)
    harm = _db_head(x, config.harmonics, HARMONIC_DB_RANGE, "harmonic_db")
    env = _db_head(x, config.envelope_bands, ENVELOPE_DB_RANGE, "envelope_db")
    noise = _db_head(x, config.noise_bands, NOISE_DB_RANGE, "noise_db")
    return keras.Model([z, f0, loud],
                       {"amplitude_db": amp, "harmonic_db": harm, "envelope_db": env,
                        "noise_db": noise}, name="decoder")


def frames_from_outputs(outputs: dict):
    """Decoder outputs -> ``(partials (B, T, K), envelope (B, T, E), noise (B, T, B'))`` dB,
    the layout of the features (TF twin of :func:`morphbox.device.engine.corners.decode_grid`):
    partial k = amplitude + harmonic_db_k - 20 log10(sum_j 10^(harmonic_db_j / 20)),
    envelope = amplitude + envelope_db."""
    h = outputs["harmonic_db"]
    amp = outputs["amplitude_db"][..., None]
    ln10_20 = tf.math.log(10.0) / 20.0
    total = tf.reduce_logsumexp(h * ln10_20, axis=-1, keepdims=True) / ln10_20
    return amp + h - total, amp + outputs["envelope_db"], outputs["noise_db"]


def count_params(model: keras.Model) -> int:
    return int(sum(int(tf.size(w)) for w in model.trainable_weights))
