"""MIDI latency and a MIDI storm through JACK: virtual MIDI port -> router -> engine -> stream.

    .venv/bin/python bench/midi_latency.py [--notes 200] [--seconds 60] [--rate 1000]
                                           [--audio-process no,yes]

Each ``--audio-process`` value is one run: ``no`` renders in this process (the engine and its
PyAudio stream beside the router), ``yes`` in an audio process of its own
(:class:`morphbox.device.engine.process.AudioProcess`, SCHED_FIFO where allowed), the box's
way: the router then sends the note through the shared-memory event ring, and the first
sounding block's render time is the audio process's (``AudioProcess.tap_time``).

Starts its own ``jackd --no-realtime -d dummy -r 48000 -p 128`` (a real-time-paced server
without a sound card), opens the engine's PyAudio stream on it (128-frame blocks) and the
MIDI input exactly as the box does (:func:`morphbox.device.midi.inputs.rtmidi_scanner` over JACK ->
:class:`morphbox.device.midi.router.MidiRouter`), and plays it from an rtmidi virtual JACK MIDI
port.

1. Latency, over ``--notes`` notes: the time from ``send_message(note_on)`` to the end of the
   render of the first block holding a non-zero sample (an engine tap, timestamped with
   ``perf_counter``), plus PortAudio's reported output latency (the block still has to leave
   through the stream's buffer). Target: <= 2 blocks + 1 ms (6.33 ms).
   The ``MPE bends`` row does the same for a per-note pitch bend: a note held on an MPE member
   channel (the default lower zone), then +2 semitones on that channel; the time to the end of
   the render of the first block whose oscillator runs at the new pitch (the voice's f0 as
   the engine rendered it, moved by more than 1 cent: the glide's first step, 41 % of the way).
2. Storm: ``--rate`` MIDI messages per second for ``--seconds`` (notes on/off, morph CCs, pitch
   bend, sustain pedal, clock): late blocks (render longer than a block period), xruns, render
   errors, and stuck notes (voices still sounding / keys still held 1.5 s after the last
   note-off). Target 0.

Prints markdown tables.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

SR, BLOCK = 48000, 128


def start_jackd(name: str, realtime: bool = False) -> subprocess.Popen:
    """``jackd -d dummy`` at 48 kHz / 128 frames named ``name``; ``realtime``: with
    real-time scheduling (``-R``: its clock thread is not starved by a busy machine; needs
    the privilege, as on the box), else ``--no-realtime``."""
    jackd = shutil.which("jackd")
    if jackd is None:
        sys.exit("jackd is not installed (apt-get install jackd2)")
    env = dict(os.environ, JACK_NO_AUDIO_RESERVATION="1")
    log = open(Path(tempfile.gettempdir()) / f"{name}.log", "wb")  # noqa: SIM115
    cmd = [jackd, "-n", name, "-R" if realtime else "--no-realtime", "-d", "dummy", "-r",
           str(SR), "-p", str(BLOCK)]
    setpriv = shutil.which("setpriv")
    if setpriv is not None:  # jackd goes with the bench, however the bench ends
        cmd = [setpriv, "--pdeathsig", "TERM", *cmd]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT, env=env, start_new_session=True)
    env["JACK_DEFAULT_SERVER"] = name
    deadline = time.monotonic() + 20
    while True:
        res = subprocess.run(["jack_lsp"], env=env, capture_output=True, text=True, check=False)
        if res.returncode == 0 and "system:playback_1" in res.stdout:
            break
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            sys.exit(f"jackd did not start (log: {log.name})")
        time.sleep(0.1)
    os.environ["JACK_DEFAULT_SERVER"] = name
    return proc


class FirstSound:
    """Engine tap: remembers when the first non-silent block after :meth:`arm` was rendered.
    Runs in the audio callback: compares, stores a float, returns. ``clock``: when the block
    was rendered (default: now; an audio process's taps come later and carry the time)."""

    def __init__(self, clock=time.perf_counter):
        self.clock = clock
        self.armed = False
        self.t_hit = 0.0

    def arm(self):
        self.t_hit = 0.0
        self.armed = True

    def __call__(self, block):
        if self.armed and block.any():
            self.t_hit = self.clock()
            self.armed = False


def wait_for(pred, timeout):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.0005)
    return True


