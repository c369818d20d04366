"""Build a sound pack: source notes -> full-band analysis -> morph grid -> pack directory.

Each instrument is rendered (a SoundFont program with FluidSynth at 48 kHz) or loaded (a WAV
folder) at every pitch anchor and analysed whole (:func:`morphbox.kernels.analysis.
analyze_note`: 64 partials, the harmonic envelope to 20 kHz, 32 ERB noise bands; 250 frames/s
over the attack, 50/s after) up to ``duration_s``. Then, per note:

* **decay and loop** (:mod:`morphbox.kernels.sustain`): a sustaining note (its level falls
  by less than 1 dB/s over the loop) gets its last ``crossfade_s`` crossfaded so the loop
  ``loop_start_s .. duration_s`` joins seamlessly, and loops; a decaying note has its frames
  levelled so its total never rises after the peak, and holds its last frame past the loop
  end while each channel keeps decaying at its own rate, fitted on the source from the loop
  start to 0.1 s before its note-off (frames every 0.1 s after ``duration_s``: the source is
  held 4 s);
* **velocity layers**: the note is rendered again at each of ``velocity_layers`` and the
  layer's long-term spectrum (power over 11 frames in 0..2 s) less the reference velocity's is
  stored per channel (dB); a WAV instrument has one velocity, its layers follow the DLS curve
  ``40 log10(v / velocity)``;
* **level**: one gain per instrument (its loudest note at the reference velocity peaks at
  0 dBFS), so each instrument keeps its loudness across pitch and velocity.

``spectral`` mode: each grid point's frames are the corner instruments' frames mixed with
bilinear corner weights in dB (a geometric morph of partial and noise magnitudes), levelled to
the corners' power mix; decay rates and velocity layers are mixed the same way
(:func:`morphbox.device.engine.corners.grid_codes`, the device's own rebuild).

``neural`` mode (``PackSettings(mode="neural", model=...)``): the encoder of a trained model
turns each instrument's analysed frames at each pitch anchor into z (16 per frame), stored as
int8 with one scale per note (``instruments_z``, ``instruments_z_scale``); each grid point's
z is the corners' z mixed with bilinear weights and every grid point at every anchor is
decoded (one batched call of the pack's own ``decoder.tflite``, the very function the device
uses: :func:`morphbox.device.engine.corners.neural_grid_codes`). Deterministic: TFLite
inference is, and the only random choice (int8 calibration crops when a run directory is
exported) is drawn from ``settings.seed``.

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

from morphbox.device.packs.format import (
    DEFAULT_PACK,
    decay_to_codes,
    velocity_to_codes,
    write_pack,
)
from morphbox.kernels.analysis import analyze_note
from morphbox.kernels.features import (
    BAND_LIMIT_HZ,
    DB_FLOOR,
    N_ENVELOPE,
    N_HARMONICS,
    N_NOISE_BANDS,
    SAMPLE_RATE,
    channel_weights,
    frame_times,
    with_gain,
)
from morphbox.kernels.grid import CORNERS
from morphbox.kernels.pitch import midi_to_hz
from morphbox.kernels.quant import dequantize_db, quantize_db
from morphbox.kernels.sustain import (
    decay_rates,
    is_decaying,
    level_db,
    make_loopable,
    monotone,
)

LAYER_TIMES = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.3, 1.6, 2.0)  # s, long-term spectrum
FUTURE_STEP_S = 0.1  # frames after the stored ones, for the decay past the loop
MAX_LAYER_DB = 63.5  # velocity layer offsets are clipped to the int8 code range
FIT_BEFORE_LOOP_S = 0.5  # decay rates are fitted from this long before the loop start


@dataclass(frozen=True)
class InstrumentSpec:
    """One source instrument: a program of a SoundFont (``soundfont``: a path, default
    FluidR3_GM), or a WAV folder."""

    name: str
    program: int | None = None
    wav_folder: str | None = None
    soundfont: str | None = None
    bank: int = 0

    def describe(self, default_soundfont: str | None = None) -> dict:
        if self.wav_folder is not None:
            return {"name": self.name, "source": {"kind": "wav_folder",
                                                  "folder": os.path.basename(self.wav_folder)}}
        font = self.soundfont or default_soundfont
        font = os.path.basename(font) if font else "FluidR3_GM.sf2"
        src = {"kind": "soundfont", "soundfont": font, "program": self.program}
        if self.bank:
            src["bank"] = self.bank
        return {"name": self.name, "source": src}


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
    """What to build. Times in seconds; anchors are MIDI pitches; velocities MIDI."""

    name: str = "default"
    instruments: tuple = field(default_factory=lambda: tuple(default_instruments()))
    corners: dict = field(default_factory=lambda: {"NW": 0, "NE": 4, "SW": 8, "SE": 12})
    anchors: tuple = tuple(range(24, 97, 4))
    velocity: int = 100
    velocity_layers: tuple = (20, 60, 100, 127)
    grid_size: int = 9
    duration_s: float = 2.5
    loop_start_s: float = 1.5
    crossfade_s: float = 0.3
    harmonics: int = N_HARMONICS
    envelope_bands: int = N_ENVELOPE
    noise_bands: int = N_NOISE_BANDS
    mode: str = "spectral"
    model: str | None = None  # neural mode: a .tflite (encode + decode signatures) or a run dir
    seed: int = 0  # neural mode: int8 calibration crops when exporting a run directory
    anchor_corners: bool = True  # neural mode: corners = the analysed instruments exactly
    soundfont: str | None = None  # default SoundFont of program instruments (FluidR3_GM)

    @property
    def frame_times(self) -> np.ndarray:
        return frame_times(self.duration_s)

    @property
    def loop_frames(self) -> tuple[int, int]:
        t = self.frame_times
        return int(np.argmin(np.abs(t - self.loop_start_s))), len(t) - 1

    @property
    def n_frames(self) -> int:
        return len(self.frame_times)

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.velocity_layers) | {self.velocity}))

    @property
    def channels(self) -> tuple[int, int, int]:
        return self.harmonics, self.envelope_bands, self.noise_bands


@dataclass
class InstrumentAnalysis:
    """One instrument at every anchor (levels normalised per instrument, loopable frames):
    ``frames_db`` ``(A, F, C)``, ``loudness`` ``(A, F)``, ``decay`` ``(A, 2, C)`` dB/s,
    ``velocity`` ``(A, L, C)`` dB, ``hold`` ``(A,)`` (1: a decaying note holds its last
    frame past the loop), ``pitch_cents`` ``(A,)``, ``notes`` (manifest records),
    ``gain_db`` the instrument's normalisation."""

    frames_db: np.ndarray
    loudness: np.ndarray
    decay: np.ndarray
    velocity: np.ndarray
    hold: np.ndarray
    pitch_cents: np.ndarray
    notes: list
    gain_db: float


