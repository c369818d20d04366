"""``morphbox model eval``: how well the timbre model reconstructs held-out instruments.

For the test-split instruments of a dataset (never seen in training) every note is rendered
again from its source (FluidR3_GM program or WAV folder, at 48 kHz, at the instrument's
dataset gain), so the measures compare with the *original audio*, not with the stored
features:

* **analysis-resynthesis bound**: :func:`morphbox.kernels.analysis.analyze_note` of the original,
  float features, rendered by :func:`morphbox.kernels.synth.render_features`; what the
  synthesiser can reach from the true features, so no model can be expected to do better.
* **spectral mode** (the pack's corner-mixing baseline): the same features quantised to the
  pack's 0.5 dB codes (:mod:`morphbox.kernels.quant`); for a reconstruction the mixing weights are
  (1, 0, 0, 0), so this is what a spectral pack plays for a corner instrument.
* **model** (each given run directory or ``.tflite`` file): the stored (0.5 dB) features
  encoded to z and decoded from (z, f0, loudness); TFLite files are decoded with
  :class:`morphbox.device.packs.neural.NeuralDecoder`, i.e. the device's own code path.

All variants of a note are rendered with the same white noise. Measures, per note:

* **LSD** (dB): log-spectral distance to the original, ``sqrt(mean_k (10 log10 P - 10 log10
  P^)^2)`` per STFT frame (2048-point Hann, hop 512, 20 Hz..20 kHz), both spectra clipped
  80 dB below the original's strongest bin, averaged over the frames whose energy is within
  60 dB of the note's loudest frame.
* **pitch error** (cents): ``|morphbox.host_tools.sources.pitch_error_cents|`` (narrow pyin) of the
  resynthesis against the note's f0.
* **loudness error** (dB): mean ``|loudness_db(resynthesis) - loudness_db(original)|`` over
  the frames within 60 dB of the loudest one (A-weighted,
  :func:`morphbox.kernels.analysis.loudness_db`).

Also: float32 vs int8 decoder outputs, and spectrograms of a latent morph (z interpolated
between two test instruments over the note) next to a plain crossfade and the spectral
(dB-mixing) morph of the same two notes. :func:`evaluate` writes the Markdown report and the
PNGs (in a folder named after the report, ``docs/model-report/``).
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from morphbox.device.packs.neural import frames_from_db
from morphbox.host_tools.plots import pyplot, save_figure
from morphbox.kernels.analysis import analyze_note, loudness_db
from morphbox.kernels.features import N_ENVELOPE, N_HARMONICS, SAMPLE_RATE
from morphbox.kernels.pitch import hz_to_midi
from morphbox.kernels.quant import dequantize_db, quantize_db
from morphbox.kernels.synth import render_features

LSD_FFT, LSD_HOP = 2048, 512
LSD_BAND = (20.0, 20000.0)
LSD_CLIP_DB = 80.0
ACTIVE_DB = 60.0
TARGETS = {"pitch_cents": 5.0, "lsd_ratio": 1.2, "int8_db": 0.5}


class EvalError(Exception):
    """Nothing to evaluate, or a model/dataset that cannot be used."""


# ------------------------------------------------------------------------------ measures


def _power_spec(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    pad = np.pad(x, (LSD_FFT // 2, LSD_FFT // 2))
    frames = np.lib.stride_tricks.sliding_window_view(pad, LSD_FFT)[::LSD_HOP]
    return np.abs(np.fft.rfft(frames * np.hanning(LSD_FFT), axis=1)) ** 2


def log_spectral_distance(reference: np.ndarray, estimate: np.ndarray) -> float:
    """LSD in dB of ``estimate`` against ``reference`` (mono, same length; module docstring)."""
    p_ref, p_est = _power_spec(reference), _power_spec(estimate)
    f = np.fft.rfftfreq(LSD_FFT, 1 / SAMPLE_RATE)
    band = (f >= LSD_BAND[0]) & (f <= LSD_BAND[1])
    ref_db = 10 * np.log10(p_ref[:, band] + 1e-20)
    est_db = 10 * np.log10(p_est[:, band] + 1e-20)
    floor = ref_db.max() - LSD_CLIP_DB
    ref_db, est_db = np.maximum(ref_db, floor), np.maximum(est_db, floor)
    energy = 10 * np.log10(p_ref.sum(axis=1) + 1e-20)
    active = energy >= energy.max() - ACTIVE_DB
    per_frame = np.sqrt(np.mean((ref_db - est_db) ** 2, axis=1))
    return float(per_frame[active].mean())


def loudness_error_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Mean absolute A-weighted loudness difference (dB) over the reference's active frames."""
    lr = loudness_db(reference, SAMPLE_RATE)
    le = loudness_db(estimate, SAMPLE_RATE)
    n = min(len(lr), len(le))
    lr, le = lr[:n], le[:n]
    active = lr >= lr.max() - ACTIVE_DB
    return float(np.mean(np.abs(lr[active] - le[active])))