# The keyboard: a separate process, as a real keyboard is. Sending JACK MIDI from the service's
# own process can deadlock with the audio callback over the GIL: rtmidi's send_message holds
# the GIL and, with the JACK ring buffer full, waits for a JACK cycle that cannot finish while
# our audio callback waits for the GIL; jackd breaks it after ~1 s (see docs/midi.md).
# Commands on stdin, one per line; answers on stdout. perf_counter is CLOCK_MONOTONIC, the
# same clock in both processes, so send times are comparable with the engine tap's.
_KEYBOARD = r"""
import random, sys, time
import rtmidi
out = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, name="bench-kbd")
out.open_virtual_port("keys")
print("ready", flush=True)
for line in sys.stdin:
    cmd, *args = line.split()
    if cmd == "send":
        t = time.perf_counter()
        out.send_message([int(a) for a in args])
        print("t", repr(t), flush=True)
    elif cmd == "storm":
        seconds, rate, seed = float(args[0]), int(args[1]), int(args[2])
        rng = random.Random(seed)
        held, sent, pedal = set(), 0, False
        batch = max(1, rate // 200)  # send in 5 ms batches
        period = batch / rate
        t_next = time.perf_counter()
        t_end = t_next + seconds
        while time.perf_counter() < t_end:
            for _ in range(batch):
                r = rng.random()
                if r < 0.35 or not held:
                    n = rng.randrange(36, 96)
                    msg = [0x90, n, rng.randrange(1, 128)]
                    held.add(n)
                elif r < 0.70:
                    n = rng.choice(sorted(held))
                    held.discard(n)
                    msg = [0x80, n, 0] if rng.random() < 0.5 else [0x90, n, 0]
                elif r < 0.85:
                    msg = [0xB0, rng.choice((16, 17, 1)), rng.randrange(128)]
                elif r < 0.95:
                    v = rng.randrange(16384)
                    msg = [0xE0, v & 127, v >> 7]
                elif r < 0.97:
                    pedal = not pedal
                    msg = [0xB0, 64, 127 if pedal else 0]
                else:
                    msg = [0xF8]  # clock: filtered at the port, harmless
                out.send_message(msg)
                sent += 1
            t_next += period
            delay = t_next - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        for n in sorted(held):
            out.send_message([0x80, n, 0])
            sent += 1
        out.send_message([0xB0, 64, 0])
        out.send_message([0xE0, 0, 64])
        print("sent", sent + 2, flush=True)
    elif cmd == "quit":
        break
out.close_port()
"""


