"""Flashing benchmark: the default pack over loopback HTTP to a running device service.

Prints a markdown table (milliseconds, median / min / max over ``--runs``):

* upload + verify + install: POST of the signed 14 MB archive, streamed, hashed, signature
  checked, written, fsynced, loaded back and renamed into place (the device's worker thread);
* activate: load + verify the installed pack, build the grid, swap it into the engine;
* upload + verify + activate: both in one request (what ``morphbox pack flash`` does);
* activate -> sounding: from sending the activate request to the first audio block rendered
  with the new grid (paced null output at 48 kHz, 128-frame blocks: up to 2.7 ms of that is
  waiting for the next block).

Two copies of the default pack (named ``default`` and ``default-b``) alternate, and the
inactive one is deleted before it is uploaded again, so every upload is a fresh install.

    .venv/bin/python bench/flash.py [--runs 7]
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from morphbox.device.api.server import ApiServer  # noqa: E402
from morphbox.device.packs.archive import public_raw, write_archive  # noqa: E402
from morphbox.device.packs.format import DEFAULT_PACK, load_pack, write_pack  # noqa: E402
from morphbox.device.packs.store import PackStore  # noqa: E402
from morphbox.device.service import Service, ServiceConfig  # noqa: E402


def _post(port, path, token, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", path,
                 body=body, headers={"X-Morphbox-Token": token})
    resp = conn.getresponse()
    data = json.loads(resp.read())
    conn.close()
    if resp.status >= 400:
        raise RuntimeError(data)
    return data


def _delete(port, pid, token):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("DELETE", f"/api/packs/{pid}", headers={"X-Morphbox-Token": token})
    conn.getresponse().read()
    conn.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        key = Ed25519PrivateKey.generate()
        base = load_pack(DEFAULT_PACK)
        packs = {}
        for name in ("default", "default-b"):
            manifest = {k: v for k, v in base.manifest.items()
                        if k not in ("members", "format", "format_version")}
            write_pack(tmp / name, dict(manifest, name=name), {**base.arrays, **base.blobs})
            packs[name] = write_archive(tmp / name, tmp / f"{name}.mbpack", key).read_bytes()
        size = len(packs["default"])
        store = PackStore(tmp / "state")
        store.add_key(public_raw(key))
        service = Service(ServiceConfig(audio="none"))
        server = ApiServer(service, store, "127.0.0.1", 0)
        service.add(server)
        sounding: dict[str, float] = {}
        lock = threading.Lock()

        def tap(block):  # audio thread: note when a grid is first heard
            name = service.engine._grid_seen.name
            if name not in sounding:
                with lock:
                    sounding[name] = time.perf_counter()

        service.engine.add_tap(tap)
        service.controls.set_touch(0.3, 0.6)
        service.start()
        service.engine.note_on(60, 100)
        tok = store.token
        rows = {k: [] for k in ("upload + verify + install", "activate (load, verify, swap)",
                                "upload + verify + activate (one request)",
                                "activate -> first block with the new grid")}
        ids = {}
        try:
            order = ["default-b", "default"] * args.runs
            for i, name in enumerate(order):
                if name in ids:
                    _delete(server.port, ids.pop(name), tok)
                if i % 2 == 0:  # separate install, then activate
                    t0 = time.perf_counter()
                    ids[name] = _post(server.port, "/api/packs", tok, packs[name])["id"]
                    t1 = time.perf_counter()
                    sounding.pop(name, None)
                    t2 = time.perf_counter()
                    _post(server.port, f"/api/packs/{ids[name]}/activate", tok)
                    t3 = time.perf_counter()
                    while name not in sounding and time.perf_counter() - t2 < 5:
                        time.sleep(0.0005)
                    rows["upload + verify + install"].append(t1 - t0)
                    rows["activate (load, verify, swap)"].append(t3 - t2)
                    rows["activate -> first block with the new grid"].append(
                        sounding[name] - t2)
                else:
                    t0 = time.perf_counter()
                    ids[name] = _post(server.port, "/api/packs?activate=1", tok,
                                      packs[name])["id"]
                    rows["upload + verify + activate (one request)"].append(
                        time.perf_counter() - t0)
            status = service.status()
        finally:
            service.stop()
    print(f"Flashing the default pack ({size / 1e6:.1f} MB signed archive) over loopback to a "
          f"running service; {args.runs} runs each, ms.\n")
    print("| step | median | min | max |\n|---|---:|---:|---:|")
    for k, v in rows.items():
        ms = [x * 1000 for x in v]
        print(f"| {k} | {statistics.median(ms):.0f} | {min(ms):.0f} | {max(ms):.0f} |")
    print(f"\naudio while flashing: {status['blocks']} blocks, {status['late_blocks']} late, "
          f"{status['xruns']} xruns, {status['errors']} errors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
