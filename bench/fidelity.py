"""Sound fidelity: the engine at its corners against the real instruments, FluidSynth at 48 kHz.

    .venv/bin/python bench/fidelity.py [--quick] [--json FILE] [--pack DIR]

For every instrument of the default pack (16 FluidR3_GM programs) and MIDI 36..84 in steps of
4 (``--quick``: 6 instruments at MIDI 36, 60, 84), the same note is rendered twice at
velocity 100, held 5 s then released:

* the *source*: FluidSynth at 48 kHz straight from the SoundFont (reverb and chorus off, the
  renderer of :mod:`morphbox.host_tools.sources`), mono;
* the *engine*: :class:`morphbox.device.engine.voices.Engine` at 48 kHz with the instrument on
  every corner (a grid built by :func:`morphbox.device.engine.corners.build_grid`, anchored
  corners in a neural pack), ADSR attack 1 ms, sustain 1, release 0.3 s.

and the *bound*: the source analysed by the pack build's own analysis and resynthesised offline
(what the representation can do at best, before quantisation, grid, loop and engine).

Measures (all on 0..4 s of the held note unless said otherwise; levels matched per note by the
energy over 0..4 s, except the level spread):

* ``LSD``: multi-resolution log-spectral distance, dB: STFT power at 4096/1024/256 points
  (Hann, hop 1/4) averaged over 8 hops (170/43/11 ms: two noises of one spectrum should
  compare close, not by their random bins), both floored 80 dB under the source's peak,
  ``sqrt(mean_f (10 log10 Ps/Pe)^2)`` per frame over frames within 60 dB of the source's
  loudest, averaged over frames and resolutions; *full band* 20 Hz..20 kHz and *0..8 kHz*,
  engine and bound.
* ``>8k``: energy above 8 kHz relative to the whole note's, dB, engine vs source (a note
  counts against the 3 dB target only where the source has more than -60 dB there).
* ``attack``: 10 -> 90 % rise time of the amplitude envelope (RMS over one period of f0, at
  least 1 ms), ms; target: engine <= 1.3 x source or within 3 ms.
* ``level@t``: RMS level over 100 ms around t = 1, 2, 3, 4 s, engine minus source, dB
  (where the source is within 60 dB of its peak: below that nothing is heard).
* ``rise``: largest rise after the peak of the 100 ms level curve (50 ms hop; levels more than
  60 dB under the peak count as -60 dB), dB, for *decaying* sources (the source loses more
  than 6 dB from 1 s to 4 s); target <= 1 dB.
* ``<f0``: energy in 20 Hz .. 0.7 f0 relative to the whole note's (8192-point STFT), dB,
  engine vs source (floor -100 dB).
* ``spread``: per instrument, the standard deviation over pitches of (engine level - source
  level) with one gain per instrument: does each instrument keep its loudness across its range.
* ``centroid v127/v20`` (velocity-layered MuseScore_General.sf3, Debian
  ``musescore-general-soundfont``): spectral centroid of 0..2 s at velocity 127 over that at
  velocity 20, engine (a spectral pack of those instruments built here) vs source.
* ``morph loudness``: held notes at the 3 x 3 points of the default pack's grid (corners,
  edges, centre): how far each point falls below the power mix (bilinear weights) of its
  corners, dB; target <= 1 dB.
* ``cost``: engine render cost at 32 voices, 128-frame blocks, morph moving (bench/engine.py),
  median % of the block period.

Prints markdown tables; ``--json`` also writes every number.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

SR = 48000
HOLD_S = 5.0
TOTAL_S = 5.5
WINDOW_S = 4.0  # analysed part of the held note
VELOCITY = 100
FULL_PITCHES = tuple(range(36, 85, 4))
QUICK_PITCHES = (36, 60, 84)
QUICK_PROGRAMS = (42, 73, 0, 11, 24, 19)  # cello, flute, piano, vibraphone, guitar, organ
LAYERED_PROGRAMS = (0, 71, 56, 40)  # piano, clarinet, trumpet, violin
LAYERED_SOUNDFONT = "/usr/share/sounds/sf3/MuseScore_General.sf3"
PERCUSSIVE = (0, 11, 4, 24)  # piano, vibraphone, electric piano, nylon guitar
MR_FFT = (4096, 1024, 256)


# ----------------------------------------------------------------------------- renders


def render_source(renderer, program: int, pitch: int, velocity: int = VELOCITY,
                  hold_s: float = HOLD_S, total_s: float = TOTAL_S) -> np.ndarray:
    """FluidSynth mono render at the renderer's rate (48 kHz), float64, not normalised."""
    if hasattr(renderer, "render_audio"):
        return renderer.render_audio(program, pitch, velocity, hold_s, total_s)
    with renderer._fresh_synth() as (synth, sfid):  # morphbox before issue 11
        renderer._silence(synth)
        synth.program_select(0, sfid, 0, program)
        synth.noteon(0, pitch, velocity)
        held = renderer._render(synth, round(hold_s * renderer.render_rate))
        synth.noteoff(0, pitch)
        rest = renderer._render(synth, round((total_s - hold_s) * renderer.render_rate))
    return np.concatenate([held, rest]).mean(axis=1).astype(np.float64)


