"""Tests of device/packs/format.py: the shipped default pack, write/load round trips, and refusal of
corrupt packs (each with a PackError that names the problem and the member).

The default pack in the repo is never modified: corruption tests work on copies in tmp_path.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from morphbox.device.packs import format as pk
from morphbox.device.packs.format import (
    DEFAULT_PACK,
    MANIFEST,
    MEMBERS,
    PackError,
    grid_from_pack,
    load_pack,
    write_pack,
)
from morphbox.kernels.quant import dequantize_db

# ------------------------------------------------------------------------------------------
# helpers

DIMS = {"instruments": 4, "anchors": 2, "frames": 6, "harmonics": 5, "envelope_bands": 2,
        "noise_bands": 3, "grid": 3, "layers": 2, "rates": 2}
DIMS["channels"] = DIMS["harmonics"] + DIMS["envelope_bands"] + DIMS["noise_bands"]


def tiny_pack_parts(seed: int = 0) -> tuple[dict, dict[str, np.ndarray]]:
    """A small but complete pack: manifest fields and one array per required member."""
    d = DIMS
    manifest = {
        "name": "tiny",
        "mode": "spectral",
        "instruments": [{"name": f"inst{i}"} for i in range(d["instruments"])],
        "pitch_anchors": [48, 60],
        "frames": d["frames"],
        "frame_times": [0.0, 0.004, 0.008, 0.1, 0.12, 0.14],
        "harmonics": d["harmonics"],
        "envelope_bands": d["envelope_bands"],
        "noise_bands": d["noise_bands"],
        "grid_size": d["grid"],
        "source_sample_rate": 48000,
        "velocity": 100,
        "velocity_layers": [40, 100],
        "loop": {"start": 2, "end": 5, "style": "forward", "crossfade_s": 0.02},
        "corners": {"NW": 0, "NE": 1, "SW": 2, "SE": 3},
    }
    rng = np.random.default_rng(seed)
    arrays = {}
    for member, (dtype, dims) in MEMBERS.items():
        shape = tuple(d[x] for x in dims)
        if dtype == "uint8":
            arr = rng.integers(0, 256, shape, dtype=np.uint8)
        elif dtype == "int8":
            arr = rng.integers(-128, 128, shape, dtype=np.int8)
        elif member.endswith("_hold.npy"):  # a fraction: 1 holds, 0 loops
            arr = rng.random(shape).astype(dtype)
        else:
            arr = rng.standard_normal(shape).astype(dtype)
        arrays[member[:-4]] = arr
    return manifest, arrays


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    manifest, arrays = tiny_pack_parts()
    return write_pack(tmp_path / "packs" / "tiny", manifest, arrays)


def read_manifest(path: Path) -> dict:
    return json.loads((path / MANIFEST).read_text(encoding="utf-8"))


def write_manifest(path: Path, manifest: dict) -> None:
    (path / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def refusal(path: Path) -> str:
    with pytest.raises(PackError) as exc:
        load_pack(path)
    return str(exc.value)


# ------------------------------------------------------------------------------------------
# the default pack


@pytest.fixture(scope="module")
def default_pack() -> pk.Pack:
    return load_pack(DEFAULT_PACK)


def test_default_pack_manifest(default_pack):
    m = default_pack.manifest
    assert m["format"] == pk.FORMAT == "morphbox-pack"
    # the shipped pack is neural (issue 3): embeddings + the default decoder, corners anchored;
    # full band (issue 11): format 3
    assert m["format_version"] == pk.FORMAT_VERSION == 3
    assert m["mode"] == "neural"
    assert m["neural_grid"] == {"anchor_corners": True}
    assert m["model"]["sha256"] == hashlib.sha256(pk.DEFAULT_MODEL.read_bytes()).hexdigest()
    assert m["model"]["quantization"] == "int8"
    assert default_pack.name == "default"
    assert sorted(default_pack.corners) == ["NE", "NW", "SE", "SW"]
    names = default_pack.instrument_names
    assert len(names) == len(m["instruments"]) >= 4 and all(names)
    assert all(0 <= i < len(names) for i in default_pack.corners.values())
    anchors = m["pitch_anchors"]
    assert anchors == sorted(set(anchors))
    assert 0 <= m["loop"]["start"] < m["loop"]["end"] < m["frames"]
    assert m["source_sample_rate"] == 48000 and len(m["frame_times"]) == m["frames"]
    assert m["frame_times"][-1] >= 2.0  # whole notes, not 1.6 s
    assert 100 in m["velocity_layers"] and len(m["velocity_layers"]) >= 2
    assert m["grid_size"] >= 2
    assert set(m["members"]) == set(MEMBERS) | set(pk.NEURAL_MEMBERS) | {pk.DECODER}
    for name, meta in m["members"].items():
        data = (DEFAULT_PACK / name).read_bytes()
        assert meta["sha256"] == hashlib.sha256(data).hexdigest()
        assert meta["bytes"] == len(data)


def test_default_pack_arrays(default_pack):
    m = default_pack.manifest
    assert set(default_pack.arrays) == {n[:-4] for n in {**MEMBERS, **pk.NEURAL_MEMBERS}}
    for member, (dtype, _) in {**MEMBERS, **pk.NEURAL_MEMBERS}.items():
        arr = default_pack.arrays[member[:-4]]
        assert arr.dtype == np.dtype(dtype), member
        assert arr.shape == pk.expected_shape(member, m), member
        assert list(arr.shape) == m["members"][member]["shape"]
        assert m["members"][member]["dtype"] == dtype
    n_inst, n_anchor = len(m["instruments"]), len(m["pitch_anchors"])
    g, f, k, b = m["grid_size"], m["frames"], m["harmonics"], m["noise_bands"]
    assert default_pack.arrays["grid_harmonics"].shape == (g, g, n_anchor, f, k)
    assert default_pack.arrays["grid_noise"].shape == (g, g, n_anchor, f, b)
    assert default_pack.arrays["grid_envelope"].shape == (g, g, n_anchor, f, 24)
    assert default_pack.arrays["instruments_harmonics"].shape == (n_inst, n_anchor, f, k)
    assert np.isfinite(default_pack.arrays["instruments_loudness"]).all()
    # not an empty pack: the instruments actually have partials
    assert default_pack.arrays["instruments_harmonics"].max() > 200


def test_default_pack_grid_corners_are_the_corner_instruments(default_pack):
    last = default_pack.manifest["grid_size"] - 1
    where = {"NW": (0, 0), "NE": (0, last), "SW": (last, 0), "SE": (last, last)}
    for corner, inst in default_pack.corners.items():
        iy, ix = where[corner]
        for part in ("harmonics", "envelope", "noise", "decay", "velocity", "hold"):
            np.testing.assert_array_equal(default_pack.arrays[f"grid_{part}"][iy, ix],
                                          default_pack.arrays[f"instruments_{part}"][inst])


def test_default_grid(default_pack):
    g = grid_from_pack(default_pack)
    m = default_pack.manifest
    size, n_a, n_f = m["grid_size"], len(m["pitch_anchors"]), m["frames"]
    k, e, b = m["harmonics"], m["envelope_bands"], m["noise_bands"]
    assert g.frames_db.shape == (size, size, n_a, n_f, k + e + b)
    assert g.frames_db.dtype == np.float32
    assert (g.size, g.n_frames, g.n_harmonics, g.n_envelope, g.n_noise_bands) == \
        (size, n_f, k, e, b)
    assert g.harmonics_db.shape == (size, size, n_a, n_f, k)
    assert g.envelope_db.shape == (size, size, n_a, n_f, e)
    assert g.noise_db.shape == (size, size, n_a, n_f, b)
    # views into the one array, not copies
    assert np.shares_memory(g.harmonics_db, g.frames_db)
    assert np.shares_memory(g.noise_db, g.frames_db)
    np.testing.assert_array_equal(g.harmonics_db,
                                  dequantize_db(default_pack.arrays["grid_harmonics"]))
    np.testing.assert_array_equal(g.noise_db, dequantize_db(default_pack.arrays["grid_noise"]))
    np.testing.assert_array_equal(g.anchors, m["pitch_anchors"])
    assert g.anchors.dtype == np.int64
    assert (g.loop_start, g.loop_end) == (m["loop"]["start"], m["loop"]["end"])
    np.testing.assert_array_equal(g.frame_times, m["frame_times"])
    assert g.source_rate == m["source_sample_rate"]
    assert g.decay_db.shape == (size, size, n_a, 2, k + e + b) and g.decay_db.max() <= 0.0
    assert g.velocity_db.shape == (size, size, n_a, len(m["velocity_layers"]), k + e + b)
    assert g.hold.shape == (size, size, n_a) and 0 <= g.hold.min() <= g.hold.max() <= 1
    assert g.name == "default"
    assert g.frames_db.min() >= -120.0 and g.frames_db.max() <= 7.5


# ------------------------------------------------------------------------------------------
# write / load round trip


def test_round_trip_is_bit_identical(tmp_path):
    manifest, arrays = tiny_pack_parts(seed=1)
    path = write_pack(tmp_path / "out" / "p1", manifest, arrays)
    assert path == tmp_path / "out" / "p1" and path.is_dir()
    assert sorted(p.name for p in path.iterdir()) == sorted([MANIFEST, *MEMBERS])
    loaded = load_pack(path)
    assert set(loaded.arrays) == set(arrays)
    for key, arr in arrays.items():
        got = loaded.arrays[key]
        assert got.dtype == arr.dtype and got.shape == arr.shape
        assert got.tobytes() == arr.tobytes()
    m = loaded.manifest
    assert m["format"] == pk.FORMAT and m["format_version"] == pk.FORMAT_VERSION
    for key in manifest:
        assert m[key] == manifest[key]
    for key, arr in arrays.items():
        meta = m["members"][f"{key}.npy"]
        assert meta["shape"] == list(arr.shape) and meta["dtype"] == str(arr.dtype)
    assert loaded.name == "tiny" and loaded.instrument_names == ["inst0", "inst1", "inst2",
                                                                  "inst3"]
    # nothing but the pack was left in the parent directory
    assert [p.name for p in path.parent.iterdir()] == ["p1"]


def test_write_pack_replaces_an_existing_pack(tmp_path):
    manifest, first = tiny_pack_parts(seed=2)
    _, second = tiny_pack_parts(seed=3)
    target = tmp_path / "p"
    write_pack(target, manifest, first)
    write_pack(target, dict(manifest, name="second"), second)
    loaded = load_pack(target)
    assert loaded.name == "second"
    for key, arr in second.items():
        np.testing.assert_array_equal(loaded.arrays[key], arr)
    assert [p.name for p in tmp_path.iterdir()] == ["p"]  # no temp or .old directories


def test_tiny_grid_from_pack(tiny):
    g = grid_from_pack(load_pack(tiny))
    d = DIMS
    assert g.frames_db.shape == (d["grid"], d["grid"], d["anchors"], d["frames"],
                                 d["channels"])
    assert (g.loop_start, g.loop_end, g.name) == (2, 5, "tiny")
    np.testing.assert_array_equal(g.velocity_layers, [40, 100])
    assert g.decay_db.shape == (d["grid"], d["grid"], d["anchors"], 2, d["channels"])


# ------------------------------------------------------------------------------------------
# refused packs


def test_bit_flip_in_default_pack_copy_is_refused(tmp_path):
    copy = tmp_path / "default"
    shutil.copytree(DEFAULT_PACK, copy)
    member = copy / "grid_noise.npy"
    data = bytearray(member.read_bytes())
    data[len(data) // 2] ^= 0x01
    member.write_bytes(bytes(data))
    msg = refusal(copy)
    assert "grid_noise.npy" in msg and "corrupt" in msg and "SHA-256" in msg
    load_pack(DEFAULT_PACK)  # the original is untouched


@pytest.mark.parametrize("member", sorted(MEMBERS))
def test_bit_flip_in_any_member_is_refused(tiny, member):
    file = tiny / member
    data = bytearray(file.read_bytes())
    data[-1] ^= 0x80  # in the array data, not the header: np.load alone would not notice
    file.write_bytes(bytes(data))
    msg = refusal(tiny)
    assert member in msg and "SHA-256" in msg and "corrupt" in msg


def test_truncated_member_is_refused(tiny):
    file = tiny / "instruments_loudness.npy"
    data = file.read_bytes()
    file.write_bytes(data[:-7])
    msg = refusal(tiny)
    assert "instruments_loudness.npy" in msg and "SHA-256" in msg
    assert f"{len(data) - 7} bytes" in msg


def test_missing_member_file_is_refused(tiny):
    (tiny / "grid_harmonics.npy").unlink()
    msg = refusal(tiny)
    assert "grid_harmonics.npy" in msg and "missing" in msg


def test_member_missing_from_manifest_is_refused(tiny):
    m = read_manifest(tiny)
    del m["members"]["instruments_pitch_cents.npy"]
    write_manifest(tiny, m)
    msg = refusal(tiny)
    assert "instruments_pitch_cents.npy" in msg and "lacks" in msg


@pytest.mark.parametrize("version", [4, 0, "1", None])
def test_unknown_format_version_is_refused(tiny, version):
    m = read_manifest(tiny)
    if version is None:
        del m["format_version"]
    else:
        m["format_version"] = version
    write_manifest(tiny, m)
    msg = refusal(tiny)
    if version is None:
        assert "format_version is missing" in msg
    else:
        assert "format version" in msg and repr(version) in msg


@pytest.mark.parametrize("version", [1, 2])
def test_an_old_format_pack_is_refused_with_how_to_rebuild_it(tiny, version):
    """Packs from before full-band sound (16 kHz, 64 partials, 1.6 s notes) cannot play the
    new engine; the message says what they are and how to rebuild them."""
    m = read_manifest(tiny)
    m["format_version"] = version
    write_manifest(tiny, m)
    msg = refusal(tiny)
    assert f"version {version}" in msg and "16 kHz" in msg
    assert "morphbox pack build" in msg and "format version 3" in msg


def test_wrong_format_is_refused(tiny):
    m = read_manifest(tiny)
    m["format"] = "other-pack"
    write_manifest(tiny, m)
    assert "not a morphbox pack" in refusal(tiny)


@pytest.mark.parametrize("member, bad_shape", [
    ("grid_noise.npy", (3, 3, 2, 6, 4)),          # one noise band too many
    ("instruments_harmonics.npy", (4, 2, 5, 6)),  # frames and harmonics swapped
    ("instruments_pitch_cents.npy", (4,)),        # a dimension missing
])
def test_member_with_wrong_shape_is_refused(tiny, member, bad_shape):
    dtype = MEMBERS[member][0]
    data = npy_bytes(np.zeros(bad_shape, dtype))
    (tiny / member).write_bytes(data)
    m = read_manifest(tiny)
    # re-hash (and even re-declare the shape) so only the dimension check can catch it
    m["members"][member].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data),
                                shape=list(bad_shape))
    write_manifest(tiny, m)
    msg = refusal(tiny)
    want = list(pk.expected_shape(member, m))
    assert member in msg and str(list(bad_shape)) in msg and str(want) in msg
    assert "expected" in msg


def test_member_with_wrong_dtype_is_refused(tiny):
    member = "grid_harmonics.npy"
    data = npy_bytes(np.zeros((3, 3, 2, 6, 5), np.float32))
    (tiny / member).write_bytes(data)
    m = read_manifest(tiny)
    m["members"][member]["sha256"] = hashlib.sha256(data).hexdigest()
    write_manifest(tiny, m)
    msg = refusal(tiny)
    assert member in msg and "float32" in msg and "expected uint8" in msg


def test_pickled_member_is_refused(tiny):
    member = "instruments_loudness.npy"
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    data = buf.getvalue()
    (tiny / member).write_bytes(data)
    m = read_manifest(tiny)
    m["members"][member]["sha256"] = hashlib.sha256(data).hexdigest()
    write_manifest(tiny, m)
    msg = refusal(tiny)
    assert member in msg and "not a readable array" in msg


@pytest.mark.parametrize("name", ["../x.npy", "sub/x.npy", "/etc/x.npy", "X.npy", "x.npz"])
def test_member_name_that_is_not_a_plain_file_name_is_refused(tiny, name):
    outside = tiny.parent / "x.npy"
    data = npy_bytes(np.zeros(3, np.float32))
    outside.write_bytes(data)
    m = read_manifest(tiny)
    m["members"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    write_manifest(tiny, m)
    msg = refusal(tiny)
    assert repr(name) in msg and "member name" in msg


@pytest.mark.parametrize("text", ["{not json", "", "\xff\xfe garbage"])
def test_non_json_manifest_is_refused(tiny, text):
    (tiny / MANIFEST).write_bytes(text.encode("latin-1"))
    msg = refusal(tiny)
    assert MANIFEST in msg and "cannot read" in msg


def test_json_that_is_not_an_object_is_refused(tiny):
    (tiny / MANIFEST).write_text("[1, 2, 3]", encoding="utf-8")
    assert "not a morphbox pack" in refusal(tiny)


def test_missing_manifest_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    assert MANIFEST in refusal(tmp_path / "empty")


@pytest.mark.parametrize("loop", [
    {"start": 2, "end": 6},    # end == frames
    {"start": 2, "end": 99},
    {"start": -1, "end": 3},
    {"start": 4, "end": 4},    # empty loop
    {"start": 4, "end": 2},
    {"start": 1.0, "end": 3},  # not an integer frame index
    {"end": 3},
])
def test_loop_points_out_of_range_are_refused(tiny, loop):
    m = read_manifest(tiny)
    m["loop"] = loop
    write_manifest(tiny, m)
    msg = refusal(tiny)
    assert "loop points" in msg and f"frames ({DIMS['frames']})" in msg


@pytest.mark.parametrize("field, value, words", [
    ("mode", "granular", 'mode must be a string (one of "spectral", "neural")'),
    ("frames", 0, "frames must be an integer in 2..100000, got 0"),
    ("grid_size", "big", "grid_size must be an integer"),
    ("frame_times", [0.0, 0.1, 0.05, 0.2, 0.3, 0.4], "strictly increasing"),
    ("frame_times", [0.0, 0.1], "frame_times has 2 entries"),
    ("frame_times", "fast", "frame_times must be the frame times"),
    ("frame_times", [0.0, 0.1, float("nan"), 0.2, 0.3, 0.4], "NaN is not a number JSON allows"),
    ("velocity_layers", [100, 40], "velocity_layers must be"),
    ("velocity_layers", [40, 90], "velocity_layers must be"),
    ("velocity_layers", [0, 100], "velocity_layers[0] must be an integer in 1..127"),
    ("loop", {"start": 1, "end": 3, "style": "ping-pong"}, 'loop.style must be "forward"'),
    ("envelope_bands", -1, "envelope_bands must be an integer in 0..4096"),
    ("source_sample_rate", "16k", "source_sample_rate must be a number in 1000..384000"),
    ("pitch_anchors", [60, 48], "strictly increasing"),
    ("corners", {"NW": 0, "NE": 1, "SW": 2, "SE": 9}, "corners must map"),
    ("corners", {"NW": 0, "NE": 1, "SW": 2}, "corners must map"),
    ("members", [], "no members table"),
])
def test_bad_manifest_fields_are_refused(tiny, field, value, words):
    m = read_manifest(tiny)
    m[field] = value
    write_manifest(tiny, m)
    assert words in refusal(tiny)


@pytest.mark.parametrize("field, value", [
    ("loop", [2, 5]),
    ("corners", ["NW", "NE", "SW", "SE"]),
    ("pitch_anchors", [48, "60"]),
    ("member_meta", "not-an-object"),
])
def test_wrongly_typed_manifest_fields_raise_pack_error(tiny, field, value):
    m = read_manifest(tiny)
    if field == "member_meta":
        m["members"]["grid_noise.npy"] = value
    else:
        m[field] = value
    write_manifest(tiny, m)
    with pytest.raises(PackError):
        load_pack(tiny)


# ------------------------------------------------------------------------------------------
# atomic write


def test_failed_write_leaves_no_directory(tmp_path):
    manifest, arrays = tiny_pack_parts()
    arrays["grid_noise"] = np.zeros((3, 3, 2, 6, 99), np.uint8)  # wrong noise band count
    target = tmp_path / "packs" / "new"
    with pytest.raises(PackError, match="grid_noise.npy"):
        write_pack(target, manifest, arrays)
    assert not target.exists()
    assert list((tmp_path / "packs").iterdir()) == []  # temp directory cleaned up too


def test_failed_write_keeps_the_existing_pack(tmp_path):
    manifest, good = tiny_pack_parts(seed=4)
    target = write_pack(tmp_path / "p", manifest, good)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    _, bad = tiny_pack_parts(seed=5)
    bad["instruments_loudness"] = bad["instruments_loudness"].astype(np.float64)  # wrong dtype
    with pytest.raises(PackError, match="instruments_loudness.npy"):
        write_pack(target, dict(manifest, name="bad"), bad)
    after = {p.name: p.read_bytes() for p in target.iterdir()}
    assert after == before
    assert load_pack(target).name == "tiny"
    assert [p.name for p in tmp_path.iterdir()] == ["p"]


def test_write_refuses_a_manifest_that_would_not_verify(tmp_path):
    manifest, arrays = tiny_pack_parts()
    manifest["loop"] = {"start": 0, "end": DIMS["frames"]}
    with pytest.raises(PackError, match="loop points"):
        write_pack(tmp_path / "p", manifest, arrays)
    assert list(tmp_path.iterdir()) == []


def test_write_pack_never_writes_outside_the_pack(tmp_path):
    manifest, arrays = tiny_pack_parts()
    arrays["../x"] = np.zeros(3, np.float32)
    with pytest.raises(PackError):
        write_pack(tmp_path / "packs" / "p", manifest, arrays)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["packs"]
