"""Pictures: the demo's spectrogram with its touch path, a pack's morph grid, and held notes'
decay curves against their sources."""

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


def spectrogram(ax, audio: np.ndarray, sample_rate: int, n_fft: int = 2048, hop: int = 512,
                fmax_hz: float = 8000.0, range_db: float = 80.0) -> None:
    """Draw the spectrogram of mono ``audio`` on ``ax``: Hann-windowed STFT magnitude in dB
    (``range_db`` below the loudest bin), 0..``fmax_hz``, frequency axis in kHz."""
    frames = np.lib.stride_tricks.sliding_window_view(audio, n_fft)[::hop] * np.hanning(n_fft)
    spec = 20 * np.log10(np.abs(np.fft.rfft(frames, axis=1)).T + 1e-6)
    freqs = np.fft.rfftfreq(n_fft, 1 / sample_rate)
    keep = freqs <= fmax_hz
    t = (np.arange(spec.shape[1]) * hop + n_fft / 2) / sample_rate
    vmax = spec[keep].max()
    ax.pcolormesh(t, freqs[keep] / 1000, spec[keep], shading="auto", cmap="magma",
                  vmin=vmax - range_db, vmax=vmax, rasterized=True)
    ax.set_ylabel("kHz")


def plot_demo(audio: np.ndarray, sample_rate: int, times: np.ndarray, xy: np.ndarray,
              out: str | Path, title: str = "") -> Path:
    """Spectrogram (dB, 0..20 kHz) of mono ``audio`` above the touch path (x, y vs time) and
    the corner weights it implies. Writes a PNG; returns its path."""
    from morphbox.kernels.grid import CORNERS, corner_weights
    plt = pyplot()
    fig, (ax0, ax1, ax2) = plt.subplots(3, 1, figsize=(12, 7.5), sharex=True,
                                        gridspec_kw={"height_ratios": [3, 1, 1]})
    spectrogram(ax0, audio, sample_rate, n_fft=2048, fmax_hz=20000, range_db=80)
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


def plot_decay_curves(pack, out: str | Path, programs: dict[str, int], pitch: int = 60,
                      hold_s: float = 5.0) -> Path:
    """Held notes against their sources: for each ``{instrument name: GM program}`` of
    ``pack``, the level (dB, 100 ms RMS every 50 ms) of MIDI ``pitch`` held ``hold_s`` at
    velocity 100, played by the engine (the instrument on every corner) and rendered by
    FluidSynth from the SoundFont, levels matched over the first second; the analysed span
    and the loop marked. Writes a PNG; returns its path."""
    from morphbox.device.engine.controls import Controls, ControlState
    from morphbox.device.engine.corners import build_grid
    from morphbox.device.engine.voices import Engine
    from morphbox.host_tools.sources import SoundFontRenderer
    plt = pyplot()
    sr = 48000

    def level(x):
        hop, win = sr // 20, sr // 10
        n = (len(x) - win) // hop
        ms = np.array([np.mean(x[i * hop:i * hop + win] ** 2) for i in range(n)])
        return (np.arange(n) * hop + win / 2) / sr, 10 * np.log10(ms + 1e-20)

    names = list(programs)
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.4), sharey=True)
    axes = np.atleast_1d(axes)
    times = pack.frame_times
    loop = pack.manifest["loop"]
    with SoundFontRenderer() as renderer:
        for ax, name in zip(axes, names):
            i = pack.instrument_names.index(name)
            grid = build_grid(pack, {c: i for c in ("NW", "NE", "SW", "SE")})
            e = Engine(grid, controls=Controls(ControlState(x=0, y=0, attack_s=0.001,
                                                            sustain=1.0, volume=1.0)))
            e.note_on(pitch, 100)
            eng = np.concatenate([e.render_block()[:, 0].copy()
                                  for _ in range(int(hold_s * sr / 128))])
            src = renderer.render_audio(programs[name], pitch, 100, hold_s, hold_s)
            t, le = level(eng)
            ts, ls = level(src)
            k = t < 1.0
            le = le - (le[k].max() - ls[k].max())
            top = max(ls.max(), le.max())
            ax.plot(ts, ls - top, color="0.55", lw=2.2, label="source (FluidSynth)")
            ax.plot(t, le - top, color="C3", lw=1.2, label="morphbox")
            ax.axvspan(times[loop["start"]], times[loop["end"]], color="C0", alpha=0.08)
            ax.axvline(times[-1], color="C0", lw=0.8, ls=":")
            ax.set_title(f"{name}, MIDI {pitch}", fontsize=9)
            ax.set_xlabel("s")
            ax.set_ylim(-70, 3)
    axes[0].set_ylabel("level (dB, 100 ms RMS)")
    axes[0].legend(fontsize=7, loc="lower left")
    fig.suptitle("Held notes: the pack stores 2.5 s (dotted line; shaded: the loop); after it "
                 "a decaying note keeps decaying, a sustaining one loops", fontsize=9)
    return save_figure(fig, out, dpi=90)


def plot_voices(audio: np.ndarray, sample_rate: int, times: np.ndarray,
                positions: np.ndarray, notes, out: str | Path, title: str = "") -> Path:
    """Spectrogram (dB, 0..2.5 kHz) of mono ``audio`` above each voice's morph position:
    ``positions`` ``(blocks, voices, 2)`` (x, y) at ``times`` (s); ``notes`` label the voices.
    Writes a PNG; returns its path."""
    plt = pyplot()
    fig, (ax0, ax1, ax2) = plt.subplots(3, 1, figsize=(10, 7), sharex=True,
                                        gridspec_kw={"height_ratios": [3, 1, 1]})
    spectrogram(ax0, audio, sample_rate, n_fft=8192, fmax_hz=2500, range_db=70)
    ax0.set_title(title)
    for v, note in enumerate(notes):
        ax1.plot(times, positions[:, v, 0], label=f"MIDI {note}")
        ax2.plot(times, positions[:, v, 1], label=f"MIDI {note}")
    ax1.set_ylabel("x\n(west -> east)")
    ax2.set_ylabel("y\n(north -> south)")
    for ax in (ax1, ax2):
        ax.set_ylim(-0.05, 1.05)
        ax.legend(loc="upper left", fontsize=8, ncol=3)
    ax2.set_xlabel("time (s)")
    return save_figure(fig, out, dpi=100)
