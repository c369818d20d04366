"""Engine render cost per block as % of the block period, with the morph moving.

    .venv/bin/python bench/engine.py [--blocks N]

For 1, 8, 16 and 32 held voices at 128- and 64-frame blocks (48 kHz) on the default pack,
times Engine.render_block over N blocks (after a warm-up) while the touch circles the surface,
and prints median, p99 and max as a percentage of the block period (2.67 ms at 128 frames).
BLAS is limited to one thread, as on the device's audio thread.

The ``32 independent`` rows play 32 voices at independent morph positions: the ``mpe`` morph
mode, each voice started at its own CC 74 and pressure, and every block 3 member channels
send new CC 74 and pressure (6 messages a block, ~2300/s at 128 frames), so each voice reads
its own grid cell and moves on its own. The ``32 MPE`` rows add a new pitch bend on those
channels each block (9 messages a block: a busy MPE performance), so per-voice pitch is
recomputed every block while the bends glide. The lines under the table give their median
cost over the 32 shared-position voices' (target for independent positions: at most 1.3x),
measured in alternating batches so machine load hits all three alike.
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


class Rig:
    """One engine with ``voices`` held notes, stepped one block at a time."""

    def __init__(self, grid, block_size: int, voices: int, independent: bool = False,
                 bends: bool = False):
        mode = "mpe" if independent else "follow"
        self.controls = Controls(ControlState(sustain=1.0, release_s=5.0, morph_mode=mode))
        self.engine = Engine(grid, EngineConfig(block_size=block_size), self.controls)
        self.voices, self.independent, self.bends = voices, independent, bends
        for i in range(voices):
            self.engine.note_on(36 + (i * 7) % 60, 100, channel=i % 16,
                                timbre=(i % 8) / 7.0, pressure=(i % 5) / 4.0)
        self.period = block_size / self.engine.config.sample_rate
        self.i = 0

    def step(self) -> float:
        """Move the touch (and, independent, 3 voices' timbre and pressure, and with bends
        their pitch bend), render one block; returns its render time, seconds."""
        i, e = self.i, self.engine
        self.i += 1
        phase = 2 * np.pi * i * self.period / 4.0  # one circle every 4 s
        self.controls.set_touch(0.5 + 0.45 * np.cos(phase), 0.5 + 0.45 * np.sin(phase))
        if self.independent:  # 3 member channels x (CC 74, pressure[, bend]) per block
            for ch in (3 * i % 16, (3 * i + 1) % 16, (3 * i + 2) % 16):
                e.voice_control(ch, timbre=0.5 + 0.5 * np.sin(phase * (1 + ch)))
                e.voice_control(ch, pressure=0.5 + 0.5 * np.cos(phase * (2 + ch)))
                if self.bends:
                    e.voice_control(ch, bend=0.3 * np.sin(phase * (3 + ch)))
        t0 = time.perf_counter()
        e.render_block()
        return time.perf_counter() - t0


def measure(grid, block_size: int, voices: int, blocks: int,
            independent: bool = False) -> np.ndarray:
    rig = Rig(grid, block_size, voices, independent)
    for _ in range(200):
        rig.step()
    times = np.array([rig.step() for _ in range(blocks)])
    assert rig.engine.active_voices == voices
    return times / rig.period * 100.0


def measure_pair(grid, block_size: int, voices: int, blocks: int,
                 batch: int = 50) -> tuple[np.ndarray, ...]:
    """Shared positions, independent positions and MPE (independent + bends), in
    alternating batches of ``batch`` blocks."""
    rigs = [Rig(grid, block_size, voices, False), Rig(grid, block_size, voices, True),
            Rig(grid, block_size, voices, True, bends=True)]
    for rig in rigs:
        for _ in range(200):
            rig.step()
    times: list[list[float]] = [[], [], []]
    while len(times[-1]) < blocks:
        for rig, t in zip(rigs, times):
            t.extend(rig.step() for _ in range(batch))
    return tuple(np.array(t[:blocks]) / rigs[0].period * 100.0 for t in times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=3000)
    args = ap.parse_args()
    grid = load_default_grid()
    print(f"engine render cost, % of block period ({platform.processor() or platform.machine()}, "
          f"numpy {np.__version__}, {args.blocks} blocks each, morph moving)\n")
    print("| block | voices | median % | p99 % | max % |")
    print("|------:|-------:|---------:|------:|------:|")
    ratios = []
    for bs in (128, 64):
        for voices in (1, 8, 16):
            _row(bs, voices, measure(grid, bs, voices, args.blocks))
        shared, independent, mpe = measure_pair(grid, bs, 32, args.blocks)
        _row(bs, "32", shared)
        _row(bs, "32 independent", independent)
        _row(bs, "32 MPE", mpe)
        ratios.append((bs, np.median(independent) / np.median(shared),
                       np.median(mpe) / np.median(shared)))
    print()
    for bs, r, m in ratios:
        print(f"{bs}-frame blocks: 32 voices at independent positions cost {r:.2f}x 32 at one "
              f"shared position (median; target <= 1.3x); with per-voice bends {m:.2f}x")


def _row(bs: int, voices, pct: np.ndarray) -> None:
    print(f"| {bs} | {voices} | {np.median(pct):.1f} | {np.percentile(pct, 99):.1f} | "
          f"{pct.max():.1f} |")


if __name__ == "__main__":
    main()
