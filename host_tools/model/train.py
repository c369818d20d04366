"""Training of the timbre autoencoder on full-band features.

Each step takes a batch of random crops (``crop_frames`` frames) of training notes, encodes
their features to z, decodes (z, f0, loudness) to features again and compares the two in the
feature domain (dB), where the analysis lives:

* ``feature_weight`` x the mean absolute dB error over every partial level, envelope band and
  noise band, each frame's values floored ``FLOOR_DB`` (80 dB) under its strongest, so what
  cannot be heard costs nothing (the log term of DDSP's spectral loss, taken on the features);
* ``loudness_weight`` x the mean absolute dB error of each frame's total power (every partial
  up to 20 kHz through the envelope, and the noise: :func:`morphbox.kernels.features.
  channel_weights`), which keeps decays and attacks at their level.

Why not DDSP's audio-domain loss any more: the features now describe the note at 48 kHz with
up to 611 partials per frame and 250 frames/s over the attack; synthesising both the target
and the prediction at 48 kHz every step would cost ~10x the step and say the same thing (the
target was only ever the analysis-resynthesis of these features).

The learning rate follows ``lr_schedule``: ``"constant"``, ``"cosine"`` (cosine decay from
``learning_rate`` to ``lr_final`` x ``learning_rate`` at ``steps``) or ``"exponential"``
(geometric decay to the same end value); it is a function of the optimizer's step counter,
which the checkpoints hold, so a resumed run continues on the same curve (as long as
``steps`` is unchanged).

The dataset holds features, not audio (see :mod:`morphbox.host_tools.model.dataset`); the target is
therefore the analysis-resynthesis, which is also the bound the evaluation compares against.

Reproducible and resumable: the batch and noise of step ``n`` are drawn from
``numpy.random.default_rng([seed, n])``, weights are initialised under
``keras.utils.set_random_seed(seed)``, and ``run_dir/checkpoints`` (a ``tf.train.
CheckpointManager`` of encoder, decoder, optimizer and step, every ``checkpoint_every``
steps and at the end) is restored when present, so an interrupted run continues where it
stopped. ``run_dir`` also receives ``config.json``, ``history.json`` and the final
``encoder.weights.h5`` / ``decoder.weights.h5``. With ``keep_best`` (and a validation split)
the weights of the checkpoint with the lowest validation loss are kept in
``best_encoder.weights.h5`` / ``best_decoder.weights.h5`` (their step and loss in
``best.json``) and become the final ``encoder.weights.h5`` / ``decoder.weights.h5`` (what
:func:`load_models` and the export use); the last step's weights are then kept in
``last_encoder.weights.h5`` / ``last_decoder.weights.h5``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from morphbox.host_tools.model.network import ModelConfig
from morphbox.kernels.features import channel_weights
from morphbox.kernels.pitch import hz_to_midi, midi_to_hz

FLOOR_DB = 80.0  # each frame's values are floored this far under its strongest


LR_SCHEDULES = ("constant", "cosine", "exponential")


class TrainError(Exception):
    """Bad training configuration or run directory."""


@dataclass(frozen=True)
class TrainConfig:
    """Training settings (a TOML/JSON file with these keys; ``[model]`` for :class:`ModelConfig`).

    ``dataset``: dataset directory (:func:`morphbox.host_tools.model.dataset.build_dataset`).
    ``run_dir``: where checkpoints, history and weights go. ``steps``: total optimiser steps
    (a resumed run continues up to this). ``crop_frames``: frames per training example.
    ``feature_weight``: weight of the per-channel dB error (module docstring).
    ``lr_schedule``: ``"constant"``, ``"cosine"`` or ``"exponential"`` (decay to ``lr_final``
    x ``learning_rate`` at ``steps``). ``keep_best``: the final weights are those of the
    checkpoint with the lowest validation loss. ``loudness_weight``: weight of the frame
    power (dB) term of the loss.
    """

    dataset: str = "out/dataset"
    run_dir: str = "out/model"
    steps: int = 3000
    batch_size: int = 8
    crop_frames: int = 64
    learning_rate: float = 1e-3
    seed: int = 0
    feature_weight: float = 1.0
    log_every: int = 10
    checkpoint_every: int = 200
    valid_batches: int = 4
    lr_schedule: str = "constant"
    lr_final: float = 0.1
    keep_best: bool = False
    loudness_weight: float = 0.2
    model: ModelConfig = field(default_factory=ModelConfig)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["model"] = self.model.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        d = dict(d)
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise TrainError(f"unknown training setting(s): {sorted(unknown)}")
        if "model" in d:
            try:
                d["model"] = ModelConfig.from_dict(d["model"])
            except TypeError as exc:
                raise TrainError(f"bad [model] settings: {exc}") from exc
        config = cls(**d)
        if config.lr_schedule not in LR_SCHEDULES:
            raise TrainError(f"lr_schedule {config.lr_schedule!r} is not one of "
                             f"{', '.join(LR_SCHEDULES)}")
        return config


def load_config(path: str | os.PathLike, **overrides) -> TrainConfig:
    """Read a ``.toml`` or ``.json`` training config; ``overrides`` replace keys.
    Raises :class:`TrainError` for an unreadable file or unknown keys."""
    p = Path(path)
    try:
        text = p.read_text()
        d = tomllib.loads(text) if p.suffix.lower() == ".toml" else json.loads(text)
    except (OSError, ValueError) as exc:
        raise TrainError(f"cannot read training config {p}: {exc}") from exc
    d.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(d)


class _Data:
    """Training notes as arrays ready for batching (float32)."""

    def __init__(self, feats):
        self.f0_midi = hz_to_midi(feats.f0_hz).astype(np.float32)
        self.loudness_db = feats.loudness_db
        self.frames = np.concatenate([feats.harmonic_db, feats.envelope_db, feats.noise_db],
                                     axis=-1)
        self.k, self.e = feats.harmonic_db.shape[-1], feats.envelope_db.shape[-1]
        self.n, self.n_frames = feats.loudness_db.shape

    def batch(self, rng: np.random.Generator, size: int, crop: int) -> dict:
        if crop > self.n_frames:
            raise TrainError(f"crop_frames {crop} > {self.n_frames} frames per note")
        idx = rng.integers(self.n, size=size)
        start = rng.integers(0, self.n_frames - crop + 1, size=size)
        win = start[:, None] + np.arange(crop)[None, :]
        rows = idx[:, None]
        frames = self.frames[rows, win]
        k, e = self.k, self.e
        return {"f0_midi": np.repeat(self.f0_midi[idx, None], crop, axis=1),
                "loudness_db": self.loudness_db[rows, win],
                "harmonic_db": frames[..., :k], "envelope_db": frames[..., k:k + e],
                "noise_db": frames[..., k + e:]}


def make_loss_fn(encoder, decoder, config: TrainConfig):
    """``loss(batch) -> (total, feature, power)`` scalars for a batch of :class:`_Data`."""
    import tensorflow as tf

    from morphbox.host_tools.model.network import frames_from_outputs
    m = config.model
    # power of a 0 dB channel at each MIDI pitch (rounded): the frame-power term's weights
    table = tf.constant(channel_weights(midi_to_hz(np.arange(128)), m.harmonics,
                                        m.envelope_bands, m.noise_bands))
    ln10_10 = float(np.log(10.0) / 10.0)

    def power_db(x, w):
        return tf.reduce_logsumexp(x * ln10_10 + tf.math.log(w + 1e-30), axis=-1) / ln10_10

    def loss(b):
        b = {k: tf.convert_to_tensor(v) for k, v in b.items()}
        z = encoder({k: b[k] for k in ("f0_midi", "loudness_db", "harmonic_db", "envelope_db",
                                        "noise_db")})["z"]
        out = decoder({"z": z, "f0_midi": b["f0_midi"], "loudness_db": b["loudness_db"]})
        pred = tf.concat(frames_from_outputs(out), axis=-1)
        target = tf.concat([b["harmonic_db"], b["envelope_db"], b["noise_db"]], axis=-1)
        floor = tf.reduce_max(target, axis=-1, keepdims=True) - FLOOR_DB
        feat = tf.reduce_mean(tf.abs(tf.maximum(pred, floor) - tf.maximum(target, floor)))
        pitch = tf.clip_by_value(tf.cast(tf.round(b["f0_midi"]), tf.int32), 0, 127)
        w = tf.gather(table, pitch)  # (B, T, C)
        pt, pp = power_db(target, w), power_db(pred, w)
        low = tf.reduce_max(pt, axis=-1, keepdims=True) - FLOOR_DB
        power = tf.reduce_mean(tf.abs(tf.maximum(pp, low) - tf.maximum(pt, low)))
        total = config.feature_weight * feat + config.loudness_weight * power
        return total, feat, power

    return loss


def learning_rate(config: TrainConfig):
    """The learning rate of ``config``: a float or a keras ``LearningRateSchedule``."""
    import keras
    lr, end = config.learning_rate, config.lr_final
    if config.lr_schedule == "constant":
        return lr
    if config.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(lr, max(config.steps, 1), alpha=end)
    if config.lr_schedule == "exponential":
        return keras.optimizers.schedules.ExponentialDecay(lr, max(config.steps, 1), end)
    raise TrainError(f"lr_schedule {config.lr_schedule!r} is not one of "
                     f"{', '.join(LR_SCHEDULES)}")


def _read_history(path: Path, upto: int) -> list[dict]:
    if not path.exists():
        return []
    return [h for h in json.loads(path.read_text()) if h["step"] <= upto]


def train(config: TrainConfig, progress: bool = True) -> list[dict]:
    """Train (or resume) per ``config``; returns the history: one dict per logged step
    ``{"step", "loss", "feature", "power", "seconds"}`` plus ``"valid_loss"`` entries at
    checkpoints when the dataset has a validation split. Raises :class:`TrainError` and
    :class:`morphbox.host_tools.model.dataset.DatasetError`."""
    import keras
    import tensorflow as tf
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from morphbox.host_tools.model.dataset import DatasetError, load_split
    from morphbox.host_tools.model.network import build_decoder, build_encoder

    run = Path(config.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    saved = run / "config.json"
    if saved.exists():
        old = json.loads(saved.read_text())
        diff = sorted(k for k in old if k not in ("steps", "run_dir")
                      and old[k] != config.to_dict().get(k))
        if diff:
            raise TrainError(f"{run} holds a run with different settings ({', '.join(diff)}); "
                             "use another run_dir")
    saved.write_text(json.dumps(config.to_dict(), indent=1))
    data = _Data(load_split(config.dataset, "train"))
    try:
        valid = _Data(load_split(config.dataset, "valid"))
    except DatasetError:
        valid = None

    keras.utils.set_random_seed(config.seed)
    encoder, decoder = build_encoder(config.model), build_decoder(config.model)
    variables = encoder.trainable_variables + decoder.trainable_variables
    optimizer = keras.optimizers.Adam(learning_rate(config))
    optimizer.build(variables)
    step_var = tf.Variable(0, dtype=tf.int64, trainable=False)
    ckpt = tf.train.Checkpoint(encoder=encoder, decoder=decoder, optimizer=optimizer,
                               step=step_var)
    manager = tf.train.CheckpointManager(ckpt, str(run / "checkpoints"), max_to_keep=2)
    if manager.latest_checkpoint:
        ckpt.restore(manager.latest_checkpoint).assert_existing_objects_matched()
    start = int(step_var.numpy())
    history = _read_history(run / "history.json", start)
    best_path = run / "best.json"
    best = json.loads(best_path.read_text()) if best_path.exists() else None
    if best is not None and best["step"] > start:
        best = None
    loss_fn = make_loss_fn(encoder, decoder, config)

    @tf.function(reduce_retracing=True)
    def train_step(b):
        with tf.GradientTape() as tape:
            total, feat, power = loss_fn(b)
        grads = tape.gradient(total, variables)
        optimizer.apply_gradients(zip(grads, variables))
        return total, feat, power

    @tf.function(reduce_retracing=True)
    def eval_step(b):
        return loss_fn(b)[0]

    def valid_loss() -> float:
        rng = np.random.default_rng([config.seed, 2**31])  # the same batches every time
        return float(np.mean([eval_step(valid.batch(rng, config.batch_size, config.crop_frames))
                              for _ in range(config.valid_batches)]))

    t0 = time.time()
    columns = (*Progress.get_default_columns()[:1], BarColumn(), MofNCompleteColumn(),
               TimeRemainingColumn())
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("training", total=config.steps, completed=start)
        for step in range(start, config.steps):
            rng = np.random.default_rng([config.seed, step])
            total, feat, power = train_step(data.batch(rng, config.batch_size,
                                                      config.crop_frames))
            step_var.assign(step + 1)
            done = step + 1
            if done % config.log_every == 0 or done == config.steps or done == 1:
                entry = {"step": done, "loss": float(total), "feature": float(feat),
                         "power": float(power), "seconds": round(time.time() - t0, 2)}
                history.append(entry)
                bar.update(task, description=f"training  loss {entry['loss']:.4f}")
            if done % config.checkpoint_every == 0 or done == config.steps:
                if valid is not None:
                    vl = valid_loss()
                    history.append({"step": done, "valid_loss": vl})
                    if config.keep_best and (best is None or vl < best["valid_loss"]):
                        encoder.save_weights(run / "best_encoder.weights.h5")
                        decoder.save_weights(run / "best_decoder.weights.h5")
                        best = {"step": done, "valid_loss": vl}
                        best_path.write_text(json.dumps(best))
                manager.save(checkpoint_number=done)
                (run / "history.json").write_text(json.dumps(history, indent=1))
            bar.advance(task)
    if config.keep_best and best is not None:
        encoder.save_weights(run / "last_encoder.weights.h5")
        decoder.save_weights(run / "last_decoder.weights.h5")
        for name in ("encoder", "decoder"):
            shutil.copyfile(run / f"best_{name}.weights.h5", run / f"{name}.weights.h5")
    else:
        encoder.save_weights(run / "encoder.weights.h5")
        decoder.save_weights(run / "decoder.weights.h5")
    (run / "history.json").write_text(json.dumps(history, indent=1))
    return history


def load_models(run_dir: str | os.PathLike):
    """``(encoder, decoder, TrainConfig)`` of a finished run (weights from ``run_dir``)."""
    from morphbox.host_tools.model.network import build_decoder, build_encoder
    run = Path(run_dir)
    try:
        config = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    except (OSError, ValueError) as exc:
        raise TrainError(f"{run}: no readable config.json ({exc})") from exc
    encoder, decoder = build_encoder(config.model), build_decoder(config.model)
    for model, name in ((encoder, "encoder"), (decoder, "decoder")):
        path = run / f"{name}.weights.h5"
        if not path.exists():
            raise TrainError(f"{path} is missing: the run has not finished")
        model.load_weights(path)
    return encoder, decoder, config