def refined_f0(audio: np.ndarray, sample_rate: int, pitch: float, check: bool = True
               ) -> tuple[float, float]:
    """``(f0 Hz, cents)``: the MIDI pitch's frequency, moved by the pyin deviation (measured
    at 16 kHz) when it is under 50 cents; cents is NaN when not measured."""
    import soxr

    from morphbox.host_tools.sources import pitch_error_cents
    cents = float("nan")
    if check:
        cents = pitch_error_cents(soxr.resample(np.asarray(audio, np.float64), sample_rate,
                                                16000, quality="HQ"), 16000, pitch)
    f0 = float(midi_to_hz(pitch))
    if np.isfinite(cents) and abs(cents) < 50:
        f0 *= 2.0 ** (cents / 1200.0)
    return f0, cents


def future_times(settings: PackSettings, seconds: float) -> np.ndarray:
    """Frame times after the stored ones (``duration_s`` + 0.1 s ..), up to ``seconds``."""
    return np.arange(settings.duration_s + FUTURE_STEP_S, seconds - 0.1 + 1e-9,
                     FUTURE_STEP_S)


def _analyse(audio, pitch, settings: PackSettings, check: bool):
    """``(frames (F, C), future frames (F', C), loudness (F,), cents, f0)`` of one note."""
    from morphbox.host_tools.sources import HOLD_SECONDS
    f0, cents = refined_f0(audio, SAMPLE_RATE, pitch, check)
    times = np.concatenate([settings.frame_times,
                            future_times(settings, min(HOLD_SECONDS,
                                                       len(audio) / SAMPLE_RATE))])
    feats = analyze_note(audio, SAMPLE_RATE, f0, times, *settings.channels)
    n = settings.n_frames
    return feats.frames_db[:n], feats.frames_db[n:], feats.loudness_db[:n], cents, f0