def engine_for(grid, x: float = 0.0, y: float = 0.0, **cfg):
    from morphbox.device.engine.controls import Controls, ControlState
    from morphbox.device.engine.voices import Engine, EngineConfig
    controls = Controls(ControlState(x=x, y=y, attack_s=0.001, decay_s=0.3, sustain=1.0,
                                     release_s=0.3, volume=1.0))
    return Engine(grid, EngineConfig(**cfg), controls)


def render_engine(grid, pitch: int, velocity: int = VELOCITY, hold_s: float = HOLD_S,
                  total_s: float = TOTAL_S, x: float = 0.0, y: float = 0.0) -> np.ndarray:
    """The engine playing ``pitch`` held ``hold_s`` at (x, y), mono float64 at 48 kHz."""
    e = engine_for(grid, x, y)
    bs = e.config.block_size
    n_hold = int(round(hold_s * SR / bs))
    n_total = int(round(total_s * SR / bs))
    out = np.empty(n_total * bs)
    e.note_on(pitch, velocity)
    for b in range(n_total):
        if b == n_hold:
            e.note_off(pitch)
        out[b * bs:(b + 1) * bs] = e.render_block()[:, 0]
    return out


def instrument_grid(pack, index: int):
    """The engine's grid with instrument ``index`` on all four corners."""
    from morphbox.device.engine.corners import build_grid
    return build_grid(pack, {"NW": index, "NE": index, "SW": index, "SE": index})


def resynthesis(audio: np.ndarray, pitch: int) -> np.ndarray:
    """Analysis-resynthesis of a 48 kHz source note with the pack build's analysis: the bound."""
    from morphbox.host_tools import packbuild
    if hasattr(packbuild, "resynthesize"):
        return packbuild.resynthesize(audio, SR, pitch)
    # morphbox before issue 11: 16 kHz, 64 partials, 32 linear noise bands, 50 frames/s
    import soxr

    from morphbox.host_tools.sources import pitch_error_cents
    from morphbox.kernels.analysis import analyze_note
    from morphbox.kernels.pitch import midi_to_hz
    from morphbox.kernels.synth import synthesize
    x16 = soxr.resample(audio, SR, 16000, quality="VHQ")
    cents = pitch_error_cents(x16, 16000, pitch)
    f0 = float(midi_to_hz(pitch)) * (2 ** (cents / 1200) if np.isfinite(cents)
                                     and abs(cents) < 50 else 1.0)
    f = analyze_note(x16, 16000, f0)
    y = synthesize(f.f0_hz, f.amplitude, f.harmonic_distribution, f.noise_magnitudes,
                   n_samples=len(x16), sample_rate=16000, frame_rate=f.frame_rate)
    return soxr.resample(y.astype(np.float64), 16000, SR, quality="VHQ")[:len(audio)]


