"""Engine render cost per block as % of the block period, numpy and compiled, morph moving.

    .venv/bin/python bench/engine.py [--blocks N] [--runs R] [--pack DIR]
        [--reference ../shared/bench/engine_reference.py]

For 1, 8, 16 and 32 held voices at 128- and 64-frame blocks (48 kHz) on the default pack (or
``--pack``), times ``Engine.render_block`` of the numpy engine (the reference implementation)
and of the compiled one (:mod:`morphbox.kernels.compiled`) over N blocks each (after a
warm-up) while the touch circles the surface, and prints median, p99 and max as a percentage
of the block period (2.67 ms at 128 frames) and the ratio compiled/numpy of the medians. The
engines run in alternating batches of 50 timed blocks (each after 2 untimed ones that bring
its arrays back into the caches), so machine load hits them alike; ``--runs``
repeats the whole measurement and reports the median over runs of each number (and the range
of the ratios). BLAS is limited to one thread, as on the device's audio thread. A second
table gives the compiled engine's numbers in the rendering thread's CPU time
(``time.thread_time``): on a shared, loaded machine the wall-clock p99 and max mostly measure
the scheduler handing the core to other processes, the CPU time what the render itself costs.

The ``32 independent`` rows play 32 voices at independent morph positions: the ``mpe`` morph
mode, each voice started at its own CC 74 and pressure, and every block 3 member channels
send new CC 74 and pressure (6 messages a block, ~2300/s at 128 frames), so each voice reads
its own grid cell and moves on its own. The ``32 MPE`` rows add a new pitch bend on those
channels each block (9 messages a block: a busy MPE performance), so per-voice pitch is
recomputed every block while the bends glide.

``--reference PATH`` loads a reference render cost script (the shared
``engine_reference.py``: a small numba prototype with ``render(block, voices, state, out)``
and ``measure``) from where it lies and times its 32-voice render in the same batches, then
prints the compiled engine's median over it (target: at most 1.5x at 128 and 64 frames).
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from morphbox.device.engine.compiled import kernel_status  # noqa: E402
from morphbox.device.engine.controls import Controls, ControlState  # noqa: E402
from morphbox.device.engine.voices import Engine, EngineConfig  # noqa: E402
from morphbox.device.packs.format import grid_from_pack, load_default_grid, load_pack  # noqa: E402

KERNELS = ("numpy", "compiled")


class Rig:
    """One engine with ``voices`` held notes, stepped one block at a time."""

    def __init__(self, grid, block_size: int, voices: int, independent: bool = False,
                 bends: bool = False, kernel: str = "numpy"):
        mode = "mpe" if independent else "follow"
        self.controls = Controls(ControlState(sustain=1.0, release_s=5.0, morph_mode=mode))
        self.engine = Engine(grid, EngineConfig(block_size=block_size, kernel=kernel),
                             self.controls)
        if self.engine.kernel != kernel:
            raise SystemExit(f"the {kernel} engine is not available here")
        self.voices, self.independent, self.bends = voices, independent, bends
        for i in range(voices):
            self.engine.note_on(36 + (i * 7) % 60, 100, channel=i % 16,
                                timbre=(i % 8) / 7.0, pressure=(i % 5) / 4.0)
        self.period = block_size / self.engine.config.sample_rate
        self.i = 0

    def step(self) -> float:
        """Move the touch (and, independent, 3 voices' timbre and pressure, and with bends
        their pitch bend), render one block; returns its render time and the CPU time this
        thread spent on it, seconds."""
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
        c0, t0 = time.thread_time(), time.perf_counter()
        e.render_block()
        return time.perf_counter() - t0, time.thread_time() - c0

    def check(self) -> None:
        assert self.engine.active_voices == self.voices


class ReferenceRig:
    """The shared reference script's render at ``voices`` voices, stepped like a :class:`Rig`."""

    def __init__(self, module, block_size: int, voices: int):
        self.m, self.block, self.voices = module, block_size, voices
        rng = np.random.default_rng(0)
        self.out = np.zeros(block_size, np.float32)
        self.state = (np.zeros(voices, np.float32),
                      (110 * 2 ** (rng.random(voices) * 4)).astype(np.float32),
                      rng.random(voices).astype(np.float32),
                      rng.random(voices).astype(np.float32), np.full(voices, 0.05, np.float32))
        self.period = block_size / module.SR

    def step(self) -> float:
        c0, t0 = time.thread_time(), time.perf_counter()
        self.m.render(self.block, self.voices, self.state, self.out)
        return time.perf_counter() - t0, time.thread_time() - c0

    def check(self) -> None:
        pass


