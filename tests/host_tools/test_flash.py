"""Laptop side: keys init, pairing, `pack flash` to a running device service over loopback,
and the errors a musician sees."""

from __future__ import annotations

import json
import socket

import pytest

from morphbox.device.api.server import ApiServer
from morphbox.device.packs.format import DEFAULT_PACK
from morphbox.device.packs.store import PackStore
from morphbox.device.service import Service, ServiceConfig
from morphbox.host_tools import flash as fl
from tests.device.test_archive import raw_archive, small_pack


@pytest.fixture
def cfg(tmp_path, monkeypatch):
    d = tmp_path / "laptop"
    monkeypatch.setenv("MORPHBOX_CONFIG_DIR", str(d))
    return d


@pytest.fixture
def device(tmp_path):
    store = PackStore(tmp_path / "box")
    service = Service(ServiceConfig(audio="none"))
    server = ApiServer(service, store, "127.0.0.1", 0)
    service.add(server)
    service.start()
    yield {"service": service, "store": store, "addr": f"127.0.0.1:{server.port}"}
    service.stop()


def test_keys_init_writes_a_private_key_once(cfg):
    path, kid = fl.keys_init()
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert path.stat().st_mode & 0o777 == 0o600
    assert len((cfg / "signing_key.pub").read_text().strip()) == 64 and len(kid) == 16
    with pytest.raises(fl.FlashError, match="already exists.*--force"):
        fl.keys_init()
    assert fl.keys_init(force=True)[1] != kid


def test_pair_then_flash_puts_the_pack_on_the_box_and_it_sounds(cfg, device, tmp_path):
    fl.keys_init()
    kid = fl.pair(device["addr"], device["store"].token)
    assert kid in device["store"].trusted_keys()
    assert json.loads((cfg / "devices.json").read_text())[device["addr"]]["key_id"] == kid
    pack = small_pack(tmp_path / "bright", "bright", level=200)
    answer = fl.flash(pack, device["addr"], show_progress=True)  # token from devices.json
    assert answer["activated"] and answer["id"].startswith("bright-")
    assert device["service"].engine.grid.name == "bright"
    assert device["store"].pointer() == {**device["store"].pointer(), "active": answer["id"],
                                         "previous": "builtin"}
    arc = fl.archive(DEFAULT_PACK, tmp_path / "default.mbpack")
    answer = fl.flash(arc, device["addr"], show_progress=False)
    assert answer["bytes"] == arc.stat().st_size and answer["id"].startswith("default-")
    assert device["service"].engine.grid.name == "default"


def test_clear_errors(cfg, device, tmp_path):
    pack = small_pack(tmp_path / "p", "p")
    with pytest.raises(fl.FlashError, match="no signing key.*morphbox keys init"):
        fl.archive(pack)
    fl.keys_init()
    with pytest.raises(fl.FlashError, match="no token for 127.0.0.1"):
        fl.flash(pack, device["addr"])
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(fl.FlashError, match=f"device unreachable at 127.0.0.1:{port}"):
        fl.flash(pack, f"127.0.0.1:{port}", token="t")
    with pytest.raises(fl.FlashError, match="wrong pairing token"):
        fl.pair(device["addr"], "not-the-token")
    # not paired: the device rejects the signature
    with pytest.raises(fl.FlashError, match="signature rejected.*not paired.*HTTP 403"):
        fl.flash(pack, device["addr"], token=device["store"].token, show_progress=False)
    fl.pair(device["addr"], device["store"].token)
    device["store"].reserve_bytes = 1 << 60
    with pytest.raises(fl.FlashError, match="not enough space on the device"):
        fl.flash(pack, device["addr"], show_progress=False)
    device["store"].reserve_bytes = 0
    key = fl.load_key()
    v2 = raw_archive(tmp_path, key, pack, header_edit=lambda h: h.update(pack_format_version=99))
    with pytest.raises(fl.FlashError, match="incompatible version: hostile.mbpack is pack "
                                            "format 99.*reads pack format 3"):
        fl.flash(v2, device["addr"], show_progress=False)
    with pytest.raises(fl.FlashError, match="bad device address"):
        fl.parse_device("http://:80")
    assert [p["id"] for p in device["store"].list_packs()] == ["builtin"]


def test_parse_device():
    assert fl.parse_device("morphbox.local") == ("morphbox.local", 8750)
    assert fl.parse_device("10.0.0.5:9000") == ("10.0.0.5", 9000)
    assert fl.parse_device("http://[::1]:8750") == ("::1", 8750)