def note_dynamics(frames: np.ndarray, future: np.ndarray, settings: PackSettings,
                  pitch: float) -> tuple[np.ndarray, np.ndarray, float]:
    """``(frames (F, C), rates (2, C), hold)`` of one note at MIDI ``pitch`` (module
    docstring): a sustaining note loops seamlessly (rates 0, hold 0); a decaying one never
    rises after its peak and holds its last frame past the loop end (hold 1), decaying at
    rates[0] (dB/s). Levels are the frames' true power (every partial, the noise)."""
    times = settings.frame_times
    ls, le = settings.loop_frames
    w = channel_weights(midi_to_hz(np.array([float(pitch)])), *settings.channels)[0]
    rates = np.zeros((2, frames.shape[-1]), np.float32)
    if not is_decaying(frames, times, times[ls] - FIT_BEFORE_LOOP_S, weights=w):
        return make_loopable(frames, rates[1], times, ls, le, settings.crossfade_s), rates, 0.0
    frames = monotone(frames, weights=w)
    later = settings.duration_s + FUTURE_STEP_S * (1 + np.arange(len(future)))
    audible = level_db(future, w) > level_db(frames[-1:], w)[0] - 60.0
    if audible.sum() >= 5:  # the source further on: its last frame and what follows
        rates[0] = decay_rates(np.concatenate([frames[le:], future[audible]]),
                               np.concatenate([times[le:], later[audible]]), times[le],
                               sustain_db_per_s=0.0, weights=w)
    else:  # the source ends (a short recording): the last stored second
        rates[0] = decay_rates(frames, times, times[ls] - FIT_BEFORE_LOOP_S,
                               sustain_db_per_s=0.0, weights=w)
    return frames, rates, 1.0


def layer_spectrum(audio: np.ndarray, f0: float, settings: PackSettings) -> np.ndarray:
    """Long-term spectrum of a note, ``(C,)`` dB: each channel's power averaged over the
    frames at ``LAYER_TIMES`` (the velocity layers compare these)."""
    feats = analyze_note(audio, SAMPLE_RATE, f0, np.array(LAYER_TIMES), *settings.channels)
    p = np.mean(10.0 ** (feats.frames_db.astype(np.float64) / 10.0), axis=0)
    return (10.0 * np.log10(np.maximum(p, 1e-12))).astype(np.float32)


def layer_offsets(spectra: dict[int, np.ndarray], reference: int) -> np.ndarray:
    """``(L, C)`` dB: each layer's long-term spectrum less the reference velocity's, clipped to
    the code range; channels silent in both read the layers' overall level difference."""
    ref = spectra[reference]
    out = []
    for v in sorted(spectra):
        d = spectra[v] - ref
        silent = (spectra[v] <= -119.0) & (ref <= -119.0)
        level = _power_db(spectra[v]) - _power_db(ref)
        out.append(np.where(silent, level, d))
    return np.clip(np.array(out, np.float32), -64.0, MAX_LAYER_DB)


