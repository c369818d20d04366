"""The device's HTTP API and web page (aiohttp, on its own thread and event loop).

Binds to loopback by default (``127.0.0.1:8750``); give the LAN address (or ``0.0.0.0``) to
reach it from a laptop. Status, packs and keys can be read by anyone who reaches the port;
the recordings (someone's playing) and every change need the pairing token in the
``X-Morphbox-Token`` header (or ``Authorization: Bearer TOKEN``), and only archives signed by
a paired key install. All answers are JSON; a refusal is ``{"error": message, "code": word}``
with the status below.

=======  ==============================  ==================================================
method   path                            what
=======  ==============================  ==================================================
GET      /                               the web page (``device/api/web/``)
GET      /api/status                     active/previous pack, corners, audio health,
                                         versions, free space, upload limit
GET      /api/packs                      installed packs (see PackStore.list_packs)
POST     /api/packs[?activate=1]         body: a ``.mbpack`` archive, streamed. 201
                                         ``{"id", "activated", "seconds": {...}}``
POST     /api/packs/{id}/activate        200 ``{"active", "previous", "seconds"}``
DELETE   /api/packs/{id}                 200 (409: active or built-in)
POST     /api/keys                       pairing: ``{"public_key": 64 hex, "label"}``; 201
GET      /api/keys                       paired key ids
DELETE   /api/keys/{key_id}              unpair
GET      /api/recording                  recorder status ``{"recording", "current", "last"}``
                                         (token)
POST     /api/recording                  body ``{"action": "start"|"stop"|"toggle"}``: start
                                         or stop recording; answers the status (token)
GET      /api/recordings                 ``[{"name", "bytes", "modified"}]`` (token)
GET      /api/recordings/{name}          the file (``.wav`` or ``.mid``) (token)
GET      /api/auth                       204 if the token is right (the page checks it
                                         before an upload)
=======  ==============================  ==================================================

Statuses: 400 bad request or archive (path traversal, bad format), 401 missing token,
403 wrong token or signature rejected, 404 no such pack/recording, 408 an upload that stalled
or took too long, 409 in use, 413 upload too large, 421 a Host header that is not one of the
box's names, 422 corrupt/tampered, incompatible version, or a pack that fails to load or fails
the sound check (rolled back), 429 too many uploads at once, 507 not enough space (or the
packs quota). No input gets a 500: an unexpected error is logged and answered as JSON.

Hardening (issue 13):

* **Host check** (DNS rebinding): the ``Host`` header must be an IP address or one of the
  box's names (``localhost``, its hostname, ``hostname.local``, its FQDN) or a name in
  ``allowed_hosts`` / ``$MORPHBOX_ALLOWED_HOSTS`` (comma-separated; ``*`` allows any).
  Otherwise 421, so a web page on another origin that rebinds its name to the box cannot read
  status, packs or key ids.
* **Refuse before reading**: the token and the Host are checked from the headers before any
  body is read (also for ``Expect: 100-continue``, answered before the client sends the
  body); a refused request's connection is closed instead of being read to its end
  (aiohttp's lingering read is off). A paired client's upload that is refused part-way
  (signature, corrupt member) has the rest of its body drained, bounded by the upload limit
  and 10 s, so it reads the reason.
* **Time and memory**: each read of an upload times out after ``read_timeout_s`` (408), a
  whole upload after ``upload_timeout_s``; at most ``max_uploads`` uploads run at once (429
  beyond). An upload streams to disk through its own worker thread (hashing as it goes) and
  takes the store's lock only to rename the verified pack into place, so listing, activating
  and deleting never wait on a client's network. glibc is told to return large freed blocks
  to the system, and trims after each upload, so memory goes back to its idle level.
* **Page headers**: every answer carries ``X-Frame-Options: DENY``, a
  ``Content-Security-Policy`` (only the box's own scripts and styles, no framing) and
  ``X-Content-Type-Options: nosniff``; every ``/api/`` answer ``Cache-Control: no-store``
  (they depend on the token, so a browser never replays one from its cache).

The audio thread is never involved: activations and deletions run on one worker thread (so
they are serialised), and activation ends in
:meth:`morphbox.device.engine.voices.Engine.set_grid`, a reference swap the engine picks up at
its next block, after the service's sound check on a private engine.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import ipaddress
import logging
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aiohttp import web

from morphbox.device.packs.archive import ARCHIVE_VERSION, parse_public_key
from morphbox.device.packs.format import FORMAT_VERSIONS
from morphbox.device.packs.store import PackStore, StoreError, recording_name_ok

log = logging.getLogger("morphbox.api")

DEFAULT_PORT = 8750
WEB_DIR = Path(__file__).resolve().parent / "web"
MAX_JSON_BYTES = 64 * 1024  # pairing and recording requests are a few dozen bytes
DRAIN_S = 10.0  # most time spent reading the rest of a paired client's refused upload

SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; object-src 'none'; "
                               "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
}
# refusals whose request body is never read: the connection is closed after the answer
_CLOSE = {401, 403, 408, 413, 421, 429}


def morphbox_version() -> str:
    try:
        from importlib.metadata import version
        return version("morphbox")
    except Exception:  # noqa: BLE001 - not installed (a checkout on sys.path)
        return "0.1.0"


def _err(status: int, code: str, message: str) -> web.Response:
    resp = web.json_response({"error": message, "code": code}, status=status)
    if status in _CLOSE:
        resp.force_close()
    if status == 429:
        resp.headers["Retry-After"] = "2"
    return resp


# ---- memory --------------------------------------------------------------------------------

_libc = None


def tune_malloc(mmap_threshold: int = 256 * 1024) -> bool:
    """Make glibc give large freed blocks back to the system: a fixed ``M_MMAP_THRESHOLD``
    (glibc otherwise raises it to the largest block freed, up to 32 MB, after which an upload's
    and a grid's buffers stay in the heap and the service keeps its peak size). Returns False
    where there is no glibc."""
    global _libc
    try:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(_libc.mallopt(-3, int(mmap_threshold)))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        _libc = None
        return False


def trim_memory() -> None:
    """Return free heap memory to the system (glibc ``malloc_trim``); nothing elsewhere."""
    if _libc is not None:
        try:
            _libc.malloc_trim(0)
        except AttributeError:
            pass


# ---- hosts ---------------------------------------------------------------------------------


def default_allowed_hosts() -> set[str]:
    """Names the box answers to: localhost, its hostname, ``hostname.local`` (mDNS), its FQDN,
    and ``$MORPHBOX_ALLOWED_HOSTS`` (comma-separated; ``*`` = any). IP addresses are always
    allowed (a rebinding attack needs a name)."""
    names = {"localhost", "localhost.localdomain"}
    try:
        host = socket.gethostname().lower().rstrip(".")
        names |= {host, f"{host}.local", host.split(".")[0] + ".local"}
        names.add(socket.getfqdn().lower().rstrip("."))
    except OSError:
        pass
    extra = os.environ.get("MORPHBOX_ALLOWED_HOSTS", "")
    names |= {h.strip().lower().rstrip(".") for h in extra.split(",") if h.strip()}
    return names


def host_name(header: str | None) -> str | None:
    """The name in a ``Host`` header, port removed, lower case (None if malformed)."""
    if not header:
        return None
    header = header.strip()
    if header.startswith("["):
        name, sep, rest = header[1:].partition("]")
        if not sep or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
        return name.lower()
    name, sep, port = header.rpartition(":")
    if sep and port.isdigit() and ":" not in name:
        header = name
    elif ":" in header:
        return None
    return header.lower().rstrip(".")


def host_allowed(header: str | None, allowed: set[str]) -> bool:
    """Is ``header`` (a Host header) this box: an IP literal or an allowed name?"""
    if "*" in allowed:
        return True
    name = host_name(header)
    if not name or not name.isascii():
        return False
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return name in allowed


class _StreamBridge:
    """A blocking ``read(n)`` for a worker thread over the request's async stream, with a
    per-read timeout and a deadline for the whole upload (408 :class:`StoreError`)."""

    def __init__(self, content, loop, read_timeout_s: float, deadline: float):
        self._content, self._loop = content, loop
        self._read_timeout_s, self._deadline = read_timeout_s, deadline

    async def _read(self, n: int) -> bytes:
        left = self._deadline - self._loop.time()
        if left <= 0:
            raise StoreError("upload took too long: the device stops an upload after its time "
                             "limit (a slow or stalled connection)", 408, "timeout")
        try:
            return await asyncio.wait_for(self._content.read(n),
                                          min(self._read_timeout_s, left))
        except TimeoutError:
            waited = min(self._read_timeout_s, left)
            raise StoreError(f"upload stalled: no data for {waited:.0f} s", 408,
                             "timeout") from None

    def read(self, n: int) -> bytes:
        return asyncio.run_coroutine_threadsafe(self._read(n), self._loop).result()


class ApiServer:
    """The HTTP API as a service part (``start()``/``stop()``).

    ``service``: the running :class:`morphbox.device.service.Service` (None: store only, no audio).
    ``host``/``port``: where to listen (port 0: any free port; :attr:`port` tells which).
    ``allowed_hosts``: names accepted in the ``Host`` header besides IP addresses (default
    :func:`default_allowed_hosts`). ``max_uploads``: uploads at once (429 beyond).
    ``read_timeout_s``: longest wait for the next bytes of a request body (408);
    ``upload_timeout_s``: longest one upload may take (408); ``idle_timeout_s``: a connection
    that has no request in progress for this long (a client sending its headers a byte at a
    time, or an idle keep-alive) is closed.
    """

    name = "http-api"

    def __init__(self, service, store: PackStore, host: str = "127.0.0.1",
                 port: int = DEFAULT_PORT, *, allowed_hosts: set[str] | None = None,
                 max_uploads: int = 2, read_timeout_s: float = 15.0,
                 upload_timeout_s: float = 600.0, idle_timeout_s: float = 20.0):
        self.service, self.store = service, store
        self.host, self.port = host, port
        self.allowed_hosts = set(allowed_hosts) if allowed_hosts is not None else \
            default_allowed_hosts()
        self.max_uploads = max_uploads
        self.read_timeout_s, self.upload_timeout_s = read_timeout_s, upload_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.uploads = 0  # uploads running (event-loop thread only)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        # activations and deletions: one at a time; uploads: their own threads (they wait on
        # the network); listings: their own (they never wait behind either)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="pack-worker")
        self._upload_pool = ThreadPoolExecutor(max(1, max_uploads),
                                               thread_name_prefix="pack-upload")
        self._io_pool = ThreadPoolExecutor(2, thread_name_prefix="api-io")

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    # ---- lifecycle --------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=MAX_JSON_BYTES)
        app.on_response_prepare.append(self._headers)
        r = app.router
        r.add_get("/", self.page)
        r.add_get("/api/status", self.status)
        r.add_get("/api/auth", self.auth)
        r.add_get("/api/packs", self.packs)
        r.add_post("/api/packs", self.upload, expect_handler=self._expect)
        r.add_post("/api/packs/{id}/activate", self.activate)
        r.add_delete("/api/packs/{id}", self.delete)
        r.add_get("/api/keys", self.keys)
        r.add_post("/api/keys", self.pair)
        r.add_delete("/api/keys/{kid}", self.unpair)
        r.add_get("/api/recording", self.recording_status)
        r.add_post("/api/recording", self.record)
        r.add_get("/api/recordings", self.recordings)
        r.add_get("/api/recordings/{name}", self.recording)
        r.add_static("/static", WEB_DIR)
        return app

    def start(self) -> None:
        """Start listening; raises OSError (address in use, no such interface) here."""
        _ = self.store.token  # made now: `morphbox token` and `morphbox record` find it
        tune_malloc()
        self._ready.clear()
        self._thread = threading.Thread(target=self._run, name="http-api", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            # lingering_time=0: a body left unread (a refused request) is not read to its end
            self._runner = web.AppRunner(self.app(), access_log=None, lingering_time=0)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, self.host, self.port)
            loop.run_until_complete(site.start())
            self.port = self._runner.addresses[0][1]
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._error = exc
            self._ready.set()
            return
        log.info("HTTP API on %s", self.url)
        sweeper = loop.create_task(self._sweep())
        self._ready.set()
        loop.run_forever()
        sweeper.cancel()
        loop.run_until_complete(self._runner.cleanup())
        loop.close()

    def stop(self) -> None:
        if self._loop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=5)
        for pool in (self._pool, self._upload_pool, self._io_pool):
            pool.shutdown(wait=False)

    async def _sweep(self) -> None:
        """Close connections without a request in progress for ``idle_timeout_s``: aiohttp
        has no timeout for a request's headers, so a client trickling them (slowloris) would
        hold its connection for ever."""
        idle_since: dict[int, float] = {}  # id(handler) -> when first seen idle
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(max(0.05, self.idle_timeout_s / 4))
            try:
                server = getattr(self._runner, "server", None)
                now, seen = loop.time(), {}
                for handler in list(getattr(server, "connections", ()) or ()):
                    if getattr(handler, "_request_in_progress", True):
                        continue
                    since = seen[id(handler)] = idle_since.get(id(handler), now)
                    if now - since >= self.idle_timeout_s:
                        handler.force_close()
                        transport = getattr(handler, "transport", None)
                        if transport is not None:
                            transport.close()
                idle_since = seen
            except Exception:  # noqa: BLE001 - the sweep never stops
                log.exception("connection sweep")

    # ---- helpers ----------------------------------------------------------------------------

    @staticmethod
    async def _headers(request, response) -> None:
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        if request.path.startswith("/api/"):
            # answers depend on the token: a browser must never replay one from its cache
            # (a recording fetched with the token, then asked for without it, is a 401)
            response.headers["Cache-Control"] = "no-store"

    def _check_host(self, request: web.Request) -> None:
        header = request.headers.get("Host")
        if not host_allowed(header, self.allowed_hosts):
            shown = (header or "").encode("utf-8", "surrogateescape")[:80].decode(
                "ascii", "replace")
            raise StoreError(f"this box does not answer to Host {shown!r}"
                             " (add the name to MORPHBOX_ALLOWED_HOSTS if it is really this "
                             "box)", 421, "host")

    @web.middleware
    async def _guard(self, request, handler):
        try:
            self._check_host(request)
            return await handler(request)
        except StoreError as exc:
            return _err(exc.status, exc.code, str(exc))
        except web.HTTPException as exc:  # 404, 405, 413 from aiohttp itself
            if exc.status >= 400:
                return _err(exc.status, "http", exc.reason)
            raise
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception:  # noqa: BLE001 - no input may get a traceback
            log.exception("unexpected error answering %s %s", request.method,
                          request.rel_url.path)
            return _err(500, "internal", "internal error on the device (logged); the box plays "
                        "on")

    async def _expect(self, request: web.Request):
        """``Expect: 100-continue``: refuse from the headers before the client sends a byte."""
        try:
            self._check_host(request)
            self._auth(request)
            self._upload_slot_free()
            self._size_ok(request.content_length)
        except StoreError as exc:
            return _err(exc.status, exc.code, str(exc))
        request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return None

    def _auth(self, request: web.Request) -> None:
        tok = request.headers.get("X-Morphbox-Token")
        auth = request.headers.get("Authorization", "")
        if not tok and auth.lower().startswith("bearer "):
            tok = auth[7:]
        self.store.check_token(tok)

    def _upload_slot_free(self) -> None:
        if self.uploads >= self.max_uploads:
            raise StoreError(f"the device is busy with {self.uploads} uploads; try again in a "
                             "few seconds", 429, "busy")

    def _size_ok(self, length: int | None) -> None:
        if length is not None and length > self.store.max_pack_bytes:
            raise StoreError(f"upload of {length / 1e6:.1f} MB is larger than the "
                             f"{self.store.max_pack_bytes / 1e6:.1f} MB this device accepts",
                             413, "too_large")

    def _activate(self, pid: str):
        try:
            return self.store.activate(pid, apply=self.service.switch_pack
                                       if self.service is not None else None)
        finally:
            trim_memory()

    async def _work(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def _io(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._io_pool, fn, *args)

    async def _json(self, request: web.Request):
        """The request's JSON body, read within the read timeout; None if it is not JSON."""
        try:
            return await asyncio.wait_for(request.json(), self.read_timeout_s)
        except TimeoutError:
            raise StoreError(f"request body stalled: no data for {self.read_timeout_s:.0f} s",
                             408, "timeout") from None
        except (ValueError, UnicodeDecodeError):
            return None

    async def _drain(self, request: web.Request, exc: StoreError) -> None:
        """After a paired client's upload was refused part-way, read (and drop) the rest of its
        body so it can read the reason, if that is at most the upload limit and takes at most
        :data:`DRAIN_S`; otherwise the connection is closed with the answer."""
        if exc.status in _CLOSE or request.content.is_eof():
            return
        length = request.content_length
        limit = self.store.max_pack_bytes
        if length is not None and length > limit:
            return
        loop = asyncio.get_running_loop()
        end, seen = loop.time() + DRAIN_S, 0
        try:
            while not request.content.is_eof() and seen <= limit:
                left = end - loop.time()
                if left <= 0:
                    return
                chunk = await asyncio.wait_for(request.content.readany(), left)
                if not chunk:
                    return
                seen += len(chunk)
        except (TimeoutError, ConnectionError, OSError):
            return

    # ---- handlers ---------------------------------------------------------------------------

    async def page(self, request):
        return web.FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-store"})

    async def status(self, request):
        ptr = self.store.pointer()
        body = {"device": "morphbox", "version": morphbox_version(),
                "pack_format_version": max(FORMAT_VERSIONS),
                "pack_format_versions": list(FORMAT_VERSIONS), "archive_version": ARCHIVE_VERSION,
                "active": ptr["active"], "previous": ptr.get("previous"),
                "recovered_from": ptr.get("recovered_from", []),
                "free_bytes": max(self.store.free_bytes(), 0),
                "max_upload_bytes": self.store.max_pack_bytes,
                "paired_keys": len(self.store.trusted_keys())}
        if self.service is not None:
            st = self.service.status()
            body.update(pack=st["pack"], corners=st["corners"], voices=st["voices"],
                        audio={k: st[k] for k in ("audio_device", "blocks", "late_blocks",
                                                   "xruns", "errors")},
                        grid=self.service.engine.grid.name)
            body["audio"]["nonfinite_blocks"] = getattr(self.service.engine,
                                                        "nonfinite_blocks", 0)
        return web.json_response(body)

    async def auth(self, request):
        self._auth(request)
        return web.Response(status=204)

    async def packs(self, request):
        return web.json_response(await self._io(self.store.list_packs))

    async def upload(self, request):
        self._auth(request)
        self._upload_slot_free()
        cl = request.content_length
        self._size_ok(cl)
        loop = asyncio.get_running_loop()
        self.uploads += 1
        t0 = time.perf_counter()
        try:
            bridge = _StreamBridge(request.content, loop, self.read_timeout_s,
                                   loop.time() + self.upload_timeout_s)
            pid = await loop.run_in_executor(self._upload_pool, self._install, bridge, cl)
        except StoreError as exc:
            await self._drain(request, exc)
            raise
        finally:
            self.uploads -= 1
        t1 = time.perf_counter()
        body = {"id": pid, "activated": False, "seconds": {"install": round(t1 - t0, 4)}}
        if request.query.get("activate") in ("1", "true", "yes"):
            try:
                act = await self._work(self._activate, pid)
            except StoreError as exc:
                return web.json_response({"error": str(exc), "code": exc.code, "id": pid},
                                         status=exc.status)
            body.update(activated=True, previous=act.previous)
            body["seconds"].update(load=round(act.load_s, 4), swap=round(act.swap_s, 4))
        return web.json_response(body, status=201)

    def _install(self, bridge, length):
        try:
            return self.store.install(bridge, length)
        finally:
            trim_memory()

    async def activate(self, request):
        self._auth(request)
        act = await self._work(self._activate, request.match_info["id"])
        return web.json_response({"active": act.id, "previous": act.previous,
                                  "seconds": {"load": round(act.load_s, 4),
                                              "swap": round(act.swap_s, 4)}})

    async def delete(self, request):
        self._auth(request)
        pid = request.match_info["id"]
        await self._work(self.store.delete, pid)
        return web.json_response({"deleted": pid})

    async def keys(self, request):
        return web.json_response(sorted(self.store.trusted_keys()))

    async def pair(self, request):
        self._auth(request)
        body = await self._json(request)
        try:
            raw = parse_public_key(str(body["public_key"]))
        except (ValueError, KeyError, TypeError) as exc:
            return _err(400, "bad_key", f"pairing needs {{\"public_key\": 64 hex digits}}: "
                        f"{exc}")
        kid = self.store.add_key(raw, str(body.get("label", "")))
        return web.json_response({"key_id": kid}, status=201)

    async def unpair(self, request):
        self._auth(request)
        self.store.remove_key(request.match_info["kid"])
        return web.json_response({"removed": request.match_info["kid"]})

    def _need_service(self):
        if self.service is None:
            raise StoreError("no audio service runs with this API", 409, "no_service")
        return self.service

    async def recording_status(self, request):
        self._auth(request)
        return web.json_response(self._need_service().recorder.status())

    async def record(self, request):
        self._auth(request)
        service = self._need_service()
        body = await self._json(request)
        action = body.get("action") if isinstance(body, dict) else None
        ops = {"start": service.start_recording, "stop": service.stop_recording,
               "toggle": service.toggle_recording}
        if not isinstance(action, str) or action not in ops:
            return _err(400, "bad_request", 'recording needs {"action": "start", "stop" or '
                        '"toggle"}')
        try:
            status = await self._work(ops[action])
        except OSError as exc:
            return _err(507, "no_space", f"cannot record: {exc}")
        return web.json_response(status)

    async def recordings(self, request):
        self._auth(request)
        d = self.store.recordings_dir

        def listing():
            try:
                files = [p for p in sorted(d.iterdir())
                         if recording_name_ok(p.name) and p.is_file() and not p.is_symlink()]
                return [{"name": p.name, "bytes": p.stat().st_size,
                         "modified": p.stat().st_mtime} for p in files]
            except OSError:
                return []

        return web.json_response(await self._io(listing))

    async def recording(self, request):
        self._auth(request)
        name = request.match_info["name"]
        if not recording_name_ok(name):
            return _err(400, "traversal", f"refused recording name {name!r}: a plain .wav or "
                        ".mid file name (no paths)")
        path = self.store.recordings_dir / name
        if path.is_symlink() or not path.is_file():
            return _err(404, "not_found", f"no recording {name!r}")
        return web.FileResponse(path, headers={
            "Content-Disposition": f'attachment; filename="{name}"'})


def parse_bind(text: str) -> tuple[str, int]:
    """``HOST``, ``HOST:PORT``, ``[V6]:PORT`` or ``:PORT`` -> (host, port); default
    127.0.0.1 and :data:`DEFAULT_PORT`. ValueError for a bad port."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.lstrip(":")
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, ""
    try:
        port_n = int(port) if port else DEFAULT_PORT
    except ValueError:
        raise ValueError(f"bad API address {text!r}: use HOST[:PORT]") from None
    if not 0 <= port_n < 65536:
        raise ValueError(f"bad API port {port_n} in {text!r}")
    return host or "127.0.0.1", port_n


def attach_api(service, store: PackStore | None = None, host: str = "127.0.0.1",
               port: int = DEFAULT_PORT) -> ApiServer:
    """Add the HTTP API to ``service`` as a part (started with it). ``store``: default
    ``PackStore()`` (the state directory of :func:`morphbox.device.packs.store.state_root`)."""
    server = ApiServer(service, store or getattr(service, "store", None) or PackStore(), host,
                       port)
    service.add(server)
    return server
