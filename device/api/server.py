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
=======  ==============================  ==================================================

Statuses: 400 bad request or archive (path traversal, bad format), 401 missing token,
403 wrong token or signature rejected, 404 no such pack/recording, 409 in use, 413 upload too
large, 422 corrupt/tampered, incompatible version, or a pack that fails to load (rolled back),
507 not enough space.

The audio thread is never involved: installs and activations run on one worker thread (so
they are serialised), and activation ends in :meth:`morphbox.device.engine.voices.Engine.set_grid`,
a reference swap the engine picks up at its next block.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aiohttp import web

from morphbox.device.packs.archive import ARCHIVE_VERSION, parse_public_key
from morphbox.device.packs.format import FORMAT_VERSIONS
from morphbox.device.packs.store import PackStore, StoreError

log = logging.getLogger("morphbox.api")

DEFAULT_PORT = 8750
WEB_DIR = Path(__file__).resolve().parent / "web"
_RECORDING = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\.(wav|mid)$")


def morphbox_version() -> str:
    try:
        from importlib.metadata import version
        return version("morphbox")
    except Exception:  # noqa: BLE001 - not installed (a checkout on sys.path)
        return "0.1.0"


def _err(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": message, "code": code}, status=status)


class _StreamBridge:
    """A blocking ``read(n)`` for the worker thread over the request's async stream."""

    def __init__(self, content, loop):
        self._content, self._loop = content, loop

    def read(self, n: int) -> bytes:
        return asyncio.run_coroutine_threadsafe(self._content.read(n), self._loop).result()


class ApiServer:
    """The HTTP API as a service part (``start()``/``stop()``).

    ``service``: the running :class:`morphbox.device.service.Service` (None: store only, no audio).
    ``host``/``port``: where to listen (port 0: any free port; :attr:`port` tells which).
    """

    name = "http-api"

    def __init__(self, service, store: PackStore, host: str = "127.0.0.1",
                 port: int = DEFAULT_PORT):
        self.service, self.store = service, store
        self.host, self.port = host, port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="pack-worker")

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    # ---- lifecycle --------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors])
        r = app.router
        r.add_get("/", self.page)
        r.add_get("/api/status", self.status)
        r.add_get("/api/packs", self.packs)
        r.add_post("/api/packs", self.upload)
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
            self._runner = web.AppRunner(self.app(), access_log=None)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, self.host, self.port)
            loop.run_until_complete(site.start())
            self.port = self._runner.addresses[0][1]
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._error = exc
            self._ready.set()
            return
        log.info("HTTP API on %s", self.url)
        self._ready.set()
        loop.run_forever()
        loop.run_until_complete(self._runner.cleanup())
        loop.close()

    def stop(self) -> None:
        if self._loop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._pool.shutdown(wait=False)

    # ---- helpers ----------------------------------------------------------------------------

    @web.middleware
    async def _errors(self, request, handler):
        try:
            return await handler(request)
        except StoreError as exc:
            return _err(exc.status, exc.code, str(exc))

    def _auth(self, request: web.Request) -> None:
        tok = request.headers.get("X-Morphbox-Token")
        auth = request.headers.get("Authorization", "")
        if not tok and auth.lower().startswith("bearer "):
            tok = auth[7:]
        self.store.check_token(tok)

    def _activate(self, pid: str):
        return self.store.activate(pid, apply=self.service.switch_pack
                                   if self.service is not None else None)

    async def _work(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

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
        return web.json_response(body)

    async def packs(self, request):
        return web.json_response(await self._work(self.store.list_packs))

    async def upload(self, request):
        self._auth(request)
        cl = request.content_length
        t0 = time.perf_counter()
        pid = await self._work(self.store.install,
                               _StreamBridge(request.content, asyncio.get_running_loop()), cl)
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
        try:
            body = await request.json()
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
        try:
            action = (await request.json())["action"]
        except (ValueError, KeyError, TypeError):
            action = None
        ops = {"start": service.start_recording, "stop": service.stop_recording,
               "toggle": service.toggle_recording}
        if action not in ops:
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
        files = [p for p in sorted(d.iterdir()) if _RECORDING.match(p.name) and p.is_file()] \
            if d.is_dir() else []
        return web.json_response([{"name": p.name, "bytes": p.stat().st_size,
                                   "modified": p.stat().st_mtime} for p in files])

    async def recording(self, request):
        self._auth(request)
        name = request.match_info["name"]
        if not _RECORDING.match(name):
            return _err(400, "traversal", f"refused recording name {name!r}: a plain .wav or "
                        ".mid file name (no paths)")
        path = self.store.recordings_dir / name
        if not path.is_file():
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