def interleaved(rigs: dict, blocks: int, batch: int = 50, warm: int = 200,
                rewarm: int = 2) -> dict:
    """Render times (% of the block period) of each rig, ``blocks`` each, in alternating
    batches of ``batch`` blocks after ``warm`` warm-up blocks: ``(blocks, 2)`` arrays, wall
    clock and the thread's CPU time. Each batch starts with ``rewarm`` untimed blocks: the
    rig before it evicted this one's arrays from the caches, which a device running one
    engine does not do every 50 blocks (without them the cold first blocks of the batches
    are the p99)."""
    for rig in rigs.values():
        for _ in range(warm):
            rig.step()
    times: dict = {name: [] for name in rigs}
    while min(len(t) for t in times.values()) < blocks:
        for name, rig in rigs.items():
            for _ in range(rewarm):
                rig.step()
            times[name].extend(rig.step() for _ in range(batch))
    for rig in rigs.values():
        rig.check()
    return {name: np.array(t[:blocks]) / rigs[name].period * 100.0 for name, t in times.items()}


def stats(pct: np.ndarray) -> tuple[float, float, float]:
    return float(np.median(pct)), float(np.percentile(pct, 99)), float(pct.max())


def measure(grid, blocks: int, reference=None) -> dict:
    """One run: ``{(block, voices label): {"numpy": stats, "compiled": stats}}`` and, with a
    reference, ``{(block, "reference 32"): {"reference": stats}}``."""
    rows: dict = {}
    for bs in (128, 64):
        for voices in (1, 8, 16):
            pct = interleaved({k: Rig(grid, bs, voices, kernel=k) for k in KERNELS}, blocks)
            rows[(bs, str(voices))] = {**{k: stats(v[:, 0]) for k, v in pct.items()},
                                       **{k + " cpu": stats(v[:, 1]) for k, v in pct.items()}}
        rigs = {}
        for label, ind, bends in (("32", False, False), ("32 independent", True, False),
                                  ("32 MPE", True, True)):
            for k in KERNELS:
                rigs[(label, k)] = Rig(grid, bs, 32, ind, bends, kernel=k)
        if reference is not None:
            rigs[("reference 32", "reference")] = ReferenceRig(reference, bs, 32)
        pct = interleaved(rigs, blocks)
        for (label, k), v in pct.items():
            rows.setdefault((bs, label), {})[k] = stats(v[:, 0])
            rows[(bs, label)][k + " cpu"] = stats(v[:, 1])
    return rows