def _power_db(x: np.ndarray) -> float:
    return float(10.0 * np.log10(np.sum(10.0 ** (np.asarray(x, np.float64) / 10.0)) + 1e-30))


def dls_offsets(layers, reference: int, channels: int) -> np.ndarray:
    """``(L, C)`` dB of the DLS velocity curve ``40 log10(v / reference)`` (a source with one
    velocity)."""
    db = 40.0 * np.log10(np.asarray(layers, np.float64) / reference)
    return np.repeat(db[:, None], channels, axis=1).astype(np.float32)


def analyse_instrument(spec: InstrumentSpec, settings: PackSettings) -> InstrumentAnalysis:
    """Render (or load) and analyse ``spec`` at every anchor of ``settings`` (module
    docstring).

    SoundFont programs are rendered at each anchor; a WAV folder's note nearest to each anchor
    is used (its partial distribution carries over to the anchor's pitch). An anchor outside
    the instrument's range (it renders silence) borrows the nearest playable anchor's frames
    and is marked ``borrowed`` in the manifest.
    Raises ``morphbox.host_tools.sources.SourceError`` for unusable sources.
    """
    from morphbox.host_tools.sources import SoundFontRenderer, SourceError, load_wav_folder
    rows: dict[int, tuple] = {}
    notes: dict[int, dict] = {}
    peaks: dict[int, float] = {}
    channels = sum(settings.channels)
    layers = settings.layers
    if spec.wav_folder is not None:
        folder = load_wav_folder(spec.wav_folder)
        pitches = np.array([n.pitch for n in folder])
        for i, anchor in enumerate(settings.anchors):
            note = folder[int(np.argmin(np.abs(pitches - anchor)))]
            frames, future, loud, cents, _ = _analyse(note.audio, note.pitch, settings, True)
            rows[i] = (frames, future, loud, dls_offsets(layers, settings.velocity, channels),
                       cents)
            peaks[i] = float(np.max(np.abs(note.audio)))
            notes[i] = {"anchor": anchor, "pitch": note.pitch}
    else:
        with SoundFontRenderer(spec.soundfont or settings.soundfont) as synth:
            for i, anchor in enumerate(settings.anchors):
                try:
                    note = synth.render_note(spec.program, anchor, settings.velocity,
                                             spec.bank)
                except SourceError:  # outside the instrument's range: filled in below
                    continue
                frames, future, loud, cents, f0 = _analyse(note.audio, anchor, settings, True)
                spectra = {settings.velocity: layer_spectrum(note.audio, f0, settings)}
                for v in layers:
                    if v == settings.velocity:
                        continue
                    try:
                        other = synth.render_note(spec.program, anchor, v, spec.bank)
                        spectra[v] = layer_spectrum(other.audio, f0, settings)
                    except SourceError:  # silent at this velocity
                        spectra[v] = np.full(channels, -120.0, np.float32)
                rows[i] = (frames, future, loud, layer_offsets(spectra, settings.velocity),
                           cents)
                peaks[i] = float(np.max(np.abs(note.audio)))
                notes[i] = {"anchor": anchor, "pitch": anchor}
    if not rows:
        raise SourceError(f"{spec.name}: no playable note at any pitch anchor")
    gain_db = -20.0 * np.log10(max(peaks.values()))
    have = np.array(sorted(rows))
    out = {}
    for i in have:
        frames, future, loud, vel, cents = rows[i]
        frames, rates, hold = note_dynamics(with_gain(frames, gain_db),
                                            with_gain(future, gain_db), settings,
                                            notes[i]["pitch"])
        out[i] = (frames, np.maximum(loud + np.float32(gain_db), DB_FLOOR), rates, vel, hold,
                  cents)
        notes[i]["peak_db"] = round(20.0 * np.log10(peaks[i]) + gain_db, 2)
    for i, anchor in enumerate(settings.anchors):
        if i not in out:  # borrow the nearest playable anchor's frames
            j = int(have[np.argmin(np.abs(have - i))])
            out[i] = out[j][:5] + (float("nan"),)
            notes[i] = {"anchor": anchor, "pitch": notes[j]["pitch"], "borrowed": True}
    frames, loud, rates, vel, hold, cents = zip(*(out[i] for i in
                                                  range(len(settings.anchors))))
    return InstrumentAnalysis(np.stack(frames).astype(np.float32),
                              np.stack(loud).astype(np.float32), np.stack(rates),
                              np.stack(vel), np.array(hold, np.float32),
                              np.array(cents, np.float32),
                              [notes[i] for i in range(len(settings.anchors))],
                              round(float(gain_db), 3))


