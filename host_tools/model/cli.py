"""``morphbox dataset build`` and ``morphbox model train|export|eval``: argparse wiring.

:func:`add_parsers` adds the ``dataset`` and ``model`` commands to the ``morphbox`` sub-parser
set; each command function returns a process exit code (0 ok, 1 failure, 2 bad settings) and
prints the reason of a refusal without a traceback. TensorFlow is imported only when a
command that needs it runs.
"""

from __future__ import annotations

import argparse
import sys
import time
import tomllib
from pathlib import Path


def _fail(exc: Exception, code: int = 1) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return code


def cmd_dataset_build(args) -> int:
    from morphbox.host_tools.model.dataset import DatasetConfig, DatasetError, build_dataset
    from morphbox.host_tools.sources import SourceError
    try:
        settings = {}
        if args.config:
            settings = tomllib.loads(Path(args.config).read_text())
        for key in ("programs", "pitches", "velocities", "seed"):
            if getattr(args, key) is not None:
                settings[key] = getattr(args, key)
        if args.wav:
            settings["wav_folders"] = args.wav
            settings.setdefault("programs", [])
        config = DatasetConfig.from_dict(settings)
        t0 = time.time()
        out = build_dataset(args.out, config)
    except (OSError, ValueError) as exc:
        return _fail(exc, 2)
    except (DatasetError, SourceError) as exc:
        return _fail(exc)
    print(f"built {out} in {time.time() - t0:.0f} s")
    return 0


def cmd_model_train(args) -> int:
    from morphbox.host_tools.model.dataset import DatasetError
    from morphbox.host_tools.model.train import TrainConfig, TrainError, load_config, train
    try:
        overrides = {"dataset": args.dataset, "run_dir": args.run_dir, "steps": args.steps,
                     "seed": args.seed}
        if args.config:
            config = load_config(args.config, **overrides)
        else:
            config = TrainConfig.from_dict({k: v for k, v in overrides.items()
                                            if v is not None})
        history = train(config)
    except (TrainError, DatasetError) as exc:
        return _fail(exc)
    last = [h for h in history if "loss" in h]
    if last:
        print(f"trained to step {last[-1]['step']}: loss {last[-1]['loss']:.4f}; "
              f"weights in {config.run_dir}")
    return 0


def cmd_model_export(args) -> int:
    from morphbox.host_tools.model.dataset import DatasetError, load_split
    from morphbox.host_tools.model.export import ExportError, export_tflite, representative_samples
    from morphbox.host_tools.model.train import TrainError, load_models
    try:
        encoder, decoder, config = load_models(args.run_dir)
        rep = None
        if args.quantization == "int8":
            feats = load_split(args.dataset or config.dataset, "train")
            rep = representative_samples(encoder, feats, n=args.calibration)
        path = export_tflite(encoder, decoder, args.out, args.quantization, rep,
                             tuple(args.signatures))
    except (TrainError, DatasetError, ExportError) as exc:
        return _fail(exc)
    print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB, {args.quantization})")
    return 0


def cmd_model_eval(args) -> int:
    from morphbox.host_tools.model.dataset import DatasetError
    from morphbox.host_tools.model.evaluate import EvalError, evaluate
    from morphbox.host_tools.model.train import TrainError
    from morphbox.host_tools.sources import SourceError
    try:
        res = evaluate(args.models, args.dataset, args.out, max_notes=args.notes,
                       morph=tuple(args.morph) if args.morph else None, seed=args.seed,
                       pitch=not args.no_pitch)
    except (EvalError, DatasetError, TrainError, SourceError) as exc:
        return _fail(exc)
    for label, r in res["models"].items():
        lsd = res["methods"][label]["lsd"]["mean"]
        print(f"{label}: mean LSD {lsd:.2f} dB ({r['lsd_ratio_mean']:.2f}x the bound)")
    print(f"wrote {args.out} ({res['notes']} held-out notes, {res['seconds']:.0f} s)")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``dataset build`` and ``model train`` / ``export`` / ``eval`` to ``sub``."""
    ds = sub.add_parser("dataset", help="build the NSynth-style training dataset")
    dsub = ds.add_subparsers(dest="dataset_command", metavar="ACTION")
    sp = dsub.add_parser("build", help="render + analyse notes into a feature dataset",
                         description="Render GM programs from FluidR3_GM (default: all melodic "
                         "programs 0..111, pitches 24..96 step 4, velocities 75 and 127) "
                         "and/or WAV folders, analyse them and store the features.")
    sp.add_argument("--out", default="out/dataset", help="dataset directory")
    sp.add_argument("--config", metavar="TOML", help="dataset settings (DatasetConfig keys)")
    sp.add_argument("--programs", type=int, nargs="+", metavar="GM")
    sp.add_argument("--pitches", type=int, nargs="+", metavar="MIDI")
    sp.add_argument("--velocities", type=int, nargs="+", metavar="VEL")
    sp.add_argument("--wav", action="append", metavar="FOLDER",
                    help="a folder of one-shots as one instrument (repeatable)")
    sp.add_argument("--seed", type=int, help="seed of the instrument split")
    sp.set_defaults(func=cmd_dataset_build)

    md = sub.add_parser("model", help="train and export the neural timbre model")
    msub = md.add_subparsers(dest="model_command", metavar="ACTION")
    sp = msub.add_parser("train", help="train (or resume) the autoencoder",
                         description="Train from a TOML/JSON config (TrainConfig keys, "
                         "[model] table for the network); resumes from the run directory's "
                         "checkpoints.")
    sp.add_argument("--config", metavar="FILE")
    sp.add_argument("--dataset")
    sp.add_argument("--run-dir")
    sp.add_argument("--steps", type=int)
    sp.add_argument("--seed", type=int)
    sp.set_defaults(func=cmd_model_train)
    sp = msub.add_parser("export", help="export a trained run to TFLite")
    sp.add_argument("run_dir")
    sp.add_argument("--out", required=True, help=".tflite file to write")
    sp.add_argument("--quantization", choices=("float32", "int8"), default="int8")
    sp.add_argument("--signatures", nargs="+", default=["decode", "encode"],
                    choices=("decode", "encode"))
    sp.add_argument("--dataset", help="calibration data (default: the run's dataset)")
    sp.add_argument("--calibration", type=int, default=200, help="calibration samples")
    sp.set_defaults(func=cmd_model_export)
    sp = msub.add_parser("eval", help="evaluate models on held-out instruments; write the report",
                         description="Reconstruct the test-split instruments' notes with each "
                         "model (run directory or .tflite with encode+decode) and compare with "
                         "the analysis-resynthesis bound and the spectral mode; writes a "
                         "Markdown report with PNGs.")
    sp.add_argument("models", nargs="+", help="run directories and/or .tflite files")
    sp.add_argument("--dataset", default="out/dataset")
    sp.add_argument("--out", default="docs/model-report.md", help="report (.md); PNGs go to "
                    "the folder of the same name")
    sp.add_argument("--notes", type=int, help="evaluate a seeded subset of the test notes")
    sp.add_argument("--morph", nargs=2, metavar="INSTRUMENT",
                    help="the two test instruments of the morph figure")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--no-pitch", action="store_true", help="skip the pyin pitch errors")
    sp.set_defaults(func=cmd_model_eval)
