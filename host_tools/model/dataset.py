"""An NSynth-style note dataset stored as full-band analysis features.

Notes are rendered from FluidR3_GM (:class:`morphbox.host_tools.sources.SoundFontRenderer`:
4.5 s at 48 kHz, held 4 s) for a list of GM programs x pitches x velocities, or loaded from
WAV folders (:func:`morphbox.host_tools.sources.load_wav_folder`, one folder = one
instrument), analysed whole (attack, sustain, release tail) with
:func:`morphbox.kernels.analysis.analyze_note` at the frame times of
:func:`morphbox.kernels.features.frame_times` up to ``seconds`` and stored as features only
(like a pack; no audio). Each instrument's notes share one gain (its loudest note at the
highest velocity peaks at 0 dBFS), as in a pack: levels across pitch and velocity are kept.

``out/dataset.json``
    ``{"format": "morphbox-dataset", "version": 2, "frame_times", "sample_rate", "frames",
    "harmonics", "envelope_bands", "noise_bands", "instruments": [{"name", "source", "split",
    "notes", "gain_db"}], "shards": [{"file", "notes"}], "skipped": [...], "settings": {...}}``
``out/shard-00000.npz`` ...  (``np.load(allow_pickle=False)``), ``M`` notes of ``F`` frames:

=================  ==============  ===================================================
``f0_hz``          float32 (M,)    the note's f0, Hz (MIDI pitch, refined by pyin if asked)
``loudness_db``    float32 (M, F)  A-weighted loudness, dB
``harmonics``      uint8 (M, F, K) partial levels, dB codes (:mod:`morphbox.kernels.quant`)
``envelope``       uint8 (M, F, E) harmonic envelope, dB codes
``noise``          uint8 (M, F, B) noise band gains, dB codes
``pitch``          int16 (M,)      MIDI pitch
``velocity``       int16 (M,)      MIDI velocity
``instrument``     int32 (M,)      index into ``instruments``
=================  ==============  ===================================================

The split is by instrument: every note of an instrument is in the same split, so test
instruments are never seen in training. Notes that render silence (outside an instrument's
range) are skipped and listed under ``skipped``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from morphbox.kernels.analysis import analyze_note
from morphbox.kernels.features import (
    DB_FLOOR,
    N_ENVELOPE,
    N_HARMONICS,
    N_NOISE_BANDS,
    frame_times,
    with_gain,
)
from morphbox.kernels.pitch import midi_to_hz
from morphbox.kernels.quant import dequantize_db, quantize_db

FORMAT = "morphbox-dataset"
VERSION = 2
SPLITS = ("train", "valid", "test")
MELODIC_PROGRAMS = tuple(range(0, 112))  # GM programs before percussion / sound effects


class DatasetError(Exception):
    """A dataset cannot be built or read; the message names the path and the reason."""


@dataclass(frozen=True)
class DatasetConfig:
    """What to render. ``programs``: GM programs (0..127); ``pitches``/``velocities``: MIDI.

    ``valid_fraction``/``test_fraction`` of the instruments (at least one each when there
    are three or more instruments) go to those splits, chosen by a permutation seeded with
    ``seed``; ``test_instruments`` (names) forces instruments into the test split.
    ``pitch_check``: refine f0 by pyin (slow; worth it for WAV recordings). ``seconds``: the
    frames of each note go to there (4.4 s: the note, its release and no silence).
    ``jobs``: worker processes (0: one per CPU).
    """

    programs: tuple = MELODIC_PROGRAMS
    pitches: tuple = tuple(range(24, 97, 4))
    velocities: tuple = (75, 127)
    wav_folders: tuple = ()
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    test_instruments: tuple = ()
    seed: int = 0
    shard_notes: int = 512
    pitch_check: bool = False
    soundfont: str | None = None
    seconds: float = 4.4
    jobs: int = 0

    @classmethod
    def from_dict(cls, d: dict) -> DatasetConfig:
        d = dict(d)
        for key in ("programs", "pitches", "velocities", "wav_folders", "test_instruments"):
            if key in d:
                d[key] = tuple(d[key])
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise DatasetError(f"unknown dataset setting(s): {sorted(unknown)}")
        return cls(**d)


@dataclass
class Features:
    """Features of ``M`` notes, decoded to physical units (float32).

    ``f0_hz`` (M,), ``loudness_db`` (M, F), ``harmonic_db`` (M, F, K) partial levels in
    dB (-120 = silent), ``envelope_db`` (M, F, E), ``noise_db`` (M, F, B),
    ``pitch``/``velocity``/``instrument`` (M,), ``frame_times`` (F,) s.
    """

    f0_hz: np.ndarray
    loudness_db: np.ndarray
    harmonic_db: np.ndarray
    envelope_db: np.ndarray
    noise_db: np.ndarray
    pitch: np.ndarray
    velocity: np.ndarray
    instrument: np.ndarray
    frame_times: np.ndarray

    def __len__(self) -> int:
        return len(self.f0_hz)


def _instrument_rows(job) -> tuple[list[dict], list[dict], float]:
    """Render (or load) and analyse one instrument's notes: ``(rows, skipped, gain_db)``,
    levels normalised per instrument (its loudest note peaks at 0 dBFS), dB codes."""
    from morphbox.host_tools.sources import SOURCE_SAMPLE_RATE, SoundFontRenderer, SourceError
    inst, kind, what, config = job
    times = frame_times(config.seconds)
    rows, skipped = [], []

    def analyse(audio, pitch, vel, check):
        f0 = float(midi_to_hz(pitch))
        if check:
            from morphbox.host_tools.packbuild import refined_f0
            f0, _ = refined_f0(audio, SOURCE_SAMPLE_RATE, pitch)
        feats = analyze_note(audio, SOURCE_SAMPLE_RATE, f0, times)
        rows.append({"f0_hz": np.float32(f0), "loudness_db": feats.loudness_db,
                     "harmonics": feats.harmonics_db, "envelope": feats.envelope_db,
                     "noise": feats.noise_db, "pitch": np.int16(pitch),
                     "velocity": np.int16(vel), "instrument": np.int32(inst),
                     "peak": np.float32(np.max(np.abs(audio)))})

    if kind == "sf2":
        with SoundFontRenderer(config.soundfont) as renderer:
            for pitch in config.pitches:
                for vel in config.velocities:
                    try:
                        note = renderer.render_note(what, int(pitch), int(vel))
                    except SourceError as exc:
                        skipped.append({"instrument": inst, "pitch": int(pitch),
                                        "velocity": int(vel), "reason": str(exc)})
                        continue
                    analyse(note.audio, int(pitch), int(vel), config.pitch_check)
    else:
        from morphbox.host_tools.sources import load_wav_folder
        for note in load_wav_folder(what):
            analyse(note.audio, note.pitch, note.velocity, True)
    gain = -20.0 * np.log10(max([float(r.pop("peak")) for r in rows] + [1e-9]))
    for r in rows:
        r["loudness_db"] = np.maximum(r["loudness_db"] + np.float32(gain), DB_FLOOR)
        for key in ("harmonics", "envelope", "noise"):
            r[key] = quantize_db(with_gain(r[key], gain))
    return rows, skipped, round(float(gain), 3)


def _assign_splits(names: list[str], config: DatasetConfig) -> list[str]:
    n = len(names)
    split = ["train"] * n
    forced = set(config.test_instruments)
    missing = forced - set(names)
    if missing:
        raise DatasetError(f"test_instruments not in the dataset: {sorted(missing)}")
    order = [int(i) for i in np.random.default_rng(config.seed).permutation(n)
             if names[i] not in forced]
    n_test = max(int(round(config.test_fraction * n)) - len(forced), 0)
    n_valid = int(round(config.valid_fraction * n))
    if n >= 3:
        n_test = max(n_test, 0 if forced else 1)
        n_valid = max(n_valid, 1)
    for i in range(n):
        if names[i] in forced:
            split[i] = "test"
    for i in order[:n_test]:
        split[i] = "test"
    for i in order[n_test:n_test + n_valid]:
        split[i] = "valid"
    return split


def build_dataset(out: str | os.PathLike, config: DatasetConfig = DatasetConfig(),
                  progress: bool = True) -> Path:
    """Render/load, analyse and store the notes of ``config`` in directory ``out``.

    Shows a rich progress bar (``progress``). Writes shards then ``dataset.json`` last (a
    directory without it is incomplete). Returns ``out``. Raises :class:`DatasetError` for a
    bad setting or an instrument with no playable note, ``morphbox.host_tools.sources.SourceError``
    for an unusable SoundFont / WAV folder.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from morphbox.host_tools.sources import GM_PROGRAM_NAMES, load_wav_folder

    out = Path(out)
    bad = [p for p in config.programs if not 0 <= int(p) <= 127]
    if bad:
        raise DatasetError(f"GM programs must be 0..127, got {bad}")
    out.mkdir(parents=True, exist_ok=True)
    if (out / "dataset.json").exists():
        (out / "dataset.json").unlink()
    instruments: list[dict] = []
    jobs: list[tuple] = []  # (instrument index, kind, program or folder)
    for p in config.programs:
        instruments.append({"name": GM_PROGRAM_NAMES[int(p)],
                            "source": {"kind": "soundfont", "program": int(p)}})
        jobs.append((len(instruments) - 1, "sf2", int(p)))
    for folder in config.wav_folders:
        notes = load_wav_folder(folder)
        instruments.append({"name": notes[0].instrument,
                            "source": {"kind": "wav_folder", "folder": str(folder)}})
        jobs.append((len(instruments) - 1, "wav", str(folder)))
    names = [i["name"] for i in instruments]
    if len(set(names)) != len(names):
        raise DatasetError(f"instrument names must be unique, got {names}")
    rows: list[dict] = []
    skipped: list[dict] = []
    shards: list[dict] = []
    counts = [0] * len(instruments)
    gains = [0.0] * len(instruments)

    def flush():
        if not rows:
            return
        name = f"shard-{len(shards):05d}.npz"
        arrays = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
        np.savez(out / name, **arrays)
        shards.append({"file": name, "notes": len(rows)})
        rows.clear()

    columns = (*Progress.get_default_columns()[:2], BarColumn(), MofNCompleteColumn(),
               TimeRemainingColumn())
    work = [(i, kind, what, config) for i, kind, what in jobs]
    workers = config.jobs or os.cpu_count() or 1
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("rendering + analysing instruments", total=len(work))
        results = _map(work, workers, lambda: bar.advance(task))
    for inst_rows, inst_skipped, gain in results:
        skipped += [dict(s, instrument=names[s["instrument"]]) for s in inst_skipped]
        if not inst_rows:
            continue
        inst = int(inst_rows[0]["instrument"])
        gains[inst] = gain
        for r in inst_rows:
            rows.append(r)
            counts[inst] += 1
            if len(rows) >= config.shard_notes:
                flush()
    flush()
    empty = [names[i] for i, c in enumerate(counts) if c == 0]
    if empty:
        raise DatasetError(f"{out}: no playable note for instrument(s) {empty}")
    splits = _assign_splits(names, config)
    for inst, split, count, gain in zip(instruments, splits, counts, gains):
        inst.update(split=split, notes=count, gain_db=gain)
    times = frame_times(config.seconds)
    index = {"format": FORMAT, "version": VERSION,
             "frame_times": [round(float(t), 6) for t in times],
             "sample_rate": 48000, "frames": len(times),
             "harmonics": N_HARMONICS, "envelope_bands": N_ENVELOPE,
             "noise_bands": N_NOISE_BANDS,
             "instruments": instruments, "shards": shards, "skipped": skipped,
             "settings": {k: list(v) if isinstance(v, tuple) else v
                          for k, v in asdict(config).items()}}
    (out / "dataset.json").write_text(json.dumps(index, indent=1))
    return out


