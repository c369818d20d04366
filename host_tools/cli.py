"""``morphbox``: one command for the box and the laptop.

Heavy libraries are imported inside each subcommand, so the device side runs without the
host extras installed.
"""

from __future__ import annotations

import argparse
import sys
import time

from morphbox.kernels.grid import CORNERS

EPILOG = """\
examples:
  morphbox demo                         play the Bach demo, write out/demo.wav and out/demo.png
  morphbox render song.mid -o song.wav  render any MIDI file with a touch path
  morphbox play song.mid --path circle  play a MIDI file live on the audio output
  morphbox run --midi song.mid --loop   run the box's service with simulated input
  morphbox run --profile sim            the whole box on a laptop: simulated touch and controls
  morphbox run --midi-in                run the box's service played from MIDI keyboards
  morphbox record start|stop            record the running session (MIDI, morph, audio)
  morphbox keys init                    create this laptop's pack-signing key
  morphbox pair --device HOST --token T put this laptop's key on a box
  morphbox pack flash PACK --device HOST  install a signed pack on a box and play it
  morphbox run --api --bind 0.0.0.0:8750  the box's service with its web page and API
  morphbox pack build                   rebuild the default sound pack from FluidR3_GM
  morphbox pack info                    check a pack and list its instruments
  morphbox devices                      list audio outputs

touch paths: corners (tour of NW, NE, SE, SW), circle, figure-eight, or a CSV of time,x,y
(seconds; x 0 = west .. 1 = east, y 0 = north .. 1 = south).
"""


def _engine_config(args):
    from morphbox.device.engine.voices import EngineConfig
    return EngineConfig(block_size=args.block_size)


def cmd_demo(args) -> int:
    from morphbox.host_tools.demo import run_demo
    live = None if args.live == "auto" else args.live == "yes"
    s = run_demo(args.out, live=live, path=args.path, pack=args.pack)
    print(f"wrote {s['wav']} ({s['seconds']} s, peak {s['peak']:.2f}) and {s['png']}; "
          f"rendered in {s['render_seconds']} s"
          + ("; played live" if s["played_live"] else "; no audio output, not played live"))
    return 0


def cmd_render(args) -> int:
    """Render a MIDI file to WAV, streamed to the file. A malformed MIDI file is refused with
    one line (exit 2, from main: ``MidiFileError`` is a ``ValueError``); an output that cannot
    be written is exit 1."""
    from morphbox.host_tools.demo import render_file
    cfg = _engine_config(args)
    try:
        seconds, secs = render_file(args.midi, args.output, args.pack, args.path, cfg,
                                    morph_mode=args.morph_mode, mpe=args.mpe)
    except OSError as exc:
        print(f"error: cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.output} ({seconds:.1f} s) in {secs:.1f} s")
    return 0


def cmd_run(args) -> int:
    from morphbox.device.main import run
    return run(args)


def cmd_play(args) -> int:
    from morphbox.device.main import run
    from morphbox.device.midi.files import midi_events
    midi_events(args.midi)  # a malformed file: one line and exit 2 before the audio opens
    args.audio, args.seconds, args.loop, args.state_dir = "device", None, False, None
    args.midi_in = args.record = args.api = False
    args.midi_config = args.profile = None
    return run(args)


def cmd_record(args) -> int:
    from morphbox.host_tools.flash import FlashError, record
    try:
        st = record(args.action, args.device, token=args.token, state_dir=args.state_dir)
    except FlashError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    cur = st.get("current") or st.get("last") or {}
    print(("recording " if st.get("recording") else "stopped ") + str(cur.get("wav", "")))
    return 0


def cmd_devices(args) -> int:
    from morphbox.device.engine.audio import list_output_devices
    names = list_output_devices()
    print("\n".join(names) if names else "no audio output devices")
    return 0


