"""The pack manifest schema (device/packs/schema.py) and the loader's file rules: every number
the engine uses is checked (type, finiteness, range) before a member is read, every refusal
names the field and the rule, and members are opened only as regular files."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from morphbox.device.packs import schema
from morphbox.device.packs.format import (
    DEFAULT_PACK,
    MANIFEST,
    PackError,
    load_pack,
    read_manifest,
    write_pack,
)
from morphbox.device.packs.schema import (
    FIELDS,
    MAX_DEPTH,
    MAX_MANIFEST_BYTES,
    SchemaError,
    check_manifest,
    check_values,
    parse_manifest,
    strict_json,
)
from tests.device.test_pack import tiny_pack_parts


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    manifest, arrays = tiny_pack_parts()
    return write_pack(tmp_path / "tiny", manifest, arrays)


def manifest_of(path: Path) -> dict:
    return json.loads((path / MANIFEST).read_text())


def refusal(path: Path) -> str:
    with pytest.raises(PackError) as exc:
        load_pack(path)
    return str(exc.value)


def set_field(m: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for p in parents:
        m = m[p]
    m[last] = value


# ---- the default pack and the table ------------------------------------------------------


def test_the_shipped_packs_manifest_passes():
    m = read_manifest(DEFAULT_PACK)
    assert m["name"] == "default" and m["mode"] == "neural"


def test_every_field_row_refuses_a_value_of_the_wrong_kind(tmp_path):
    """For each row of the table that names one field (no ``[]``/``{}``), a value of the
    wrong type is refused with the field's path and its rule."""
    m = read_manifest(DEFAULT_PACK)
    wrong = {"int": "7", "number": "7.0", "str": 7, "bool": "yes", "object": [1],
             "list": {"a": 1}}
    checked = 0
    for f in FIELDS:
        if "[" in f.path or "{" in f.path:
            continue
        bad = json.loads(json.dumps(m))
        try:
            set_field(bad, f.path, wrong[f.kind])
        except (KeyError, TypeError):
            continue  # an optional parent the default pack does not have
        with pytest.raises(SchemaError) as exc:
            check_manifest(bad, "p")
        msg = str(exc.value)
        assert f.path.split(".")[0] in msg or "corners" in msg, (f.path, msg)
        checked += 1
    assert checked >= 25


@pytest.mark.parametrize("field, value, words", [
    ("velocity", 1e308, "velocity must be an integer in 1..127 (MIDI velocity), got 1e+308"),
    ("velocity", 0, "velocity must be an integer in 1..127"),
    ("frame_times", [0.0, 1e308], "frame_times[1] must be a number in 0..3600 (s)"),
    ("envelope_bands", 10**9, "envelope_bands must be an integer in 0..4096"),
    ("velocity_layers", [100, 300], "velocity_layers[1] must be an integer in 1..127"),
    ("source_sample_rate", 1e-300, "source_sample_rate must be a number in 1000..384000 (Hz)"),
    ("frames", 10**12, "frames must be an integer in 2..100000"),
    ("grid_size", 10**9, "grid_size must be an integer in 2..64"),
    ("harmonics", True, "harmonics must be an integer"),
    ("pitch_anchors", [10**18, 2 * 10**18], "pitch_anchors[0] must be an integer in 0..127"),
    ("pitch_anchors", [], "pitch_anchors must be a list of length 1..128"),
    ("name", "fuzz\n", "name must be a string of length 1..64 without control characters"),
    ("loop.style", "reverse", 'loop.style must be "forward"'),
    ("db_quantisation.min_db", -100.0, "db_quantisation.min_db must be a number (one of "
                                       "-120.0)"),
    ("model.z_dims", 0, "model.z_dims must be an integer in 1..1024"),
    ("model.quantization", "int4", "model.quantization must be a string"),
    ("instruments", [], "instruments must be a list of length 1..1024"),
])
def test_numbers_and_names_out_of_range_are_refused_with_the_rule(field, value, words):
    m = read_manifest(DEFAULT_PACK)
    set_field(m, field, value)
    with pytest.raises(SchemaError, match=None) as exc:
        check_manifest(m, "pack")
    assert words in str(exc.value)


