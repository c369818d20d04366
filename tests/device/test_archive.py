"""Signed pack archives (.mbpack): round trip and every refusal, with its message.

Also holds the small-pack and key helpers the other flashing tests import.
"""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from morphbox.device.packs.archive import (
    MAGIC,
    ArchiveError,
    extract_archive,
    key_id,
    public_raw,
    read_header,
    write_archive,
    write_raw_archive,
)
from morphbox.device.packs.format import load_pack, write_pack

K, E, B = 64, 24, 32  # the engine's partials, envelope and noise bands: every test pack
C = K + E + B


def small_pack(path: Path, name: str = "small", level: int = 160, grid: int = 3,
               harmonics: int = K, version: int | None = None) -> Path:
    """A valid tiny pack (4 instruments, 3 anchors, 20 frames, 3x3 grid, ~60 KB) whose partial
    codes are ``level`` (so two packs with different levels sound different)."""
    n, a, f = 4, 3, 20
    rng = np.random.default_rng(level)
    harm = np.full((n, a, f, harmonics), level, np.uint8)
    harm[..., harmonics // 2:] = 0
    noise = rng.integers(0, 40, (n, a, f, B), dtype=np.uint8)
    manifest = {
        "name": name, "mode": "spectral", "source_sample_rate": 48000,
        "frame_times": [round(0.02 * i, 6) for i in range(f)], "velocity": 100,
        "velocity_layers": [100], "frames": f, "harmonics": harmonics, "envelope_bands": E,
        "noise_bands": B, "grid_size": grid, "pitch_anchors": [48, 60, 72],
        "loop": {"start": 5, "end": 15, "style": "forward", "crossfade_s": 0.1},
        "db_quantisation": {"min_db": -120, "step_db": 0.5},
        "instruments": [{"name": f"{name}-inst{i}", "source": {"kind": "test"}, "notes": []}
                        for i in range(n)],
        "corners": {"NW": 0, "NE": 1, "SW": 2, "SE": 3}, "provenance": {"tool": "test"}}
    c = harmonics + E + B
    arrays = {"instruments_harmonics": harm, "instruments_noise": noise,
              "instruments_envelope": np.zeros((n, a, f, E), np.uint8),
              "instruments_loudness": np.full((n, a, f), -20, np.float32),
              "instruments_pitch_cents": np.zeros((n, a), np.float32),
              "instruments_decay": np.zeros((n, a, 2, c), np.uint8),
              "instruments_velocity": np.zeros((n, a, 1, c), np.int8),
              "instruments_hold": np.zeros((n, a), np.float32),
              "grid_harmonics": np.full((grid, grid, a, f, harmonics), level, np.uint8),
              "grid_envelope": np.zeros((grid, grid, a, f, E), np.uint8),
              "grid_noise": np.full((grid, grid, a, f, B), 20, np.uint8),
              "grid_decay": np.zeros((grid, grid, a, 2, c), np.uint8),
              "grid_velocity": np.zeros((grid, grid, a, 1, c), np.int8),
              "grid_hold": np.zeros((grid, grid, a), np.float32)}
    write_pack(path, manifest, arrays)
    if version is not None:  # rewrite the manifest with another format version
        m = json.loads((path / "manifest.json").read_text())
        m["format_version"] = version
        (path / "manifest.json").write_text(json.dumps(m))
    return path


def new_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def trusted(*keys) -> dict[str, bytes]:
    return {key_id(public_raw(k)): public_raw(k) for k in keys}


def archive_of(pack: Path, key, out: Path | None = None) -> Path:
    return write_archive(pack, out or pack.with_name(pack.name + ".mbpack"), key)


def raw_archive(tmp: Path, key, pack: Path, rename: dict | None = None,
                header_edit=None) -> Path:
    """An archive of ``pack`` built by hand: member names renamed by ``rename`` and the header
    changed by ``header_edit(header)`` *before* signing (a validly signed hostile archive)."""
    import hashlib
    names = ["manifest.json"] + sorted(json.loads((pack / "manifest.json").read_text())
                                       ["members"])
    datas = [(pack / n).read_bytes() for n in names]
    members = [{"name": (rename or {}).get(n, n), "bytes": len(d),
                "sha256": hashlib.sha256(d).hexdigest()} for n, d in zip(names, datas)]
    header = {"pack_format": "morphbox-pack", "pack_format_version": 3, "name": pack.name,
              "key_id": key_id(public_raw(key)), "created": "now", "tool": "test",
              "members": members}
    if header_edit:
        header_edit(header)
    return write_raw_archive(tmp / "hostile.mbpack", header, datas, key)


def extract(archive: Path, dest: Path, keys: dict, max_bytes=None):
    dest.mkdir()
    with open(archive, "rb") as f:
        return extract_archive(f, dest, keys, max_bytes)


# --------------------------------------------------------------------------------------------


def test_round_trip_keeps_every_byte_and_verifies(tmp_path):
    key = new_key()
    pack = small_pack(tmp_path / "small")
    arc = archive_of(pack, key)
    data = arc.read_bytes()
    assert data[:6] == MAGIC and struct.unpack("<H", data[6:8])[0] == 1
    hdr = extract(arc, tmp_path / "out", trusted(key))
    assert hdr.total_bytes == len(data) and hdr.name == "small"
    for p in pack.iterdir():
        assert (tmp_path / "out" / p.name).read_bytes() == p.read_bytes()
    assert load_pack(tmp_path / "out").name == "small"


def test_default_pack_archives(tmp_path):
    from morphbox.device.packs.format import DEFAULT_PACK
    key = new_key()
    arc = archive_of(DEFAULT_PACK, key, tmp_path / "default.mbpack")
    hdr = read_header(io.BytesIO(arc.read_bytes()), trusted(key))
    assert [m["name"] for m in hdr.members][0] == "manifest.json"
    assert {m["name"] for m in hdr.members} == {p.name for p in DEFAULT_PACK.iterdir()}
    assert "decoder.tflite" in {m["name"] for m in hdr.members}  # the neural default pack
    assert hdr.total_bytes == arc.stat().st_size


def test_wrong_key_is_rejected_before_any_member_is_written(tmp_path):
    arc = archive_of(small_pack(tmp_path / "small"), new_key())
    with pytest.raises(ArchiveError, match="signature rejected.*not paired") as e:
        extract(arc, tmp_path / "out", trusted(new_key()))
    assert e.value.code == "signature"
    assert list((tmp_path / "out").iterdir()) == []


def test_altered_header_breaks_the_signature(tmp_path):
    key = new_key()
    data = bytearray(archive_of(small_pack(tmp_path / "small"), key).read_bytes())
    i = data.index(b'"small"')
    data[i + 1:i + 6] = b"SMALL"
    with pytest.raises(ArchiveError, match="does not match its signature") as e:
        read_header(io.BytesIO(bytes(data)), trusted(key))
    assert e.value.code == "signature"


def test_tampered_member_is_refused(tmp_path):
    key = new_key()
    arc = archive_of(small_pack(tmp_path / "small"), key)
    data = bytearray(arc.read_bytes())
    data[-100] ^= 0x01  # inside the last member
    arc.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match="corrupt or tampered.*SHA-256") as e:
        extract(arc, tmp_path / "out", trusted(key))
    assert e.value.code == "corrupt"