# ----------------------------------------------------------------------------- measures


def _frames(x: np.ndarray, n: int, hop: int) -> np.ndarray:
    if len(x) < n:
        x = np.pad(x, (0, n - len(x)))
    return np.lib.stride_tricks.sliding_window_view(x, n)[::hop]


def power_stft(x: np.ndarray, n: int) -> np.ndarray:
    """``(frames, n // 2 + 1)`` power, Hann window, hop n / 4."""
    return np.abs(np.fft.rfft(_frames(x, n, n // 4) * np.hanning(n), axis=1)) ** 2


def _smooth(p: np.ndarray, frames: int = 8) -> np.ndarray:
    """Moving average of ``frames`` STFT frames (power), same length."""
    c = np.concatenate([np.zeros((1, p.shape[1])), np.cumsum(p, axis=0)])
    i = np.arange(len(p))
    lo, hi = np.maximum(i - frames // 2, 0), np.minimum(i + frames - frames // 2, len(p))
    return (c[hi] - c[lo]) / (hi - lo)[:, None]


def lsd(ref: np.ndarray, test: np.ndarray, fmax: float) -> float:
    """Multi-resolution log-spectral distance (dB) over 20 Hz..fmax (module docstring)."""
    out = []
    for n in MR_FFT:
        a, b = power_stft(ref, n), power_stft(test, n)
        m = min(len(a), len(b))
        a, b = _smooth(a[:m]), _smooth(b[:m])
        f = np.fft.rfftfreq(n, 1 / SR)
        band = (f >= 20.0) & (f <= fmax)
        floor = a.max() * 1e-8
        energy = a.sum(axis=1)
        keep = energy > energy.max() * 1e-6
        d = 10 * np.log10(np.maximum(a[keep][:, band], floor) / np.maximum(b[keep][:, band],
                                                                         floor))
        out.append(np.sqrt((d ** 2).mean(axis=1)).mean())
    return float(np.mean(out))


def long_term(x: np.ndarray, n: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    return np.fft.rfftfreq(n, 1 / SR), power_stft(x, n).mean(axis=0)


def band_energy_db(x: np.ndarray, lo: float, hi: float, floor: float = -100.0) -> float:
    f, p = long_term(x)
    sel = (f >= lo) & (f < hi)
    return float(max(10 * np.log10(p[sel].sum() / p.sum() + 1e-30), floor))


def envelope(x: np.ndarray, pitch: int) -> np.ndarray:
    """Amplitude envelope: RMS over one period of f0 (at least 1 ms), centred, per sample."""
    from morphbox.kernels.pitch import midi_to_hz
    w = max(int(round(SR / float(midi_to_hz(pitch)))), SR // 1000)
    c = np.concatenate([[0.0], np.cumsum(x * x)])
    ms = (c[w:] - c[:-w]) / w
    return np.sqrt(np.maximum(np.pad(ms, (w // 2, w - w // 2 - 1), mode="edge"), 0.0))


def attack_ms(x: np.ndarray, pitch: int) -> float:
    env = envelope(x[:SR], pitch)
    peak = env.max()
    t10 = int(np.argmax(env >= 0.1 * peak))
    t90 = int(np.argmax(env >= 0.9 * peak))
    return 1000.0 * (t90 - t10) / SR


def level_curve(x: np.ndarray, hop_s: float = 0.05, win_s: float = 0.1) -> np.ndarray:
    """RMS dB over ``win_s`` windows every ``hop_s``; entry i centred at i * hop_s."""
    w, h = int(win_s * SR), int(hop_s * SR)
    padded = np.pad(x, (w // 2, w))
    n = int(len(x) / h)
    ms = np.array([np.mean(padded[i * h:i * h + w] ** 2) for i in range(n)])
    return 10 * np.log10(ms + 1e-20)


def largest_rise(levels: np.ndarray, until: int) -> float:
    """Largest rise (dB) of ``levels`` after its peak, up to index ``until``."""
    lv = levels[:until]
    p = int(np.argmax(lv))
    low = np.minimum.accumulate(lv[p:])
    return float(np.max(lv[p:] - low))


def centroid(x: np.ndarray, seconds: float = 2.0) -> float:
    f, p = long_term(x[:int(seconds * SR)])
    band = (f >= 20) & (f <= 20000)
    return float((f[band] * p[band]).sum() / p[band].sum())


def note_measures(src: np.ndarray, eng: np.ndarray, bound: np.ndarray | None,
                  pitch: int) -> dict:
    from morphbox.kernels.pitch import midi_to_hz
    n = int(WINDOW_S * SR)
    s, e = src[:n], eng[:n]
    es, ee = np.mean(s ** 2), np.mean(e ** 2)
    gain = np.sqrt(es / ee) if ee > 0 else 1.0
    e = e * gain
    f0 = float(midi_to_hz(pitch))
    out = {"level_db": float(10 * np.log10(ee / es)) if ee > 0 else -200.0,
           "lsd_full": lsd(s, e, 20000.0), "lsd_8k": lsd(s, e, 8000.0),
           "hi_src": band_energy_db(s, 8000, SR / 2), "hi_eng": band_energy_db(e, 8000, SR / 2),
           "lo_src": band_energy_db(s, 20, 0.7 * f0), "lo_eng": band_energy_db(e, 20, 0.7 * f0),
           "attack_src": attack_ms(src, pitch), "attack_eng": attack_ms(eng, pitch)}
    if bound is not None:
        b = bound[:n]
        b = b * np.sqrt(es / max(np.mean(b ** 2), 1e-30))
        out["bound_full"] = lsd(s, b, 20000.0)
        out["bound_8k"] = lsd(s, b, 8000.0)
    ls, le = level_curve(src), level_curve(eng * gain)
    for t in (1, 2, 3, 4):  # only where the source is within 60 dB of its peak (audible)
        out[f"level_{t}s"] = (float(le[t * 20] - ls[t * 20]) if ls[t * 20] > ls.max() - 60
                              else float("nan"))
    until = int(HOLD_S / 0.05) - 1
    out["rise_src"] = largest_rise(np.maximum(ls, ls.max() - 60), until)
    out["rise_eng"] = largest_rise(np.maximum(le, le.max() - 60), until)
    out["decaying"] = bool(ls[80] < ls[20] - 6.0)
    return out


# ----------------------------------------------------------------------------- parts


def fidelity_part(pack, programs: dict, pitches, bound: bool) -> dict:
    """Per instrument and pitch: the measures of :func:`note_measures`."""
    from morphbox.host_tools.sources import SoundFontRenderer
    results: dict = {}
    with SoundFontRenderer() as renderer:
        for name, (index, program) in programs.items():
            grid = instrument_grid(pack, index)
            rows = {}
            for pitch in pitches:
                src = render_source(renderer, program, pitch)
                if np.max(np.abs(src)) < 1e-6:
                    continue
                eng = render_engine(grid, pitch)
                b = resynthesis(src, pitch) if bound else None
                rows[pitch] = note_measures(src, eng, b, pitch)
                print(f"  {name} {pitch}: LSD {rows[pitch]['lsd_full']:.2f} dB", file=sys.stderr)
            results[name] = {"program": program, "notes": rows}
    return results


def layered_pack(programs, pitches, out: Path):
    """A spectral pack of ``programs`` from the velocity-layered SoundFont."""
    from morphbox.host_tools import packbuild
    os.environ["MORPHBOX_SOUNDFONT"] = LAYERED_SOUNDFONT
    specs = tuple(packbuild.InstrumentSpec(f"program {p}", program=p) for p in programs)
    fields = packbuild.PackSettings.__dataclass_fields__
    extra = {"soundfont": LAYERED_SOUNDFONT} if "soundfont" in fields else {}
    anchors = tuple(sorted(set(pitches)))
    if len(anchors) < 2:
        anchors = (anchors[0], anchors[0] + 12)
    settings = packbuild.PackSettings(name="layered", instruments=specs, mode="spectral",
                                      corners={"NW": 0, "NE": 0, "SW": 0, "SE": 0},
                                      anchors=anchors, **extra)
    return packbuild.build_pack(out, settings, progress=False)


def velocity_part(programs, pitches) -> dict:
    from morphbox.device.packs.format import load_pack
    from morphbox.host_tools.sources import SoundFontRenderer
    if not Path(LAYERED_SOUNDFONT).exists():
        return {"error": f"{LAYERED_SOUNDFONT} missing (apt install "
                         "musescore-general-soundfont)"}
    with tempfile.TemporaryDirectory() as tmp:
        pack = load_pack(layered_pack(programs, pitches, Path(tmp) / "layered"))
        out = {}
        with SoundFontRenderer(LAYERED_SOUNDFONT) as renderer:
            for i, program in enumerate(programs):
                grid = instrument_grid(pack, i)
                rows = {}
                for pitch in pitches:
                    c = {}
                    for vel in (20, 127):
                        src = render_source(renderer, program, pitch, vel, 2.5, 2.5)
                        eng = render_engine(grid, pitch, vel, 2.5, 2.5)
                        c[vel] = (centroid(src), centroid(eng))
                    rows[pitch] = {"src": c[127][0] / c[20][0], "eng": c[127][1] / c[20][1]}
                from morphbox.host_tools.sources import GM_PROGRAM_NAMES
                out[GM_PROGRAM_NAMES[program]] = rows
    return out


def morph_part(pack, pitches=(48, 60, 72)) -> dict:
    from morphbox.device.engine.corners import build_grid
    from morphbox.kernels.grid import corner_weights
    grid = build_grid(pack, pack.corners)
    worst, rows = 0.0, []
    for pitch in pitches:
        power = {}
        for x in (0.0, 0.5, 1.0):
            for y in (0.0, 0.5, 1.0):
                a = render_engine(grid, pitch, hold_s=1.5, total_s=1.5, x=x, y=y)
                power[x, y] = np.mean(a[int(0.3 * SR):int(1.3 * SR)] ** 2)
        corners = np.array([power[0, 0], power[1, 0], power[0, 1], power[1, 1]])
        for (x, y), p in power.items():
            mix = float(corner_weights(x, y) @ corners)
            short = 10 * np.log10(mix / p)
            rows.append({"pitch": pitch, "x": x, "y": y, "shortfall_db": float(short)})
            worst = max(worst, short)
    return {"worst_shortfall_db": float(worst), "points": rows}


def cost_part(grid, blocks: int) -> float:
    from engine import measure
    return float(np.median(measure(grid, 128, 32, blocks)))


# ----------------------------------------------------------------------------- report


def _fmt(v, digits=1):
    return "-" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


def report(res: dict) -> str:
    lines = []
    fid = res["fidelity"]
    lines.append("| instrument | LSD full (bound) | LSD 0-8k (bound) | >8k eng / src dB | "
                 "attack eng / src ms | level@1..4 s dB | rise eng / src dB | <f0 eng / src dB "
                 "| spread dB |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    allrows = []
    for name, inst in fid.items():
        rows = list(inst["notes"].values())
        if not rows:
            continue
        allrows += [(name, inst["program"], r) for r in rows]

        def m(key, rows=rows):
            vals = [r[key] for r in rows if key in r]
            return float(np.mean(vals)) if vals else None
        levels = " / ".join(_fmt(np.nanmean([r[f"level_{t}s"] for r in rows]))
                            for t in (1, 2, 3, 4))
        dec = [r for r in rows if r["decaying"]]
        rise = (f"{_fmt(max(r['rise_eng'] for r in dec))} / "
                f"{_fmt(max(r['rise_src'] for r in dec))}") if dec else "(sustains)"
        spread = float(np.std([r["level_db"] for r in rows]))
        lines.append(
            f"| {name} | {_fmt(m('lsd_full'), 2)} ({_fmt(m('bound_full'), 2)}) | "
            f"{_fmt(m('lsd_8k'), 2)} ({_fmt(m('bound_8k'), 2)}) | "
            f"{_fmt(m('hi_eng'))} / {_fmt(m('hi_src'))} | "
            f"{_fmt(m('attack_eng'))} / {_fmt(m('attack_src'))} | {levels} | {rise} | "
            f"{_fmt(m('lo_eng'))} / {_fmt(m('lo_src'))} | {_fmt(spread)} |")
    s = summary(res, allrows)
    res["summary"] = s
    lines.append("")
    lines.append("| measure | value | target |")
    lines.append("|---|---|---|")
    for label, value, target in s["rows"]:
        lines.append(f"| {label} | {value} | {target} |")
    return "\n".join(lines)


def summary(res: dict, allrows: list) -> dict:
    rows = []
    r = [x for _, _, x in allrows]
    lsd_full = np.mean([x["lsd_full"] for x in r])
    rows.append(("mean LSD full band, dB", f"{lsd_full:.2f}", "<= 3.5"))
    if all("bound_full" in x for x in r):
        bound = np.mean([x["bound_full"] for x in r])
        rows.append(("mean bound full band, dB (engine / bound)",
                     f"{bound:.2f} ({lsd_full / bound:.2f}x)", "<= 1.15x"))
        rows.append(("mean LSD 0-8 kHz, dB (bound)",
                     f"{np.mean([x['lsd_8k'] for x in r]):.2f} "
                     f"({np.mean([x['bound_8k'] for x in r]):.2f})", "-"))
    hi = [x for x in r if x["hi_src"] > -60]
    if hi:
        d = np.array([x["hi_eng"] - x["hi_src"] for x in hi])
        rows.append(("energy >8 kHz, engine - source (notes where source > -60 dB)",
                     f"median {np.median(d):+.1f} dB, {np.mean(np.abs(d) <= 3) * 100:.0f} % "
                     f"within 3 dB ({len(hi)} notes)", "within 3 dB"))
    ok = [x["attack_eng"] <= 1.3 * x["attack_src"] or abs(x["attack_eng"] - x["attack_src"]) <= 3
          for x in r]
    perc = [x for _, p, x in allrows if p in PERCUSSIVE]
    ratio = np.median([x["attack_eng"] / max(x["attack_src"], 0.1) for x in r])
    rows.append(("attack 10->90 %: notes within target; median engine / source",
                 f"{np.mean(ok) * 100:.0f} %; {ratio:.2f}x", "<= 1.3x or 3 ms"))
    if perc:
        rows.append(("attack, percussive (piano, vibraphone, e-piano, guitar), mean ms",
                     f"{np.mean([x['attack_eng'] for x in perc]):.1f} vs "
                     f"{np.mean([x['attack_src'] for x in perc]):.1f}", "-"))
    lv = np.array([[x[f"level_{t}s"] for t in (1, 2, 3, 4)] for x in r])
    rows.append(("held note level at 1/2/3/4 s, mean |engine - source| dB (source audible)",
                 " / ".join(f"{v:.1f}" for v in np.nanmean(np.abs(lv), axis=0)), "<= 3"))
    rows.append(("held notes within 3 dB at all of 1-4 s",
                 f"{np.mean(np.all(np.nan_to_num(np.abs(lv)) <= 3, axis=1)) * 100:.0f} %",
                 "100 %"))
    dec = [x for x in r if x["decaying"]]
    if dec:
        rows.append(("decaying notes: largest rise after the peak, engine (source), dB",
                     f"max {max(x['rise_eng'] for x in dec):.1f} "
                     f"({max(x['rise_src'] for x in dec):.1f}); "
                     f"{np.mean([x['rise_eng'] <= 1.0 for x in dec]) * 100:.0f} % <= 1 dB",
                     "<= 1 dB"))
    lo = np.array([x["lo_eng"] - x["lo_src"] for x in r])
    rows.append(("energy below f0, engine - source, dB",
                 f"median {np.median(lo):+.1f}, max {lo.max():+.1f}; "
                 f"{np.mean(np.abs(lo) <= 3) * 100:.0f} % within 3 dB", "within 3 dB"))
    spreads = []
    for inst in res["fidelity"].values():
        lv_ = [x["level_db"] for x in inst["notes"].values()]
        if lv_:
            spreads.append(np.std(lv_))
    rows.append(("level spread across pitch (SD of engine - source), mean over instruments",
                 f"{np.mean(spreads):.1f} dB", "-"))
    vel = res.get("velocity", {})
    if vel and "error" not in vel:
        parts, good = [], []
        for name, pitches in vel.items():
            src = np.mean([v["src"] for v in pitches.values()])
            eng = np.mean([v["eng"] for v in pitches.values()])
            parts.append(f"{name} {eng:.2f} / {src:.2f}")
            good += [abs(v["eng"] / v["src"] - 1) <= 0.2 for v in pitches.values()]
        rows.append(("centroid v127/v20, engine / source (MuseScore General)",
                     "; ".join(parts) + f"; {np.mean(good) * 100:.0f} % within 20 %",
                     "within 20 %"))
    if "morph" in res:
        rows.append(("morph: largest shortfall under the corners' power mix",
                     f"{res['morph']['worst_shortfall_db']:.1f} dB", "<= 1 dB"))
    if "cost" in res:
        rows.append(("engine render cost, 32 voices, 128 frames (median % of period)",
                     f"{res['cost']:.1f} %", "-"))
    return {"rows": rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="6 instruments at MIDI 36, 60, 84")
    ap.add_argument("--pack", help="pack directory (default: the shipped pack)")
    ap.add_argument("--json", help="write every number to this file")
    ap.add_argument("--no-bound", action="store_true", help="skip the analysis-resynthesis")
    ap.add_argument("--no-velocity", action="store_true")
    ap.add_argument("--no-morph", action="store_true")
    ap.add_argument("--cost-blocks", type=int, default=1500, help="0 skips the cost")
    args = ap.parse_args()
    from morphbox.device.packs.format import DEFAULT_PACK, load_pack
    from morphbox.host_tools.packbuild import DEFAULT_PROGRAMS
    from morphbox.kernels.grid import CORNERS
    pack = load_pack(args.pack or DEFAULT_PACK)
    names = pack.instrument_names
    order = [p for c in CORNERS for p in DEFAULT_PROGRAMS[c]]
    programs = {}
    for i, name in enumerate(names):
        src = pack.manifest["instruments"][i].get("source", {})
        program = src.get("program", order[i] if i < len(order) else None)
        if program is None or (args.quick and program not in QUICK_PROGRAMS):
            continue
        programs[name] = (i, program)
    pitches = QUICK_PITCHES if args.quick else FULL_PITCHES
    t0 = time.time()
    res: dict = {"pack": str(pack.path), "pitches": list(pitches)}
    res["fidelity"] = fidelity_part(pack, programs, pitches, not args.no_bound)
    if not args.no_velocity:
        vp = (60,) if args.quick else (48, 60, 72)
        vprog = LAYERED_PROGRAMS[:2] if args.quick else LAYERED_PROGRAMS
        res["velocity"] = velocity_part(vprog, vp)
    if not args.no_morph:
        res["morph"] = morph_part(pack, (60,) if args.quick else (48, 60, 72))
    if args.cost_blocks:
        from morphbox.device.packs.format import grid_from_pack
        res["cost"] = cost_part(grid_from_pack(pack), args.cost_blocks)
    res["seconds"] = round(time.time() - t0, 1)
    print(f"fidelity: {pack.name} ({len(programs)} instruments x MIDI "
          f"{', '.join(map(str, pitches))}, velocity {VELOCITY}; {res['seconds']:.0f} s)\n")
    print(report(res))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