def resynthesize(audio: np.ndarray, sample_rate: int, pitch: float) -> np.ndarray:
    """Analysis-resynthesis of a whole note with this build's analysis (DC removed, f0 refined,
    every frame to the note's end, no quantisation, grid or loop): the best the representation
    can do. ``(samples,)`` float64 at ``sample_rate`` (48 kHz)."""
    from morphbox.host_tools.sources import remove_dc
    from morphbox.kernels.synth import render_features
    x = remove_dc(audio, sample_rate)
    f0, _ = refined_f0(x, sample_rate, pitch)
    f = analyze_note(x, sample_rate, f0)
    return render_features(f.times, f0, f.harmonics_db, f.envelope_db, f.noise_db, len(x),
                           sample_rate).astype(np.float64)


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

    from morphbox.device.engine.corners import grid_codes
    from morphbox.host_tools import __version__
    settings = settings or PackSettings()
    if settings.mode not in ("spectral", "neural"):
        raise ValueError(f"pack mode {settings.mode!r} is not available in this build")
    if settings.mode == "neural" and not settings.model:
        raise ValueError("a neural pack needs a model (a .tflite file or a training run dir)")
    if not 0 < settings.loop_start_s < settings.duration_s:
        raise ValueError("the loop must start after 0 and before duration_s")
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
    k, e, b = settings.channels
    frames = np.stack([r.frames_db for r in results])  # (N, A, F, C) dB
    harm = quantize_db(frames[..., :k])
    env = quantize_db(frames[..., k:k + e])
    noise = quantize_db(frames[..., k + e:])
    loudness = np.stack([r.loudness for r in results])
    decay = decay_to_codes(np.stack([r.decay for r in results]))
    velocity = velocity_to_codes(np.stack([r.velocity for r in results]))
    loop_start, loop_end = settings.loop_frames
    cents = np.stack([r.pitch_cents for r in results])
    manifest = {
        "name": settings.name,
        "mode": settings.mode,
        "source_sample_rate": SAMPLE_RATE,
        "band_limit_hz": BAND_LIMIT_HZ,
        "frames": settings.n_frames,
        "frame_times": [round(float(t), 6) for t in settings.frame_times],
        "harmonics": k,
        "envelope_bands": e,
        "noise_bands": b,
        "grid_size": settings.grid_size,
        "pitch_anchors": list(settings.anchors),
        "velocity": settings.velocity,
        "velocity_layers": list(settings.layers),
        "loop": {"start": loop_start, "end": loop_end, "style": "forward",
                 "crossfade_s": settings.crossfade_s},
        "db_quantisation": {"min_db": -120.0, "step_db": 0.5},
        "instruments": [dict(s.describe(settings.soundfont), notes=r.notes, gain_db=r.gain_db)
                        for s, r in zip(specs, results)],
        "corners": dict(settings.corners),
        **({"model": model.record,
            "neural_grid": {"anchor_corners": settings.anchor_corners}}
           if model is not None else {}),
    }
    arrays = {"instruments_harmonics": harm, "instruments_envelope": env,
              "instruments_noise": noise, "instruments_loudness": loudness,
              "instruments_pitch_cents": cents, "instruments_decay": decay,
              "instruments_velocity": velocity,
              "instruments_hold": np.stack([r.hold for r in results])}
    idx = [settings.corners[c] for c in CORNERS]
    extra: dict = {}
    decoded = None
    if model is not None:
        pitches = np.array([[n["pitch"] for n in r.notes] for r in results], np.float64)
        decoded, extra = neural_members(model, arrays, pitches, settings, jobs)
    grid = grid_codes(manifest, {k_: v[idx] for k_, v in arrays.items()}, decoded)
    manifest["provenance"] = {
        "tool": "morphbox", "tool_version": __version__,
        "settings": {k_: v for k_, v in asdict(settings).items() if k_ != "instruments"},
        "velocity": settings.velocity,
        "pitch_check": {"method": "librosa.pyin",
                        "median_abs_cents": float(np.nanmedian(np.abs(cents))),
                        "max_abs_cents": float(np.nanmax(np.abs(cents)))},
        "build_seconds": round(time.time() - t0, 1),
    }
    return write_pack(out, manifest, {**arrays, **grid, **extra})


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