def pitch_error(audio: np.ndarray, midi: float) -> float:
    """``|pitch_error_cents|`` of a note (nan when pyin finds no voiced frame)."""
    import soxr

    from morphbox.host_tools.sources import pitch_error_cents
    x = soxr.resample(np.asarray(audio, np.float64), SAMPLE_RATE, 16000, quality="HQ")
    return abs(float(pitch_error_cents(x, 16000, midi)))


# ------------------------------------------------------------------------------ models


class _Model:
    """A model to evaluate: ``encode(feats) -> z`` and ``decode(z, f0_hz, loud) -> dB dict``."""

    label: str
    kind: str  # "keras", "float32" or "int8"

    def encode(self, inputs: dict) -> np.ndarray:
        raise NotImplementedError

    def decode(self, z: np.ndarray, f0_hz: np.ndarray, loud: np.ndarray) -> dict:
        raise NotImplementedError


class _KerasModel(_Model):
    def __init__(self, run_dir: Path):
        from morphbox.host_tools.model.train import load_models
        self.encoder, self.decoder, _ = load_models(run_dir)
        self.label, self.kind = f"keras ({run_dir.name})", "keras"

    def encode(self, inputs):
        return np.asarray(self.encoder(inputs)["z"], np.float32)

    def decode(self, z, f0_hz, loud):
        out = self.decoder({"z": z, "f0_midi": hz_to_midi(f0_hz).astype(np.float32),
                            "loudness_db": loud.astype(np.float32)})
        return {k: np.asarray(v, np.float32) for k, v in out.items()}


class _TfliteModel(_Model):
    def __init__(self, path: Path):
        from morphbox.device.packs.neural import ModelError, NeuralDecoder, _interpreter_class
        try:
            self.decoder = NeuralDecoder(path)
        except ModelError as exc:
            raise EvalError(str(exc)) from exc
        interp = _interpreter_class()(model_path=str(path))
        if "encode" not in interp.get_signature_list():
            raise EvalError(f"{path}: no 'encode' signature; export with --signatures "
                            "decode encode")
        self._encode = interp.get_signature_runner("encode")
        int8 = any(d["dtype"] == np.int8 for d in interp.get_tensor_details())
        self.kind = "int8" if int8 else "float32"
        self.label = f"{path.name}"
        self.size = path.stat().st_size

    def encode(self, inputs):
        return np.asarray(self._encode(**inputs)["z"], np.float32)

    def decode(self, z, f0_hz, loud):
        return self.decoder.decode_db(z, f0_hz, loud)


def _load_model(path) -> _Model:
    p = Path(path)
    if p.is_dir():
        return _KerasModel(p)
    if p.suffix == ".tflite" and p.is_file():
        return _TfliteModel(p)
    raise EvalError(f"{p}: neither a training run directory nor a .tflite file")


# ------------------------------------------------------------------------------ data


