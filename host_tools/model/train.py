"""Training of the timbre autoencoder through differentiable synthesis.

Each step takes a batch of random crops (``crop_frames`` frames) of training notes, encodes
their features to z, decodes (z, f0, loudness) to synthesis controls, renders them with
:mod:`morphbox.host_tools.model.ddsp_tf`, and compares the audio with the analysis-resynthesis of
the
*true* features rendered with the same white noise (so the noise part is compared like for
like), by the multi-resolution spectral loss (:mod:`morphbox.host_tools.model.losses`), plus
``feature_weight`` x the mean absolute error of the partial and noise levels in dB / 120
(this term speeds up the start of training), plus ``loudness_weight`` x the mean absolute
difference of the frame energies in dB (:func:`morphbox.host_tools.model.losses.loudness_loss`; it
keeps weak partials and decays from coming out too loud).

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
from morphbox.kernels.pitch import hz_to_midi
from morphbox.kernels.synth import hop_size

HOP = hop_size()


LR_SCHEDULES = ("constant", "cosine", "exponential")


class TrainError(Exception):
    """Bad training configuration or run directory."""


@dataclass(frozen=True)
class TrainConfig:
    """Training settings (a TOML/JSON file with these keys; ``[model]`` for :class:`ModelConfig`).

    ``dataset``: dataset directory (:func:`morphbox.host_tools.model.dataset.build_dataset`).
    ``run_dir``: where checkpoints, history and weights go. ``steps``: total optimiser steps
    (a resumed run continues up to this). ``crop_frames``: frames per training example.
    ``fft_sizes``: of the spectral loss (each <= crop_frames * 320 samples).
    ``lr_schedule``: ``"constant"``, ``"cosine"`` or ``"exponential"`` (decay to ``lr_final``
    x ``learning_rate`` at ``steps``). ``keep_best``: the final weights are those of the
    checkpoint with the lowest validation loss. ``loudness_weight``: weight of the frame
    energy (dB) term of the loss.
    """

    dataset: str = "out/dataset"
    run_dir: str = "out/model"
    steps: int = 3000
    batch_size: int = 8
    crop_frames: int = 64
    learning_rate: float = 1e-3
    seed: int = 0
    feature_weight: float = 0.5
    fft_sizes: tuple = (1024, 512, 256, 128, 64)
    log_every: int = 10
    checkpoint_every: int = 200
    valid_batches: int = 4
    lr_schedule: str = "constant"
    lr_final: float = 0.1
    keep_best: bool = False
    loudness_weight: float = 0.0
    model: ModelConfig = field(default_factory=ModelConfig)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["fft_sizes"] = list(self.fft_sizes)
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
        if "fft_sizes" in d:
            d["fft_sizes"] = tuple(d["fft_sizes"])
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
        self.f0_hz = feats.f0_hz
        self.f0_midi = hz_to_midi(feats.f0_hz).astype(np.float32)
        self.loudness_db = feats.loudness_db
        self.harmonic_db = feats.harmonic_db
        self.noise_db = feats.noise_db
        self.amp, self.dist, self.noise_mag = feats.controls()
        self.n, self.frames = feats.loudness_db.shape

    def batch(self, rng: np.random.Generator, size: int, crop: int) -> dict:
        if crop > self.frames:
            raise TrainError(f"crop_frames {crop} > {self.frames} frames per note")
        idx = rng.integers(self.n, size=size)
        start = rng.integers(0, self.frames - crop + 1, size=size)
        win = start[:, None] + np.arange(crop)[None, :]
        rows = idx[:, None]

        def tile(v):
            return np.repeat(v[idx, None], crop, axis=1)
        return {"f0_hz": tile(self.f0_hz), "f0_midi": tile(self.f0_midi),
                "loudness_db": self.loudness_db[rows, win],
                "harmonic_db": self.harmonic_db[rows, win],
                "noise_db": self.noise_db[rows, win],
                "amplitude": self.amp[rows, win], "distribution": self.dist[rows, win],
                "noise_magnitudes": self.noise_mag[rows, win],
                "noise": rng.standard_normal((size, crop * HOP)).astype(np.float32)}


def make_loss_fn(encoder, decoder, config: TrainConfig):
    """``loss(batch) -> (total, spectral, feature)`` scalars for a batch of :class:`_Data`."""
    import tensorflow as tf

    from morphbox.host_tools.model import ddsp_tf
    from morphbox.host_tools.model.losses import loudness_loss, spectral_loss
    from morphbox.host_tools.model.network import controls_from_db

    def loss(b):
        b = {k: tf.convert_to_tensor(v) for k, v in b.items()}
        z = encoder({k: b[k] for k in ("f0_midi", "loudness_db", "harmonic_db",
                                        "noise_db")})["z"]
        out = decoder({"z": z, "f0_midi": b["f0_midi"], "loudness_db": b["loudness_db"]})
        amp, dist, noise = controls_from_db(out)
        pred = ddsp_tf.synthesize(b["f0_hz"], amp, dist, noise, b["noise"])
        target = tf.stop_gradient(ddsp_tf.synthesize(
            b["f0_hz"], b["amplitude"], b["distribution"], b["noise_magnitudes"], b["noise"]))
        spec = spectral_loss(target, pred, config.fft_sizes)
        part_db = out["amplitude_db"][..., None] + 20.0 * tf.math.log(dist + 1e-12) / np.log(10)
        part_db = tf.maximum(part_db, -120.0)
        feat = (tf.reduce_mean(tf.abs(part_db - b["harmonic_db"]))
                + tf.reduce_mean(tf.abs(tf.maximum(out["noise_db"], -120.0) - b["noise_db"])))
        feat = feat / 120.0
        total = spec + config.feature_weight * feat
        if config.loudness_weight:
            total += config.loudness_weight * loudness_loss(target, pred, HOP)
        return total, spec, feat

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
    ``{"step", "loss", "spectral", "feature", "seconds"}`` plus ``"valid_loss"`` entries at
    checkpoints when the dataset has a validation split. Raises :class:`TrainError` and
    :class:`morphbox.host_tools.model.dataset.DatasetError`."""
    import keras
    import tensorflow as tf
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from morphbox.host_tools.model.dataset import DatasetError, load_split
    from morphbox.host_tools.model.network import build_decoder, build_encoder

    if max(config.fft_sizes) > config.crop_frames * HOP:
        raise TrainError(f"fft size {max(config.fft_sizes)} > crop of "
                         f"{config.crop_frames * HOP} samples")
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
            total, spec, feat = loss_fn(b)
        grads = tape.gradient(total, variables)
        optimizer.apply_gradients(zip(grads, variables))
        return total, spec, feat

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
            total, spec, feat = train_step(data.batch(rng, config.batch_size,
                                                      config.crop_frames))
            step_var.assign(step + 1)
            done = step + 1
            if done % config.log_every == 0 or done == config.steps or done == 1:
                entry = {"step": done, "loss": float(total), "spectral": float(spec),
                         "feature": float(feat), "seconds": round(time.time() - t0, 2)}
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
