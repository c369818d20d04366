"""Engine render cost per block as % of the block period, with the morph moving.

    .venv/bin/python bench/engine.py [--blocks N]

For 1, 8, 16 and 32 held voices at 128- and 64-frame blocks (48 kHz) on the default pack,
times Engine.render_block over N blocks (after a warm-up) while the touch circles the surface,
and prints median, p99 and max as a percentage of the block period (2.67 ms at 128 frames).
BLAS is limited to one thread, as on the device's audio thread.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from morphbox.device.engine.controls import Controls, ControlState  # noqa: E402
from morphbox.device.engine.voices import Engine, EngineConfig  # noqa: E402
from morphbox.device.packs.format import load_default_grid  # noqa: E402


def measure(grid, block_size: int, voices: int, blocks: int) -> np.ndarray:
    controls = Controls(ControlState(sustain=1.0, release_s=5.0))
    engine = Engine(grid, EngineConfig(block_size=block_size), controls)
    for i in range(voices):
        engine.note_on(36 + (i * 7) % 60, 100)
    period = block_size / engine.config.sample_rate
    times = np.empty(blocks)
    for i in range(blocks + 200):
        phase = 2 * np.pi * i * period / 4.0  # one circle every 4 s
        controls.set_touch(0.5 + 0.45 * np.cos(phase), 0.5 + 0.45 * np.sin(phase))
        t0 = time.perf_counter()
        engine.render_block()
        dt = time.perf_counter() - t0
        if i >= 200:
            times[i - 200] = dt
    assert engine.active_voices == voices
    return times / period * 100.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=3000)
    args = ap.parse_args()
    grid = load_default_grid()
    print(f"engine render cost, % of block period ({platform.processor() or platform.machine()}, "
          f"numpy {np.__version__}, {args.blocks} blocks each, morph moving)\n")
    print("| block | voices | median % | p99 % | max % |")
    print("|------:|-------:|---------:|------:|------:|")
    for bs in (128, 64):
        for voices in (1, 8, 16, 32):
            pct = measure(grid, bs, voices, args.blocks)
            print(f"| {bs} | {voices} | {np.median(pct):.1f} | {np.percentile(pct, 99):.1f} | "
                  f"{pct.max():.1f} |")


if __name__ == "__main__":
    main()