@dataclass
class _Notes:
    """Test notes: stored features (0.5 dB codes) plus the original audio."""

    audio: np.ndarray        # (M, S)
    f0_hz: np.ndarray        # (M,)
    pitch: np.ndarray
    velocity: np.ndarray
    instrument: list         # names
    loudness_db: np.ndarray  # (M, F)
    harmonic_db: np.ndarray  # (M, F, K)
    envelope_db: np.ndarray  # (M, F, E)
    noise_db: np.ndarray     # (M, F, B)
    frame_times: np.ndarray  # (F,)

    def encoder_inputs(self, idx=slice(None)) -> dict:
        frames = self.loudness_db.shape[1]
        f0 = np.repeat(hz_to_midi(self.f0_hz[idx])[:, None], frames, axis=1)
        return {"f0_midi": f0.astype(np.float32),
                "loudness_db": self.loudness_db[idx].astype(np.float32),
                "harmonic_db": self.harmonic_db[idx].astype(np.float32),
                "envelope_db": self.envelope_db[idx].astype(np.float32),
                "noise_db": self.noise_db[idx].astype(np.float32)}

    def frames(self, i: int) -> np.ndarray:
        """Stored frames ``(F, K + E + B)`` dB of note ``i``."""
        return np.concatenate([self.harmonic_db[i], self.envelope_db[i], self.noise_db[i]],
                              axis=-1)


def _load_test_notes(dataset, max_notes: int | None, seed: int) -> _Notes:
    from morphbox.host_tools.model.dataset import load_split, read_index
    from morphbox.host_tools.sources import SoundFontRenderer, load_wav_folder

    index = read_index(dataset)
    feats = load_split(dataset, "test")
    order = np.arange(len(feats))
    if max_notes is not None and max_notes < len(order):
        # an even spread over instruments, pitches and velocities (seeded)
        order = np.sort(np.random.default_rng(seed).choice(order, max_notes, replace=False))
    insts = index["instruments"]
    renderer = None
    wav_cache: dict = {}
    audio = []
    try:
        for i in order:
            inst = insts[int(feats.instrument[i])]
            src = inst["source"]
            gain = 10.0 ** (inst.get("gain_db", 0.0) / 20.0)
            pitch, vel = int(feats.pitch[i]), int(feats.velocity[i])
            if src["kind"] == "soundfont":
                if renderer is None:
                    renderer = SoundFontRenderer(index["settings"].get("soundfont"))
                audio.append(renderer.render_note(src["program"], pitch, vel).audio * gain)
            else:
                notes = wav_cache.setdefault(src["folder"], load_wav_folder(src["folder"]))
                match = [n for n in notes if n.pitch == pitch and n.velocity == vel]
                if not match:
                    raise EvalError(f"{src['folder']}: no note of pitch {pitch} velocity "
                                    f"{vel} (the folder changed since the dataset was built)")
                audio.append(match[0].audio * gain)
    finally:
        if renderer is not None:
            renderer.close()
    return _Notes(audio=np.stack(audio).astype(np.float32), f0_hz=feats.f0_hz[order],
                  pitch=feats.pitch[order], velocity=feats.velocity[order],
                  instrument=[insts[int(feats.instrument[i])]["name"] for i in order],
                  loudness_db=feats.loudness_db[order], harmonic_db=feats.harmonic_db[order],
                  envelope_db=feats.envelope_db[order], noise_db=feats.noise_db[order],
                  frame_times=feats.frame_times)


def _render(f0_hz: float, times: np.ndarray, frames_db: np.ndarray, n: int, seed) -> np.ndarray:
    """:func:`morphbox.kernels.synth.render_features` of frames ``(F, K + E + B)`` dB."""
    k, e = N_HARMONICS, N_HARMONICS + N_ENVELOPE
    return render_features(times, f0_hz, frames_db[:, :k], frames_db[:, k:e], frames_db[:, e:],
                           n, SAMPLE_RATE, seed=seed)