def _map(work: list, workers: int, advance) -> list:
    """``_instrument_rows`` over ``work`` in ``workers`` processes (spawned: see
    :func:`morphbox.host_tools.packbuild.build_pack`), in order."""
    if workers <= 1 or len(work) <= 1:
        out = []
        for w in work:
            out.append(_instrument_rows(w))
            advance()
        return out
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    out: list = [None] * len(work)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_instrument_rows, w): i for i, w in enumerate(work)}
        for fut in as_completed(futures):
            out[futures[fut]] = fut.result()
            advance()
    return out


def read_index(path: str | os.PathLike) -> dict:
    """``dataset.json`` of the dataset directory ``path``; raises :class:`DatasetError`."""
    p = Path(path) / "dataset.json"
    try:
        index = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{p}: cannot read the dataset index ({exc})") from exc
    if index.get("format") != FORMAT or index.get("version") != VERSION:
        raise DatasetError(f"{p}: not a {FORMAT} v{VERSION} index")
    return index


def load_split(path: str | os.PathLike, split: str) -> Features:
    """All notes of ``split`` (``train``/``valid``/``test``, or ``all``) as :class:`Features`.

    Raises :class:`DatasetError` for an unknown split, a missing shard or an empty split.
    """
    if split not in (*SPLITS, "all"):
        raise DatasetError(f"unknown split {split!r}; use one of {SPLITS + ('all',)}")
    index = read_index(path)
    keep = np.array([split in ("all", i["split"]) for i in index["instruments"]])
    parts: dict[str, list] = {}
    for shard in index["shards"]:
        try:
            with np.load(Path(path) / shard["file"], allow_pickle=False) as z:
                mask = keep[z["instrument"]]
                for k in z.files:
                    parts.setdefault(k, []).append(z[k][mask])
        except (OSError, ValueError, KeyError) as exc:
            raise DatasetError(f"{path}: cannot read {shard['file']} ({exc})") from exc
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    if not arrays or len(arrays["f0_hz"]) == 0:
        raise DatasetError(f"{path}: the {split!r} split has no notes")
    return Features(f0_hz=arrays["f0_hz"].astype(np.float32),
                    loudness_db=arrays["loudness_db"].astype(np.float32),
                    harmonic_db=dequantize_db(arrays["harmonics"]),
                    envelope_db=dequantize_db(arrays["envelope"]),
                    noise_db=dequantize_db(arrays["noise"]),
                    pitch=arrays["pitch"], velocity=arrays["velocity"],
                    instrument=arrays["instrument"],
                    frame_times=np.asarray(index["frame_times"], np.float64))
