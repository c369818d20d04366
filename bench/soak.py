"""Soak: the whole box for 10 minutes under everything at once, with and without the audio
process.

    .venv/bin/python bench/soak.py [--minutes 10] [--audio-process yes,no] [--rate 1000]

For each ``--audio-process`` value it starts its own JACK server (``jackd -R -d dummy -r 48000
-p 128``: a real-time-paced audio clock without a sound card; ``-R`` so that the clock itself
is not starved by the machine's other load, as a sound card's is not; ``--jack-rt no`` drops
it) and the box's service
as the box runs it, in a process of its own (``python -m morphbox.device --audio device
--midi-in --api --profile <sim at 500 Hz>``), then for ``--minutes``:

* a keyboard process (another process, as a real keyboard is another device) sends ``--rate``
  MIDI messages per second to a JACK MIDI port: 32 notes held all the time and re-struck
  (note off + note on), morph CCs, pitch bend, channel pressure, sustain pedal, clock, and a
  corner CC every 10 s (a TFLite grid rebuild in the service);
* the touch surface (the sim profile's Trill Square simulator, a moving finger) is polled at
  500 Hz, the pots and encoders with it, and the OLED (SSD1306 simulator) redraws at 10 Hz;
* a signed pack (14 MB) is uploaded and activated through the HTTP API every 20 s, two copies
  alternating (each a fresh install, load, verify and grid swap);
* the API's status is polled every 100 ms.

At the end every note is released and, 2 s later, the voices still sounding are counted
(stuck notes). Reported: blocks, late blocks (a render longer than the 2.67 ms block
period), xruns (JACK), render errors, max render time, stuck notes, MIDI messages sent,
rebuilds and pack swaps done, and the RSS of each process (service, audio process,
forkserver, keyboard), sampled every 2 s: the peak of the first minute after a 30 s warm-up
against the peak of the last minute (a rebuild or an upload moves RSS by tens of MB for a
moment). Targets: 0 late blocks, 0 stuck notes, RSS growth < 5 MB per process.

Prints markdown tables.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from midi_latency import start_jackd  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WARMUP_S = 30.0

# The keyboard: 32 notes held and re-struck, plus everything else a player sends. Commands on
# stdin: "play SECONDS RATE" -> answers "sent N" when done (all notes released at the end).
_KEYBOARD = r"""
import random, sys, time
import rtmidi
out = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, name="soak-kbd")
out.open_virtual_port("keys")
print("ready", flush=True)
for line in sys.stdin:
    cmd, *args = line.split()
    if cmd != "play":
        break
    seconds, rate = float(args[0]), int(args[1])
    rng = random.Random(12)
    notes = list(range(40, 104, 2))  # 32 notes
    for n in notes:
        out.send_message([0x90, n, 90])
    sent, pedal, corner = len(notes), False, 0
    batch = max(1, rate // 200)  # 5 ms batches
    period = batch / rate
    t0 = t_next = time.perf_counter()
    next_corner = t0 + 10.0
    while time.perf_counter() - t0 < seconds:
        k = 0
        while k < batch:
            r = rng.random()
            if r < 0.40 and k + 2 <= batch:  # re-strike a held note: 2 messages
                n = rng.choice(notes)
                out.send_message([0x80, n, 0])
                out.send_message([0x90, n, rng.randrange(30, 128)])
                sent += 2
                k += 2
                continue
            if r < 0.65:
                msg = [0xB0, rng.choice((1, 16, 17, 2)), rng.randrange(128)]
            elif r < 0.80:
                v = rng.randrange(16384)
                msg = [0xE0, v & 127, v >> 7]
            elif r < 0.90:
                msg = [0xD0, rng.randrange(128)]  # channel pressure
            elif r < 0.93:
                pedal = not pedal
                msg = [0xB0, 64, 127 if pedal else 0]
            else:
                msg = [0xF8]  # clock
            out.send_message(msg)
            sent += 1
            k += 1
        now = time.perf_counter()
        if now >= next_corner:  # a corner instrument: a grid rebuild in the service
            corner += 1
            out.send_message([0xB0, 102 + corner % 4, (corner * 5) % 16])
            sent += 1
            next_corner += 10.0
        t_next += period
        delay = t_next - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    out.send_message([0xB0, 64, 0])
    for n in notes:
        out.send_message([0x80, n, 0])
    out.send_message([0xE0, 0, 64])
    print("sent", sent + len(notes) + 2, flush=True)
out.close_port()
"""


def _rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
                ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            except (OSError, ValueError):
                continue
            if ppid == pid:
                out.append(int(d.name))
    return out


def _processes(service_pid: int) -> dict[str, int]:
    """Name -> pid for the service and its descendants."""
    found = {"service": service_pid}
    for c in _children(service_pid):
        cmd = Path(f"/proc/{c}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        if "forkserver" in cmd:
            found["forkserver"] = c
            for a in _children(c):
                found["audio process"] = a
        elif "resource_tracker" in cmd:
            found["resource tracker"] = c
    return found


def _rss_windows(samples, start: float, end: float, window: float = 60.0):
    """Per process, the largest RSS in the first and in the last ``window`` seconds of the
    measured part (a pack upload or a grid rebuild every 10-20 s moves RSS by tens of MB for
    a moment: comparing peaks over a minute compares like with like)."""
    window = min(window, max(2.0, (end - start) / 2))
    first: dict = {}
    last: dict = {}
    for t, rss in samples:
        for name, kb in rss.items():
            if kb is None:
                continue
            if start <= t < start + window:
                first[name] = max(first.get(name, 0), kb)
            if end - window <= t <= end:
                last[name] = max(last.get(name, 0), kb)
    return first, last


class Api:
    def __init__(self, port: int, token: str):
        self.port, self.token = port, token

    def call(self, method: str, path: str, body: bytes | None = None, timeout: float = 120):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        conn.request(method, path, body=body, headers={"X-Morphbox-Token": self.token})
        resp = conn.getresponse()
        data = json.loads(resp.read() or b"null")
        conn.close()
        if resp.status >= 400:
            raise RuntimeError(f"{method} {path}: {resp.status} {data}")
        return data


def _packs(tmp: Path):
    """Two signed copies of the default pack and a state dir that trusts their key."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from morphbox.device.packs.archive import public_raw, write_archive
    from morphbox.device.packs.format import DEFAULT_PACK, load_pack, write_pack
    from morphbox.device.packs.store import PackStore
    key = Ed25519PrivateKey.generate()
    base = load_pack(DEFAULT_PACK)
    archives = {}
    for name in ("soak-a", "soak-b"):
        manifest = {k: v for k, v in base.manifest.items()
                    if k not in ("members", "format", "format_version")}
        write_pack(tmp / name, dict(manifest, name=name), {**base.arrays, **base.blobs})
        archives[name] = write_archive(tmp / name, tmp / f"{name}.mbpack", key).read_bytes()
    store = PackStore(tmp / "state")
    store.add_key(public_raw(key))
    return archives, store.token


def _profile(tmp: Path) -> Path:
    """The sim profile with the touch polled at 500 Hz and no scripted encoder turns (the
    keyboard changes corners every 10 s instead)."""
    text = (REPO / "device/panel/profiles/sim.toml").read_text()
    text = re.sub(r"(?m)^rate_hz = 250", "rate_hz = 500", text)
    text = re.sub(r"(?m)^encoder_every_s = .*$", "encoder_every_s = 0.0", text)
    path = tmp / "soak.toml"
    path.write_text(text)
    return path


def soak(audio_process: str, seconds: float, rate: int, tmp: Path, jack_rt: bool) -> dict:
    archives, token = _packs(tmp)
    jack = start_jackd(f"morphbox-soak-{os.getpid()}-{audio_process}", realtime=jack_rt)
    port = 8790 + (audio_process == "yes")
    midi_cfg = tmp / "midi.toml"
    midi_cfg.write_text("alsa = false\njack = true\n")
    env = dict(os.environ, MORPHBOX_STATE_DIR=str(tmp / "state"), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "morphbox.device", "--audio", "device", "--midi-in",
           "--midi-config", str(midi_cfg), "--profile", str(_profile(tmp)), "--api",
           "--bind", f"127.0.0.1:{port}", "--audio-process", audio_process,
           "--seconds", str(seconds + WARMUP_S + 600)]  # a backstop: the soak ends it
    log = open(tmp / f"service-{audio_process}.log", "w")  # noqa: SIM115
    svc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    api = Api(port, token)
    kbd = None
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                st = api.call("GET", "/api/status", timeout=5)
                if st.get("audio", {}).get("blocks", 0) > 0:
                    break
            except (OSError, RuntimeError):
                pass
            if svc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the service did not start: {(tmp / log.name).read_text()}")
            time.sleep(0.2)
        kbd = subprocess.Popen([sys.executable, "-c", _KEYBOARD], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True, bufsize=1, env=env)
        assert kbd.stdout.readline().split() == ["ready"]
        time.sleep(2.0)  # the service's JACK MIDI scan picks the port up
        procs = _processes(svc.pid)
        procs["keyboard"] = kbd.pid
        kbd.stdin.write(f"play {seconds + WARMUP_S} {rate}\n")
        t0 = time.monotonic()
        stop = threading.Event()
        polls, uploads, errors = [0], [0], []
        samples: list[tuple[float, dict]] = []  # (seconds since the start, {process: kB})
        loads: list[float] = []  # the machine's 1-minute load average, every 2 s

        def sampler():
            while not stop.wait(2.0):
                now = time.monotonic() - t0
                names = dict(procs)
                names.update({k: v for k, v in _processes(svc.pid).items() if k not in names})
                samples.append((now, {k: _rss_kb(p) for k, p in names.items()}))
                if now >= WARMUP_S:
                    loads.append(os.getloadavg()[0])

        def poller():
            while not stop.is_set():
                try:
                    api.call("GET", "/api/status", timeout=10)
                    polls[0] += 1
                except (OSError, RuntimeError) as exc:
                    errors.append(f"poll: {exc}")
                stop.wait(0.1)

        def uploader():
            ids, names = {}, ["soak-a", "soak-b"]
            i = 0
            while not stop.wait(20.0):
                name = names[i % 2]
                i += 1
                try:
                    if name in ids:
                        api.call("DELETE", f"/api/packs/{ids.pop(name)}")
                    ids[name] = api.call("POST", "/api/packs?activate=1", archives[name])["id"]
                    uploads[0] += 1
                except (OSError, RuntimeError) as exc:
                    errors.append(f"upload: {exc}")

        threads = [threading.Thread(target=f, daemon=True)
                   for f in (poller, uploader, sampler)]
        for t in threads:
            t.start()
        time.sleep(WARMUP_S)
        procs.update({k: v for k, v in _processes(svc.pid).items() if k not in procs})
        st0 = api.call("GET", "/api/status")
        answer = kbd.stdout.readline().split()  # the keyboard finished (all notes off)
        sent = int(answer[1]) if answer and answer[0] == "sent" else -1
        elapsed = time.monotonic() - t0 - WARMUP_S
        stop.set()
        for t in threads:
            t.join(60)
        time.sleep(2.0)  # the longest release is long over
        st1 = api.call("GET", "/api/status")
        # still sounding 15 s later: stuck for good (2 s could be a backlog still draining)
        later, deadline = st1["voices"], time.monotonic() + 15.0
        while later and time.monotonic() < deadline:
            time.sleep(0.5)
            later = api.call("GET", "/api/status")["voices"]
        procs_end = _processes(svc.pid)
    except BaseException:
        log.flush()
        print(f"--- service log ({log.name}) ---\n{Path(log.name).read_text()[-6000:]}",
              file=sys.stderr)
        raise
    finally:
        if kbd is not None:
            kbd.stdin.close()
            try:
                kbd.wait(10)
            except subprocess.TimeoutExpired:
                kbd.kill()
        svc.terminate()
        svc.wait(60)
        log.close()
        jack.terminate()
        jack.wait(10)
    rss0, rss1 = _rss_windows(samples, WARMUP_S, WARMUP_S + elapsed)
    text = (tmp / log.name).read_text()
    m = re.search(r"max render ([\d.]+) ms", text)
    dropped = re.search(r"(\d+) events dropped", text)
    a0, a1 = st0["audio"], st1["audio"]
    return {
        "audio_process": audio_process, "seconds": elapsed, "sent": sent,
        "rate": sent / (elapsed + WARMUP_S) if sent > 0 else 0,
        "blocks": a1["blocks"] - a0["blocks"], "late": a1["late_blocks"] - a0["late_blocks"],
        "xruns": a1["xruns"] - a0["xruns"], "errors": a1["errors"] - a0["errors"],
        "max_render_ms": float(m.group(1)) if m else float("nan"),
        "stuck": st1["voices"], "stuck_later": later, "uploads": uploads[0], "polls": polls[0],
        "rebuilds": len(re.findall(r"grid rebuilt in", text)),
        "events_dropped": int(dropped.group(1)) if dropped else 0,
        "restarts": len(re.findall(r"audio process restarted", text)),
        "audio_pid_same": procs.get("audio process") == procs_end.get("audio process"),
        "rss0": rss0, "rss1": rss1,
        "load": (min(loads), sum(loads) / len(loads), max(loads)) if loads else None,
        "problems": errors[:5], "log": text[-3000:]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--audio-process", default="yes,no",
                    help="comma-separated: yes (the box's way), no (in-process engine)")
    ap.add_argument("--rate", type=int, default=1000, help="MIDI messages per second")
    ap.add_argument("--show-log", action="store_true", help="print the service's log tail")
    ap.add_argument("--jack-rt", choices=("auto", "yes", "no"), default="auto",
                    help="run jackd with real-time scheduling (-R) so that the audio clock "
                    "itself is not starved by the machine's other load, as on the box; auto: "
                    "if allowed (root or an rtprio limit)")
    args = ap.parse_args(argv)
    if args.jack_rt == "auto":
        import resource
        jack_rt = os.geteuid() == 0 or resource.getrlimit(resource.RLIMIT_RTPRIO)[0] > 0
    else:
        jack_rt = args.jack_rt == "yes"
    rows = []
    for mode in args.audio_process.split(","):
        with tempfile.TemporaryDirectory(prefix="morphbox-soak-") as tmp:
            r = soak(mode.strip(), args.minutes * 60, args.rate, Path(tmp), jack_rt)
        rows.append(r)
        if args.show_log or r["problems"]:
            print(r["log"], file=sys.stderr)
            print(r["problems"], file=sys.stderr)
    print(f"Soak: {args.minutes:g} min after a {WARMUP_S:.0f} s warm-up, {args.rate} MIDI "
          f"msgs/s, 32 notes held and re-struck, touch polled at 500 Hz, OLED, a pack "
          f"upload every 20 s, a corner rebuild every 10 s, the API polled every 100 ms; "
          f"JACK dummy 48 kHz / 128 frames ({'real-time' if jack_rt else 'no real-time'}); "
          f"{platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}\n")
    print("| audio | blocks | late blocks | xruns | errors | max render | stuck notes 2 s / 17 s "
          "after | MIDI sent | events dropped | rebuilds | pack swaps | API polls | restarts |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        label = "audio process" if r["audio_process"] == "yes" else "in-process"
        print(f"| {label} | {r['blocks']} | {r['late']} | {r['xruns']} | {r['errors']} | "
              f"{r['max_render_ms']:.2f} ms | {r['stuck']} / {r['stuck_later']} | "
              f"{r['sent']} ({r['rate']:.0f}/s) | {r['events_dropped']} | "
              f"{r['rebuilds']} | {r['uploads']} | {r['polls']} | {r['restarts']} |")
    for r in rows:
        if r["load"]:
            label = "audio process" if r["audio_process"] == "yes" else "in-process"
            print("\n{}: the machine's 1-minute load average during the run: min {:.1f}, "
                  "mean {:.1f}, max {:.1f} ({} cores)".format(label, *r["load"], os.cpu_count()))
    print("\nRSS: the largest sample (every 2 s) in the first and in the last minute of the "
          "measured run\n")
    print("| audio | process | RSS, first minute | RSS, last minute | growth |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        label = "audio process" if r["audio_process"] == "yes" else "in-process"
        for name, kb0 in r["rss0"].items():
            kb1 = r["rss1"].get(name)
            if kb0 is None or kb1 is None:
                continue
            print(f"| {label} | {name} | {kb0 / 1024:.1f} MB | {kb1 / 1024:.1f} MB | "
                  f"{(kb1 - kb0) / 1024:+.1f} MB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
