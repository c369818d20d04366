"""Hostile inputs of issue 13, shared by tests/device/test_api.py (against a service in the
test process) and bench/hostile.py (against a service in its own process, with the table).

* :func:`hostile_manifests`: manifest texts a buggy pack build or an attacker could sign;
  :func:`signed_archive` packs one with a valid small pack's members into a validly *signed*
  ``.mbpack`` without parsing it (a manifest 5000 deep cannot be parsed).
* :func:`raw_http`: one HTTP request over a plain socket, so headers can hold any bytes, a
  body can be streamed until the server closes, and a stalled client can be played.
* :func:`http_cases`: every HTTP case as ``(name, run(target) -> Outcome)``.

Nothing here asserts: callers judge the outcome (status, whether the box kept its pack and
its audio).
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from morphbox.device.packs.archive import key_id, public_raw, write_raw_archive
from morphbox.device.packs.format import FORMAT_VERSION

# ---- packs ---------------------------------------------------------------------------------


def _deep(n: int) -> str:
    return "[" * n + "]" * n


def hostile_manifests(manifest: dict) -> dict[str, bytes]:
    """Case name -> manifest bytes, each one field of the valid ``manifest`` made hostile."""
    def edit(**changes) -> bytes:
        return json.dumps(dict(manifest, **changes)).encode()  # allow_nan: NaN, Infinity

    deep = dict(manifest, provenance="@DEEP@")
    anchors = manifest["pitch_anchors"]
    times = list(manifest["frame_times"])
    return {
        "frame_times NaN": edit(frame_times=[float("nan")] + times[1:]),
        "frame_times Infinity": edit(frame_times=times[:-1] + [float("inf")]),
        "frame_times 1e308": edit(frame_times=times[:-1] + [1e308]),
        "velocity 1e308": edit(velocity=1e308),
        "source_sample_rate 1e-300": edit(source_sample_rate=1e-300),
        "source_sample_rate NaN": edit(source_sample_rate=float("nan")),
        "pitch anchors 1e18 apart": edit(pitch_anchors=[a * 10**18 for a in anchors]),
        "loop end 1e400": json.dumps(manifest).replace(
            f'"end": {manifest["loop"]["end"]}', '"end": 1e400').encode(),
        "manifest nested 5000 deep": json.dumps(deep).replace('"@DEEP@"', _deep(5000)).encode(),
        "grid_size 1e9": edit(grid_size=10**9),
    }


def signed_archive(out: Path, key, pack: Path, manifest: bytes | None = None,
                   name: str | None = None) -> Path:
    """A validly signed archive of the members of the valid pack directory ``pack`` with
    ``manifest`` (bytes, unparsed) instead of its own, named ``name``."""
    members = sorted(json.loads((pack / "manifest.json").read_text())["members"])
    datas = [manifest if manifest is not None else (pack / "manifest.json").read_bytes()]
    datas += [(pack / n).read_bytes() for n in members]
    names = ["manifest.json"] + members
    header = {"pack_format": "morphbox-pack", "pack_format_version": FORMAT_VERSION,
              "name": name or pack.name, "key_id": key_id(public_raw(key)), "created": "now",
              "tool": "hostile", "members": [
                  {"name": n, "bytes": len(d), "sha256": hashlib.sha256(d).hexdigest()}
                  for n, d in zip(names, datas)]}
    return write_raw_archive(out, header, datas, key)


def oversized_header_archive(out: Path, key, claimed: int) -> bytes:
    """The signed head of an archive whose header promises ``claimed`` bytes of members (the
    members never follow): a chunked upload of it is refused from the header alone."""
    header = {"pack_format": "morphbox-pack", "pack_format_version": FORMAT_VERSION,
              "name": "big",
              "key_id": key_id(public_raw(key)), "created": "now", "tool": "hostile",
              "members": [{"name": "manifest.json", "bytes": 1000, "sha256": "0" * 64},
                          {"name": "grid_harmonics.npy", "bytes": claimed,
                           "sha256": "0" * 64}]}
    write_raw_archive(out, header, [], key)
    return out.read_bytes()


# ---- raw HTTP ------------------------------------------------------------------------------


@dataclass
class Reply:
    """What a raw request got: ``status`` (0: no answer), headers (lower-case names), body,
    bytes of body sent, and whether the server closed the connection after answering."""

    status: int = 0
    headers: dict = field(default_factory=dict)
    body: bytes = b""
    sent: int = 0
    closed: bool = False
    error: str = ""

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError:
            return None


def _read_reply(sock: socket.socket, deadline: float) -> Reply:
    buf = b""
    while b"\r\n\r\n" not in buf:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    reply = Reply()
    try:
        reply.status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        return reply
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        reply.headers[k.strip().lower().decode("latin-1")] = v.strip().decode("latin-1")
    if reply.status == 100:  # Continue: the real answer comes after the body
        return reply
    n = int(reply.headers.get("content-length", "0") or 0)
    while len(rest) < n:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    reply.body = rest[:n]
    # closed after the answer? (a kept-alive connection just times out here)
    try:
        sock.settimeout(0.5)
        reply.closed = sock.recv(1) == b""
    except TimeoutError:
        reply.closed = False
    except OSError:
        reply.closed = True
    return reply


def raw_http(port: int, method: str, path: str, headers: dict | None = None,
             body: bytes | Iterable[bytes] = b"", host: bytes | str = b"127.0.0.1",
             timeout: float = 30.0, answer_first: bool = False) -> Reply:
    """One request to 127.0.0.1:``port``. Header values may be bytes (sent as they are).
    ``body``: bytes, or an iterable of chunks streamed until the server stops reading
    (``answer_first``: read the answer after the first chunk, then keep streaming to see
    how much more the server takes before it closes)."""
    deadline = time.monotonic() + timeout
    head = f"{method} {path} HTTP/1.1\r\n".encode()
    hdrs = {"Host": host, **(headers or {})}
    if isinstance(body, (bytes, bytearray)):
        hdrs.setdefault("Content-Length", str(len(body)))
        chunks: Iterable[bytes] = [bytes(body)] if body else []
    else:
        chunks = body
    for k, v in hdrs.items():
        if v is None:
            continue
        head += k.encode() + b": " + (v if isinstance(v, bytes) else str(v).encode()) + b"\r\n"
    head += b"\r\n"
    reply = None
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head)
        sent = 0
        try:
            for i, chunk in enumerate(chunks):
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                sock.sendall(chunk)
                sent += len(chunk)
                if answer_first and i == 0:
                    reply = _read_reply(sock, deadline)
                    reply.closed = False
        except OSError as exc:  # the server closed: stop sending
            err = f"{type(exc).__name__}"
        else:
            err = ""
        if reply is None:
            try:
                reply = _read_reply(sock, deadline)
            except OSError as exc:
                reply = Reply(error=type(exc).__name__)
        else:
            reply.closed = reply.closed or bool(err)
        reply.sent = sent
        reply.error = reply.error or err
    return reply


def stream(total: int, chunk: int = 1 << 16) -> Iterable[bytes]:
    block = b"\0" * chunk
    for _ in range(total // chunk):
        yield block


def chunked(data: bytes, size: int = 1 << 14) -> Iterable[bytes]:
    """``data`` in HTTP/1.1 chunked transfer encoding."""
    for i in range(0, len(data), size):
        part = data[i:i + size]
        yield f"{len(part):x}\r\n".encode() + part + b"\r\n"
    yield b"0\r\n\r\n"


def trickled_until_closed(sock: socket.socket, limit_s: float) -> bool:
    """Send one byte every 0.2 s on ``sock`` until the server closes it (True) or
    ``limit_s`` pass (False)."""
    sock.setblocking(False)
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        try:
            sock.send(b"a")
            if sock.recv(1) == b"":
                return True
        except BlockingIOError:
            time.sleep(0.2)
        except OSError:  # reset, broken pipe: closed
            return True
    return False


class Staller:
    """A client that sends an upload's headers and ``first`` body bytes, then nothing: its
    answer (after the server's read timeout) lands in :attr:`reply`."""

    def __init__(self, port: int, token: str, first: bytes, claimed: int = 1 << 20):
        self.reply: Reply | None = None
        self._sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self._sock.sendall(f"POST /api/packs HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                           f"X-Morphbox-Token: {token}\r\nContent-Length: {claimed}\r\n\r\n"
                           .encode() + first)
        self._thread = threading.Thread(target=self._wait, daemon=True)
        self._thread.start()

    def _wait(self) -> None:
        try:
            self.reply = _read_reply(self._sock, time.monotonic() + 60)
        except OSError as exc:
            self.reply = Reply(error=type(exc).__name__)

    def join(self, timeout: float) -> Reply | None:
        self._thread.join(timeout)
        return self.reply

    def close(self) -> None:
        self._sock.close()


# ---- the cases -----------------------------------------------------------------------------


@dataclass
class Target:
    """A running box: its port, token, a paired signing key, a scratch folder, a valid small
    pack directory (``pack``) and two more ready to upload."""

    port: int
    token: str
    key: object
    tmp: Path
    pack: Path
    silent_pack: Path | None = None  # valid on disk, but every partial and band is silence


@dataclass
class Outcome:
    status: int
    note: str = ""
    ok: bool = True  # the outcome is what the case expects (the caller checks the rest)


def _upload(t: Target, data: bytes | Iterable[bytes], headers=None, activate=True,
            **kw) -> Reply:
    h = {"X-Morphbox-Token": t.token, **(headers or {})}
    return raw_http(t.port, "POST", "/api/packs" + ("?activate=1" if activate else ""),
                    h, data, **kw)


def http_cases(t: Target) -> list[tuple[str, Callable[[], Outcome]]]:
    """Every HTTP case: ``(name, run)``; ``run()`` sends it to the box and says what came
    back and whether that is the expected refusal (or survival)."""
    base = json.loads((t.pack / "manifest.json").read_text())
    cases: list[tuple[str, Callable[[], Outcome]]] = []

    # named as the archive is, so nothing but the hostile field can be refused
    for name, text in hostile_manifests(dict(base, name="fuzz")).items():
        def run(name=name, text=text) -> Outcome:
            arc = signed_archive(t.tmp / "hostile.mbpack", t.key, t.pack, text, name="fuzz")
            r = _upload(t, arc.read_bytes())
            error = (r.json() or {}).get("error", "")
            return Outcome(r.status, error[:90], r.status == 422 and "refused" in error)
        cases.append((f"signed pack, {name}", run))

    def newline_name() -> Outcome:
        arc = signed_archive(t.tmp / "nl.mbpack", t.key, t.pack,
                             json.dumps(dict(base, name="fuzz\n")).encode(), name="fuzz\n")
        r = _upload(t, arc.read_bytes())
        return Outcome(r.status, (r.json() or {}).get("error", "")[:90], r.status == 400)
    cases.append(("signed pack named 'fuzz\\n'", newline_name))

    if t.silent_pack is not None:
        def silent() -> Outcome:
            arc = signed_archive(t.tmp / "silent.mbpack", t.key, t.silent_pack, name="silent")
            r = _upload(t, arc.read_bytes())
            return Outcome(r.status, (r.json() or {}).get("error", "")[:90], r.status == 422)
        cases.append(("signed pack that is silent (sound check)", silent))

    def token_bytes() -> Outcome:
        r = raw_http(t.port, "POST", "/api/packs", {"X-Morphbox-Token": b"\xff\xfe\x80tok"},
                     b"x" * 100)
        return Outcome(r.status, "", r.status == 403)
    cases.append(("token header with non-UTF-8 bytes", token_bytes))

    def flood(headers: dict, status: int):
        """A 4 GiB body the box must refuse from its headers: closed early, not read."""
        def case() -> Outcome:
            r = raw_http(t.port, "POST", "/api/packs", {**headers, "Content-Length": str(4 << 30)},
                         stream(256 << 20), answer_first=True)
            return Outcome(r.status, f"{r.sent / 1e6:.1f} MB sent before the close",
                           r.status == status and r.sent < (64 << 20))
        return case
    cases.append(("no token, 4 GiB body", flood({}, 401)))
    cases.append(("wrong token, 4 GiB body", flood({"X-Morphbox-Token": "wrong"}, 403)))
    cases.append(("4 GiB upload (413)", flood({"X-Morphbox-Token": t.token}, 413)))

    def expect_continue() -> Outcome:
        r = raw_http(t.port, "POST", "/api/packs", {"Expect": "100-continue",
                                                    "Content-Length": str(1 << 30)}, [])
        return Outcome(r.status, "refused before the body", r.status == 401)
    cases.append(("Expect: 100-continue without token", expect_continue))

    def chunked_quota() -> Outcome:
        data = oversized_header_archive(t.tmp / "big.mbpack", t.key, 1 << 40)
        r = _upload(t, chunked(data), {"Transfer-Encoding": "chunked"}, activate=False)
        return Outcome(r.status, (r.json() or {}).get("error", "")[:90],
                       r.status in (413, 507))
    cases.append(("chunked upload promising 1 TB", chunked_quota))

    def bad_host() -> Outcome:
        r = raw_http(t.port, "GET", "/api/status", host=b"evil.example")
        return Outcome(r.status, "DNS rebinding", r.status == 421)
    cases.append(("Host: evil.example (rebinding)", bad_host))

    def framing() -> Outcome:
        r = raw_http(t.port, "GET", "/")
        h = r.headers
        ok = (h.get("x-frame-options") == "DENY" and "frame-ancestors 'none'"
              in h.get("content-security-policy", "")
              and h.get("x-content-type-options") == "nosniff")
        return Outcome(r.status, "X-Frame-Options, CSP, nosniff" if ok else str(h), ok)
    cases.append(("page framing headers", framing))

    def deep_json() -> Outcome:
        r = raw_http(t.port, "POST", "/api/keys", {"X-Morphbox-Token": t.token,
                                                   "Content-Type": "application/json"},
                     _deep(100000).encode())
        return Outcome(r.status, "", r.status in (400, 413))
    cases.append(("pairing JSON 100000 deep", deep_json))

    def garbage_json() -> Outcome:
        r = raw_http(t.port, "POST", "/api/recording", {"X-Morphbox-Token": t.token},
                     b"\xff\x00{{{")
        return Outcome(r.status, "", r.status in (400, 409))
    cases.append(("recording request of garbage bytes", garbage_json))

    def big_json() -> Outcome:
        r = raw_http(t.port, "POST", "/api/keys", {"X-Morphbox-Token": t.token},
                     b"{" + b" " * (8 << 20) + b"}")
        return Outcome(r.status, "", r.status == 413)
    cases.append(("8 MB pairing JSON", big_json))

    def traversal() -> Outcome:
        r = raw_http(t.port, "GET", "/api/recordings/..%2F..%2Fetc%2Fpasswd.wav",
                     {"X-Morphbox-Token": t.token})
        return Outcome(r.status, "", r.status in (400, 404))
    cases.append(("recording name ../../etc/passwd", traversal))

    def bad_id() -> Outcome:
        r = raw_http(t.port, "POST", "/api/packs/..%2F..%2Fx-0123456789ab%0A/activate",
                     {"X-Morphbox-Token": t.token})
        return Outcome(r.status, "", r.status == 404)
    cases.append(("activate id with a newline", bad_id))

    def truncated() -> Outcome:
        good = signed_archive(t.tmp / "good.mbpack", t.key, t.pack, name="trunc").read_bytes()
        r = _upload(t, good[:len(good) // 2], {"Content-Length": str(len(good) // 2)})
        return Outcome(r.status, (r.json() or {}).get("error", "")[:90], r.status == 422)
    cases.append(("truncated archive", truncated))

    def stalled() -> Outcome:
        good = signed_archive(t.tmp / "stall.mbpack", t.key, t.pack, name="stall").read_bytes()
        s = Staller(t.port, t.token, good[:2000], claimed=len(good))
        try:
            t0 = time.monotonic()
            r = raw_http(t.port, "GET", "/api/packs", timeout=10)
            listed = time.monotonic() - t0
            reply = s.join(60)
        finally:
            s.close()
        status = reply.status if reply else 0
        return Outcome(status, f"GET /api/packs answered in {listed * 1000:.0f} ms meanwhile",
                       r.status == 200 and listed < 5 and status == 408)
    cases.append(("stalled upload (packs listed meanwhile)", stalled))

    def slowloris() -> Outcome:
        t0 = time.monotonic()
        with socket.create_connection(("127.0.0.1", t.port), timeout=5) as sock:
            sock.sendall(b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            closed = trickled_until_closed(sock, 90)
        secs = time.monotonic() - t0
        return Outcome(0, f"headers trickled: closed by the box after {secs:.0f} s"
                       if closed else "still open after 90 s", closed)
    cases.append(("headers sent a byte at a time", slowloris))
    return cases


def concurrent_uploads(t: Target, data: bytes, n: int = 50) -> list[int]:
    """``n`` uploads of ``data`` at once (not activated); their statuses."""
    out = [0] * n

    def one(i):
        try:
            out[i] = _upload(t, data, activate=False, timeout=120).status
        except OSError:
            out[i] = -1
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(180)
    return out
