"""Tests of host_tools/model: network, dataset, training, TFLite export, evaluation.

One tiny dataset (4 FluidR3_GM programs x 3 pitches) and one tiny training run (a few
seconds) are shared by the module; everything asserts on real outputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from morphbox.device.packs.neural import frames_from_db  # noqa: E402
from morphbox.host_tools.model.dataset import (  # noqa: E402
    DatasetConfig,
    DatasetError,
    build_dataset,
    load_split,
    read_index,
)
from morphbox.host_tools.model.export import (  # noqa: E402
    ExportError,
    export_tflite,
    representative_samples,
)
from morphbox.host_tools.model.network import (  # noqa: E402
    ModelConfig,
    build_decoder,
    build_encoder,
    count_params,
    frames_from_outputs,
)
from morphbox.host_tools.model.train import (  # noqa: E402
    TrainConfig,
    TrainError,
    _Data,
    load_config,
    load_models,
    make_loss_fn,
    train,
)

TINY_MODEL = ModelConfig(encoder_channels=16, encoder_layers=1, decoder_channels=32,
                         decoder_layers=2)
STEPS = 30


def _tiny_config(dataset: Path, run_dir: Path, **kw) -> TrainConfig:
    base = dict(dataset=str(dataset), run_dir=str(run_dir), steps=STEPS, batch_size=4,
                crop_frames=25, learning_rate=3e-3, log_every=5, checkpoint_every=15,
                valid_batches=1, model=TINY_MODEL)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, skip_or_fail) -> Path:
    from morphbox.host_tools.sources import SourceError, find_soundfont
    try:
        find_soundfont()
    except SourceError as exc:
        skip_or_fail(str(exc))
    out = tmp_path_factory.mktemp("dataset")
    # Piano, Cello, Flute, Church Organ; pitch 108 is outside the cello's range
    return build_dataset(out, DatasetConfig(programs=(0, 42, 73, 19), pitches=(48, 60, 72),
                                            velocities=(100,), shard_notes=5, seed=1),
                         progress=False)


@pytest.fixture(scope="module")
def run(dataset, tmp_path_factory):
    config = _tiny_config(dataset, tmp_path_factory.mktemp("run"))
    return config, train(config, progress=False)


@pytest.fixture(scope="module")
def exported(run, dataset, tmp_path_factory):
    config, _ = run
    encoder, decoder, _ = load_models(config.run_dir)
    feats = load_split(dataset, "train")
    rep = representative_samples(encoder, feats, n=16, frames=25)
    out = tmp_path_factory.mktemp("tflite")
    return {"encoder": encoder, "decoder": decoder, "feats": feats,
            "float32": export_tflite(encoder, decoder, out / "model_f32.tflite"),
            "int8": export_tflite(encoder, decoder, out / "model_int8.tflite", "int8", rep)}


# ------------------------------------------------------------------------------ network


def test_frames_from_outputs_tf_and_numpy_agree():
    """The decoder's outputs become features the same way in training (TF) and on the device
    (numpy): partials = amplitude x normalised distribution, envelope = amplitude + relative."""
    rng = np.random.default_rng(0)
    out = {"amplitude_db": rng.uniform(-60, 0, (2, 5)).astype(np.float32),
           "harmonic_db": rng.uniform(-100, 0, (2, 5, 64)).astype(np.float32),
           "envelope_db": rng.uniform(-100, 10, (2, 5, 24)).astype(np.float32),
           "noise_db": rng.uniform(-100, 0, (2, 5, 32)).astype(np.float32)}
    tf_frames = np.concatenate([x.numpy() for x in frames_from_outputs(
        {k: tf.constant(v) for k, v in out.items()})], axis=-1)
    np.testing.assert_allclose(tf_frames, frames_from_db(out), atol=1e-3)
    partials = 10 ** (frames_from_db(out)[..., :64] / 20)
    np.testing.assert_allclose(20 * np.log10(partials.sum(-1)), out["amplitude_db"], atol=1e-3)


def test_default_network_size_and_shapes():
    enc, dec = build_encoder(), build_decoder()
    total = count_params(enc) + count_params(dec)
    assert 100_000 <= total <= 250_000
    f = np.full((2, 30), 60.0, np.float32)
    z = enc({"f0_midi": f, "loudness_db": f - 80, "harmonic_db": np.full((2, 30, 64), -50.0),
             "envelope_db": np.full((2, 30, 24), -60.0),
             "noise_db": np.full((2, 30, 32), -70.0)})["z"]
    assert z.shape == (2, 30, 16) and float(tf.reduce_max(tf.abs(z))) <= 1.0
    out = dec({"z": z, "f0_midi": tf.constant(f), "loudness_db": tf.constant(f - 80)})
    assert out["amplitude_db"].shape == (2, 30)
    assert out["harmonic_db"].shape == (2, 30, 64) and out["noise_db"].shape == (2, 30, 32)
    assert out["envelope_db"].shape == (2, 30, 24)
    assert float(tf.reduce_max(out["harmonic_db"])) <= 0.0


def test_decoder_is_causal():
    dec = build_decoder(TINY_MODEL)
    rng = np.random.default_rng(3)
    z = rng.uniform(-1, 1, (1, 40, 16)).astype(np.float32)
    f = np.full((1, 40), 60.0, np.float32)
    a = dec({"z": z, "f0_midi": f, "loudness_db": f - 80})["harmonic_db"].numpy()
    z2 = z.copy()
    z2[:, 30:] = 0.0  # change the future only
    b = dec({"z": z2, "f0_midi": f, "loudness_db": f - 80})["harmonic_db"].numpy()
    np.testing.assert_array_equal(a[:, :30], b[:, :30])
    assert np.abs(a[:, 30:] - b[:, 30:]).max() > 0


# ------------------------------------------------------------------------------ dataset


def test_dataset_is_split_by_instrument(dataset):
    index = read_index(dataset)
    names = [i["name"] for i in index["instruments"]]
    assert names == ["Acoustic Grand Piano", "Cello", "Flute", "Church Organ"]
    splits = [i["split"] for i in index["instruments"]]
    assert sorted(set(splits)) == ["test", "train", "valid"]
    assert len(index["shards"]) == 3  # 12 notes, 5 per shard
    frames = len(index["frame_times"])  # whole notes: attack at 1000/s, 250/s, then 50/s
    assert frames == 20 + 20 + 216 and index["sample_rate"] == 48000
    for split in ("train", "valid", "test"):
        feats = load_split(dataset, split)
        insts = set(feats.instrument.tolist())
        assert insts == {i for i, s in enumerate(splits) if s == split}
        assert feats.harmonic_db.shape == (len(feats), frames, 64)
        assert feats.envelope_db.shape == (len(feats), frames, 24)
        assert feats.noise_db.shape == (len(feats), frames, 32)
    every = load_split(dataset, "all")
    assert len(every) == 12 and sorted(set(every.pitch.tolist())) == [48, 60, 72]
    # one gain per instrument: its loudest note's partials reach near 0 dBFS, its others keep
    # their level relative to it (the piano's notes differ by several dB)
    for inst in range(4):
        peak = every.harmonic_db[every.instrument == inst].max(axis=(1, 2))
        assert -12.0 < peak.max() <= 0.5
    piano = every.loudness_db[every.instrument == 0].max(axis=1)
    assert np.ptp(piano) > 2.0
    with pytest.raises(DatasetError, match="unknown split"):
        load_split(dataset, "training")


def test_dataset_rejects_bad_settings(tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset setting"):
        DatasetConfig.from_dict({"programs": [0], "pitchs": [60]})
    with pytest.raises(DatasetError, match="0..127"):
        build_dataset(tmp_path, DatasetConfig(programs=(200,)), progress=False)
    with pytest.raises(DatasetError, match="dataset index"):
        read_index(tmp_path)


# ------------------------------------------------------------------------------ training


def _fixed_loss(encoder, decoder, config, dataset) -> float:
    data = _Data(load_split(dataset, "train"))
    loss = make_loss_fn(encoder, decoder, config)
    rng = np.random.default_rng(123)
    return float(np.mean([loss(data.batch(rng, 4, config.crop_frames))[0] for _ in range(3)]))


def test_training_lowers_the_loss(run, dataset):
    import keras
    config, history = run
    steps = [h for h in history if "loss" in h]
    assert steps[-1]["step"] == STEPS
    keras.utils.set_random_seed(config.seed)
    fresh = build_encoder(config.model), build_decoder(config.model)  # the initial weights
    trained = load_models(config.run_dir)[:2]
    before = _fixed_loss(*fresh, config, dataset)
    after = _fixed_loss(*trained, config, dataset)
    assert after < 0.8 * before, (before, after)
    run_dir = Path(config.run_dir)
    assert json.loads((run_dir / "history.json").read_text()) == history
    assert any("valid_loss" in h for h in history)


def test_training_resumes_where_it_stopped(run, dataset, tmp_path):
    config, history = run
    half = _tiny_config(dataset, tmp_path, steps=STEPS // 2)
    first = train(half, progress=False)
    assert first[-1]["step"] == STEPS // 2
    resumed = train(_tiny_config(dataset, tmp_path), progress=False)
    assert [h["step"] for h in resumed if "loss" in h] == \
        [h["step"] for h in history if "loss" in h]
    # the resumed run continues from the checkpoint with the same batches
    a = load_models(tmp_path)[1].get_weights()
    b = load_models(config.run_dir)[1].get_weights()
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-5)


def test_training_refuses_a_run_dir_with_other_settings(run, dataset):
    config, _ = run
    with pytest.raises(TrainError, match="different settings"):
        train(_tiny_config(dataset, config.run_dir, learning_rate=1e-4), progress=False)


def test_config_file_toml_and_json(tmp_path):
    (tmp_path / "t.toml").write_text(
        'dataset = "d"\nsteps = 7\nloudness_weight = 0.5\n[model]\ndecoder_channels = 48\n')
    cfg = load_config(tmp_path / "t.toml", run_dir="r")
    assert (cfg.steps, cfg.run_dir, cfg.loudness_weight, cfg.model.decoder_channels) == \
        (7, "r", 0.5, 48)
    (tmp_path / "t.json").write_text(json.dumps(cfg.to_dict()))
    assert load_config(tmp_path / "t.json") == cfg
    (tmp_path / "bad.toml").write_text("stepz = 3\n")
    with pytest.raises(TrainError, match="stepz"):
        load_config(tmp_path / "bad.toml")


# ------------------------------------------------------------------------------ export


def _runner(path, key):
    from ai_edge_litert.interpreter import Interpreter
    return Interpreter(model_path=str(path)).get_signature_runner(key)


def _decode_inputs(exported, n=3, frames=40):
    feats = exported["feats"]
    samples = [s for k, s in representative_samples(exported["encoder"], feats, n=n,
                                                     frames=frames, seed=9) if k == "decode"]
    return {k: np.concatenate([s[k] for s in samples]) for k in samples[0]}


def test_tflite_float32_matches_keras(exported):
    inputs = _decode_inputs(exported)
    want = {k: v.numpy() for k, v in exported["decoder"](inputs).items()}
    got = _runner(exported["float32"], "decode")(**inputs)
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k].shape == want[k].shape
        np.testing.assert_allclose(got[k], want[k], atol=1e-3)
    enc_in = [s for k, s in representative_samples(exported["encoder"], exported["feats"],
                                                   n=1, frames=30, seed=4) if k == "encode"][0]
    z = _runner(exported["float32"], "encode")(**enc_in)["z"]
    np.testing.assert_allclose(z, exported["encoder"](enc_in)["z"].numpy(), atol=1e-4)


def test_int8_matches_float32(exported):
    inputs = _decode_inputs(exported)
    f32 = _runner(exported["float32"], "decode")(**inputs)
    i8 = _runner(exported["int8"], "decode")(**inputs)
    for k in f32:
        err = np.abs(i8[k] - f32[k])
        assert err.mean() < 1.0 and err.max() < 6.0, (k, err.mean(), err.max())


def test_int8_model_is_integer_inside(exported):
    from ai_edge_litert.interpreter import Interpreter
    interp = Interpreter(model_path=str(exported["int8"]))
    dtypes = {d["dtype"] for d in interp.get_tensor_details()}
    assert np.int8 in dtypes
    assert exported["int8"].stat().st_size < 0.8 * exported["float32"].stat().st_size
    float_ops = [d for d in interp._get_ops_details()
                 if d["op_name"] in ("FULLY_CONNECTED", "CONV_2D", "BATCH_MATMUL")
                 and interp.get_tensor_details()[d["inputs"][0]]["dtype"] == np.float32]
    assert float_ops == []


def test_export_refusals(exported, tmp_path):
    enc, dec = exported["encoder"], exported["decoder"]
    with pytest.raises(ExportError, match="representative"):
        export_tflite(enc, dec, tmp_path / "x.tflite", "int8")
    with pytest.raises(ExportError, match="quantization"):
        export_tflite(enc, dec, tmp_path / "x.tflite", "int4")
    with pytest.raises(ExportError, match="signatures"):
        export_tflite(enc, dec, tmp_path / "x.tflite", signatures=("generate",))


# ------------------------------------------------------------------------------ commands


def test_commands_build_train_export(tmp_path, dataset, capsys):
    import argparse

    from morphbox.host_tools.model.cli import add_parsers
    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers(dest="command"))

    def run(*argv):
        args = parser.parse_args([str(a) for a in argv])
        return args.func(args)
    assert run("dataset", "build", "--out", tmp_path / "ds", "--programs", "200") == 1
    assert "0..127" in capsys.readouterr().err
    cfg = _tiny_config(dataset, tmp_path / "run", steps=3)
    (tmp_path / "train.json").write_text(json.dumps(cfg.to_dict()))
    assert run("model", "train", "--config", tmp_path / "train.json") == 0
    assert "trained to step 3" in capsys.readouterr().out
    assert run("model", "export", tmp_path / "run", "--out", tmp_path / "m.tflite",
               "--calibration", 4, "--signatures", "decode") == 0
    assert (tmp_path / "m.tflite").stat().st_size > 0
    assert run("model", "export", tmp_path / "nothing", "--out", tmp_path / "x.tflite") == 1


# ------------------------------------------------------------------------------ evaluation


def test_evaluate_writes_report_with_bound_baseline_and_int8(exported, dataset, tmp_path):
    from morphbox.host_tools.model.evaluate import EvalError, evaluate, log_spectral_distance
    x = np.random.default_rng(0).standard_normal(16000).astype(np.float32)
    assert log_spectral_distance(x, x) == 0.0
    assert log_spectral_distance(x, 0.5 * x) == pytest.approx(6.02, abs=0.05)
    md = tmp_path / "report.md"
    res = evaluate([exported["float32"], exported["int8"]], dataset, md, max_notes=2,
                   pitch=False, progress=False)
    assert res["notes"] == 2
    text = md.read_text()
    assert "## Headline" in text and "analysis-resynthesis bound" in text
    for key in ("bound", "spectral", "model_f32.tflite", "model_int8.tflite"):
        assert np.isfinite(res["methods"][key]["lsd"]["mean"]), key
    assert res["methods"]["bound"]["lsd"]["mean"] < 25.0
    assert res["models"]["model_int8.tflite"]["kind"] == "int8"
    assert "int8_vs_float32" in res
    assert (tmp_path / "report" / "lsd.png").stat().st_size > 0
    assert (tmp_path / "report" / "reconstruction.png").stat().st_size > 0
    with pytest.raises(EvalError, match="neither"):
        evaluate([tmp_path / "missing.tflite"], dataset, md, progress=False)


# ------------------------------------------------------------------------------ v2 training


def test_the_loss_is_zero_for_a_perfect_model_and_counts_what_is_heard(dataset):
    """The feature loss: dB error per channel (floored 80 dB under each frame's strongest)
    and per frame's power. A decoder that returned the input exactly would score 0."""
    cfg = _tiny_config(dataset, "unused")
    data = _Data(load_split(dataset, "train"))
    b = data.batch(np.random.default_rng(0), 2, 20)
    from morphbox.host_tools.model.train import make_loss_fn as mk

    class Echo:  # "decodes" the features it was given, through the model's output heads
        def __call__(self, inputs):
            h = tf.constant(b["harmonic_db"])
            total = tf.reduce_logsumexp(h * np.log(10) / 20, axis=-1) / (np.log(10) / 20)
            return {"amplitude_db": total, "harmonic_db": h,
                    "envelope_db": tf.constant(b["envelope_db"]) - total[..., None],
                    "noise_db": tf.constant(b["noise_db"])}
    enc = lambda inputs: {"z": tf.zeros((2, 20, 16))}  # noqa: E731
    total, feat, power = mk(enc, Echo(), cfg)(b)
    assert float(feat) < 1e-3 and float(power) < 1e-3
    b2 = dict(b, noise_db=b["noise_db"] + 6.0)  # the target's noise 6 dB up
    _, feat2, power2 = mk(enc, Echo(), cfg)(b2)
    assert float(feat2) > 0.5 and float(power2) > 0.0


def test_learning_rate_schedules_decay_to_lr_final():
    from morphbox.host_tools.model.train import learning_rate
    for name in ("cosine", "exponential"):
        cfg = TrainConfig(steps=100, learning_rate=1e-3, lr_schedule=name, lr_final=0.1)
        sched = learning_rate(cfg)
        assert float(sched(0)) == pytest.approx(1e-3)
        assert float(sched(100)) == pytest.approx(1e-4, rel=1e-3)
        assert float(sched(50)) < 1e-3
    assert learning_rate(TrainConfig()) == TrainConfig().learning_rate
    with pytest.raises(TrainError, match="lr_schedule"):
        TrainConfig.from_dict({"lr_schedule": "step"})


def test_training_keeps_the_best_validation_weights(dataset, tmp_path):
    config = _tiny_config(dataset, tmp_path, lr_schedule="cosine", keep_best=True,
                          loudness_weight=0.02)
    history = train(config, progress=False)
    valid = [h for h in history if "valid_loss" in h]
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["valid_loss"] == min(h["valid_loss"] for h in valid)
    assert best["step"] in [h["step"] for h in valid]
    for name in ("encoder", "decoder"):
        assert (tmp_path / f"{name}.weights.h5").read_bytes() == \
            (tmp_path / f"best_{name}.weights.h5").read_bytes()
        assert (tmp_path / f"last_{name}.weights.h5").exists()
    load_models(tmp_path)  # loads the best weights