def test_member_records_and_names_are_checked():
    m = read_manifest(DEFAULT_PACK)
    m["members"]["grid_noise.npy"]["sha256"] = "xyz"
    with pytest.raises(SchemaError, match=r"members\['grid_noise.npy'\].sha256 must be a "
                                          "string of 64 hex digits"):
        check_manifest(m)
    m = read_manifest(DEFAULT_PACK)
    m["members"]["grid_noise.npy"]["bytes"] = -1
    with pytest.raises(SchemaError, match=r"\.bytes must be an integer in 0\.\."):
        check_manifest(m)
    m = read_manifest(DEFAULT_PACK)
    m["members"]["extra.npy\n"] = dict(m["members"]["grid_noise.npy"])
    with pytest.raises(SchemaError, match=r"member name 'extra.npy\\n' is not a plain"):
        check_manifest(m)


def test_grids_too_large_for_the_device_are_refused():
    m = read_manifest(DEFAULT_PACK)
    m.update(grid_size=64, frames=100_000, frame_times=[i / 1000 for i in range(100_000)])
    m["loop"] = {"start": 1, "end": 2, "style": "forward"}
    with pytest.raises(SchemaError, match="more than the .* this device can hold"):
        check_manifest(m)


# ---- strict JSON -------------------------------------------------------------------------


@pytest.mark.parametrize("text, words", [
    ('{"frame_rate": NaN}', "NaN is not a number JSON allows"),
    ('{"frame_rate": Infinity}', "Infinity is not a number JSON allows"),
    ('{"frame_rate": -Infinity}', "-Infinity is not a number JSON allows"),
    ('{"frame_rate": 1e400}', "does not fit a float"),
    ('{"a": 1, "a": 2}', "key 'a' appears twice"),
    ('{"a": ' + "9" * 5000 + "}", "cannot read"),
    ("[" * 5000 + "]" * 5000, "nested"),
    ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), f"more than the {MAX_DEPTH} allowed"),
    (b"\xff\xfe{}", "cannot read"),
])
def test_strict_json_refuses_what_the_device_could_not_use(text, words):
    with pytest.raises(SchemaError) as exc:
        strict_json(text.encode() if isinstance(text, str) else text, "manifest.json")
    assert words in str(exc.value) and "manifest.json" in str(exc.value)


def test_a_manifest_larger_than_the_limit_is_refused_before_parsing():
    with pytest.raises(SchemaError, match=f"more than the {MAX_MANIFEST_BYTES} allowed"):
        parse_manifest(b" " * (MAX_MANIFEST_BYTES + 1) + b"{}", "p")


@pytest.mark.parametrize("edit, words", [
    (lambda t: t.replace('"frame_times": [0.0,', '"frame_times": [NaN,'), "NaN"),
    (lambda t: t.replace('"source_sample_rate": 48000', '"source_sample_rate": Infinity'),
     "Infinity"),
    (lambda t: t.replace('"source_sample_rate": 48000', '"source_sample_rate": 1e-300'),
     "source_sample_rate must be a number in 1000..384000"),
    (lambda t: t.replace('"pitch_anchors": [', '"pitch_anchors": [1000000000000000000, '),
     "pitch_anchors[0] must be an integer in 0..127"),
    (lambda t: t.replace('"provenance"', '"deep": ' + "[" * 5000 + "]" * 5000
                         + ', "provenance"'), "nested"),
])
def test_hostile_manifests_on_disk_are_refused_naming_the_problem(tiny, edit, words):
    m = manifest_of(tiny)
    m["provenance"] = {"tool": "test"}
    text = edit(json.dumps(m))
    (tiny / MANIFEST).write_text(text)
    msg = refusal(tiny)
    assert words in msg and str(tiny) in msg


# ---- member contents ---------------------------------------------------------------------