# ------------------------------------------------------------------------------ evaluation


def _summary(values: np.ndarray) -> dict:
    v = np.asarray(values, np.float64)
    ok = v[np.isfinite(v)]
    if ok.size == 0:
        return {"median": float("nan"), "mean": float("nan"), "p90": float("nan"), "n": 0}
    return {"median": float(np.median(ok)), "mean": float(np.mean(ok)),
            "p90": float(np.percentile(ok, 90)), "n": int(ok.size)}


def _decode_notes(model: _Model, notes: _Notes, batch: int = 32) -> list[dict]:
    outs = []
    for s in range(0, len(notes.f0_hz), batch):
        idx = slice(s, s + batch)
        inputs = notes.encoder_inputs(idx)
        z = model.encode(inputs)
        f0 = np.repeat(notes.f0_hz[idx][:, None], z.shape[1], axis=1)
        out = model.decode(z, f0, inputs["loudness_db"])
        outs += [{k: v[j] for k, v in out.items()} for j in range(z.shape[0])]
    return outs


def _output_diff_db(a: list[dict], b: list[dict]) -> dict:
    """Mean |a - b| (dB) of the decoder outputs, partials and bands counted where ``a`` is
    within 60 dB of the frame's strongest partial / band (what is audible)."""
    res = {}
    for key in ("amplitude_db", "harmonic_db", "envelope_db", "noise_db"):
        diffs = []
        for x, y in zip(a, b):
            d = np.abs(x[key] - y[key])
            if x[key].ndim == 2:
                keep = x[key] >= x[key].max(axis=-1, keepdims=True) - ACTIVE_DB
                d = d[keep]
            diffs.append(d.ravel())
        res[key] = float(np.mean(np.concatenate(diffs)))
    return res


