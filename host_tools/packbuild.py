"""Build a sound pack: source notes -> analysis -> spectral morph grid -> pack directory.

``spectral`` mode: each grid point's frames are the corner instruments' analysed frames mixed
with bilinear corner weights in dB (a geometric morph of partial and noise magnitudes).

``neural`` mode (``PackSettings(mode="neural", model=...)``): the encoder of a trained model
turns each instrument's analysed frames at each pitch anchor into z (16 per frame), stored as
int8 with one scale per note (``instruments_z``, ``instruments_z_scale``); each grid point's
z is the corners' z mixed with bilinear weights and every grid point at every anchor is
decoded (one batched call of the pack's own ``decoder.tflite``, the very function the device
uses: :func:`morphbox.device.engine.corners.neural_grid_codes`) to the same ``grid_*`` dB codes the
engine plays. Deterministic: TFLite inference is, and the only random choice (int8 calibration
crops when a run directory is exported) is drawn from ``settings.seed``.

Every source note is checked with pyin: the deviation from its MIDI pitch is stored in the pack
(``instruments_pitch_cents``), small deviations (< 50 cents) refine the f0 used for analysis,
and notes further off are reported.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from morphbox.device.packs.format import DEFAULT_PACK, write_pack
from morphbox.kernels.analysis import FRAME_RATE, N_HARMONICS, N_NOISE_BANDS, analyze_note
from morphbox.kernels.grid import CORNERS, spectral_grid
from morphbox.kernels.pitch import midi_to_hz
from morphbox.kernels.quant import amplitude_to_db, dequantize_db, quantize_db


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
    from morphbox.host_tools.sources import GM_PROGRAM_NAMES
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
    model: str | None = None  # neural mode: a .tflite (encode + decode signatures) or a run dir
    seed: int = 0  # neural mode: int8 calibration crops when exporting a run directory
    anchor_corners: bool = True  # neural mode: corners = the analysed instruments exactly

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
    from morphbox.host_tools.sources import pitch_error_cents
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
    Raises ``morphbox.host_tools.sources.SourceError`` for unusable sources.
    """
    from morphbox.host_tools.sources import (
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
    progress bar. The write is atomic (:func:`morphbox.device.packs.format.write_pack`).
    """
    from rich.progress import Progress

    from morphbox.host_tools import __version__
    settings = settings or PackSettings()
    if settings.mode not in ("spectral", "neural"):
        raise ValueError(f"pack mode {settings.mode!r} is not available in this build")
    if settings.mode == "neural" and not settings.model:
        raise ValueError("a neural pack needs a model (a .tflite file or a training run dir)")
    model = resolve_model(settings.model, settings.seed) if settings.mode == "neural" else None
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
    loudness = np.stack([r.loudness for r in results])
    corner_idx = [settings.corners[c] for c in CORNERS]
    extra: dict = {}
    if model is None:
        grid_h = quantize_db(spectral_grid(dequantize_db(harm[corner_idx]), settings.grid_size))
        grid_n = quantize_db(spectral_grid(dequantize_db(noise[corner_idx]), settings.grid_size))
    else:
        pitches = np.array([[n["pitch"] for n in r.notes] for r in results], np.float64)
        grid_h, grid_n, extra = neural_members(model, harm, noise, loudness, pitches,
                                               settings, jobs)
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
        **({"model": model.record,
            "neural_grid": {"anchor_corners": settings.anchor_corners}}
           if model is not None else {}),
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
              "instruments_loudness": loudness, "instruments_pitch_cents": cents,
              "grid_harmonics": grid_h, "grid_noise": grid_n, **extra}
    return write_pack(out, manifest, arrays)


# ------------------------------------------------------------------------------ neural mode


@dataclass(frozen=True)
class NeuralModel:
    """A model file for a neural pack: ``.tflite`` bytes with ``encode`` and ``decode``
    signatures, and the manifest's ``model`` record (``version``, ``sha256``,
    ``quantization``, ``z_dims``)."""

    tflite: bytes
    record: dict


_EXPORT = """
import sys
from morphbox.host_tools.model.dataset import load_split
from morphbox.host_tools.model.export import export_tflite, representative_samples
from morphbox.host_tools.model.train import load_models
run, out, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
enc, dec, cfg = load_models(run)
rep = representative_samples(enc, load_split(cfg.dataset, "train"), n=64, seed=seed)
export_tflite(enc, dec, out, "int8", rep)
"""


def _tflite_quantization(interp) -> str:
    kinds = {np.dtype(t["dtype"]) for t in interp.get_tensor_details()}
    return "int8" if np.dtype(np.int8) in kinds else "float32"


def resolve_model(model: str | os.PathLike, seed: int = 0) -> NeuralModel:
    """Load ``model``: a ``.tflite`` file with ``encode`` and ``decode`` signatures (as
    :func:`morphbox.host_tools.model.export.export_tflite` writes by default), or a finished
    training run directory, which is exported to full-integer int8 (calibration crops drawn with
    ``seed`` from the run's dataset) into ``run_dir/pack_int8_seed{seed}.tflite`` (reused
    while newer than the weights). The export runs TensorFlow in a subprocess: this process
    uses only the TFLite runtime. Raises ``ValueError`` with the reason."""
    from morphbox.device.packs.neural import ModelError, NeuralDecoder, _interpreter_class
    path = Path(model)
    if path.is_dir():
        out = path / f"pack_int8_seed{seed}.tflite"
        weights = path / "decoder.weights.h5"
        if not weights.exists():
            raise ValueError(f"{path}: not a finished training run (no {weights.name})")
        if not out.exists() or out.stat().st_mtime < weights.stat().st_mtime:
            root = Path(__file__).resolve().parents[1]
            res = subprocess.run([sys.executable, "-c", _EXPORT, str(path), str(out),
                                  str(seed)], cwd=root, capture_output=True, text=True)
            if res.returncode != 0:
                raise ValueError(f"{path}: int8 export failed: {res.stderr[-2000:]}")
        version = f"{path.name}-int8"
        path = out
    else:
        version = path.stem
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read model {path}: {exc}") from None
    try:
        dec = NeuralDecoder(path, z_dims=None)
    except ModelError as exc:
        raise ValueError(str(exc)) from None
    interp = _interpreter_class()(model_content=blob)
    if "encode" not in interp.get_signature_list():
        raise ValueError(f"{path}: no 'encode' signature: a neural pack build needs the "
                         "encoder too (export with both signatures)")
    record = {"version": version, "sha256": hashlib.sha256(blob).hexdigest(),
              "quantization": _tflite_quantization(interp), "z_dims": dec.z_dims}
    return NeuralModel(blob, record)


def quantize_z(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``z`` ``(N, A, F, Z)`` -> int8 codes and one float32 scale per note ``(N, A)``
    (``z = code * scale``; the scale maps the note's largest ``|z|`` to 127)."""
    peak = np.abs(z).max(axis=(2, 3))
    scale = np.where(peak > 0, peak / 127.0, 1.0 / 127.0).astype(np.float32)
    codes = np.clip(np.round(z / scale[:, :, None, None]), -127, 127).astype(np.int8)
    return codes, scale