@pytest.mark.parametrize("member, value, ok", [
    ("instruments_loudness.npy", np.nan, False),
    ("instruments_loudness.npy", np.inf, False),
    ("instruments_loudness.npy", 1e6, False),
    ("instruments_loudness.npy", -30.0, True),
    ("instruments_pitch_cents.npy", np.nan, True),  # not measured
    ("instruments_pitch_cents.npy", 5000.0, False),
    ("instruments_z_scale.npy", 0.0, False),
    ("instruments_z_scale.npy", -1.0, False),
    ("instruments_z_scale.npy", np.nan, False),
    ("instruments_z_scale.npy", 0.01, True),
])
def test_float_member_contents_are_checked(member, value, ok):
    a = np.full((3, 4), 0.5, np.float32)
    a[1, 2] = value
    if ok:
        check_values(member, a)
    else:
        with pytest.raises(SchemaError, match=f"member {member} must hold values finite.*"
                                              "1 of 12 are not"):
            check_values(member, a)


def test_a_nan_in_a_float_member_refuses_the_pack(tiny):
    manifest, arrays = tiny_pack_parts()
    arrays["instruments_loudness"][0, 0, 0] = np.nan
    with pytest.raises(PackError, match="instruments_loudness.npy must hold values finite"):
        write_pack(tiny.parent / "nan", manifest, arrays)


# ---- members are regular files only ------------------------------------------------------


def _load_in_thread(path: Path, timeout: float = 20.0) -> str:
    """load_pack in a thread (a loader that blocked on a FIFO would hang the test)."""
    box = {}

    def run():
        try:
            load_pack(path)
            box["msg"] = "loaded"
        except PackError as exc:
            box["msg"] = str(exc)
    th = threading.Thread(target=run, daemon=True)
    th.start()
    th.join(timeout)
    assert not th.is_alive(), "load_pack hung"
    return box["msg"]


def test_a_fifo_member_is_refused_without_hanging(tiny):
    (tiny / "grid_noise.npy").unlink()
    os.mkfifo(tiny / "grid_noise.npy")
    msg = _load_in_thread(tiny)
    assert "member grid_noise.npy is not a regular file (a FIFO)" in msg


def test_a_fifo_manifest_is_refused_without_hanging(tiny):
    (tiny / MANIFEST).unlink()
    os.mkfifo(tiny / MANIFEST)
    assert "manifest.json is not a regular file (a FIFO)" in _load_in_thread(tiny)


def test_symlinked_members_are_refused_even_to_a_valid_file(tiny, tmp_path):
    outside = tmp_path / "outside.npy"
    os.replace(tiny / "grid_noise.npy", outside)
    os.symlink(outside, tiny / "grid_noise.npy")
    assert "member grid_noise.npy is not a regular file (a symbolic link)" in refusal(tiny)
    (tiny / "grid_noise.npy").unlink()
    os.symlink("/dev/zero", tiny / "grid_noise.npy")
    assert "(a symbolic link)" in refusal(tiny)


def test_a_directory_or_device_in_place_of_a_member_is_refused(tiny):
    (tiny / "grid_noise.npy").unlink()
    (tiny / "grid_noise.npy").mkdir()
    assert "member grid_noise.npy is not a regular file (a directory)" in refusal(tiny)
    (tiny / "grid_noise.npy").rmdir()
    try:
        os.mknod(tiny / "grid_noise.npy", 0o600 | 0o020000, os.makedev(1, 5))  # /dev/zero
    except (PermissionError, OSError):
        pytest.skip("cannot make a device node here (not root)")
    assert "(a character device)" in refusal(tiny)


def test_a_member_header_promising_more_than_the_manifest_is_refused_before_allocating(tiny):
    """An .npy header claiming a huge shape is refused from the header (no allocation)."""
    import hashlib
    import io
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False,
                                               "shape": (10**6, 10**6, 10**3)})
    data = buf.getvalue()
    (tiny / "grid_noise.npy").write_bytes(data)
    m = manifest_of(tiny)
    m["members"]["grid_noise.npy"].update(sha256=hashlib.sha256(data).hexdigest(),
                                          bytes=len(data))
    (tiny / MANIFEST).write_text(json.dumps(m))
    assert "has uint8[1000000, 1000000, 1000]" in refusal(tiny)


def test_field_table_renders_for_the_docs():
    table = schema.field_table_markdown()
    assert ("| `source_sample_rate` | number | must be a number in 1000..384000 (Hz) | yes |"
            in table)