def test_truncated_archive_and_trailing_data_are_refused(tmp_path):
    key = new_key()
    arc = archive_of(small_pack(tmp_path / "small"), key)
    data = arc.read_bytes()
    arc.write_bytes(data[:-10])
    with pytest.raises(ArchiveError, match="truncated"):
        extract(arc, tmp_path / "a", trusted(key))
    arc.write_bytes(data + b"x")
    with pytest.raises(ArchiveError, match="data after its last member"):
        extract(arc, tmp_path / "b", trusted(key))


@pytest.mark.parametrize("evil", ["../evil.npy", "/etc/evil.npy", "sub/x.npy", "..",
                                  "manifest.json"])
def test_path_traversal_member_names_are_refused(tmp_path, evil):
    key = new_key()
    arc = raw_archive(tmp_path, key, small_pack(tmp_path / "small"),
                      rename={"grid_noise.npy": evil})
    with pytest.raises(ArchiveError) as e:
        extract(arc, tmp_path / "out", trusted(key))
    assert e.value.code in ("traversal", "format")
    assert "path traversal" in str(e.value) or "twice" in str(e.value)
    assert not (tmp_path / "evil.npy").exists()
    assert list((tmp_path / "out").iterdir()) == []


def test_path_traversal_pack_name_is_refused(tmp_path):
    key = new_key()
    arc = raw_archive(tmp_path, key, small_pack(tmp_path / "small"),
                      header_edit=lambda h: h.update(name="../../etc"))
    with pytest.raises(ArchiveError, match="pack name '../../etc' is not allowed"):
        extract(arc, tmp_path / "out", trusted(key))


def test_unknown_format_versions_are_refused(tmp_path):
    key = new_key()
    pack = small_pack(tmp_path / "small")
    arc = raw_archive(tmp_path, key, pack, header_edit=lambda h: h.update(
        pack_format_version=99))
    with pytest.raises(ArchiveError, match="incompatible pack: format version 99, this device "
                                           "reads versions 3$") as e:
        extract(arc, tmp_path / "out", trusted(key))
    assert e.value.code == "version"
    arc = raw_archive(tmp_path, key, pack, header_edit=lambda h: h.update(
        pack_format_version=2))  # a pack from before full-band sound: say how to rebuild it
    with pytest.raises(ArchiveError, match="reads versions 3; rebuild it .*morphbox pack build"):
        extract(arc, tmp_path / "out2", trusted(key))
    arc = write_raw_archive(tmp_path / "v9.mbpack", {"key_id": "x"}, [], key, version=9)
    with pytest.raises(ArchiveError, match="incompatible archive version 9"):
        read_header(open(arc, "rb"), trusted(key))


def test_size_limit_is_checked_from_the_header(tmp_path):
    key = new_key()
    arc = archive_of(small_pack(tmp_path / "small"), key)
    with pytest.raises(ArchiveError, match=r"more than the 0\.0 MB this device accepts") as e:
        extract(arc, tmp_path / "out", trusted(key), max_bytes=1000)
    assert e.value.code == "too_large"


def test_not_an_archive(tmp_path):
    with pytest.raises(ArchiveError, match="not a morphbox pack archive"):
        read_header(io.BytesIO(b"PK\x03\x04 a zip file"), {})
