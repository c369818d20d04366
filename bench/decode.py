"""Decoder cost per frame (float32 vs int8, per TFLite runtime) and device grid rebuild time.

    .venv/bin/python bench/decode.py [--repeats N]

Model: the committed default model (``device/models/default_{f32,int8}.tflite``) if present,
else the stand-in of ``bench/pack_build.py`` (default architecture; cost does not depend on
training). Runtimes: ai-edge-litert, and tflite-runtime 2.14 when it is importable.
Shapes: one grid rebuild batch (9 x 9 points x 16 anchors = 1296 notes x 81 frames) and one
note (1 x 81 frames). The rebuild: :func:`morphbox.device.engine.corners.build_grid` on a neural
pack made from the shipped pack's 16 analysed instruments (its 19 anchors) with the int8 model, for
several corner choices, with 1 and all interpreter threads (the shipped pack itself when it
was built with that model), corners anchored as shipped. Target <= 1 s. Prints markdown.
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from pack_build import BENCH_DIR, bench_model  # noqa: E402

RUNTIMES = {"ai-edge-litert": "ai_edge_litert.interpreter",
            "tflite-runtime": "tflite_runtime.interpreter"}


def _inputs(b: int, t: int, rng) -> dict:
    return {"z": rng.uniform(-1, 1, (b, t, 16)).astype(np.float32),
            "f0_midi": np.full((b, t), 60.0, np.float32),
            "loudness_db": rng.uniform(-60, -10, (b, t)).astype(np.float32)}


def time_decode(module, path: Path, b: int, t: int, threads: int, repeats: int) -> float:
    """Median µs per frame of the ``decode`` signature."""
    interp = module.Interpreter(model_path=str(path), num_threads=threads)
    run = interp.get_signature_runner("decode")
    x = _inputs(b, t, np.random.default_rng(0))
    run(**x)  # warm-up (allocation, resize)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(**x)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) / (b * t) * 1e6


def neural_pack_from_shipped(model: Path) -> Path:
    """The shipped pack if it is neural with ``model``; else a neural pack with the shipped
    pack's instruments (no re-analysis) and ``model``, corners anchored as by default."""
    from morphbox.device.packs.format import DEFAULT_PACK, load_pack, write_pack
    src = load_pack(DEFAULT_PACK)
    if src.is_neural and src.blobs["decoder"] == model.read_bytes():
        return DEFAULT_PACK
    from morphbox.device.engine.corners import CORNER_MEMBERS, grid_codes
    from morphbox.host_tools.packbuild import PackSettings, neural_members, resolve_model
    from morphbox.kernels.grid import CORNERS
    m = dict(src.manifest)
    nm = resolve_model(model)
    s = PackSettings(name="bench-rebuild", anchors=tuple(m["pitch_anchors"]),
                     corners=m["corners"], grid_size=m["grid_size"])
    pitches = np.array([[n["pitch"] for n in i["notes"]] for i in m["instruments"]], float)
    inst = {k: v for k, v in src.arrays.items() if k.startswith("instruments_")}
    decoded, extra = neural_members(nm, inst, pitches, s)
    for k in ("members", "format", "format_version"):
        m.pop(k)
    m.update(name="bench-rebuild", mode="neural", model=nm.record,
             neural_grid={"anchor_corners": s.anchor_corners})
    idx = [s.corners[c] for c in CORNERS]
    grid = grid_codes(m, {k: src.arrays[k][idx] for k in CORNER_MEMBERS}, decoded)
    return write_pack(BENCH_DIR / "rebuild_pack", m, dict(inst, **grid, **extra))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    int8, f32, about = bench_model()
    cpus = os.cpu_count() or 1
    print(f"model: {about}; {cpus} CPUs\n")
    print("| runtime | model | batch x frames | threads | µs / frame | ms / call |")
    print("|---|---|---|---|---|---|")
    for rt, modname in RUNTIMES.items():
        try:
            module = importlib.import_module(modname)
        except ImportError:
            print(f"| {rt} | (not installed) | | | | |")
            continue
        for label, path in (("float32", f32), ("int8", int8)):
            if not path.exists():
                print(f"| {rt} | {label} (no file) | | | | |")
                continue
            for b, t, threads in ((81, 161, 1), (81, 161, cpus), (1, 161, 1)):
                us = time_decode(module, path, b, t, threads,
                                 args.repeats if b > 1 else args.repeats * 20)
                print(f"| {rt} | {label} | {b} x {t} | {threads} | {us:.2f} | "
                      f"{us * b * t / 1e3:.1f} |")

    from morphbox.device.engine.corners import build_grid
    from morphbox.device.packs.format import load_decoder, load_pack
    pack = load_pack(neural_pack_from_shipped(int8))
    m = pack.manifest
    g, a, f = m["grid_size"], len(m["pitch_anchors"]), m["frames"]
    print(f"\n| device grid rebuild ({pack.manifest['model']['quantization']}, "
          f"{g}x{g} x {a} anchors x {f} frames) | threads | median | max |")
    print("|---|---|---|---|")
    choices = [{"NW": i, "NE": (i + 5) % 16, "SW": (i + 9) % 16, "SE": (i + 13) % 16}
               for i in range(args.repeats)]
    for threads in (1, cpus):
        dec = load_decoder(pack.path, m, num_threads=threads)
        p = type(pack)(pack.path, pack.manifest, pack.arrays, pack.blobs, dec)
        build_grid(p, p.corners)  # warm-up
        times = []
        for c in choices:
            t0 = time.perf_counter()
            build_grid(p, c)
            times.append(time.perf_counter() - t0)
        print(f"| build_grid, any 4 of 16 (target <= 1 s) | {threads} | "
              f"{statistics.median(times):.2f} s | {max(times):.2f} s |")


if __name__ == "__main__":
    main()
