"""Control loop benchmark on the chip simulators: achieved poll rate and touch-to-engine latency.

For each touch driver, with the simulated bus instantaneous or paced at 400 kHz (every
transfer takes its real time on the wire), the whole service runs (paced null audio output,
OLED redrawn on its own thread, pots, encoders): first flat out (``rate_hz = 0``) for the
ceiling, then at the profile's rate while a finger jumps to a new place every 5-15 ms. Latency
is from the finger landing on the simulated sensor to the engine's control snapshot changing
(the filter's own smoothing lag comes on top and is not counted).

    .venv/bin/python bench/controls.py [--seconds 2] [--audio-process no|yes]

``--audio-process yes`` renders in the audio process, as the box does (the touch then reaches
it through the shared-memory seqlock; the latency measured is still to the service's control
snapshot, which the audio process reads at its next block).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("MORPHBOX_STATE_DIR", tempfile.mkdtemp(prefix="morphbox-bench-"))

from morphbox.device.panel.build import attach  # noqa: E402
from morphbox.device.panel.profiles import load_profile  # noqa: E402
from morphbox.device.panel.simrig import SimRig  # noqa: E402
from morphbox.device.service import Service, ServiceConfig  # noqa: E402

CASES = [
    ("Trill Square", "sim", {}),
    ("MPR121 6x6", "sim", {"touch.driver": "mpr121", "touch.address": 0x5A}),
    ("NSynth board", "nsynth-super", {"i2c.backend": "sim"}),
]


AUDIO_PROCESS = "no"


def box(name, overrides, pace, rate_hz=None):
    """A started service with a control loop on a fresh simulated box."""
    profile = load_profile(name, overrides)
    profile.data.pop("sim", None)  # the bench plays the finger itself
    rig = SimRig(profile, pace=pace)
    rig.touch.touch(0.5, 0.5)
    svc = Service(ServiceConfig(audio="none", audio_process=AUDIO_PROCESS))
    loop = attach(svc, profile, rig=rig)
    if rate_hz is not None:
        loop.config.rate_hz = rate_hz
    svc.start()
    return svc, loop, rig


def run_case(name, overrides, pace, seconds):
    svc, loop, _ = box(name, overrides, pace, rate_hz=0)  # ceiling: flat out
    time.sleep(seconds / 2)
    svc.stop()
    max_rate = loop.poll_rate
    svc, loop2, rig = box(name, overrides, pace)  # the profile's rate, a moving finger
    target = loop2.config.rate_hz
    b0, n0 = rig.bus.bus_time_s, rig.bus.transactions
    lat, lat_audio = [], []
    stop = threading.Event()

    def mover():
        rnd = random.Random(4)
        k = 0
        while not stop.is_set():
            k += 1
            x = 0.1 if k % 2 else 0.9
            before = svc.controls.snapshot.x
            t0 = time.perf_counter()
            rig.touch.touch(x, rnd.uniform(0.1, 0.9))
            while svc.controls.snapshot.x == before and not stop.is_set():
                time.sleep(0.0001)
            lat.append(time.perf_counter() - t0)
            ap = svc.audio_process
            if ap is not None:  # ... and on to the audio process's engine (next block)
                version = ap._sh.controls.version
                while ap._sh.stats["controls_version"] < version and not stop.is_set():
                    time.sleep(0.0001)
                lat_audio.append(time.perf_counter() - t0)
            time.sleep(rnd.uniform(0.005, 0.015))

    th = threading.Thread(target=mover, daemon=True)
    th.start()
    time.sleep(seconds)
    stop.set()
    th.join()
    rate = loop2.poll_rate
    polls = loop2.polls
    status = svc.status()
    svc.stop()
    bus_ms = (rig.bus.bus_time_s - b0) / max(1, polls) * 1000
    lat_ms = np.array(lat[1:]) * 1000
    return {"driver": name if name != "sim" else None, "target": target, "max": max_rate,
            "rate": rate, "bus_ms": bus_ms, "tx": (rig.bus.transactions - n0) / max(1, polls),
            "med": float(np.median(lat_ms)), "p99": float(np.percentile(lat_ms, 99)),
            "n": len(lat_ms), "audio_err": status["errors"] + status["late_blocks"],
            "audio_med": float(np.median(lat_audio[1:])) * 1000 if lat_audio else None,
            "audio_p99": float(np.percentile(lat_audio[1:], 99)) * 1000 if lat_audio else None}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--audio-process", choices=("no", "yes"), default="no",
                    help="render in an audio process of its own (the box's way)")
    args = ap.parse_args()
    global AUDIO_PROCESS
    AUDIO_PROCESS = args.audio_process
    rows = []
    for label, name, overrides in CASES:
        for pace in (False, True):
            r = run_case(name, overrides, pace, args.seconds)
            rows.append((label, "400 kHz" if pace else "instant", r))
    proc = AUDIO_PROCESS == "yes"
    print(f"engine: {'an audio process of its own' if proc else 'in the service process'}\n")
    extra = " | to the audio process, median (ms) | p99 (ms)" if proc else ""
    print("| touch surface | simulated bus | ceiling (Hz) | target (Hz) | achieved (Hz) "
          "| bus time / poll, incl. OLED (ms) | latency median (ms) | latency p99 (ms)"
          f"{extra} | samples | late audio blocks |")
    print("|---|---|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if proc else "")
          + "---:|---:|")
    for label, bus, r in rows:
        more = f" | {r['audio_med']:.2f} | {r['audio_p99']:.2f}" if proc else ""
        print(f"| {label} | {bus} | {r['max']:.0f} | {r['target']:.0f} | {r['rate']:.1f} "
              f"| {r['bus_ms']:.3f} | {r['med']:.2f} | {r['p99']:.2f}{more} | {r['n']} "
              f"| {r['audio_err']} |")


if __name__ == "__main__":
    main()
