"""Pictures: the demo's spectrogram with its touch path, and a pack's morph grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display needed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, out: str | Path, dpi: int) -> Path:
    """Lay out ``fig``, write it to ``out`` (PNG; parent folders made), close it; returns the
    path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=dpi)
    pyplot().close(fig)
    return out


def plot_demo(audio: np.ndarray, sample_rate: int, times: np.ndarray, xy: np.ndarray,
              out: str | Path, title: str = "") -> Path:
    """Spectrogram (dB, 0..8 kHz) of mono ``audio`` above the touch path (x, y vs time) and
    the corner weights it implies. Writes a PNG; returns its path."""
    from morphbox.kernels.grid import CORNERS, corner_weights
    plt = pyplot()
    fig, (ax0, ax1, ax2) = plt.subplots(3, 1, figsize=(12, 7.5), sharex=True,
                                        gridspec_kw={"height_ratios": [3, 1, 1]})
    n_fft, hop = 2048, 512
    frames = np.lib.stride_tricks.sliding_window_view(audio, n_fft)[::hop] * np.hanning(n_fft)
    spec = 20 * np.log10(np.abs(np.fft.rfft(frames, axis=1)).T + 1e-6)
    freqs = np.fft.rfftfreq(n_fft, 1 / sample_rate)
    keep = freqs <= 8000
    t = (np.arange(spec.shape[1]) * hop + n_fft / 2) / sample_rate
    vmax = spec[keep].max()
    ax0.pcolormesh(t, freqs[keep] / 1000, spec[keep], shading="auto", cmap="magma",
                   vmin=vmax - 80, vmax=vmax, rasterized=True)
    ax0.set_ylabel("kHz")
    ax0.set_title(title or "morphbox demo")
    ax1.plot(times, xy[:, 0], label="x (west -> east)")
    ax1.plot(times, xy[:, 1], label="y (north -> south)")
    ax1.set_ylim(-0.05, 1.05)
    ax1.set_ylabel("touch")
    ax1.legend(loc="upper right", fontsize=8, ncol=2)
    w = corner_weights(xy[:, 0], xy[:, 1])
    ax2.stackplot(times, w.T, labels=CORNERS, alpha=0.85)
    ax2.set_ylabel("corner\nweight")
    ax2.set_xlabel("time (s)")
    ax2.set_ylim(0, 1)
    ax2.legend(loc="upper right", fontsize=8, ncol=4)
    return save_figure(fig, out, dpi=100)


def plot_grid(pack, out: str | Path, anchor_pitch: int = 60, frame_s: float = 1.0) -> Path:
    """The morph grid of ``pack`` (a :class:`morphbox.device.packs.format.Pack`): at each grid
    point the
    partial amplitudes (dB) of the anchor nearest ``anchor_pitch``, one frame at ``frame_s``;
    corners labelled with their instruments. Writes a PNG; returns its path."""
    from morphbox.device.packs.format import grid_from_pack
    plt = pyplot()
    grid = grid_from_pack(pack)
    a = int(np.argmin(np.abs(grid.anchors - anchor_pitch)))
    f = int(np.argmin(np.abs(grid.frame_times - frame_s)))
    harm = grid.harmonics_db[:, :, a, f, :32]
    size = grid.size
    fig, axes = plt.subplots(size, size, figsize=(10, 10), sharex=True, sharey=True)
    names = pack.instrument_names
    corners = pack.corners
    for iy in range(size):
        for ix in range(size):
            ax = axes[iy, ix]
            ax.bar(np.arange(1, harm.shape[-1] + 1), harm[iy, ix] + 90, bottom=-90, width=0.8,
                   color=plt.cm.viridis((ix + iy) / (2 * size - 2)))
            ax.set_ylim(-90, 0)
            ax.set_xticks([])
            ax.set_yticks([])
    for name, (iy, ix) in {"NW": (0, 0), "NE": (0, size - 1), "SW": (size - 1, 0),
                           "SE": (size - 1, size - 1)}.items():
        axes[iy, ix].set_title(f"{name}: {names[corners[name]]}", fontsize=8,
                               loc="left" if ix == 0 else "right")
    fig.suptitle(f"Morph grid of '{pack.name}' ({pack.manifest['mode']} mode): first 32 "
                 f"partials, MIDI {int(grid.anchors[a])}, t = {frame_s:g} s, dB", fontsize=11)
    return save_figure(fig, out, dpi=80)
