"""Neural pack build with the original box's content: 16 instruments, 9x9 grid, 16 anchors.

    .venv/bin/python bench/pack_build.py [--model PATH] [--jobs N]

Builds (into ``out/bench/pack``, never the shipped pack) the default 16 FluidR3_GM instruments
at MIDI 24..84 step 4 (16 pitch anchors, as the original NSynth Super) on a 9x9 grid in
neural mode: render + analyse every note, encode to z, decode all 81 x 16 grid notes. The
model: ``--model``, else ``device/models/default_int8.tflite`` when it exists, else a
stand-in made by :func:`bench_model` (the *default* architecture, trained for a few steps
only: decoding costs the same as a fully trained model, the sound does not). Prints a
markdown table; target <= 120 s in total (the original box: ~36 h on 8 GPUs).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEFAULT_INT8 = ROOT / "device" / "models" / "default_int8.tflite"
DEFAULT_F32 = ROOT / "device" / "models" / "default_f32.tflite"
BENCH_DIR = ROOT / "out" / "bench"

_MAKE = """
import sys
from pathlib import Path
import keras
import numpy as np
from morphbox.host_tools.model.export import export_tflite, representative_samples
from morphbox.host_tools.model.network import ModelConfig, build_decoder, build_encoder
out, dataset = Path(sys.argv[1]), Path(sys.argv[2])
if (dataset / "index.json").exists() or any(dataset.glob("shard-*.npz")):
    from morphbox.host_tools.model.dataset import load_split
    from morphbox.host_tools.model.train import TrainConfig, load_models, train
    cfg = TrainConfig(dataset=str(dataset), run_dir=str(out / "run"), steps=5, batch_size=4,
                      crop_frames=64, log_every=5, checkpoint_every=5, valid_batches=1)
    train(cfg, progress=False)
    enc, dec, _ = load_models(cfg.run_dir)
    rep = representative_samples(enc, load_split(str(dataset), "train"), n=32)
    how = f"default architecture, {cfg.steps} training steps on {dataset.name}"
else:  # no dataset: seeded random weights, synthetic calibration crops
    keras.utils.set_random_seed(0)
    enc, dec = build_encoder(ModelConfig()), build_decoder(ModelConfig())
    rng = np.random.default_rng(0)
    rep = []
    for _ in range(32):
        f = {"f0_midi": np.full((1, 50), rng.uniform(24, 96), np.float32),
             "loudness_db": rng.uniform(-70, -10, (1, 50)).astype(np.float32),
             "harmonic_db": rng.uniform(-120, -10, (1, 50, 64)).astype(np.float32),
             "envelope_db": rng.uniform(-120, -30, (1, 50, 24)).astype(np.float32),
             "noise_db": rng.uniform(-120, -40, (1, 50, 32)).astype(np.float32)}
        z = np.asarray(enc(f)["z"], np.float32)
        rep += [("encode", f), ("decode", {"z": z, "f0_midi": f["f0_midi"],
                                          "loudness_db": f["loudness_db"]})]
    how = "default architecture, untrained (seeded), no dataset found"
export_tflite(enc, dec, out / "bench_f32.tflite")
export_tflite(enc, dec, out / "bench_int8.tflite", "int8", rep)
(out / "ABOUT.txt").write_text(how + "\\n")
"""


def bench_model() -> tuple[Path, Path, str]:
    """``(int8, float32, description)`` model files for the benchmarks: the committed default
    model if present, else a stand-in made once (in a TensorFlow subprocess) under
    ``out/bench/model``."""
    if DEFAULT_INT8.exists():
        return DEFAULT_INT8, DEFAULT_F32, "default model (device/models/default_*.tflite)"
    out = BENCH_DIR / "model"
    if not (out / "ABOUT.txt").exists():
        out.mkdir(parents=True, exist_ok=True)
        print("no default model yet: making a stand-in in", out, file=sys.stderr)
        res = subprocess.run([sys.executable, "-c", _MAKE, str(out),
                              str(ROOT / "out" / "dataset")], cwd=ROOT, capture_output=True,
                             text=True)
        if res.returncode != 0:
            sys.exit(f"making the stand-in model failed:\n{res.stderr[-3000:]}")
    return (out / "bench_int8.tflite", out / "bench_f32.tflite",
            "stand-in: " + (out / "ABOUT.txt").read_text().strip())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model .tflite (encode + decode) or training run dir")
    ap.add_argument("--jobs", type=int, default=os.cpu_count())
    args = ap.parse_args()
    if args.model:
        model, about = Path(args.model), f"{args.model}"
    else:
        model, _, about = bench_model()

    import numpy as np

    from morphbox.device.engine import corners
    from morphbox.device.packs.format import load_pack
    from morphbox.host_tools import packbuild
    from morphbox.host_tools.packbuild import PackSettings, build_pack

    settings = PackSettings(name="bench", anchors=tuple(range(24, 85, 4)), grid_size=9,
                            mode="neural", model=str(model))
    # time the neural and grid stages inside the build
    stage = {}

    def timed(module, name):
        inner = getattr(module, name)

        def run(*a, **kw):
            t = time.perf_counter()
            r = inner(*a, **kw)
            stage[name] = time.perf_counter() - t
            return r
        setattr(module, name, run)
        return inner
    inner_n = timed(packbuild, "neural_members")
    inner_g = timed(corners, "grid_codes")
    t0 = time.perf_counter()
    path = build_pack(BENCH_DIR / "pack", settings, jobs=args.jobs, progress=False)
    total = time.perf_counter() - t0
    packbuild.neural_members, corners.grid_codes = inner_n, inner_g
    stage["neural"] = stage["neural_members"]
    pack = load_pack(path)
    m = pack.manifest
    n, a, f = pack.arrays["instruments_loudness"].shape
    g = m["grid_size"]
    size = sum(v["bytes"] for v in m["members"].values())
    grid_notes = g * g * a
    print(f"model: {about} ({m['model']['quantization']}, "
          f"{m['members']['decoder.tflite']['bytes'] / 1e3:.0f} kB); "
          f"{os.cpu_count()} CPUs, {args.jobs} jobs\n")
    print("| neural pack build | value |")
    print("|---|---|")
    print(f"| instruments x anchors x frames | {n} x {a} x {f} |")
    print(f"| grid notes decoded (G x G x anchors) | {g} x {g} x {a} = {grid_notes} "
          f"({grid_notes * f:,} frames) |")
    print(f"| render + analyse (4 velocity layers) + pitch check | "
          f"{total - stage['neural'] - stage['grid_codes']:.1f} s |")
    print(f"| encode + quantise z + decode grid | {stage['neural']:.1f} s |")
    print(f"| anchor + level + loop the grid | {stage['grid_codes']:.1f} s |")
    print(f"| **total build** (target <= 120 s) | **{total:.1f} s** |")
    print(f"| pack size | {size / 1e6:.1f} MB |")
    grid = pack.arrays["grid_harmonics"]
    print(f"| grid partial codes (min/median/max) | {grid.min()}/{int(np.median(grid))}/"
          f"{grid.max()} |")


if __name__ == "__main__":
    main()
