"""Build a sound pack: source notes -> analysis -> spectral morph grid -> pack directory.

``spectral`` mode: each grid point's frames are the corner instruments' analysed frames mixed
with bilinear corner weights in dB (a geometric morph of partial and noise magnitudes). The
neural mode (learned embeddings decoded per grid point) writes the same members.

Every source note is checked with pyin: the deviation from its MIDI pitch is stored in the pack
(``instruments_pitch_cents``), small deviations (< 50 cents) refine the f0 used for analysis,
and notes further off are reported.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from device.pack import DEFAULT_PACK, write_pack
from kernels.analysis import FRAME_RATE, N_HARMONICS, N_NOISE_BANDS, analyze_note
from kernels.grid import CORNERS, spectral_grid
from kernels.pitch import midi_to_hz
from kernels.quant import amplitude_to_db, dequantize_db, quantize_db


@dataclass(frozen=True)
class InstrumentSpec:
    """One source instrument: a General MIDI program of the SoundFont, or a WAV folder."""

    name: str
    program: int | None = None
    wav_folder: str | None = None

    def describe(self) -> dict:
        if self.wav_folder is not None:
            return {"name": self.name, "source": {"kind": "wav_folder",
                                                  "folder": os.path.basename(self.wav_folder)}}
        return {"name": self.name, "source": {"kind": "soundfont", "soundfont": "FluidR3_GM.sf2",
                                              "program": self.program}}


# 16 instruments, 4 per corner as on the original box: NW bowed strings, NE winds,
# SW keys and plucked, SE organs and synths.
DEFAULT_PROGRAMS = {
    "NW": (42, 40, 41, 43),  # Cello, Violin, Viola, Contrabass
    "NE": (73, 71, 68, 60),  # Flute, Clarinet, Oboe, French Horn
    "SW": (0, 11, 4, 24),    # Acoustic Grand Piano, Vibraphone, Electric Piano 1, Nylon Guitar
    "SE": (19, 20, 81, 89),  # Church Organ, Reed Organ, Lead 2 (sawtooth), Pad 2 (warm)
}


def default_instruments() -> list[InstrumentSpec]:
    from host_tools.sources import GM_PROGRAM_NAMES
    return [InstrumentSpec(GM_PROGRAM_NAMES[p], program=p)
            for c in CORNERS for p in DEFAULT_PROGRAMS[c]]


@dataclass(frozen=True)
class PackSettings:
    """What to build. Times in seconds; anchors are MIDI pitches."""

    name: str = "default"
    instruments: tuple = field(default_factory=lambda: tuple(default_instruments()))
    corners: dict = field(default_factory=lambda: {"NW": 0, "NE": 4, "SW": 8, "SE": 12})
    anchors: tuple = tuple(range(24, 97, 4))
    velocity: int = 100
    grid_size: int = 9
    frame_rate: float = FRAME_RATE
    harmonics: int = N_HARMONICS
    noise_bands: int = N_NOISE_BANDS
    loop_start_s: float = 0.8
    loop_end_s: float = 1.6
    mode: str = "spectral"

    @property
    def loop_frames(self) -> tuple[int, int]:
        return (int(round(self.loop_start_s * self.frame_rate)),
                int(round(self.loop_end_s * self.frame_rate)))

    @property
    def n_frames(self) -> int:
        return self.loop_frames[1] + 1


@dataclass
class InstrumentAnalysis:
    """One instrument at every anchor: dB codes ``(anchors, frames, bins)`` and checks."""

    harmonics: np.ndarray
    noise: np.ndarray
    loudness: np.ndarray
    pitch_cents: np.ndarray
    notes: list


def _analyse(audio: np.ndarray, sample_rate: int, pitch: float, settings: PackSettings,
             check: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    from host_tools.sources import pitch_error_cents
    cents = pitch_error_cents(audio, sample_rate, pitch) if check else float("nan")
    f0 = float(midi_to_hz(pitch))
    if np.isfinite(cents) and abs(cents) < 50:
        f0 *= 2.0 ** (cents / 1200.0)
    feats = analyze_note(audio, sample_rate, f0, settings.frame_rate, settings.harmonics,
                         settings.noise_bands)
    n = settings.n_frames
    return (quantize_db(amplitude_to_db(feats.harmonic_amplitudes[:n])),
            quantize_db(amplitude_to_db(feats.noise_magnitudes[:n])),
            feats.loudness_db[:n], cents)


def analyse_instrument(spec: InstrumentSpec, settings: PackSettings) -> InstrumentAnalysis:
    """Render (or load) and analyse ``spec`` at every anchor of ``settings``.

    SoundFont programs are rendered at each anchor; a WAV folder's note nearest to each anchor
    is used (its partial distribution carries over to the anchor's pitch). An anchor outside
    the instrument's range (it renders silence) borrows the nearest playable anchor's frames
    and is marked ``borrowed`` in the manifest.
    Raises ``host_tools.sources.SourceError`` for unusable sources.
    """
    from host_tools.sources import (
        SOURCE_SAMPLE_RATE,
        SoundFontRenderer,
        SourceError,
        load_wav_folder,
    )
    rows: dict[int, tuple] = {}
    notes: dict[int, dict] = {}
    if spec.wav_folder is not None:
        folder = load_wav_folder(spec.wav_folder)
        pitches = np.array([n.pitch for n in folder])
        for i, anchor in enumerate(settings.anchors):
            note = folder[int(np.argmin(np.abs(pitches - anchor)))]
            rows[i] = _analyse(note.audio, SOURCE_SAMPLE_RATE, note.pitch, settings, True)
            notes[i] = {"anchor": anchor, "pitch": note.pitch, "gain": note.gain}
    else:
        with SoundFontRenderer() as synth:
            for i, anchor in enumerate(settings.anchors):
                try:
                    note = synth.render_note(spec.program, anchor, settings.velocity)
                except SourceError:  # outside the instrument's range: filled in below
                    continue
                rows[i] = _analyse(note.audio, SOURCE_SAMPLE_RATE, anchor, settings, True)
                notes[i] = {"anchor": anchor, "pitch": anchor, "gain": note.gain}
    if not rows:
        raise SourceError(f"{spec.name}: no playable note at any pitch anchor")
    have = np.array(sorted(rows))
    for i, anchor in enumerate(settings.anchors):
        if i not in rows:  # borrow the nearest playable anchor's partial distribution
            j = int(have[np.argmin(np.abs(have - i))])
            rows[i] = rows[j][:3] + (float("nan"),)
            notes[i] = {"anchor": anchor, "pitch": notes[j]["pitch"], "gain": notes[j]["gain"],
                        "borrowed": True}
    harm, noise, loud, cents = zip(*(rows[i] for i in range(len(settings.anchors))))
    return InstrumentAnalysis(np.stack(harm), np.stack(noise), np.stack(loud).astype(np.float32),
                              np.array(cents, np.float32),
                              [notes[i] for i in range(len(settings.anchors))])


def _job(args):
    spec, settings = args
    return analyse_instrument(spec, settings)


def build_pack(out: str | os.PathLike = DEFAULT_PACK, settings: PackSettings | None = None,
               jobs: int | None = None, progress: bool = True) -> Path:
    """Build the pack described by ``settings`` into directory ``out``; returns its path.

    Instruments are analysed in ``jobs`` worker processes (default: CPU count) with a rich
    progress bar. The write is atomic (:func:`device.pack.write_pack`).
    """
    from rich.progress import Progress

    from host_tools import __version__
    settings = settings or PackSettings()
    if settings.mode != "spectral":
        raise ValueError(f"pack mode {settings.mode!r} is not available in this build")
    if sorted(settings.corners) != sorted(CORNERS):
        raise ValueError("corners must name NW, NE, SW and SE")
    t0 = time.time()
    jobs = jobs or os.cpu_count() or 1
    specs = list(settings.instruments)
    results: list = [None] * len(specs)
    with Progress(disable=not progress) as bar:
        task = bar.add_task("analysing instruments", total=len(specs))
        if jobs > 1:
            # spawn, not fork: a forked child can inherit a lock held by a thread of the
            # parent (BLAS, fluidsynth, numba) and wait on it forever
            with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) \
                    as pool:
                futures = {pool.submit(_job, (s, settings)): i for i, s in enumerate(specs)}
                for fut in as_completed(futures):
                    results[futures[fut]] = fut.result()
                    bar.advance(task)
        else:
            for i, s in enumerate(specs):
                results[i] = analyse_instrument(s, settings)
                bar.advance(task)
    harm = np.stack([r.harmonics for r in results])
    noise = np.stack([r.noise for r in results])
    corner_idx = [settings.corners[c] for c in CORNERS]
    grid_h = quantize_db(spectral_grid(dequantize_db(harm[corner_idx]), settings.grid_size))
    grid_n = quantize_db(spectral_grid(dequantize_db(noise[corner_idx]), settings.grid_size))
    loop_start, loop_end = settings.loop_frames
    cents = np.stack([r.pitch_cents for r in results])
    manifest = {
        "name": settings.name,
        "mode": settings.mode,
        "source_sample_rate": 16000,
        "frame_rate": settings.frame_rate,
        "frames": settings.n_frames,
        "harmonics": settings.harmonics,
        "noise_bands": settings.noise_bands,
        "grid_size": settings.grid_size,
        "pitch_anchors": list(settings.anchors),
        "loop": {"start": loop_start, "end": loop_end, "style": "ping-pong"},
        "db_quantisation": {"min_db": -120.0, "step_db": 0.5},
        "instruments": [dict(s.describe(), notes=r.notes) for s, r in zip(specs, results)],
        "corners": dict(settings.corners),
        "provenance": {
            "tool": "morphbox", "tool_version": __version__,
            "settings": {k: v for k, v in asdict(settings).items() if k != "instruments"},
            "velocity": settings.velocity,
            "pitch_check": {"method": "librosa.pyin",
                            "median_abs_cents": float(np.nanmedian(np.abs(cents))),
                            "max_abs_cents": float(np.nanmax(np.abs(cents)))},
            "build_seconds": round(time.time() - t0, 1),
        },
    }
    arrays = {"instruments_harmonics": harm, "instruments_noise": noise,
              "instruments_loudness": np.stack([r.loudness for r in results]),
              "instruments_pitch_cents": cents,
              "grid_harmonics": grid_h, "grid_noise": grid_n}
    return write_pack(out, manifest, arrays)