def cmd_pack_build(args) -> int:
    from morphbox.host_tools.packbuild import InstrumentSpec, PackSettings, build_pack
    from morphbox.host_tools.sources import GM_PROGRAM_NAMES
    kw = {"name": args.name, "grid_size": args.grid_size, "velocity": args.velocity,
          "mode": args.mode, "model": args.model, "seed": args.seed,
          "anchor_corners": not args.no_anchor_corners, "soundfont": args.soundfont}
    if args.velocity_layers:
        kw["velocity_layers"] = tuple(args.velocity_layers)
    if args.mode == "neural" and not args.model:
        print("error: --mode neural needs --model (a .tflite with encode and decode "
              "signatures, or a training run directory)", file=sys.stderr)
        return 2
    if args.programs or args.wav:
        specs = [InstrumentSpec(GM_PROGRAM_NAMES[p], program=p) for p in args.programs or []]
        for item in args.wav or []:
            name, _, folder = item.rpartition("=")
            specs.append(InstrumentSpec(name or folder.rstrip("/").split("/")[-1],
                                        wav_folder=folder))
        if len(specs) < 4:
            print("error: a pack needs at least 4 instruments (one per corner)", file=sys.stderr)
            return 2
        kw["instruments"] = tuple(specs)
        kw["corners"] = {"NW": 0, "NE": 1, "SW": 2, "SE": 3}
    if args.corners:
        kw["corners"] = dict(zip(CORNERS, args.corners))
    if args.anchors:
        lo, hi, step = args.anchors
        kw["anchors"] = tuple(range(lo, hi + 1, step))
    t0 = time.time()
    out = args.out or f"{args.name}.pack"
    path = build_pack(out, PackSettings(**kw), jobs=args.jobs)
    print(f"built {path} in {time.time() - t0:.0f} s")
    return 0


def cmd_pack_info(args) -> int:
    from morphbox.device.packs.format import load_pack
    pack = load_pack(args.pack)
    m = pack.manifest
    size = sum(v["bytes"] for v in m["members"].values())
    t = pack.frame_times
    print(f"{pack.name}: {m['mode']} pack v{m['format_version']}, {size / 1e6:.1f} MB, "
          f"grid {m['grid_size']}x{m['grid_size']}, anchors {m['pitch_anchors'][0]}.."
          f"{m['pitch_anchors'][-1]} ({len(m['pitch_anchors'])}), {m['frames']} frames over "
          f"{t[-1]:g} s, loop {t[m['loop']['start']]:g}..{t[m['loop']['end']]:g} s, "
          f"velocity layers {', '.join(map(str, m['velocity_layers']))}")
    if pack.is_neural:
        anchored = m.get("neural_grid", {}).get("anchor_corners", False)
        print(f"model {m['model']['version']} ({m['model']['quantization']}, z "
              f"{m['model']['z_dims']}), corners "
              f"{'anchored to the instruments' if anchored else 'as decoded'}")
    inv = {v: k for k, v in pack.corners.items()}
    for i, name in enumerate(pack.instrument_names):
        print(f"  {i:2d} {name}" + (f"   <- corner {inv[i]}" if i in inv else ""))
    if args.picture:
        from morphbox.host_tools.plots import plot_grid
        print(f"wrote {plot_grid(pack, args.picture)}")
    return 0


def cmd_keys_init(args) -> int:
    from morphbox.host_tools.flash import keys_init
    path, kid = keys_init(force=args.force)
    print(f"wrote {path} (key {kid}); next, on the laptop: "
          f"morphbox pair --device HOST --token TOKEN")
    return 0


def cmd_pair(args) -> int:
    from morphbox.host_tools.flash import pair
    kid = pair(args.device, args.token, label=args.label)
    print(f"paired key {kid} with {args.device}; flash with: "
          f"morphbox pack flash PACK --device {args.device}")
    return 0


def cmd_token(args) -> int:
    from morphbox.device.packs.store import PackStore
    print(PackStore(args.state_dir).token)
    return 0


def cmd_pack_archive(args) -> int:
    from morphbox.host_tools.flash import archive
    out = archive(args.pack, args.output)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, signed)")
    return 0