def encode_notes(model: NeuralModel, arrays: dict, pitches: np.ndarray,
                 threads: int = 1) -> np.ndarray:
    """z ``(N, A, F, Z)`` float32 of every note (the ``encode`` signature, one call per
    anchor): ``arrays`` the ``instruments_*`` members (dB codes, loudness dB ``(N, A, F)``),
    ``pitches`` ``(N, A)`` MIDI pitch each note was analysed at."""
    from morphbox.device.packs.neural import _interpreter_class
    interp = _interpreter_class()(model_content=model.tflite, num_threads=threads)
    run = interp.get_signature_runner("encode")
    loudness = arrays["instruments_loudness"]
    n, a, f = loudness.shape
    out = []
    for j in range(a):
        z = run(f0_midi=np.repeat(pitches[:, j].reshape(-1, 1), f, 1).astype(np.float32),
                loudness_db=loudness[:, j].astype(np.float32),
                harmonic_db=dequantize_db(arrays["instruments_harmonics"][:, j]),
                envelope_db=dequantize_db(arrays["instruments_envelope"][:, j]),
                noise_db=dequantize_db(arrays["instruments_noise"][:, j]))["z"]
        out.append(np.asarray(z, np.float32))
    return np.stack(out, axis=1)


def neural_members(model: NeuralModel, arrays: dict, pitches: np.ndarray,
                   settings: PackSettings, threads: int | None = None):
    """``(decoded grid dB (G, G, A, F, C), {instruments_z, instruments_z_scale, decoder})``
    of a neural pack: encode, quantise z, decode the grid of ``settings.corners`` with the
    very decoder the pack carries (the device's rebuild for these corners gives the same
    grid; :func:`morphbox.device.engine.corners.grid_codes` anchors and levels it)."""
    from morphbox.device.engine.corners import decode_grid
    from morphbox.device.packs.neural import NeuralDecoder
    threads = threads or os.cpu_count() or 1
    codes, scale = quantize_z(encode_notes(model, arrays, pitches, threads))
    z = codes.astype(np.float32) * scale[:, :, None, None]
    idx = [settings.corners[c] for c in CORNERS]
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "decoder.tflite"
        file.write_bytes(model.tflite)
        dec = NeuralDecoder(file, z_dims=model.record["z_dims"], harmonics=settings.harmonics,
                            envelope_bands=settings.envelope_bands,
                            noise_bands=settings.noise_bands, num_threads=threads)
        decoded = decode_grid(dec, z[idx], arrays["instruments_loudness"][idx],
                              settings.anchors, settings.grid_size)
    return decoded, {"instruments_z": codes, "instruments_z_scale": scale,
                     "decoder": model.tflite}
