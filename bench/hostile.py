"""Hostile benchmark (issue 13): every attack and accident of the issue, replayed against a
running device service on 127.0.0.1, and what the box did.

The service runs in its own process (``python -m morphbox.device --api --audio none --midi
DEMO --loop``: paced null audio playing the Bach chorale in a loop) with a fresh state
directory, a paired key and a small pack active. Then:

* **HTTP cases** (``tests/device/hostile.py``, the same the test suite asserts): signed packs
  with NaN/Infinity/1e308 frame times, velocity 1e308, tiny or NaN source rates, pitch
  anchors 1e18 apart, a manifest 5000 deep, a name ending in a newline, a silent pack;
  tokens of non-UTF-8 bytes;
  4 GiB bodies without or with a wrong token; a stalled upload while the packs are listed;
  a chunked upload promising 1 TB; a foreign Host header; framing headers; hostile JSON.
* **50 uploads at once** of the default pack (each client retrying on 429 until it gets
  in), with the service's RSS sampled every 20 ms; then its RSS once they are done.
* **Restarts** into a broken state directory: garbage ``active.json`` (random bytes, empty,
  ``[]``, a directory), ``packs`` being a file, and packs planted on disk (bypassing install)
  with a NaN source rate, anchors 1e18 apart, a manifest 5000 deep, or silence.
* **MIDI files** given to ``morphbox render``: not MIDI, ticks per beat 0, type 2,
  truncated, a 49-byte file holding a note for 4.5e9 s, 42 bytes with an hour of silence.

For each row: the answer (HTTP status, or exit code), whether the active pack is the one it
must be, whether audio blocks kept advancing, and the service's RSS (for MIDI rows: the
render process's peak RSS).

    .venv/bin/python bench/hostile.py [--skip-restarts] [--skip-midi]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from morphbox.device.midi.files import DEMO_MIDI  # noqa: E402
from morphbox.device.packs.archive import public_raw, write_archive  # noqa: E402
from morphbox.device.packs.format import DEFAULT_PACK, load_pack  # noqa: E402
from morphbox.device.packs.store import PackStore  # noqa: E402
from tests.device.hostile import (  # noqa: E402
    Target,
    _upload,
    http_cases,
    raw_http,
)
from tests.device.test_api import _silent_pack  # noqa: E402
from tests.device.test_archive import small_pack  # noqa: E402
from tests.device.test_midi_files import HOSTILE, smf, vlq  # noqa: E402


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Box:
    """The device service in a subprocess."""

    def __init__(self, state: Path, log: Path):
        self.state, self.log = state, log
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def start(self, timeout: float = 90.0) -> bool:
        self.port = free_port()
        env = dict(os.environ, MORPHBOX_STATE_DIR=str(self.state), PYTHONUNBUFFERED="1")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "morphbox.device", "--api", "--bind",
                 f"127.0.0.1:{self.port}", "--audio", "none", "--midi", str(DEMO_MIDI),
                 "--loop", "--state-dir", str(self.state)],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                if raw_http(self.port, "GET", "/api/status", timeout=2).status == 200:
                    return True
            except OSError:
                pass
            time.sleep(0.2)
        return False

    def status(self) -> dict:
        try:
            return raw_http(self.port, "GET", "/api/status", timeout=10).json() or {}
        except OSError:
            return {}

    def blocks(self) -> int:
        return int(self.status().get("audio", {}).get("blocks", -1))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0


ROWS: list[tuple] = []


def row(case: str, status, active_ok, advancing, rss: str, note: str = "") -> None:
    ROWS.append((case, status, active_ok, advancing, rss, note))
    print(f"  {case}: {status} {note}", file=sys.stderr, flush=True)


def advancing(box: Box, before: int, wait_s: float = 0.5) -> bool:
    time.sleep(wait_s)  # a benchmark may sleep: the blocks are counted by the service
    return box.blocks() > before


def yes(flag: bool) -> str:
    return "yes" if flag else "**NO**"


# ---- HTTP cases ----------------------------------------------------------------------------


def run_http(box: Box, target: Target, active: str) -> None:
    for name, run in http_cases(target):
        b0 = box.blocks()
        out = run()
        st = box.status()
        shown = out.status or "closed"
        row(name, shown if out.ok else f"**{shown}**", yes(st.get("active") == active),
            yes(advancing(box, b0)), f"{rss_mb(box.pid):.0f}", out.note)


def run_concurrent(box: Box, target: Target, active: str, n: int = 50) -> None:
    data = (target.tmp / "default.mbpack").read_bytes()
    peak = [0.0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_mb(box.pid))
            stop.wait(0.02)

    statuses: list[list[int]] = [[] for _ in range(n)]

    def client(i):
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                st = _upload(target, data, activate=False, timeout=300).status
            except OSError:
                st = -1
            statuses[i].append(st)
            if st != 429:
                return
            time.sleep(0.5 + random.random())  # the box asks for 2 s (Retry-After)

    idle = rss_mb(box.pid)
    b0 = box.blocks()
    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0 = time.monotonic()
    clients = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for c in clients:
        c.start()
    for c in clients:
        c.join()
    secs = time.monotonic() - t0
    stop.set()
    th.join()
    finals = [s[-1] for s in statuses]
    tries = sum(len(s) for s in statuses)
    busy = sum(s.count(429) for s in statuses)
    st = box.status()
    after = rss_mb(box.pid)
    summary = ", ".join(f"{finals.count(c)}x {c}" for c in sorted(set(finals)))
    row(f"{n} uploads of the {len(data) / 1e6:.0f} MB default pack at once", summary,
        yes(st.get("active") == active), yes(advancing(box, b0)),
        f"{idle:.0f} idle, {peak[0]:.0f} peak, {after:.0f} after",
        f"{tries} requests ({busy} answered 429), {secs:.1f} s")
    time.sleep(3)
    row("  ... 3 s later", "", "", "", f"{rss_mb(box.pid):.0f}")


# ---- restarts ------------------------------------------------------------------------------


def plant(state: Path, src: Path, name: str, edit) -> str:
    """Copy the valid pack ``src`` into the store under an id, with ``edit(text)`` applied
    to its manifest (no install: as if an old version or a hand copy put it there)."""
    pid = f"{name}-{'0' * 12}"
    dest = state / "packs" / pid
    shutil.copytree(src, dest)
    m = dest / "manifest.json"
    m.write_text(edit(m.read_text()))
    return pid


def point(state: Path, active: str, previous: str | None) -> None:
    body = json.dumps({"active": active, "previous": previous}).encode()
    for name in ("active.json", "active.json.bak"):
        p = state / name
        if p.is_dir():
            p.rmdir()
        p.write_bytes(body)


def run_restarts(box: Box, good: str, packs: dict[str, Path]) -> None:
    state = box.state
    deep = "[" * 5000 + "]" * 5000

    def nan_rate(t):
        return t.replace('"source_sample_rate": 48000', '"source_sample_rate": NaN')

    def far_anchors(t):
        m = json.loads(t)
        m["pitch_anchors"] = [a * 10**18 for a in m["pitch_anchors"]]
        return json.dumps(m)

    def nested(t):
        return t.replace('"provenance": {', f'"deep": {deep}, "provenance": {{')

    planted = [
        ("planted active pack: source_sample_rate NaN", packs["small"], nan_rate),
        ("planted active pack: anchors 1e18 apart", packs["small"], far_anchors),
        ("planted active pack: manifest 5000 deep", packs["small"], nested),
        ("planted active pack: silent (sound check)", packs["silent"], lambda t: t),
    ]
    breakages = [
        ("active.json of random bytes", lambda: (state / "active.json").write_bytes(
            bytes(random.Random(1).randrange(256) for _ in range(64))), good),
        ("active.json empty", lambda: (state / "active.json").write_bytes(b""), good),
        ("active.json is []", lambda: (state / "active.json").write_bytes(b"[]"), good),
        ("active.json is a directory", lambda: ((state / "active.json").unlink(),
                                                (state / "active.json").mkdir()), good),
    ]
    for i, (name, src, edit) in enumerate(planted):
        breakages.append((name, lambda src=src, edit=edit, i=i: point(
            state, plant(state, src, f"planted{i}", edit), good), good))

    def packs_file():
        shutil.move(state / "packs", state / "packs.saved")
        (state / "packs").write_text("not a directory")
    breakages.append(("packs/ is a file", packs_file, "builtin"))

    for name, breakit, expect in breakages:
        box.stop()
        point(state, good, None)
        breakit()
        t0 = time.monotonic()
        up = box.start()
        secs = time.monotonic() - t0
        st = box.status()
        b0 = box.blocks()
        row(f"restart with {name}", f"started in {secs:.1f} s" if up else "**did not start**",
            yes(st.get("active") == expect) + f" ({st.get('active', '?')[:14]})",
            yes(up and advancing(box, b0)), f"{rss_mb(box.pid):.0f}",
            re.sub(r"/\S+/packs/[^:]+: ", "", "; ".join(st.get("recovered_from", [])))[:100])
        if name == "packs/ is a file":  # put the real packs back for what follows
            box.stop()
            for p in state.glob("packs.broken*"):
                p.unlink()
            shutil.rmtree(state / "packs")
            shutil.move(state / "packs.saved", state / "packs")
            point(state, good, None)
            box.start()


# ---- MIDI files ----------------------------------------------------------------------------


def run_midi(tmp: Path) -> None:
    files = {name: data for name, (data, _) in HOSTILE.items() if name != "empty"}
    files["a note held 4.5e9 s"] = smf(0, 1, b"\x00\xff\x51\x03\xff\xff\xff"
                                                  b"\x00\x90\x3c\x40" + vlq(0x0FFFFFFF)
                                                  + b"\x80\x3c\x00\x00\xff\x2f\x00")
    hour = 96 * 2 * 3600
    files["an hour of silence"] = smf(0, 96, b"\x00\x90\x3c\x40" + vlq(96)
                                                 + b"\x80\x3c\x00" + vlq(hour)
                                                 + b"\x90\x40\x40" + vlq(96)
                                                 + b"\x80\x40\x00\x00\xff\x2f\x00")
    for name, data in files.items():
        mid = tmp / "hostile.mid"
        mid.write_bytes(data)
        out = tmp / "hostile.wav"
        cmd = [sys.executable, "-m", "morphbox.host_tools.cli", "render", str(mid), "-o",
               str(out)]
        # peak RSS through GNU time: a child forked from this (large) process would report
        # this process's peak as its own (Linux keeps maxrss across fork and exec)
        timer = shutil.which("time") or "/usr/bin/time"
        peak_file = tmp / "peak.txt"
        if Path(timer).exists():
            cmd = [timer, "-f", "%M", "-o", str(peak_file)] + cmd
        t0 = time.monotonic()
        res = subprocess.run(cmd, capture_output=True, cwd=ROOT, timeout=600)
        secs = time.monotonic() - t0
        err = res.stderr.decode(errors="replace").strip()
        outline = res.stdout.decode(errors="replace").strip()
        code = res.returncode
        try:
            peak = f"{int(peak_file.read_text().split()[-1]) / 1024:.0f} (render)"
        except (OSError, ValueError, IndexError):
            peak = "?"
        note = (err or outline).splitlines()[-1] if (err or outline) else ""
        note = note.replace(str(mid), "FILE")
        note = note.replace(str(out), "OUT.wav")
        row(f"render: {name} ({len(data)} bytes)", f"exit {code}, {secs:.1f} s", "n/a", "n/a",
            peak, note[:100])


# ---- main ----------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-restarts", action="store_true")
    ap.add_argument("--skip-midi", action="store_true")
    ap.add_argument("--uploads", type=int, default=50)
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="morphbox-hostile-"))
    state = tmp / "state"
    key = Ed25519PrivateKey.generate()
    store = PackStore(state)
    store.add_key(public_raw(key), "bench")
    packs = {"small": small_pack(tmp / "p120", "p120", level=120),
             "silent": _silent_pack(tmp / "silent")}
    # the box plays an installed copy of the default pack (its 48 MB grid is most of the
    # service's memory); the hostile uploads use the small pack's members
    good = store.install_file(write_archive(DEFAULT_PACK, tmp / "default.mbpack", key))
    store.activate(good)
    load_pack(packs["silent"])
    del store
    box = Box(state, tmp / "service.log")
    try:
        if not box.start():
            print((tmp / "service.log").read_text()[-3000:], file=sys.stderr)
            return 1
        idle = rss_mb(box.pid)
        target = Target(port=box.port, token=(state / "token").read_text().strip(), key=key,
                        tmp=tmp, pack=packs["small"], silent_pack=packs["silent"])
        row("service idle (after start)", 200, yes(box.status().get("active") == good),
            yes(advancing(box, box.blocks())), f"{idle:.0f}")
        run_http(box, target, good)
        run_concurrent(box, target, good, args.uploads)
        audio = box.status().get("audio", {})
        print(f"\naudio of the first service through the HTTP cases and the uploads: "
              f"{audio.get('blocks')} blocks, {audio.get('late_blocks')} late, "
              f"{audio.get('xruns')} xruns, {audio.get('errors')} errors, "
              f"{audio.get('nonfinite_blocks')} non-finite\n")
        if not args.skip_restarts:
            run_restarts(box, good, packs)
    finally:
        box.stop()
    if not args.skip_midi:
        run_midi(tmp)
    print("| case | status | active pack unchanged | audio blocks advancing | RSS MB | note |")
    print("|---|---|---|---|---:|---|")
    for case, status, active_ok, adv, rss, note in ROWS:
        note = str(note).replace("|", "/").replace("\n", " ")
        print(f"| {case} | {status} | {active_ok} | {adv} | {rss} | {note} |")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