def cmd_pack_flash(args) -> int:
    from morphbox.host_tools.flash import flash
    a = flash(args.pack, args.device, token=args.token, activate=not args.no_activate,
              show_progress=not args.quiet)
    print(f"installed {a['id']} ({a['bytes'] / 1e6:.1f} MB)"
          + (", now playing" if a.get("activated") else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from morphbox.device.packs.format import DEFAULT_MODEL, DEFAULT_PACK
    p = argparse.ArgumentParser(
        prog="morphbox", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="morphbox: a neural synthesizer that morphs between four instruments as "
                    "you slide a finger across its touch surface.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def engine_opts(sp, midi=True):
        if midi:
            sp.add_argument("midi", help="MIDI file to play")
        sp.add_argument("--pack", default=str(DEFAULT_PACK), help="sound pack directory "
                        "(default: the pack shipped with morphbox)")
        sp.add_argument("--path", default="corners", help="touch path: corners, circle, "
                        "figure-eight or a CSV file of time,x,y (default: corners)")
        sp.add_argument("--block-size", type=int, default=128, choices=(64, 128, 256),
                        help="audio block in frames at 48 kHz (default 128)")
        if midi:
            sp.add_argument("--mpe", choices=("auto", "on", "off"), default="auto",
                            help="MIDI Polyphonic Expression: auto (when the file has an MPE "
                            "Configuration Message, as recordings made on the box do), on "
                            "(channels 2-16 are member channels), off (plain MIDI)")

    sp = sub.add_parser("demo", help="play a Bach chorale morphing across the four corners")
    engine_opts(sp, midi=False)
    sp.add_argument("--out", default="out", help="folder for demo.wav and demo.png")
    sp.add_argument("--live", choices=("auto", "yes", "no"), default="auto",
                    help="play on the audio output (auto: when one exists)")
    sp.set_defaults(func=cmd_demo)

    sp = sub.add_parser("render", help="render a MIDI file to WAV")
    engine_opts(sp)
    sp.add_argument("-o", "--output", required=True, help="WAV file to write")
    sp.add_argument("--morph-mode", choices=("follow", "latch", "mpe"), default="follow",
                    help="where voices sit: on the touch path (follow), where it was at their "
                    "note-on (latch), or moved by their own CC 74 and pressure (mpe); a file "
                    "recorded on the box sets its own (docs/midi.md)")
    sp.set_defaults(func=cmd_render)

    sp = sub.add_parser("play", help="play a MIDI file live on the audio output")
    engine_opts(sp)
    sp.add_argument("--device", help="output device (index or part of its name)")
    sp.set_defaults(func=cmd_play)

    sp = sub.add_parser("run", help="run the box's service (audio, inputs) until stopped",
                        description="Run the device service (the same as python -m "
                        "morphbox.device). With --midi and --path it plays simulated input; "
                        "without an audio output it renders in real time into nothing, so the "
                        "service also runs on a laptop.")
    from morphbox.device.main import add_arguments
    add_arguments(sp)
    sp.set_defaults(func=cmd_run)

    kp = sub.add_parser("keys", help="the laptop's pack-signing key")
    ksub = kp.add_subparsers(dest="keys_command", metavar="ACTION")
    sp = ksub.add_parser("init", help="create the Ed25519 signing key "
                         "(~/.config/morphbox/signing_key.pem)")
    sp.add_argument("--force", action="store_true", help="replace an existing key")
    sp.set_defaults(func=cmd_keys_init)

    sp = sub.add_parser("pair", help="put this laptop's public key on a box")
    sp.add_argument("--device", required=True, help="the box: HOST or HOST:PORT (port 8750)")
    sp.add_argument("--token", required=True,
                    help="the box's pairing token (`morphbox token` on the box)")
    sp.add_argument("--label", help="name for this laptop on the box (default: host name)")
    sp.set_defaults(func=cmd_pair)

    sp = sub.add_parser("token", help="print this box's pairing token (run it on the box)")
    sp.add_argument("--state-dir", help="default $MORPHBOX_STATE_DIR or ~/.local/state/morphbox")
    sp.set_defaults(func=cmd_token)

    sp = sub.add_parser("record", help="start or stop recording on the running service",
                        description="Asks the running service's HTTP API (run --api) to start "
                        "or stop recording; the token is read from the state dir unless given.")
    sp.add_argument("action", choices=("start", "stop", "toggle"))
    sp.add_argument("--device", default="127.0.0.1:8750",
                    help="the service's API, HOST[:PORT] (default 127.0.0.1:8750)")
    sp.add_argument("--token", help="pairing token (default: the state dir's, or the one "
                    "`morphbox pair` saved for --device)")
    sp.add_argument("--state-dir", help="where the box keeps its token (default "
                    "$MORPHBOX_STATE_DIR, else ~/.local/state/morphbox)")
    sp.set_defaults(func=cmd_record)

    sp = sub.add_parser("devices", help="list audio output devices")
    sp.set_defaults(func=cmd_devices)

    pk = sub.add_parser("pack", help="build or inspect sound packs")
    psub = pk.add_subparsers(dest="pack_command", metavar="ACTION")
    sp = psub.add_parser("build", help="build a sound pack from instruments",
                         description="Render each instrument at every pitch anchor, analyse "
                         "it and build the morph grid. Default: 16 General MIDI instruments "
                         "from FluidR3_GM, 4 per corner.")
    sp.add_argument("--out", help="pack directory to write (default: ./NAME.pack; the "
                    "shipped pack is only rewritten when --out names it)")
    sp.add_argument("--name", default="default")
    sp.add_argument("--programs", type=int, nargs="+", metavar="GM",
                    help="General MIDI program numbers 0..127 (instead of the default 16)")
    sp.add_argument("--wav", action="append", metavar="[NAME=]FOLDER",
                    help="a folder of WAV one-shots as one instrument (repeatable)")
    sp.add_argument("--corners", type=int, nargs=4, metavar=CORNERS,
                    help="instrument index for each corner")
    sp.add_argument("--anchors", type=int, nargs=3, metavar=("LOW", "HIGH", "STEP"),
                    help="pitch anchors as MIDI range (default 24 96 4)")
    sp.add_argument("--grid-size", type=int, default=9)
    sp.add_argument("--velocity", type=int, default=100)
    sp.add_argument("--velocity-layers", type=int, nargs="+", metavar="VEL",
                    help="velocities each note is also analysed at (default 20 60 100 127)")
    sp.add_argument("--soundfont", metavar="SF2",
                    help="SoundFont of the --programs (default FluidR3_GM; a velocity-layered "
                    "one, e.g. /usr/share/sounds/sf3/MuseScore_General.sf3, gives notes that "
                    "change colour with velocity)")
    sp.add_argument("--jobs", type=int, default=None, help="worker processes (default: CPUs)")
    sp.add_argument("--mode", choices=("spectral", "neural"), default="neural",
                    help="neural (default): embeddings mixed and decoded by the model (the "
                    "pack carries the decoder); spectral: corners' frames mixed in dB")
    sp.add_argument("--model", metavar="PATH", default=str(DEFAULT_MODEL),
                    help="neural mode: a .tflite with encode and decode signatures (default "
                    "%(default)s) or a training run directory (exported to int8)")
    sp.add_argument("--no-anchor-corners", action="store_true",
                    help="neural mode: leave the corners as the decoder reconstructs them "
                    "(default: corners are the analysed instruments, see device/engine/corners.py)")
    sp.add_argument("--seed", type=int, default=0,
                    help="neural mode: int8 calibration seed when --model is a run directory")
    sp.set_defaults(func=cmd_pack_build)
    sp = psub.add_parser("info", help="verify a pack and describe it")
    sp.add_argument("pack", nargs="?", default=str(DEFAULT_PACK))
    sp.add_argument("--picture", metavar="PNG", help="also draw the morph grid")
    sp.set_defaults(func=cmd_pack_info)
    from morphbox.host_tools.model.cli import add_parsers
    add_parsers(sub)
    sp = psub.add_parser("archive", help="sign a pack into one .mbpack file")
    sp.add_argument("pack", help="pack directory")
    sp.add_argument("-o", "--output", help="archive file (default: PACK.mbpack beside it)")
    sp.set_defaults(func=cmd_pack_archive)
    sp = psub.add_parser("flash", help="install a pack on a box and play it",
                         description="Sign (if a directory), upload with a progress bar, "
                         "verify on the box, activate. See docs/flashing.md.")
    sp.add_argument("pack", help="pack directory or .mbpack file")
    sp.add_argument("--device", required=True, help="HOST or HOST:PORT (port 8750)")
    sp.add_argument("--token", help="pairing token (default: the one `morphbox pair` saved)")
    sp.add_argument("--no-activate", action="store_true", help="install only")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")
    sp.set_defaults(func=cmd_pack_flash)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    from morphbox.device.packs.format import PackError
    from morphbox.hardware.errors import HardwareError
    from morphbox.host_tools.flash import FlashError
    try:
        return args.func(args)
    except FlashError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except HardwareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # ProfileError, TouchPathError, bad settings: say why, no trace
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except PackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