def encode_notes(model: NeuralModel, harm: np.ndarray, noise: np.ndarray,
                 loudness: np.ndarray, pitches: np.ndarray, threads: int = 1) -> np.ndarray:
    """z ``(N, A, F, Z)`` float32 of every note (one batched call of the ``encode``
    signature): ``harm``/``noise`` dB codes ``(N, A, F, K|B)``, ``loudness`` dB ``(N, A, F)``,
    ``pitches`` ``(N, A)`` MIDI pitch each note was analysed at."""
    from morphbox.device.packs.neural import _interpreter_class
    interp = _interpreter_class()(model_content=model.tflite, num_threads=threads)
    run = interp.get_signature_runner("encode")
    n, a, f = loudness.shape
    out = run(f0_midi=np.repeat(pitches.reshape(-1, 1), f, 1).astype(np.float32),
              loudness_db=loudness.reshape(n * a, f).astype(np.float32),
              harmonic_db=dequantize_db(harm).reshape(n * a, f, -1),
              noise_db=dequantize_db(noise).reshape(n * a, f, -1))
    z = np.asarray(out["z"], np.float32)
    return z.reshape(n, a, f, -1)


def neural_members(model: NeuralModel, harm, noise, loudness, pitches,
                   settings: PackSettings, threads: int | None = None):
    """``(grid_harmonics, grid_noise, {instruments_z, instruments_z_scale, decoder})`` of a
    neural pack: encode, quantise z, decode the grid of ``settings.corners`` with the very
    decoder the pack carries (the device's rebuild for these corners gives the same grid),
    corners anchored to the analysed instruments if ``settings.anchor_corners``
    (:mod:`morphbox.device.engine.corners`)."""
    from morphbox.device.engine.corners import neural_grid_codes
    from morphbox.device.packs.neural import NeuralDecoder
    threads = threads or os.cpu_count() or 1
    codes, scale = quantize_z(encode_notes(model, harm, noise, loudness, pitches, threads))
    z = codes.astype(np.float32) * scale[:, :, None, None]
    idx = [settings.corners[c] for c in CORNERS]
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "decoder.tflite"
        file.write_bytes(model.tflite)
        dec = NeuralDecoder(file, z_dims=model.record["z_dims"], harmonics=settings.harmonics,
                            noise_bands=settings.noise_bands, num_threads=threads)
        grid_h, grid_n = neural_grid_codes(dec, z[idx], loudness[idx], settings.anchors,
                                           settings.grid_size,
                                           (harm[idx], noise[idx])
                                           if settings.anchor_corners else None)
    return grid_h, grid_n, {"instruments_z": codes, "instruments_z_scale": scale,
                            "decoder": model.tflite}

