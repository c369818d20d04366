"""The device HTTP API over loopback: token, upload, activate (it sounds), delete, recordings,
and every refusal with its status and message."""

from __future__ import annotations

import http.client
import json
import time

import numpy as np
import pytest

from morphbox.device.api.server import ApiServer, parse_bind
from morphbox.device.packs.store import BUILTIN, PackStore
from morphbox.device.service import Service, ServiceConfig
from tests.device.test_archive import archive_of, new_key, public_raw, raw_archive, small_pack
from tests.helpers import becomes_true, wait_until


class Api:
    def __init__(self, server: ApiServer, token: str | None):
        self.port, self.token = server.port, token

    def __call__(self, method, path, body=None, token="default", headers=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        h = dict(headers or {})
        tok = self.token if token == "default" else token
        if tok:
            h["X-Morphbox-Token"] = tok
        conn.request(method, path, body=body, headers=h)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        ctype = resp.getheader("Content-Type", "")
        return resp.status, (json.loads(data) if "json" in ctype else data)


@pytest.fixture
def box(tmp_path):
    """A running service (paced null audio, a note held) on small pack p120, with the API on
    an ephemeral loopback port; archives of p120 and p200 signed by a paired key."""
    key = new_key()
    store = PackStore(tmp_path / "state")
    store.add_key(public_raw(key))
    arcs = {lvl: archive_of(small_pack(tmp_path / f"p{lvl}", f"p{lvl}", level=lvl), key)
            for lvl in (120, 200)}
    first = store.install_file(arcs[120])
    store.activate(first)
    service = Service(ServiceConfig(pack=store.startup()[1].path, audio="none"))
    server = ApiServer(service, store, "127.0.0.1", 0)
    service.add(server)
    blocks = []
    service.engine.add_tap(lambda b: blocks.append((service.engine.grid.name,
                                                    float(np.sqrt(np.mean(b ** 2))))))
    service.controls.set_touch(0.5, 0.5)
    service.start()
    service.engine.note_on(60, 100)
    yield {"service": service, "store": store, "api": Api(server, store.token), "arcs": arcs,
           "key": key, "first": first, "blocks": blocks, "tmp": tmp_path}
    service.stop()


def test_status_and_list_are_open(box):
    st, body = box["api"]("GET", "/api/status", token=None)
    assert st == 200
    assert body["active"] == box["first"] and body["pack"] == "p120"
    assert body["pack_format_versions"] == [3] and body["archive_version"] == 1
    assert body["audio"]["errors"] == 0 and body["corners"]["NW"] == "p120-inst0"
    st, packs = box["api"]("GET", "/api/packs", token=None)
    assert st == 200 and [p["id"] for p in packs] == [BUILTIN, box["first"]]


def test_upload_and_activate_over_http_changes_the_sound(box):
    api, service = box["api"], box["service"]
    wait_until(lambda: sum(n == "p120" for n, _ in box["blocks"]) >= 5, what="p120 blocks")
    st, body = api("POST", "/api/packs?activate=1", box["arcs"][200].read_bytes())
    assert st == 201, body
    assert body["activated"] and body["id"].startswith("p200-")
    assert body["previous"] == box["first"]
    assert service.engine.grid.name == "p200" and service.pack.name == "p200"
    wait_until(lambda: sum(n == "p200" for n, _ in box["blocks"]) >= 5, what="p200 blocks")
    old = [r for n, r in box["blocks"] if n == "p120"][-5:]
    new = [r for n, r in box["blocks"] if n == "p200"][-5:]
    assert len(new) == 5 and min(new) > 3 * max(old)  # the new pack sounds, 40 dB louder
    st, status = api("GET", "/api/status")
    assert status["pack"] == "p200" and status["previous"] == box["first"]
    assert status["audio"]["errors"] == 0
    # back to the first pack by id
    st, body = api("POST", f"/api/packs/{box['first']}/activate")
    assert st == 200 and body["active"] == box["first"]
    assert service.engine.grid.name == "p120"


def test_missing_and_wrong_token_change_nothing(box):
    api = box["api"]
    data = box["arcs"][200].read_bytes()
    st, body = api("POST", "/api/packs", data, token=None)
    assert st == 401 and "missing pairing token" in body["error"]
    st, body = api("POST", "/api/packs", data, token="nope")
    assert st == 403 and "wrong pairing token" in body["error"]
    st, body = api("DELETE", f"/api/packs/{box['first']}", token=None)
    assert st == 401
    st, body = api("POST", "/api/keys", json.dumps({"public_key": "00" * 32}), token="x")
    assert st == 403
    assert [p["id"] for p in box["store"].list_packs()] == [BUILTIN, box["first"]]
    assert len(box["store"].trusted_keys()) == 1


def test_refusals_have_status_and_message_and_lose_nothing(box):
    api, tmp = box["api"], box["tmp"]
    wrong = archive_of(small_pack(tmp / "w", "w"), new_key()).read_bytes()
    st, body = api("POST", "/api/packs?activate=1", wrong)
    assert st == 403 and body["code"] == "signature" and "not paired" in body["error"]
    tampered = bytearray(box["arcs"][200].read_bytes())
    tampered[-3] ^= 0x10
    st, body = api("POST", "/api/packs", bytes(tampered))
    assert st == 422 and "tampered" in body["error"]
    evil = raw_archive(tmp, box["key"], tmp / "p200", rename={"grid_noise.npy": "../x.npy"})
    st, body = api("POST", "/api/packs", evil.read_bytes())
    assert st == 400 and "path traversal" in body["error"]
    v2 = raw_archive(tmp, box["key"], tmp / "p200",
                     header_edit=lambda h: h.update(pack_format_version=99))
    st, body = api("POST", "/api/packs", v2.read_bytes())
    assert st == 422 and "incompatible pack: format version 99" in body["error"]
    st, body = api("POST", "/api/packs", b"not an archive at all")
    assert st == 400 and "not a morphbox pack archive" in body["error"]
    box["store"].max_pack_bytes = 10_000
    st, body = api("POST", "/api/packs", box["arcs"][200].read_bytes())
    assert st == 413 and "larger than" in body["error"]
    box["store"].max_pack_bytes = 1 << 30
    box["store"].reserve_bytes = 1 << 60
    st, body = api("POST", "/api/packs", box["arcs"][200].read_bytes())
    assert st == 507 and "not enough space on the device" in body["error"]
    st, body = api("POST", "/api/packs/nope-0123456789ab/activate")
    assert st == 404 and "no such pack" in body["error"]
    st, body = api("DELETE", f"/api/packs/{box['first']}")
    assert st == 409 and "is active" in body["error"]
    # nothing lost: same packs, same active pack, still playing it
    assert [p["id"] for p in box["store"].list_packs()] == [BUILTIN, box["first"]]
    assert box["store"].pointer()["active"] == box["first"]
    assert box["service"].engine.grid.name == "p120"
    assert not [p for p in box["store"].packs_dir.iterdir() if p.name.startswith(".")]


def test_failed_activation_over_http_rolls_back(box):
    api, store = box["api"], box["store"]
    st, body = api("POST", "/api/packs", box["arcs"][200].read_bytes())
    assert st == 201 and not body["activated"]
    (store.pack_path(body["id"]) / "grid_harmonics.npy").write_bytes(b"\x93NUMPY broken")
    st, err = api("POST", f"/api/packs/{body['id']}/activate")
    assert st == 422 and err["code"] == "load_failed"
    assert f"rolled back to {box['first']} (still playing)" in err["error"]
    assert box["service"].engine.grid.name == "p120"
    assert store.pointer()["active"] == box["first"]


def test_delete_and_pairing(box):
    api, store = box["api"], box["store"]
    _, body = api("POST", "/api/packs", box["arcs"][200].read_bytes())
    st, _ = api("DELETE", f"/api/packs/{body['id']}")
    assert st == 200 and not (store.packs_dir / body["id"]).exists()
    laptop = new_key()
    st, body = api("POST", "/api/keys", json.dumps({"public_key": public_raw(laptop).hex(),
                                                     "label": "laptop"}))
    assert st == 201 and body["key_id"] in store.trusted_keys()
    st, body = api("POST", "/api/keys", json.dumps({"public_key": "xyz"}))
    assert st == 400 and "64 hex digits" in body["error"]


def test_recordings_list_download_and_traversal(box):
    rec = box["store"].recordings_dir
    (rec / "20250101-120000.wav").write_bytes(b"RIFF....WAVEdata")
    (rec / "20250101-120000.mid").write_bytes(b"MThd")
    (box["tmp"] / "secret.wav").write_bytes(b"secret")
    api = box["api"]
    # someone's playing: not for whoever reaches the port (the box may listen on the LAN)
    for path in ("/api/recordings", "/api/recordings/20250101-120000.wav"):
        st, body = api("GET", path, token=None)
        assert st == 401 and "token" in body["error"]
        st, body = api("GET", path, token="wrong")
        assert st == 403
    st, listing = api("GET", "/api/recordings")
    assert st == 200 and [r["name"] for r in listing] == ["20250101-120000.mid",
                                                          "20250101-120000.wav"]
    st, data = api("GET", "/api/recordings/20250101-120000.wav")
    assert st == 200 and data == b"RIFF....WAVEdata"
    st, body = api("GET", "/api/recordings/..%2Fsecret.wav")
    assert st == 400 and "refused recording name '../secret.wav'" in body["error"]
    assert body["code"] == "traversal"
    st, body = api("GET", "/api/recordings/missing.wav")
    assert st == 404 and "no recording" in body["error"]


def test_page_is_served(box):
    st, html = box["api"]("GET", "/", token=None)
    assert st == 200 and b"morphbox" in html and b"app.js" in html
    st, js = box["api"]("GET", "/static/app.js", token=None)
    assert st == 200 and b"/api/packs" in js


def test_parse_bind():
    assert parse_bind("127.0.0.1") == ("127.0.0.1", 8750)
    assert parse_bind("0.0.0.0:9000") == ("0.0.0.0", 9000)
    assert parse_bind("[::1]:8751") == ("::1", 8751)
    assert parse_bind(":8752") == ("127.0.0.1", 8752)
    with pytest.raises(ValueError, match="bad API address"):
        parse_bind("host:http")


# ---- issue 13: every hostile case against a running service -------------------------------


def _silent_pack(path):
    """A pack that verifies but plays nothing: every partial and band is code 0 (no velocity
    layer lifts it)."""
    from morphbox.device.packs.format import load_pack, write_pack
    src = load_pack(small_pack(path.with_name(path.name + "-src"), "silent"))
    arrays = {k: (v * 0 if v.dtype in (np.uint8, np.int8) else v)
              for k, v in src.arrays.items()}
    manifest = {k: v for k, v in src.manifest.items()
                if k not in ("members", "format", "format_version")}
    return write_pack(path, manifest, arrays)


@pytest.fixture
def hostile_box(tmp_path):
    """The box fixture's service, with a 1 s read timeout (so a stalled client is cut off
    quickly) and one upload at a time."""
    from tests.device.hostile import Target
    key = new_key()
    store = PackStore(tmp_path / "state")
    store.add_key(public_raw(key))
    pack = small_pack(tmp_path / "p120", "p120", level=120)
    first = store.install_file(archive_of(pack, key))
    store.activate(first)
    service = Service(ServiceConfig(pack=store.startup()[1].path, audio="none"))
    server = ApiServer(service, store, "127.0.0.1", 0, read_timeout_s=1.0, max_uploads=1,
                       idle_timeout_s=2.0)
    service.add(server)
    service.controls.set_touch(0.5, 0.5)
    service.start()
    service.engine.note_on(60, 100)
    target = Target(port=server.port, token=store.token, key=key, tmp=tmp_path, pack=pack,
                    silent_pack=_silent_pack(tmp_path / "silent"))
    yield {"service": service, "store": store, "server": server, "first": first,
           "target": target}
    service.stop()


def _blocks(service) -> int:
    return service.status()["blocks"]



def test_every_hostile_http_case_is_refused_and_the_box_plays_on(hostile_box):
    from tests.device.hostile import http_cases
    service, store = hostile_box["service"], hostile_box["store"]
    failures = []
    for name, run in http_cases(hostile_box["target"]):
        before = _blocks(service)
        outcome = run()
        if not outcome.ok or outcome.status >= 500 or (outcome.status == 0 and "slow"
                                                        not in name and "byte" not in name):
            failures.append(f"{name}: {outcome.status} {outcome.note}")
        if store.pointer()["active"] != hostile_box["first"] or service.pack.name != "p120":
            failures.append(f"{name}: the active pack changed")
        if not becomes_true(lambda before=before: _blocks(service) > before + 5):
            failures.append(f"{name}: the audio stopped")
    assert not failures, "\n".join(failures)
    st = service.status()
    assert st["errors"] == 0 and service.engine.nonfinite_blocks == 0
    assert service.engine.grid.name == "p120"
    # nothing of the refused uploads is left on disk
    assert not [p for p in store.packs_dir.iterdir() if p.name.startswith(".")]
    assert not [p for p in store.packs_dir.iterdir() if p.name.startswith("fuzz")]
    assert not [p for p in store.packs_dir.iterdir() if "\n" in p.name]


def test_a_stalled_upload_does_not_hold_up_pack_operations(hostile_box):
    """Issue 13, case 4: while a client stalls mid-upload, listing and activating answer at
    once; the stalled upload is cut off with 408 and leaves nothing behind; a second upload
    meanwhile is told the box is busy (429, one upload at a time here)."""
    from tests.device.hostile import Staller, raw_http, signed_archive
    t, store = hostile_box["target"], hostile_box["store"]
    hostile_box["server"].read_timeout_s = 5.0  # long enough for what happens meanwhile
    other = store.install_file(archive_of(small_pack(t.tmp / "p200", "p200", level=200),
                                          t.key))
    good = signed_archive(t.tmp / "stall.mbpack", t.key, t.pack).read_bytes()
    staller = Staller(t.port, t.token, good[:3000], claimed=len(good))
    try:
        assert becomes_true(lambda: hostile_box["server"].uploads == 1, 10)
        r = raw_http(t.port, "GET", "/api/packs", timeout=5)
        assert r.status == 200 and len(r.json()) == 3
        r = raw_http(t.port, "POST", f"/api/packs/{other}/activate",
                     {"X-Morphbox-Token": t.token}, timeout=5)
        assert r.status == 200 and hostile_box["service"].pack.name == "p200"
        r = raw_http(t.port, "POST", "/api/packs", {"X-Morphbox-Token": t.token}, good,
                     timeout=5)
        assert r.status == 429 and "busy" in r.json()["error"] and r.closed
        reply = staller.join(30)
    finally:
        staller.close()
    assert reply is not None and reply.status == 408 and "stalled" in reply.json()["error"]
    assert becomes_true(lambda: not [p for p in store.packs_dir.iterdir()
                                  if p.name.startswith(".")], 10)


def test_refusals_close_the_connection_without_reading_the_body(hostile_box):
    from tests.device.hostile import raw_http, stream
    t = hostile_box["target"]
    r = raw_http(t.port, "POST", "/api/packs", {"Content-Length": str(1 << 30)},
                 stream(128 << 20), answer_first=True)
    assert r.status == 401 and r.json()["code"] == "auth"
    assert r.closed and r.sent < (64 << 20)  # not read to its end (the kernel buffers some)
    r = raw_http(t.port, "POST", "/api/packs", {"Expect": "100-continue",
                                                "X-Morphbox-Token": "nope",
                                                "Content-Length": "5000"}, [])
    assert r.status == 403  # answered from the headers: the client never sent its body


def test_answers_carry_page_security_headers_and_check_the_host(hostile_box):
    from tests.device.hostile import raw_http
    t = hostile_box["target"]
    for path in ("/", "/api/status", "/static/app.js", "/nope"):
        r = raw_http(t.port, "GET", path)
        assert r.headers["x-frame-options"] == "DENY", path
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        assert r.headers["x-content-type-options"] == "nosniff"
        # token-dependent answers are never cached by the browser
        if path.startswith("/api/"):
            assert r.headers.get("cache-control") == "no-store", path
    assert raw_http(t.port, "GET", "/nope").status == 404
    for host in (b"127.0.0.1", b"localhost:8750", b"[::1]:8750", b"LOCALHOST."):
        assert raw_http(t.port, "GET", "/api/status", host=host).status == 200, host
    for host in (b"evil.example", b"evil.example:8750", b"127.0.0.1.evil.example",
                 b"\xff\xfe", b"", b"a:b:c"):
        r = raw_http(t.port, "GET", "/api/packs", host=host)
        assert r.status in (400, 421), host
    hostile_box["server"].allowed_hosts.add("studio.lan")
    assert raw_http(t.port, "GET", "/api/status", host=b"studio.lan").status == 200


def test_a_silent_pack_fails_its_sound_check_and_the_old_one_plays_on(hostile_box):
    from tests.device.hostile import signed_archive
    t, service = hostile_box["target"], hostile_box["service"]
    api = Api(hostile_box["server"], t.token)
    arc = signed_archive(t.tmp / "silent.mbpack", t.key, t.silent_pack, name="silent")
    st, body = api("POST", "/api/packs?activate=1", arc.read_bytes())
    assert st == 422 and "sound check: silent at NW" in body["error"]
    assert f"rolled back to {hostile_box['first']} (still playing)" in body["error"]
    assert service.pack.name == "p120" and service.engine.grid.name == "p120"


def test_upload_past_the_packs_quota_is_507_and_leaves_nothing(hostile_box):
    t, store = hostile_box["target"], hostile_box["store"]
    api = Api(hostile_box["server"], t.token)
    data = archive_of(small_pack(t.tmp / "p200", "p200", level=200), t.key).read_bytes()
    store.packs_quota_bytes = store.packs_bytes() + len(data) // 2
    st, body = api("POST", "/api/packs", data)
    assert st == 507 and "quota" in body["error"]
    from tests.device.hostile import chunked, raw_http
    r = raw_http(t.port, "POST", "/api/packs", {"X-Morphbox-Token": t.token,
                                                "Transfer-Encoding": "chunked"},
                 chunked(data))
    assert r.status == 507 and "quota" in r.json()["error"]
    assert sorted(p.name for p in store.packs_dir.iterdir()) == [hostile_box["first"]]


def test_a_client_trickling_its_headers_is_disconnected(hostile_box):
    """Slowloris: aiohttp has no timeout for headers; the server's sweep closes a connection
    that has had no request in progress for idle_timeout_s."""
    import socket
    server = hostile_box["server"]
    server.idle_timeout_s = 1.0
    from tests.device.hostile import trickled_until_closed
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    try:
        sock.sendall(b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        t0 = time.monotonic()
        assert trickled_until_closed(sock, 30)
        assert time.monotonic() - t0 >= 0.5  # by the sweep, not at once
    finally:
        sock.close()
    st, _ = Api(server, None)("GET", "/api/status")  # others are still served
    assert st == 200
