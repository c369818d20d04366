"""How far a neural pack's decoder puts each instrument from itself, and what anchoring leaves.

    .venv/bin/python bench/corner_fidelity.py [--pack DIR]

For every instrument of a neural pack (default: the shipped pack), the pack's own decoder is
run on the instrument's own z (as it would be at a corner without anchoring, see
:mod:`morphbox.device.engine.corners`) and compared with the instrument's analysed partials, per
anchor:

* ``frame dB``: mean |decoded - analysed| over partials within 60 dB of the frame's strongest
  (every frame, every partial: includes frame-to-frame jitter of weak partials);
* ``spectrum dB``: the partial spectrum averaged over the frames in 0.2-1.6 s, normalised to
  its strongest partial, first 24 partials floored at -40 dB, mean |difference| (the measure
  of ``tests/device/test_engine.py``; 3 dB is that test's limit);
* ``level dB``: mean |difference| of the strongest partial's level.

With anchoring (the default) a corner is the analysed instrument exactly, so these are the
errors it removes. The second table is what the latent morph adds inside the grid of the
pack's own corners: the anchored neural grid against the spectral grid (a plain bilinear mix
in dB) of the same corners, same two measures. Prints markdown.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from morphbox.device.engine.corners import build_grid, decode_grid  # noqa: E402
from morphbox.device.packs.format import DEFAULT_PACK, load_pack  # noqa: E402
from morphbox.kernels.grid import CORNERS, spectral_grid  # noqa: E402
from morphbox.kernels.quant import dequantize_db  # noqa: E402


def frame_db(a: np.ndarray, b: np.ndarray) -> float:
    """Mean |a - b| (dB) over partials within 60 dB of ``b``'s strongest in each frame."""
    audible = b > b.max(axis=-1, keepdims=True) - 60.0
    return float(np.abs(a - b)[audible].mean())


SPAN = slice(0, None)  # frames at 0.2..1.6 s, set from the pack's frame times in main()


def spectrum(x: np.ndarray) -> np.ndarray:
    """``(..., frames, K)`` dB -> ``(..., 24)`` averaged, normalised, floored at -40 dB."""
    m = x[..., SPAN, :24].mean(axis=-2)
    return np.maximum(m - m.max(axis=-1, keepdims=True), -40.0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pack", default=str(DEFAULT_PACK))
    args = ap.parse_args()
    pack = load_pack(args.pack)
    if not pack.is_neural:
        print(f"{args.pack} is not a neural pack", file=sys.stderr)
        return 2
    m = pack.manifest
    harm = dequantize_db(pack.arrays["instruments_harmonics"])
    global SPAN
    t = pack.frame_times
    SPAN = slice(int(np.searchsorted(t, 0.2)), int(np.searchsorted(t, 1.6)) + 1)
    print(f"pack {pack.name}, model {m['model']['version']} ({m['model']['quantization']}), "
          f"{len(m['pitch_anchors'])} anchors\n")
    print("| instrument | frame dB | spectrum dB (mean) | spectrum dB (worst anchor) | "
          "level dB |")
    print("|---|---:|---:|---:|---:|")
    rows = []
    for i, name in enumerate(pack.instrument_names):
        idx = [i] * 4
        decoded = decode_grid(pack.decoder, pack.z_corners(idx),
                              pack.arrays["instruments_loudness"][idx], m["pitch_anchors"], 2)
        dec, ref = decoded[0, 0, ..., :64], harm[i]
        spec = np.abs(spectrum(dec) - spectrum(ref)).mean(axis=-1)
        row = (frame_db(dec, ref), float(spec.mean()), float(spec.max()),
               float(np.abs(dec.max(-1) - ref.max(-1)).mean()))
        rows.append(row)
        print(f"| {name} | {row[0]:.2f} | {row[1]:.2f} | {row[2]:.2f} | {row[3]:.2f} |")
    mean = np.mean(rows, axis=0)
    print(f"| **mean** | {mean[0]:.2f} | {mean[1]:.2f} | {mean[2]:.2f} | {mean[3]:.2f} |")

    idx = [pack.corners[c] for c in CORNERS]
    size = int(m["grid_size"])
    neural = build_grid(pack, pack.corners).harmonics_db
    plain = spectral_grid(harm[idx], size)
    names = "/".join(pack.instrument_names[i] for i in idx)
    print(f"\nanchored neural grid vs spectral grid, corners {names} (NW/NE/SW/SE)\n")
    print("| point (x, y) | frame dB | spectrum dB |")
    print("|---|---:|---:|")
    mid = size // 2
    for label, (iy, ix) in {"NW corner (0, 0)": (0, 0), "N edge (0.5, 0)": (0, mid),
                            "W edge (0, 0.5)": (mid, 0), "centre (0.5, 0.5)": (mid, mid),
                            "(0.25, 0.75)": (3 * (size - 1) // 4, (size - 1) // 4)}.items():
        a, b = neural[iy, ix], plain[iy, ix]
        spec = np.abs(spectrum(a) - spectrum(b)).mean()
        print(f"| {label} | {frame_db(a, b):.2f} | {spec:.2f} |")
    spec = np.abs(spectrum(neural) - spectrum(plain)).mean()
    print(f"| **whole grid** | {frame_db(neural, plain):.2f} | {spec:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
