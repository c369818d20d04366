"""The device starts itself: ``python -m morphbox.device`` (and ``morphbox run``, which calls
:func:`run`).

:func:`build` makes a :class:`morphbox.device.service.Service` from options: the pack (the
state dir's active pack when the API runs), the audio output, a hardware profile
(:mod:`morphbox.device.panel`), MIDI inputs and the recorder (:mod:`morphbox.device.midi`), the
HTTP API (:mod:`morphbox.device.api`), and simulated input (a MIDI file, a touch path).
:func:`add_arguments` declares those options once, for this module's own command line and for
the laptop CLI's ``morphbox run``.

Imports: the device package only (no host tools, no TensorFlow).
"""

from __future__ import annotations

import argparse
import logging
import sys

from morphbox.device.engine.voices import EngineConfig
from morphbox.device.service import Service, ServiceConfig

log = logging.getLogger("morphbox")


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The service's options (shared by ``python -m morphbox.device`` and ``morphbox run``)."""
    p.add_argument("--pack", help="sound pack directory (default: the state dir's active "
                   "pack with --api, else the pack shipped with morphbox)")
    p.add_argument("--block-size", type=int, default=128, choices=(64, 128, 256),
                   help="audio block in frames at 48 kHz (default 128)")
    p.add_argument("--midi", help="play this MIDI file as input")
    p.add_argument("--path", help="simulated touch path: corners, circle, figure-eight or a "
                   "CSV file of time,x,y")
    p.add_argument("--loop", action="store_true", help="repeat the MIDI file")
    p.add_argument("--mpe", choices=("auto", "on", "off"), default="auto",
                   help="--midi file: MPE when it has an MPE Configuration Message (auto), "
                   "always (on) or never (off)")
    p.add_argument("--seconds", type=float, help="stop after this long")
    p.add_argument("--audio", choices=("auto", "device", "none"), default="auto")
    p.add_argument("--device", help="output device (index or part of its name)")
    p.add_argument("--audio-process", choices=("auto", "yes", "no"), default="auto",
                   help="render in an audio process of its own with real-time priority "
                   "(auto: yes on a Raspberry Pi; $MORPHBOX_AUDIO_PROCESS overrides auto)")
    p.add_argument("--rt-priority", type=int, default=70, metavar="N",
                   help="SCHED_FIFO priority of the audio process, 1..99 (0: normal "
                   "scheduling; default 70)")
    p.add_argument("--profile", help="hardware profile: sim (simulated touch surface, pots, "
                   "encoders and OLED), trill, nsynth-super, or a TOML file "
                   "(docs/hardware.md)")
    p.add_argument("--midi-in", action="store_true",
                   help="play from MIDI inputs: USB (ALSA), JACK, DIN (see docs/midi.md)")
    p.add_argument("--midi-config", help="MIDI TOML config (channel, CC map, DIN port)")
    p.add_argument("--record", action="store_true",
                   help="record MIDI, morph and audio from the start")
    p.add_argument("--api", action="store_true", help="serve the HTTP API and web page for "
                   "flashing packs (docs/flashing.md); plays the state dir's active pack")
    p.add_argument("--bind", default="127.0.0.1:8750", help="API address HOST[:PORT] "
                   "(default 127.0.0.1:8750; 0.0.0.0:8750 to reach it from the LAN)")
    p.add_argument("--state-dir", help="packs, keys, token, patches, recordings (default "
                   "$MORPHBOX_STATE_DIR, else ~/.local/state/morphbox)")
    return p


def build(args: argparse.Namespace) -> tuple[Service, float | None]:
    """The service ``args`` (:func:`add_arguments`) describe, not started, and how long to run
    it (None: until stopped). Raises ``PackError``, ``HardwareError``, ``ProfileError``,
    ``MidiConfigError``, ``AudioError``, ``OSError`` (the API address)."""
    service = Service(ServiceConfig(pack=args.pack, engine=EngineConfig(
        block_size=args.block_size), audio=args.audio, device=args.device,
        state_dir=args.state_dir, store=bool(args.api),
        audio_process=getattr(args, "audio_process", "auto"),
        rt_priority=getattr(args, "rt_priority", 70)))
    seconds = args.seconds
    if args.midi:
        from morphbox.device.midi.files import MidiFilePart, midi_events
        events = midi_events(args.midi)
        service.add(MidiFilePart(service.engine, events, loop=args.loop,
                                 mpe=getattr(args, "mpe", "auto")))
        if seconds is None and not args.loop:
            seconds = (events[-1][0] if events else 0.0) + 2.0
    if args.path:
        from morphbox.device.panel.paths import TouchPathPart, touch_path
        service.add(TouchPathPart(service.controls, touch_path(args.path)))
    if args.profile:
        from morphbox.device.panel.build import attach as attach_panel
        from morphbox.device.panel.profiles import load_profile
        attach_panel(service, load_profile(args.profile))
    if args.midi_in or args.record:
        from morphbox.device.midi.router import attach as attach_midi
        attach_midi(service, args.midi_config)
    if args.api:
        from morphbox.device.api.server import attach_api, parse_bind
        attach_api(service, service.store, *parse_bind(args.bind))
    return service, seconds


def run(args: argparse.Namespace) -> int:
    """Build the service, run it until ``--seconds`` pass or SIGINT/SIGTERM, print a summary."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    service, seconds = build(args)
    if args.record:
        service.start_recording()
    if args.api:
        print(f"HTTP API and web page on http://{args.bind}/ (pairing token: "
              f"morphbox token)")
    print(f"morphbox running on {service.output.device_name} with pack '{service.pack.name}'"
          + (f" for {seconds:.0f} s" if seconds else "; Ctrl-C stops"), flush=True)
    st = service.run(seconds)
    print(f"played {st['blocks']} blocks: {st['late_blocks']} late, {st['xruns']} xruns, "
          f"{st['errors']} errors, max render {st['max_render_ms']:.2f} ms, "
          f"{st['voices']} voices sounding at the end")
    ap = st.get("audio_process")
    if ap:
        print(f"audio process: pid {ap['pid']}, "
              + (f"SCHED_FIFO {ap['rt_priority']}" if ap["sched_fifo"] else "normal scheduling")
              + (", memory locked" if ap["mlocked"] else ", memory not locked")
              + f", {ap['restarts']} restarts, render mean {ap['render_mean_ms']:.2f} ms"
              + (f", {ap['events_dropped']} events dropped" if ap.get("events_dropped") else ""))
    return 0


def main(argv=None) -> int:
    """``python -m morphbox.device [options]``: run the box's service."""
    from morphbox.device.midi.router import MidiConfigError
    from morphbox.device.packs.format import PackError
    from morphbox.hardware.errors import HardwareError
    parser = add_arguments(argparse.ArgumentParser(
        prog="python -m morphbox.device", description="Run the morphbox device service: "
        "audio engine, panel, MIDI, recorder and HTTP API."))
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (PackError, HardwareError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (ValueError, MidiConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
