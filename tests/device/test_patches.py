"""Patch slots: atomic JSON files in the state directory."""

from __future__ import annotations

import json

import pytest

from morphbox.device.packs.patches import Patch, PatchError, PatchStore

P = Patch(corners={"NW": 1, "NE": 2, "SW": 3, "SE": 4}, attack_s=0.5, decay_s=0.2, sustain=0.6,
          release_s=1.5, volume=0.7, x=0.1, y=0.9)


def test_round_trip_in_the_env_state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MORPHBOX_STATE_DIR", str(tmp_path / "state"))
    store = PatchStore()
    assert store.load(2) is None
    path = store.save(2, P)
    assert path == tmp_path / "state" / "patch-2.json"
    assert json.loads(path.read_text())["corners"] == {"NW": 1, "NE": 2, "SW": 3, "SE": 4}
    assert store.load(2) == P
    assert sorted(p.name for p in path.parent.iterdir()) == ["patch-2.json"]  # no temp left


def test_bad_slot_and_invalid_file_are_clear_errors_and_lose_nothing(tmp_path):
    store = PatchStore(tmp_path)
    for slot in (0, 5, "1", True):
        with pytest.raises(PatchError, match="slot must be 1..4"):
            store.save(slot, P)
    bad = tmp_path / "patch-3.json"
    bad.write_text('{"corners": {"NW": 1}, "volume": 2}')
    with pytest.raises(PatchError, match="patch-3.json.*corners"):
        store.load(3)
    assert bad.read_text() == '{"corners": {"NW": 1}, "volume": 2}'
    with pytest.raises(PatchError, match="'volume'"):
        Patch.from_dict({**P.to_dict(), "volume": 1.5})


def test_unwritable_directory_keeps_the_old_patch(tmp_path):
    store = PatchStore(tmp_path)
    store.save(1, P)
    (tmp_path / "patch-1.json").chmod(0o444)
    tmp_path.chmod(0o555)
    try:
        if (tmp_path / "probe").exists() or _writable(tmp_path):
            pytest.skip("running as root: directory permissions do not apply")
        with pytest.raises(PatchError, match="cannot save patch 1"):
            store.save(1, Patch(**{**P.to_dict(), "volume": 0.1}))
        assert store.load(1) == P
    finally:
        tmp_path.chmod(0o755)


def _writable(d) -> bool:
    try:
        (d / "probe").write_text("")
    except OSError:
        return False
    (d / "probe").unlink()
    return True


def test_morph_mode_round_trips_and_old_patch_files_still_load(tmp_path):
    store = PatchStore(tmp_path)
    latch = Patch(**{**P.to_dict(), "morph_mode": "latch"})
    store.save(3, latch)
    assert json.loads((tmp_path / "patch-3.json").read_text())["morph_mode"] == "latch"
    assert store.load(3) == latch
    old = {k: v for k, v in P.to_dict().items() if k not in ("morph_mode", "x", "y")}
    (tmp_path / "patch-4.json").write_text(json.dumps(old))  # written before the field
    assert store.load(4).morph_mode == "follow" and store.load(4).x == 0.5
    with pytest.raises(PatchError, match="'morph_mode'"):
        Patch.from_dict({**P.to_dict(), "morph_mode": "drift"})