class Keyboard:
    """The :data:`_KEYBOARD` process: a virtual JACK MIDI output port named ``keys``."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", _KEYBOARD], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)
        if self._answer() != ["ready"]:
            sys.exit("the keyboard process did not start")

    def _answer(self) -> list[str]:
        return self.proc.stdout.readline().split()

    def send(self, *msg: int) -> float:
        """Send one message; returns the perf_counter time it was handed to rtmidi."""
        self.proc.stdin.write("send " + " ".join(map(str, msg)) + "\n")
        return float(self._answer()[1])

    def storm(self, seconds: float, rate: int, seed: int = 2) -> int:
        """The storm (module docstring), ending with every note off; returns messages sent."""
        self.proc.stdin.write(f"storm {seconds} {rate} {seed}\n")
        return int(self._answer()[1])

    def close(self) -> None:
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            self.proc.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()


def latency(engine, stream, keyboard: Keyboard, notes: int, clock=time.perf_counter) -> dict:
    tap = FirstSound(clock)
    engine.add_tap(tap)
    rng = random.Random(1)
    lat, missed = [], 0
    for i in range(notes):
        note = 48 + i % 25
        wait_for(lambda: engine.active_voices == 0, 2.0)
        time.sleep(0.01 + rng.random() * BLOCK / SR)  # all phases of the block clock
        tap.arm()
        t0 = keyboard.send(0x90, note, 100)
        if wait_for(lambda: tap.t_hit, 1.0):
            lat.append(tap.t_hit - t0)
        else:
            missed += 1
            tap.armed = False
        keyboard.send(0x80, note, 0)
    engine.remove_tap(tap)
    out_lat = getattr(stream, "output_latency_s", 0.0)
    if hasattr(stream, "info"):  # an audio process: its stream's latency
        out_lat = stream.info()["output_latency_ms"] / 1000
    ms = np.array(lat) * 1000
    return {"n": len(lat), "missed": missed, "median": float(np.median(ms)),
            "p99": float(np.percentile(ms, 99)), "max": float(ms.max()),
            "out_ms": out_lat * 1000}


class FirstBend:
    """Engine tap: remembers when a block was first rendered with the sounding voice's f0 moved
    more than 1 cent from where it was at :meth:`arm` (audio callback: two reads, a compare)."""

    def __init__(self, engine):
        self.engine = engine
        self.armed = False
        self.f0 = 0.0
        self.t_hit = 0.0

    def _f0(self) -> float:
        e = self.engine
        live = np.flatnonzero(e._stage)
        return float(e._f0v[live].max()) if live.size else 0.0

    def arm(self):
        self.f0 = self._f0()
        self.t_hit = 0.0
        self.armed = True

    def __call__(self, block):
        if self.armed and self.f0 and abs(self._f0() / self.f0 - 1.0) > 5.8e-4:  # 1 cent
            self.t_hit = time.perf_counter()
            self.armed = False


def mpe_latency(engine, keyboard: Keyboard, bends: int) -> dict:
    tap = FirstBend(engine)
    engine.add_tap(tap)
    rng = random.Random(3)
    lat, missed = [], 0
    up = 8192 + round(2 / 48 * 8192)  # +2 semitones at the member channels' +-48
    for i in range(bends):
        ch = 1 + i % 15  # member channels 2..16 in turn, as a controller rotates them
        keyboard.send(0xE0 | ch, 0, 64)  # centre
        keyboard.send(0x90 | ch, 57, 100)
        wait_for(lambda: engine.active_voices == 1 and tap._f0() > 0, 1.0)
        time.sleep(0.02 + rng.random() * BLOCK / SR)
        tap.arm()
        t0 = keyboard.send(0xE0 | ch, up & 127, up >> 7)
        if wait_for(lambda: tap.t_hit, 1.0):
            lat.append(tap.t_hit - t0)
        else:
            missed += 1
            tap.armed = False
        keyboard.send(0x80 | ch, 57, 0)
        wait_for(lambda: engine.active_voices == 0, 2.0)
    engine.remove_tap(tap)
    ms = np.array(lat) * 1000
    return {"n": len(lat), "missed": missed, "median": float(np.median(ms)),
            "p99": float(np.percentile(ms, 99)), "max": float(ms.max())}


def storm(engine, stream, router, keyboard: Keyboard, seconds: float, rate: int) -> dict:
    st0 = stream.stats
    stream.reset_max_render()
    recv0 = router.received + router.ignored
    sent = keyboard.storm(seconds, rate)
    router.wait_idle(10)
    time.sleep(1.5)  # the longest release (0.4 s default) is long over
    st = stream.stats
    return {"seconds": seconds, "sent": sent, "rate": sent / seconds,
            "applied": router.received + router.ignored - recv0,
            "blocks": st.blocks - st0.blocks, "late": st.late_blocks - st0.late_blocks,
            "xruns": st.xruns - st0.xruns, "errors": st.errors - st0.errors,
            "max_render_ms": st.max_render_s * 1000,
            "stuck_voices": engine.active_voices,
            "stuck_keys": len(router.held_notes) + len(router.sustained_notes)}


def run(mode: str, args) -> tuple[dict, dict]:
    """One run (module docstring) with the engine in this process (``mode="no"``) or in an
    audio process (``"yes"``); returns (latency, storm) results."""
    from morphbox.device.engine.audio import AudioStream
    from morphbox.device.engine.process import AudioProcess, AudioProcessConfig
    from morphbox.device.engine.voices import Engine, EngineConfig
    from morphbox.device.midi.inputs import rtmidi_scanner
    from morphbox.device.midi.router import MidiRouter
    from morphbox.device.packs.format import load_default_grid

    cfg = EngineConfig(sample_rate=SR, block_size=BLOCK)
    if mode == "yes":
        engine = stream = AudioProcess(load_default_grid(), cfg, AudioProcessConfig(
            output="device", host_api="JACK"))
        clock = lambda: engine.tap_time  # noqa: E731 - when the audio process rendered it
    else:
        engine = Engine(load_default_grid(), cfg)
        stream = AudioStream(engine.render_block, host_api="JACK", sample_rate=SR,
                             block_size=BLOCK)
        clock = time.perf_counter
    engine.controls.set_adsr(attack_s=0.001, release_s=0.01)
    router = MidiRouter(engine)
    scanner = rtmidi_scanner(router.put, "jack", poll_s=0.25)
    try:
        stream.start()
        router.start()
        scanner.start()
        keyboard = Keyboard()
        try:
            if not wait_for(lambda: scanner.open_ports, 5):
                sys.exit("the virtual MIDI port was not picked up")
            time.sleep(0.5)
            stream.reset_max_render()
            lat = latency(engine, stream, keyboard, args.notes, clock)
            lat["max_render_ms"] = stream.stats.max_render_s * 1000
            lat["mpe"] = None
            if mode != "yes":  # FirstBend reads the engine's per-voice f0: in-process only
                stream.reset_max_render()
                lat["mpe"] = mpe_latency(engine, keyboard, args.notes)
                lat["mpe"]["max_render_ms"] = stream.stats.max_render_s * 1000
            engine.controls.set_adsr(attack_s=0.01, release_s=0.4)
            sto = storm(engine, stream, router, keyboard, args.seconds, args.rate)
        finally:
            keyboard.close()
        scanner.stop()
        router.stop()
        if mode == "yes":
            lat["how"] = "audio process, " + ("SCHED_FIFO" if stream.info()["sched_fifo"]
                                              else "normal scheduling")
        else:
            lat["how"] = "in-process"
    finally:
        stream.close()
    return lat, sto


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--notes", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--rate", type=int, default=1000, help="storm messages per second")
    ap.add_argument("--jack-rt", action="store_true",
                    help="run jackd with real-time scheduling (-R; needs the privilege)")
    ap.add_argument("--audio-process", default="no,yes",
                    help="comma-separated runs: no (engine in this process), yes (audio "
                    "process)")
    args = ap.parse_args(argv)

    results = []
    proc = start_jackd(f"morphbox-bench-{os.getpid()}", realtime=args.jack_rt)
    try:
        for mode in args.audio_process.split(","):
            results.append(run(mode.strip(), args))
    finally:
        proc.terminate()
        proc.wait(10)

    target = 2 * BLOCK / SR * 1000 + 1
    print(f"MIDI latency: JACK virtual MIDI port -> router -> engine -> PortAudio/JACK "
          f"({SR} Hz, {BLOCK}-frame blocks = {BLOCK / SR * 1000:.2f} ms, jackd "
          f"{'-R' if args.jack_rt else '--no-realtime'}), "
          f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}\n")
    print("| engine | notes | missed | to render, median | p99 | max | + output buffer | "
          "total median | total p99 | target | max render |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for lat, _ in results:
        o = lat["out_ms"]
        rows = [(f"{lat['n']} notes", lat)]
        if lat.get("mpe") is not None:
            rows.append((f"{lat['mpe']['n']} MPE bends", lat["mpe"]))
        for label, r in rows:
            print(f"| {lat['how']} | {label} | {r['missed']} | {r['median']:.2f} ms | "
                  f"{r['p99']:.2f} ms | {r['max']:.2f} ms | {o:.2f} ms | "
                  f"{r['median'] + o:.2f} ms | {r['p99'] + o:.2f} ms | <= {target:.2f} ms | "
                  f"{r['max_render_ms']:.2f} ms |")
    print(f"\nMIDI storm: {args.rate} messages/s for {args.seconds:g} s, sent by another "
          "process\n")
    print("| engine | sent | applied | blocks | late blocks | xruns | errors | max render | "
          "stuck voices | stuck keys |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for lat, s in results:
        print(f"| {lat['how']} | {s['sent']} ({s['rate']:.0f}/s) | {s['applied']} | "
              f"{s['blocks']} | {s['late']} | {s['xruns']} | {s['errors']} | "
              f"{s['max_render_ms']:.2f} ms | {s['stuck_voices']} | {s['stuck_keys']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
