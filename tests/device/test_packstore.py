"""The pack store: atomic install, activation with rollback, start-up fallback, SIGKILL safety."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal

import numpy as np
import pytest

from morphbox.device.packs.format import PackError, load_pack
from morphbox.device.packs.store import BUILTIN, PackStore, StoreError
from morphbox.device.service import Service, ServiceConfig
from tests.device.test_archive import archive_of, new_key, public_raw, small_pack


@pytest.fixture
def setup(tmp_path):
    """A store with one paired key and archives of two different small packs."""
    key = new_key()
    store = PackStore(tmp_path / "state")
    store.add_key(public_raw(key), "test laptop")
    arcs = {lvl: archive_of(small_pack(tmp_path / f"p{lvl}", f"p{lvl}", level=lvl), key)
            for lvl in (120, 200)}
    return store, key, arcs


def _installed(store):
    return sorted(p.name for p in store.packs_dir.iterdir())


def test_install_lists_and_activates_keeping_the_previous(setup):
    store, _, arcs = setup
    a = store.install_file(arcs[120])
    b = store.install_file(arcs[200])
    assert a.startswith("p120-") and b.startswith("p200-")
    assert _installed(store) == sorted([a, b])  # no leftovers
    assert load_pack(store.pack_path(a)).name == "p120"
    assert store.pointer() == {"active": BUILTIN, "previous": None}
    store.activate(a)
    act = store.activate(b)
    assert act.previous == a and act.pack.name == "p200"
    ptr = json.loads((store.root / "active.json").read_text())
    assert (ptr["active"], ptr["previous"]) == (b, a)
    listed = {p["id"]: p for p in store.list_packs()}
    assert listed[BUILTIN]["builtin"] and listed[b]["active"] and listed[a]["previous"]
    assert listed[b]["corners"]["NW"] == "p200-inst0"
    assert store.install_file(arcs[200]) == b  # same pack again: same id, nothing new
    assert _installed(store) == sorted([a, b])


def test_token_is_created_once_private_and_checked(setup):
    store = setup[0]
    tok = store.token
    assert len(tok) >= 16 and store.token == tok
    assert (store.root / "token").stat().st_mode & 0o777 == 0o600
    with pytest.raises(StoreError, match="missing pairing token") as e:
        store.check_token(None)
    assert e.value.status == 401
    with pytest.raises(StoreError, match="wrong pairing token") as e:
        store.check_token(tok + "x")
    assert e.value.status == 403
    store.check_token(tok)


def test_unpaired_key_and_tampered_archive_install_nothing(setup, tmp_path):
    store, _, arcs = setup
    other = archive_of(small_pack(tmp_path / "o", "o"), new_key())
    with pytest.raises(StoreError, match="signature rejected") as e:
        store.install_file(other)
    assert (e.value.status, e.value.code) == (403, "signature")
    data = bytearray(arcs[120].read_bytes())
    data[-5] ^= 0xFF
    arcs[120].write_bytes(bytes(data))
    with pytest.raises(StoreError, match="tampered") as e:
        store.install_file(arcs[120])
    assert e.value.status == 422
    assert _installed(store) == []


def test_not_enough_space_and_oversized_are_refused_before_writing(setup):
    store, _, arcs = setup
    store.reserve_bytes = store.free_bytes() + store.reserve_bytes  # nothing left
    with pytest.raises(StoreError, match="not enough space on the device") as e:
        store.install_file(arcs[120])
    assert e.value.status == 507
    store.reserve_bytes = 0
    store.max_pack_bytes = 1000
    with pytest.raises(StoreError, match="larger than the 0.0 MB") as e:
        store.install_file(arcs[120])
    assert e.value.status == 413
    with pytest.raises(StoreError, match="larger than") as e:  # no length given: streamed
        with open(arcs[120], "rb") as f:
            store.install(f)
    assert e.value.status == 413
    assert _installed(store) == []


def test_delete_rules(setup):
    store, _, arcs = setup
    a, b = store.install_file(arcs[120]), store.install_file(arcs[200])
    store.activate(a)
    store.activate(b)
    with pytest.raises(StoreError, match="is active: activate another pack first"):
        store.delete(b)
    with pytest.raises(StoreError, match="built-in pack cannot be deleted"):
        store.delete(BUILTIN)
    with pytest.raises(StoreError, match="no such pack") as e:
        store.delete("../../etc")
    assert e.value.status == 404
    store.delete(a)
    assert _installed(store) == [b] and store.pointer()["previous"] is None


def _note_audio(engine, blocks=40):
    engine.controls.set_touch(0.5, 0.5)
    engine.note_on(60, 100)
    out = np.concatenate([engine.render_block().copy() for _ in range(blocks)])
    engine.all_sound_off()
    for _ in range(10):
        engine.render_block()
    return out


def test_activate_on_a_service_swaps_the_sound(setup):
    store, _, arcs = setup
    a, b = store.install_file(arcs[120]), store.install_file(arcs[200])
    store.activate(a)
    _, pack = store.startup()
    service = Service(ServiceConfig(pack=pack.path, audio="none"))
    before = _note_audio(service.engine)
    store.activate(b, service.switch_pack)
    assert service.pack.name == "p200" and service.engine.grid.name == "p200"
    assert service.status()["corners"]["NW"] == "p200-inst0"
    after = _note_audio(service.engine)
    assert np.sqrt(np.mean(after ** 2)) > 3 * np.sqrt(np.mean(before ** 2))  # 40 dB louder


def test_pack_that_fails_to_load_rolls_back_and_the_old_sound_plays_on(setup, tmp_path):
    store, key, arcs = setup
    a, b = store.install_file(arcs[120]), store.install_file(arcs[200])
    store.activate(a)
    service = Service(ServiceConfig(pack=store.pack_path(a), audio="none"))
    old_grid = service.engine.grid
    member = store.pack_path(b) / "grid_harmonics.npy"  # bit rot after install
    data = bytearray(member.read_bytes())
    data[-1] ^= 1
    member.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=f"pack {b} failed to load, rolled back to {a} "
                                         f"\\(still playing\\).*SHA-256 mismatch") as e:
        store.activate(b, service.switch_pack)
    assert e.value.status == 422
    assert service.engine.grid is old_grid and service.pack.name == "p120"
    assert store.pointer()["active"] == a
    assert np.abs(_note_audio(service.engine)).max() > 1e-3  # still sounding
    # a pack that verifies but does not fit the engine (32 partials): also rolled back
    odd = store.install_file(archive_of(small_pack(tmp_path / "odd", "odd", harmonics=32), key))
    with pytest.raises(StoreError, match="does not fit this engine, rolled back"):
        store.activate(odd, service.switch_pack)
    assert service.engine.grid is old_grid and store.pointer()["active"] == a


def test_startup_falls_back_to_previous_then_builtin(setup):
    store, _, arcs = setup
    a, b = store.install_file(arcs[120]), store.install_file(arcs[200])
    store.activate(a)
    store.activate(b)
    (store.pack_path(b) / "grid_noise.npy").write_bytes(b"garbage")
    pid, pack = store.startup()
    assert (pid, pack.name) == (a, "p120")
    ptr = store.pointer()
    assert ptr["active"] == a and "grid_noise.npy is corrupt" in ptr["recovered_from"][0]
    (store.root / "active.json").write_text("{not json")  # its backup copy still knows
    assert store.startup()[0] == a
    (store.root / "active.json").write_text(json.dumps({"active": "gone-0123456789ab"}))
    pid, pack = store.startup()
    assert pid == BUILTIN and pack.name == "default"


# ---- SIGKILL at random points --------------------------------------------------------------


_KILL_POINTS = ("fsync", "rename", "replace", "unlink", "rmdir", "mkdir", "write")


def _installer(root: str, archives: list[str], kill_at: int) -> None:
    """Child: install, activate and delete packs forever, and SIGKILL itself just before its
    ``kill_at``-th file-system operation (fsync, rename, replace, unlink, rmdir, mkdir, or a
    write to an open file): a power cut at a chosen point of the work, whatever the speed of
    the machine."""
    import builtins
    import io
    count = [0]

    def point():
        count[0] += 1
        if count[0] >= kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    for name in _KILL_POINTS[:-1]:
        real = getattr(os, name)

        def wrapped(*a, _real=real, **kw):
            point()
            return _real(*a, **kw)

        setattr(os, name, wrapped)
    real_open = builtins.open

    class Killing(io.BufferedWriter):
        def write(self, b):
            point()
            return super().write(b)

    def opener(file, mode="r", *a, **kw):
        f = real_open(file, mode, *a, **kw)
        if "b" in mode and any(c in mode for c in "wxa") and isinstance(f, io.BufferedWriter):
            return Killing(f.detach())
        return f

    builtins.open = opener
    store = PackStore(root)
    i = 0
    while True:
        pid = store.install_file(archives[i % len(archives)])
        store.activate(pid)
        ptr = store.pointer()
        for p in store.list_packs():
            if not p["builtin"] and p["id"] not in (ptr["active"], ptr.get("previous")):
                store.delete(p["id"])
        i += 1


def test_sigkill_at_100_random_points_always_leaves_a_loadable_active_pack(tmp_path):
    key = new_key()
    root = tmp_path / "state"
    PackStore(root).add_key(public_raw(key))
    archives = [str(archive_of(small_pack(tmp_path / f"k{i}", f"k{i}", level=160 + 30 * i), key))
                for i in range(3)]
    ctx = multiprocessing.get_context("fork")
    rng = random.Random(6)
    interrupted = 0
    seen_active = set()
    for _ in range(100):
        kill_at = rng.randint(1, 150)  # a cycle (install, activate, delete) is ~50 operations
        proc = ctx.Process(target=_installer, args=(str(root), archives, kill_at), daemon=True)
        proc.start()
        proc.join(120)
        assert proc.exitcode == -signal.SIGKILL
        store = PackStore(root)
        leftovers = [p for p in store.packs_dir.iterdir() if p.name.startswith(".")]
        interrupted += bool(leftovers)
        for p in store.packs_dir.iterdir():  # every published pack is complete
            if not p.name.startswith("."):
                load_pack(p)
        pid, pack = store.startup()  # the device starts with a valid active pack
        assert pack.name in ("default", "k0", "k1", "k2")
        seen_active.add(pack.name)
        assert not [p for p in store.packs_dir.iterdir() if p.name.startswith(".")]
    assert interrupted >= 10  # many kills landed mid-install or mid-delete
    assert len(seen_active) >= 3
    service = Service(ServiceConfig(pack=PackStore(root).startup()[1].path, audio="none"))
    assert np.abs(_note_audio(service.engine)).max() > 1e-3


def test_startup_with_no_loadable_pack_at_all_says_so(tmp_path):
    store = PackStore(tmp_path / "s", builtin=tmp_path / "missing")
    with pytest.raises(PackError, match="no loadable pack, not even the built-in one"):
        store.startup()


# ---- issue 13: a start-up that always finds a pack, quotas, a full disk ------------------


@pytest.mark.parametrize("garbage", [b"\x8f\x00\xffrandom", b"", b"[]", b"{}", b"null",
                                     b'{"active": "../../etc"}', b'{"active": "x\\n"}',
                                     b'{"active": NaN}', "dir"])
def test_a_garbage_pointer_boots_the_last_good_choice_and_says_so(setup, garbage, caplog):
    store, _, arcs = setup
    a, b = store.install_file(arcs[120]), store.install_file(arcs[200])
    store.activate(a)
    store.activate(b)
    ptr = store.root / "active.json"
    ptr.unlink()
    if garbage == "dir":
        ptr.mkdir()
    else:
        ptr.write_bytes(garbage)
    caplog.set_level("ERROR")
    pid, pack = store.startup()
    assert (pid, pack.name) == (b, "p200")  # from the backup copy: what was playing
    assert "active.json is unreadable" in caplog.text
    assert store.pointer()["active"] == b and ptr.is_file()  # rewritten, garbage moved aside
    assert "active.json" in store.pointer()["recovered_from"][0]
    # both copies garbage: the built-in pack, logged
    (store.root / "active.json").write_bytes(b"\x00")
    (store.root / "active.json.bak").write_bytes(b"[]")
    assert store.startup()[0] == BUILTIN


def test_a_state_dir_with_packs_as_a_file_still_starts(tmp_path, caplog):
    root = tmp_path / "state"
    root.mkdir()
    (root / "packs").write_text("not a directory")
    (root / "recordings").symlink_to(tmp_path / "nowhere")
    caplog.set_level("ERROR")
    store = PackStore(root)
    assert store.packs_dir.is_dir() and "was not a directory: moved it aside" in caplog.text
    assert store.startup()[0] == BUILTIN
    assert [p["id"] for p in store.list_packs()] == [BUILTIN]


def test_any_exception_while_proving_a_pack_falls_back(setup):
    store, _, arcs = setup
    a, b = store.install_file(arcs[120]), store.install_file(arcs[200])
    store.activate(a)
    store.activate(b)

    def check(pack):
        if pack.name == "p200":
            raise OverflowError("int too large to convert to float")
        if pack.name == "p120":
            raise RecursionError("maximum recursion depth exceeded")

    pid, _ = store.startup(check=check)
    assert pid == BUILTIN
    rec = store.pointer()["recovered_from"]
    assert "OverflowError" not in rec[0] and "int too large" in rec[0] and "recursion" in rec[1]


def test_a_planted_pack_with_a_nan_sample_rate_is_skipped_at_start(setup):
    """A pack that got onto the disk by another way than install (an older version, a hand
    copy) and breaks the schema never boots."""
    store, _, arcs = setup
    a, b = store.install_file(arcs[120]), store.install_file(arcs[200])
    store.activate(a)
    store.activate(b)
    m = store.pack_path(b) / "manifest.json"
    text = m.read_text()
    assert '"source_sample_rate": 48000' in text
    m.write_text(text.replace('"source_sample_rate": 48000', '"source_sample_rate": NaN'))
    pid, pack = store.startup()
    assert pid == a and "NaN is not a number JSON allows" in store.last_recovery[0]


def test_install_refuses_a_signed_pack_whose_manifest_breaks_the_schema(setup, tmp_path):
    from tests.device.hostile import hostile_manifests, signed_archive
    store, key, _ = setup
    pack = small_pack(tmp_path / "base", "base")
    base = json.loads((pack / "manifest.json").read_text())
    for name, text in hostile_manifests(base).items():
        arc = signed_archive(tmp_path / "h.mbpack", key, pack, text, name="base")
        with pytest.raises(StoreError) as e:
            store.install_file(arc)
        assert e.value.status == 422 and e.value.code == "schema", name
    assert _installed(store) == []


def test_recordings_past_the_cap_are_pruned_oldest_first(tmp_path):
    from morphbox.device.packs.store import prune_recordings
    rec = tmp_path / "rec"
    rec.mkdir()
    for i in range(5):
        for ext in ("wav", "mid"):
            p = rec / f"2025010{i}-120000.{ext}"
            p.write_bytes(b"x" * (1000 if ext == "wav" else 10))
            os.utime(p, (1000 + i, 1000 + i))
    (rec / "notes.txt").write_text("not a recording")
    gone = prune_recordings(rec, cap_bytes=2100, keep=1)
    assert sorted(gone) == [f"2025010{i}-120000.{e}" for i in range(3) for e in ("mid", "wav")]
    assert sorted(p.name for p in rec.iterdir()) == [
        "20250103-120000.mid", "20250103-120000.wav", "20250104-120000.mid",
        "20250104-120000.wav", "notes.txt"]
    assert sorted(prune_recordings(rec, cap_bytes=0, keep=1)) == ["20250103-120000.mid",
                                                                  "20250103-120000.wav"]


def _install_with_file_size_limit(root: str, archive: str, limit: int, out) -> None:
    import resource
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    try:
        PackStore(root).install_file(archive)
        out.put(("installed", 0, ""))
    except StoreError as exc:
        out.put((exc.code, exc.status, str(exc)))


def test_a_write_that_fails_for_lack_of_space_is_507_and_leaves_nothing(setup):
    """A real failing write (a file size limit makes write(2) fail with EFBIG, as a full disk
    fails with ENOSPC) during an install: 507, no leftovers, nothing installed."""
    store, _, arcs = setup
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    proc = ctx.Process(target=_install_with_file_size_limit,
                       args=(str(store.root), str(arcs[120]), 20_000, q))
    proc.start()
    code, status, msg = q.get(timeout=60)
    proc.join(10)
    assert (code, status) == ("no_space", 507) and "storage is full" in msg
    assert _installed(store) == []