def evaluate(run_or_model_paths, dataset, out_md: str | os.PathLike = "docs/model-report.md",
             *, max_notes: int | None = None, morph: tuple[str, str] | None = None,
             morph_pitch: int = 60, seed: int = 0, pitch: bool = True,
             progress: bool = True) -> dict:
    """Evaluate models on the dataset's test-split instruments; write the report.

    ``run_or_model_paths``: one path or a list: training run directories (Keras weights) and/or
    ``.tflite`` files with ``encode`` and ``decode`` signatures. ``dataset``: the dataset
    directory the models were trained on. ``out_md``: the Markdown report; PNGs go to the
    folder of the same name without ``.md``. ``max_notes``: evaluate a seeded random subset of
    the test notes (default: all). ``morph``: the two instrument names of the morph figure
    (default: the two most sustained test instruments at ``morph_pitch``). ``pitch``: measure
    pitch errors (pyin; the slowest part).

    Returns the results as a dict (the numbers of the report).
    Raises :class:`EvalError`, :class:`morphbox.host_tools.model.dataset.DatasetError`.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    t0 = time.time()
    paths = [run_or_model_paths] if isinstance(run_or_model_paths, (str, os.PathLike)) \
        else list(run_or_model_paths)
    if not paths:
        raise EvalError("no model to evaluate")
    models = [_load_model(p) for p in paths]
    notes = _load_test_notes(dataset, max_notes, seed)
    n = len(notes.f0_hz)
    decoded = {m.label: _decode_notes(m, notes) for m in models}
    methods = ["bound", "spectral"] + [m.label for m in models]
    metrics = {k: {"lsd": np.full(n, np.nan), "pitch": np.full(n, np.nan),
                   "loudness": np.full(n, np.nan)} for k in methods}
    original_pitch = np.full(n, np.nan)
    columns = (*Progress.get_default_columns()[:1], BarColumn(), MofNCompleteColumn(),
               TimeRemainingColumn())
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("evaluating test notes", total=n)
        for i in range(n):
            x = notes.audio[i]
            f0 = float(notes.f0_hz[i])
            midi = float(hz_to_midi(f0))
            times = notes.frame_times
            feats = analyze_note(x, SAMPLE_RATE, f0, times).frames_db
            rng = [seed, i]
            renders = {
                "bound": _render(f0, times, feats, len(x), rng),
                "spectral": _render(f0, times, dequantize_db(quantize_db(feats)), len(x), rng),
            }
            for m in models:
                renders[m.label] = _render(f0, times, frames_from_db(decoded[m.label][i]),
                                           len(x), rng)
            if pitch:
                original_pitch[i] = pitch_error(x, midi)
            for k, y in renders.items():
                metrics[k]["lsd"][i] = log_spectral_distance(x, y)
                metrics[k]["loudness"][i] = loudness_error_db(x, y)
                if pitch:
                    metrics[k]["pitch"][i] = pitch_error(y, midi)
            bar.advance(task)

    results = {"notes": n, "instruments": sorted(set(notes.instrument)), "methods": {},
               "original_pitch": _summary(original_pitch), "models": {}}
    for k in methods:
        results["methods"][k] = {m: _summary(v) for m, v in metrics[k].items()}
    bound_lsd = metrics["bound"]["lsd"]
    for m in models:
        lsd = metrics[m.label]["lsd"]
        results["models"][m.label] = {
            "kind": m.kind, "size_bytes": getattr(m, "size", None),
            "lsd_ratio_mean": float(np.nanmean(lsd) / np.nanmean(bound_lsd)),
            "lsd_ratio_median": float(np.nanmedian(lsd) / np.nanmedian(bound_lsd))}
    per_inst = {}
    for name in results["instruments"]:
        sel = np.array([s == name for s in notes.instrument])
        per_inst[name] = {k: float(np.nanmean(metrics[k]["lsd"][sel])) for k in methods}
        per_inst[name]["notes"] = int(sel.sum())
    results["per_instrument_lsd"] = per_inst
    f32 = [m for m in models if m.kind == "float32"]
    i8 = [m for m in models if m.kind == "int8"]
    if f32 and i8:
        a, b = f32[0].label, i8[0].label
        results["int8_vs_float32"] = {
            "float32": a, "int8": b,
            "lsd_difference_db": float(np.nanmean(metrics[b]["lsd"])
                                       - np.nanmean(metrics[a]["lsd"])),
            "output_abs_diff_db": _output_diff_db(decoded[a], decoded[b])}

    out_md = Path(out_md)
    fig_dir = out_md.with_suffix("")
    fig_dir.mkdir(parents=True, exist_ok=True)
    figures = {"lsd": _plot_lsd(metrics, methods, notes, fig_dir / "lsd.png")}
    main = f32[0] if f32 else models[0]
    figures["morph"], results["morph"] = _plot_morph(main, notes, morph, morph_pitch, seed,
                                                     fig_dir / "morph.png")
    shown = _pick_note(notes, results["morph"]["a"], morph_pitch) if results["morph"] else 0
    figures["reconstruction"] = _plot_reconstruction(main, notes, decoded[main.label], shown,
                                                     seed, fig_dir / "reconstruction.png")
    results["seconds"] = round(time.time() - t0, 1)
    results["dataset"] = str(dataset)
    results["models_evaluated"] = [str(p) for p in paths]
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text(_report(results, methods, models, figures, out_md, max_notes))
    return results


# ------------------------------------------------------------------------------ figures


def _spectrogram(ax, x, title, vmax=None):
    p = 10 * np.log10(_power_spec(x).T + 1e-12)
    t = np.arange(p.shape[1]) * LSD_HOP / SAMPLE_RATE
    f = np.fft.rfftfreq(LSD_FFT, 1 / SAMPLE_RATE) / 1000
    vmax = p.max() if vmax is None else vmax
    ax.pcolormesh(t, f, p, shading="auto", cmap="magma", vmin=vmax - 90, vmax=vmax,
                  rasterized=True)
    ax.set_title(title, fontsize=9)
    ax.set_ylabel("kHz")
    return vmax


def _plot_lsd(metrics, methods, notes, path: Path) -> Path:
    plt = pyplot()
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1, 2]})
    data = [metrics[k]["lsd"][np.isfinite(metrics[k]["lsd"])] for k in methods]
    ax0.boxplot(data, showfliers=False)
    ax0.set_xticks(range(1, len(methods) + 1), [_short(k) for k in methods], rotation=20,
                   fontsize=8)
    ax0.set_ylabel("LSD to the original (dB)")
    ax0.set_title("held-out notes")
    names = sorted(set(notes.instrument))
    width = 0.8 / len(methods)
    for j, k in enumerate(methods):
        vals = [np.nanmean(metrics[k]["lsd"][np.array([s == n for s in notes.instrument])])
                for n in names]
        ax1.bar(np.arange(len(names)) + j * width, vals, width, label=_short(k))
    ax1.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=30, ha="right",
                   fontsize=8)
    ax1.set_ylabel("mean LSD (dB)")
    ax1.set_title("per held-out instrument")
    ax1.legend(fontsize=8)
    return save_figure(fig, path, dpi=90)


def _short(label: str) -> str:
    return {"bound": "analysis-resynthesis", "spectral": "spectral (0.5 dB)"}.get(label, label)


def _pick_note(notes: _Notes, name: str, pitch: int) -> int:
    cand = [i for i in range(len(notes.f0_hz)) if notes.instrument[i] == name]
    if not cand:
        raise EvalError(f"morph instrument {name!r} has no evaluated test note")
    return min(cand, key=lambda i: (abs(int(notes.pitch[i]) - pitch), -int(notes.velocity[i])))


def _plot_reconstruction(model: _Model, notes: _Notes, decoded, i: int, seed,
                         path: Path) -> Path:
    plt = pyplot()
    x = notes.audio[i]
    f0 = float(notes.f0_hz[i])
    times = notes.frame_times
    bound = _render(f0, times, analyze_note(x, SAMPLE_RATE, f0, times).frames_db, len(x),
                    [seed, i])
    recon = _render(f0, times, frames_from_db(decoded[i]), len(x), [seed, i])
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), sharey=True)
    vmax = _spectrogram(axes[0], x, f"original: {notes.instrument[i]}, MIDI {notes.pitch[i]}")
    _spectrogram(axes[1], bound, f"analysis-resynthesis (LSD "
                 f"{log_spectral_distance(x, bound):.1f} dB)", vmax)
    _spectrogram(axes[2], recon, f"{model.label} (LSD {log_spectral_distance(x, recon):.1f} dB)",
                 vmax)
    for ax in axes:
        ax.set_xlabel("s")
    return save_figure(fig, path, dpi=90)


def _plot_morph(model: _Model, notes: _Notes, morph, pitch: int, seed: int, path: Path):
    plt = pyplot()
    if morph is None:
        # the two most sustained test instruments near ``pitch`` (loudness at 2.5 s vs peak)
        scores = {}
        for name in sorted(set(notes.instrument)):
            i = _pick_note(notes, name, pitch)
            loud = notes.loudness_db[i]
            at = int(np.argmin(np.abs(notes.frame_times - 2.5)))
            scores[name] = float(loud[at] - loud.max())
        morph = tuple(sorted(scores, key=lambda k: -scores[k])[:2])
        if len(morph) < 2:
            return None, None
    if len(morph) != 2:
        raise EvalError("morph needs exactly two instrument names")
    ia, ib = (_pick_note(notes, name, pitch) for name in morph)
    fr = notes.loudness_db.shape[1]
    # alpha: 0 until 0.5 s, linear to 1 at 3 s, then 1
    t = notes.frame_times
    alpha = np.clip((t - 0.5) / 2.5, 0.0, 1.0).astype(np.float32)
    f0 = float(notes.f0_hz[ia])  # both notes share the MIDI pitch
    n = notes.audio.shape[1]
    inputs = notes.encoder_inputs(np.array([ia, ib]))
    za, zb = model.encode(inputs)
    z = (1 - alpha[:, None]) * za + alpha[:, None] * zb
    loud = (1 - alpha) * inputs["loudness_db"][0] + alpha * inputs["loudness_db"][1]
    out = model.decode(z[None], np.full((1, fr), f0), loud[None])
    latent = _render(f0, t, frames_from_db({k: v[0] for k, v in out.items()}), n,
                     [seed, 10**6])
    a = alpha[:, None]
    spectral = _render(f0, t, (1 - a) * notes.frames(ia) + a * notes.frames(ib), n,
                       [seed, 10**6])
    w = np.interp(np.arange(n) / SAMPLE_RATE, t, alpha).astype(np.float32)
    cross = (1 - w) * notes.audio[ia] + w * notes.audio[ib]
    fig, axes = plt.subplots(5, 1, figsize=(11, 13), sharex=True)
    vmax = _spectrogram(axes[0], notes.audio[ia], f"A: {morph[0]} (original)")
    _spectrogram(axes[1], notes.audio[ib], f"B: {morph[1]} (original)", vmax)
    _spectrogram(axes[2], cross, "plain crossfade A -> B (0.5 s .. 3 s)", vmax)
    _spectrogram(axes[3], spectral, "spectral mode: partial/noise dB mixed A -> B", vmax)
    _spectrogram(axes[4], latent, f"latent morph: z interpolated A -> B, decoded by "
                 f"{model.label}", vmax)
    axes[-1].set_xlabel("s")
    return save_figure(fig, path, dpi=80), {"a": morph[0], "b": morph[1],
                                            "pitch": int(notes.pitch[ia]), "model": model.label}


# ------------------------------------------------------------------------------ report


def _fmt(v, digits=2):
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


def _report(res, methods, models, figures, out_md: Path, max_notes) -> str:
    rel = {k: os.path.relpath(p, out_md.parent) for k, p in figures.items() if p}
    m = res["methods"]
    names = {"bound": "analysis-resynthesis bound (float features)",
             "spectral": "spectral mode (features in 0.5 dB codes)"}
    for mod in models:
        names[mod.label] = f"model: {mod.label} ({mod.kind})"
    lines = [
        "# Model report",
        "",
        f"Written by `morphbox model eval` ({time.strftime('%Y-%m-%d')}, {res['seconds']:.0f} s,"
        f" Python {platform.python_version()}). Dataset `{res['dataset']}`: {res['notes']} "
        f"notes of the {len(res['instruments'])} **held-out** (test-split) instruments"
        + (f" (a seeded subset of {max_notes})" if max_notes else "") + ": "
        + ", ".join(res["instruments"]) + ".",
        "",
        "Every note is rendered again from its source and each variant is compared with the "
        "original audio; all variants of a note use the same white noise. Definitions: "
        "`host_tools/model/evaluate.py`.",
        "",
        "## Headline",
        "",
        "| method | LSD median (dB) | LSD mean (dB) | pitch error median (cents) | "
        "pitch p90 | loudness error median (dB) |",
        "|---|---|---|---|---|---|",
    ]
    for k in methods:
        r = m[k]
        lines.append(f"| {names[k]} | {_fmt(r['lsd']['median'])} | {_fmt(r['lsd']['mean'])} | "
                     f"{_fmt(r['pitch']['median'], 1)} | {_fmt(r['pitch']['p90'], 1)} | "
                     f"{_fmt(r['loudness']['median'])} |")
    op = res["original_pitch"]
    lines.append(f"| *original audio (pyin reference)* | 0 | 0 | {_fmt(op['median'], 1)} | "
                 f"{_fmt(op['p90'], 1)} | 0 |")
    lines += ["", "## Targets", "", "| target | value | met |", "|---|---|---|"]
    for mod in models:
        r = m[mod.label]
        ratio = res["models"][mod.label]["lsd_ratio_mean"]
        if r["pitch"]["n"]:
            lines.append(f"| {mod.label}: median pitch error <= "
                         f"{TARGETS['pitch_cents']:.0f} cents | "
                         f"{_fmt(r['pitch']['median'], 1)} | "
                         f"{_yes(r['pitch']['median'] <= TARGETS['pitch_cents'])} |")
        lines.append(f"| {mod.label}: mean LSD <= {TARGETS['lsd_ratio']}x bound | "
                     f"{_fmt(ratio)}x ({_fmt(r['lsd']['mean'])} vs "
                     f"{_fmt(m['bound']['lsd']['mean'])} dB) | "
                     f"{_yes(ratio <= TARGETS['lsd_ratio'])} |")
    iv = res.get("int8_vs_float32")
    if iv:
        lines.append(f"| int8 within {TARGETS['int8_db']} dB of float32 (mean LSD difference) |"
                     f" {iv['lsd_difference_db']:+.2f} dB | "
                     f"{_yes(abs(iv['lsd_difference_db']) <= TARGETS['int8_db'])} |")
        od = iv["output_abs_diff_db"]
        lines += ["", "## float32 vs int8", "",
                  f"`{iv['int8']}` against `{iv['float32']}`, mean absolute difference of the "
                  "decoder outputs on the test notes (partials and bands within 60 dB of the "
                  "frame's strongest): "
                  f"amplitude {od['amplitude_db']:.2f} dB, partials {od['harmonic_db']:.2f} dB, "
                  f"noise bands {od['noise_db']:.2f} dB.", ""]
        sizes = [f"`{mod.label}` {mod.size / 1e3:.0f} kB" for mod in models
                 if getattr(mod, "size", None)]
        if sizes:
            lines.append("File sizes: " + ", ".join(sizes) + ".")
    lines += ["", "## Per held-out instrument (mean LSD, dB)", "",
              "| instrument | notes | " + " | ".join(_short(k) for k in methods) + " |",
              "|---|---|" + "---|" * len(methods)]
    for name, r in res["per_instrument_lsd"].items():
        lines.append(f"| {name} | {r['notes']} | " + " | ".join(_fmt(r[k]) for k in methods)
                     + " |")
    lines += ["", f"![LSD per method and instrument]({rel['lsd']})", "",
              "## A reconstruction", "", f"![reconstruction]({rel['reconstruction']})", "",
              "## Latent morph vs crossfade", ""]
    if res["morph"]:
        lines += [
            f"{res['morph']['a']} -> {res['morph']['b']} at MIDI {res['morph']['pitch']}: "
            "the mixing weight goes from 0 at 0.5 s to 1 at 3 s. A crossfade plays both "
            "instruments at once (both partial series and both envelopes, summed); the spectral "
            "mode mixes partial and noise levels in dB (one partial series); the latent morph "
            "interpolates z frame by frame (and loudness in dB) and decodes it.", "",
            f"![morph]({rel['morph']})", ""]
    else:
        lines += ["(needs two held-out instruments; this evaluation has one)", ""]
    lines += ["## Notes on the measures", "",
              "* f0 is a given control of the synthesiser (the note's pitch from the dataset), "
              "never predicted, so the pitch error of every resynthesis measures the "
              "synthesiser and pyin rather than the model; the original audio's own deviation "
              "is in the last row.",
              "* The model only sees the stored features (0.5 dB codes) and was trained to "
              "match their analysis-resynthesis, so the bound is out of its reach by "
              "construction; the spectral mode is the bound plus 0.5 dB rounding.",
              "* LSD compares power spectra frame by frame, noise included: two renderings of "
              "the same noisy sound with different noise would differ too. All variants of a "
              "note share the noise, so differences between rows are due to the controls.", ""]
    return "\n".join(lines)


def _yes(ok: bool) -> str:
    return "yes" if ok else "**no**"