def load_reference(path: str):
    spec = importlib.util.spec_from_file_location("engine_reference", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["engine_reference"] = module  # numba's cache pickles the module by name
    spec.loader.exec_module(module)
    return module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=3000)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--pack", help="pack directory (default: the shipped pack)")
    ap.add_argument("--reference", metavar="PATH",
                    help="the shared engine_reference.py, timed in the same batches")
    args = ap.parse_args()
    grid = grid_from_pack(load_pack(args.pack)) if args.pack else load_default_grid()
    reference = load_reference(args.reference) if args.reference else None
    load0 = os.getloadavg()
    t0 = time.time()
    runs = [measure(grid, args.blocks, reference) for _ in range(args.runs)]
    load1 = os.getloadavg()
    ks = kernel_status()
    print(f"engine render cost, % of block period ({platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, numpy {np.__version__}, numba {ks.get('numba', '-')}; "
          f"{args.blocks} blocks each, morph moving, {args.runs} run(s) in {time.time() - t0:.0f} "
          f"s; load average {load0[0]:.1f} at the start, {load1[0]:.1f} at the end)\n")
    if ks:
        print(f"compiled kernels {'loaded from the cache' if ks['cached'] else 'compiled'} in "
              f"{ks['load_s']:.1f} s, warm-up block {ks.get('warm_s', 0) * 1000:.1f} ms\n")
    print("| block | voices | numpy median % | p99 % | max % | compiled median % | p99 % | "
          "max % | compiled / numpy |")
    print("|------:|-------:|------:|------:|------:|------:|------:|------:|------:|")
    for key in runs[0]:
        if "numpy" not in runs[0][key]:
            continue
        med = {k: np.median([r[key][k] for r in runs], axis=0) for k in KERNELS}
        ratio = [r[key]["compiled"][0] / r[key]["numpy"][0] for r in runs]
        print(f"| {key[0]} | {key[1]} | " + " | ".join(
            f"{v:.1f}" for k in KERNELS for v in med[k]) + f" | {_ratio(ratio)} |")
    print("\n| block | voices | compiled, thread CPU time: median % | p99 % | max % |")
    print("|------:|-------:|------:|------:|------:|")
    for key in runs[0]:
        if "compiled cpu" in runs[0][key]:
            med = np.median([r[key]["compiled cpu"] for r in runs], axis=0)
            print(f"| {key[0]} | {key[1]} | " + " | ".join(f"{v:.1f}" for v in med) + " |")
    print()
    for bs in (128, 64):
        shared = [r[(bs, "32")]["compiled"][0] for r in runs]
        ind = [r[(bs, "32 independent")]["compiled"][0] / s for r, s in zip(runs, shared)]
        mpe = [r[(bs, "32 MPE")]["compiled"][0] / s for r, s in zip(runs, shared)]
        print(f"{bs}-frame blocks, compiled: 32 voices at independent positions cost "
              f"{_ratio(ind)} 32 at one shared position (median; target <= 1.3x); with "
              f"per-voice bends {_ratio(mpe)}")
    if reference is not None:
        print("\n| block | reference (32 voices) median % | p99 % | max % | compiled 32 / "
              "reference | target |")
        print("|------:|------:|------:|------:|------:|------:|")
        for bs in (128, 64):
            med = np.median([r[(bs, "reference 32")]["reference"] for r in runs], axis=0)
            ratio = [r[(bs, "32")]["compiled"][0] / r[(bs, "reference 32")]["reference"][0]
                     for r in runs]
            print(f"| {bs} | {med[0]:.1f} | {med[1]:.1f} | {med[2]:.1f} | {_ratio(ratio)} | "
                  f"<= 1.5x |")
    print()
    for bs in (128, 64):
        worst = max(np.median([r[(bs, label)]["compiled"][1] / r[(bs, label)]["compiled"][0]
                               for r in runs]) for label in ("32", "32 independent", "32 MPE"))
        cpu = max(np.median([r[(bs, label)]["compiled cpu"][1]
                             / r[(bs, label)]["compiled cpu"][0] for r in runs])
                  for label in ("32", "32 independent", "32 MPE"))
        print(f"{bs}-frame blocks, compiled, 32 voices: p99 / median up to {worst:.2f} "
              f"(target <= 2); of the thread's CPU time (what the render itself costs, "
              f"without the time other processes take the core) up to {cpu:.2f}")


def _ratio(values: list[float]) -> str:
    m = float(np.median(values))
    if len(values) == 1:
        return f"{m:.2f}x"
    return f"{m:.2f}x ({min(values):.2f}-{max(values):.2f})"


if __name__ == "__main__":
    main()
