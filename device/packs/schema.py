"""The pack manifest's schema: one declarative table of fields, checked before any member is
read (format in ``docs/pack-format.md``).

:data:`FIELDS` lists every manifest field the device uses, with its JSON type, its range
(numbers are finite by construction: the parser refuses ``NaN``/``Infinity`` and numbers
that overflow a float), whether it is required, and which format versions and modes it
belongs to. :data:`CHECKS` are the rules that relate fields to each other (loop points inside
the frames, corners naming instruments, the members table). :data:`MEMBER_VALUES` says what the
*contents* of the float members may hold. A new field is one :class:`Field` row; a new member
is one entry in ``format.MEMBERS`` (dtype and shape) and, if it holds floats, one
:class:`Values` row here.

:func:`parse_manifest` turns the manifest's bytes into a dict (size limit
:data:`MAX_MANIFEST_BYTES`, strict JSON: no ``NaN``, no duplicate keys, nesting at most
:data:`MAX_DEPTH` deep); :func:`check_manifest` applies the table. Every refusal is a
:class:`morphbox.device.packs.format.PackError` that names the field and the rule, e.g.
``frame_rate must be a number in 1..2000 (Hz), got 1e+308``.

Why a table of our own rather than JSON Schema: the device needs only types, ranges and a few
cross-field rules, messages that name the rule in plain words, and no extra dependency
(``jsonschema`` pulls in a Rust extension and four packages).

Imports: numpy, the standard library and :mod:`morphbox.device.packs.format` (its constants);
``format`` imports this module lazily, when it checks a manifest.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from morphbox.device.packs.format import (
    DECODER,
    FORMAT,
    FORMAT_VERSIONS,
    MEMBERS,
    MODES,
    NEURAL_MEMBERS,
    QUANTIZATIONS,
    REBUILD,
    RETIRED_VERSIONS,
    PackError,
    member_name_ok,
)
from morphbox.kernels.features import check_frame_times
from morphbox.kernels.grid import CORNERS
from morphbox.kernels.quant import DB_MIN, DB_STEP

#: Largest manifest accepted (the default pack's is 31 kB).
MAX_MANIFEST_BYTES = 1 << 20
#: Deepest nesting of JSON arrays/objects accepted (the default pack's manifest is 5 deep).
MAX_DEPTH = 16
#: Most values one grid may hold: ``G * G * anchors * frames * channels`` (harmonics +
#: envelope_bands + noise_bands).
#: The engine keeps the grid as float32 (4 bytes a value): 64 Mi values are 256 MB, the most a
#: 1 GB Pi can spare. The default pack's grid is 29.7 M values (v3: 120 channels a frame).
MAX_GRID_VALUES = 64 << 20

_HEX64 = r"[0-9a-f]{64}"
_TEXT = r"[^\x00-\x1f\x7f]+"  # printable: no control characters (no newline)
_MISSING = object()


class SchemaError(PackError):
    """A manifest breaks the schema; the message names the field and the rule."""


# ---- the table -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """One manifest field.

    ``path``: dotted name; ``[]`` is every item of a list, ``{}`` every value of an object
    (``instruments[].name``, ``members{}.sha256``). ``kind``: ``int``, ``number`` (int or
    float), ``str``, ``bool``, ``object``, ``list``. ``lo``/``hi``: inclusive range of a number,
    or of the length of a string, list or object. ``choices``: the values allowed.
    ``pattern``: a string's full match. ``versions``/``modes``: where the field belongs
    (elsewhere it is not checked). ``unit``: shown in messages. ``rule``: the message's rule
    text, if the generated one would not say it well.
    """

    path: str
    kind: str
    lo: float | None = None
    hi: float | None = None
    required: bool = True
    choices: tuple = ()
    pattern: str | None = None
    versions: tuple[int, ...] = FORMAT_VERSIONS
    modes: tuple[str, ...] = MODES
    unit: str = ""
    rule: str | None = None
    missing: str | None = None  # the message when a required field is absent

    def describe(self) -> str:
        """The rule in words: ``must be an integer in 2..64``."""
        if self.rule:
            return self.rule
        noun = {"int": "an integer", "number": "a number", "str": "a string",
                "bool": "true or false", "object": "an object", "list": "a list"}[self.kind]
        text = f"must be {noun}"
        if self.choices:
            text += " (one of " + ", ".join(json.dumps(c) for c in self.choices) + ")"
        if self.lo is not None or self.hi is not None:
            what = " in " if self.kind in ("int", "number") else " of length "
            text += f"{what}{_num(self.lo)}..{_num(self.hi)}"
        if self.unit:
            text += f" ({self.unit})"
        if self.pattern == _HEX64:
            text += " of 64 hex digits"
        elif self.pattern == _TEXT:
            text += " without control characters"
        return text


def _num(v) -> str:
    if v is None:
        return ""
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else f"{v:g}"


# absent corners are reported by the cross-field rule, which names all four
_CORNER_FIELDS = tuple(Field(f"corners.{c}", "int", 0, 1023, required=False,
                             rule="must be an instrument index (corners must map NW, NE, SW, "
                                  "SE to instrument indices)")
                       for c in CORNERS)

#: Every manifest field the device reads, in the order they are checked.
FIELDS: tuple[Field, ...] = (
    Field("format", "str", choices=(FORMAT,),
          rule=f"must be {FORMAT!r}: this is not a morphbox pack"),
    Field("format_version", "int", choices=FORMAT_VERSIONS,
          rule="must be a pack format version this morphbox reads ("
               + ", ".join(map(str, FORMAT_VERSIONS)) + ")"),
    Field("mode", "str", choices=MODES),
    Field("name", "str", 1, 64, required=False, pattern=_TEXT),
    Field("source_sample_rate", "number", 1000, 384000, unit="Hz"),
    Field("band_limit_hz", "number", 1000, 192000, required=False, unit="Hz"),
    Field("frames", "int", 2, 100_000),
    Field("frame_times", "list", 2, 100_000,
          rule="must be the frame times (a list of numbers, s after note-on)"),
    Field("frame_times[]", "number", 0, 3600, unit="s"),
    Field("harmonics", "int", 1, 4096),
    Field("envelope_bands", "int", 0, 4096),
    Field("noise_bands", "int", 1, 4096),
    Field("velocity", "int", 1, 127, unit="MIDI velocity"),
    Field("velocity_layers", "list", 1, 127),
    Field("velocity_layers[]", "int", 1, 127, unit="MIDI velocity"),
    Field("grid_size", "int", 2, 64),
    Field("pitch_anchors", "list", 1, 128),
    Field("pitch_anchors[]", "int", 0, 127, unit="MIDI note"),
    Field("loop", "object", rule="must be an object with start and end frames"),
    Field("loop.style", "str", required=False, choices=("forward",),
          rule=f"must be \"forward\" (version {FORMAT_VERSIONS[-1]} loops forward, with the "
               "decay rates)"),
    Field("loop.crossfade_s", "number", 0, 60, required=False, unit="s"),
    Field("db_quantisation", "object", required=False),
    Field("db_quantisation.min_db", "number", choices=(DB_MIN,), unit="dB"),
    Field("db_quantisation.step_db", "number", choices=(DB_STEP,), unit="dB"),
    Field("instruments", "list", 1, 1024),
    Field("instruments[]", "object"),
    Field("instruments[].name", "str", 1, 128, pattern=_TEXT),
    Field("instruments[].notes", "list", 0, 1024, required=False),
    Field("instruments[].gain_db", "number", -240, 240, required=False, unit="dB"),
    Field("instruments[].source", "object", required=False),
    Field("corners", "object", rule="must map NW, NE, SW, SE to instrument indices"),
    *_CORNER_FIELDS,
    Field("members", "object", 1, 256, rule="must be the members table (an object: file "
          "name -> record); the manifest has no members table"),
    Field("members{}", "object", rule="must be a record with sha256 and bytes"),
    Field("members{}.sha256", "str", pattern=_HEX64),
    Field("members{}.bytes", "int", 0, 1 << 40),
    Field("model", "object", modes=("neural",),
          rule="must be the model record {version, sha256, quantization, z_dims}",
          missing="neural pack has no model record (version, sha256, quantization, z_dims) "
                  "in its manifest"),
    Field("model.version", "str", 1, 128, modes=("neural",), pattern=_TEXT),
    Field("model.sha256", "str", modes=("neural",), pattern=_HEX64),
    Field("model.quantization", "str", choices=QUANTIZATIONS, modes=("neural",)),
    Field("model.z_dims", "int", 1, 1024, modes=("neural",)),
    Field("neural_grid", "object", required=False, modes=("neural",),
          rule="must be an object whose anchor_corners is true or false"),
    Field("neural_grid.anchor_corners", "bool", required=False, modes=("neural",),
          rule="must be an object whose anchor_corners is true or false"),
    Field("provenance", "object", required=False),
)


@dataclass(frozen=True)
class Values:
    """What a float member may hold: every value finite (``nan_ok``: or NaN, which means "not
    measured") and within ``lo..hi`` (``lo_open``: strictly above ``lo``)."""

    lo: float
    hi: float
    unit: str = ""
    nan_ok: bool = False
    lo_open: bool = False

    def describe(self) -> str:
        low = f"> {_num(self.lo)}" if self.lo_open else f">= {_num(self.lo)}"
        return (f"finite{' (or NaN)' if self.nan_ok else ''}, {low} and <= {_num(self.hi)}"
                + (f" {self.unit}" if self.unit else ""))


#: Contents of the float members (uint8/int8 codes are in range by their dtype).
MEMBER_VALUES: dict[str, Values] = {
    "instruments_loudness.npy": Values(-240.0, 60.0, "dB"),
    "instruments_pitch_cents.npy": Values(-1200.0, 1200.0, "cents", nan_ok=True),
    "instruments_z_scale.npy": Values(0.0, 1000.0, lo_open=True),
    "instruments_hold.npy": Values(0.0, 1.0),
    "grid_hold.npy": Values(0.0, 1.0),
}


# ---- parsing -------------------------------------------------------------------------------


def _refuse_constant(name: str):
    raise SchemaError(f"{name} is not a number JSON allows (NaN and Infinity are refused)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise SchemaError(f"number {text[:40]} does not fit a float (it overflows to "
                          "infinity)")
    return value


def _unique_keys(pairs: list) -> dict:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen, dup = set(), None
        for k, _ in pairs:
            if k in seen:
                dup = k
                break
            seen.add(k)
        raise SchemaError(f"key {dup!r} appears twice in one object")
    return out


def strict_json(data: bytes | str, what: str) -> object:
    """Parse JSON the way the device trusts it: UTF-8, no ``NaN``/``Infinity``, no number that
    overflows a float, no duplicate keys, nesting at most :data:`MAX_DEPTH` deep. Raises
    :class:`SchemaError` naming ``what``."""
    try:
        text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float,
                           object_pairs_hook=_unique_keys)
    except SchemaError as exc:
        raise SchemaError(f"{what}: {exc}") from None
    except RecursionError:
        raise SchemaError(f"{what} is nested deeper than {MAX_DEPTH} levels") from None
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError, too-long int literals
        raise SchemaError(f"cannot read {what}: {exc}") from None
    depth = _depth(value)
    if depth > MAX_DEPTH:
        raise SchemaError(f"{what} is nested {depth} levels deep, more than the {MAX_DEPTH} "
                          "allowed")
    return value


def _depth(value) -> int:
    """Nesting depth of arrays/objects, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            children = v.values()
        elif isinstance(v, list):
            children = v
        else:
            continue
        deepest = max(deepest, d)
        if d > MAX_DEPTH:
            return d
        stack.extend((c, d + 1) for c in children)
    return deepest


def parse_manifest(data: bytes, where: Path | str = "") -> dict:
    """The manifest in ``data`` as a dict, checked against :data:`FIELDS` and :data:`CHECKS`
    (:func:`check_manifest`). Raises :class:`SchemaError` (a ``PackError``) with
    ``where`` (the pack's path) in front."""
    prefix = f"{where}: " if str(where) else ""
    if len(data) > MAX_MANIFEST_BYTES:
        raise SchemaError(f"{prefix}manifest.json is {len(data)} bytes, more than the "
                          f"{MAX_MANIFEST_BYTES} allowed")
    try:
        manifest = strict_json(data, "manifest.json")
    except SchemaError as exc:
        raise SchemaError(f"{prefix}{exc}") from None
    check_manifest(manifest, where)
    return manifest


# ---- checking ------------------------------------------------------------------------------


def _walk(value, parts: list[str], at: str) -> Iterator[tuple[str, object]]:
    """``(concrete path, value or _MISSING)`` for every place ``parts`` names under ``value``;
    places under a parent of the wrong type are skipped (the parent's own row reports it)."""
    if not parts:
        yield at, value
        return
    head, rest = parts[0], parts[1:]
    if head == "[]":
        if isinstance(value, list):
            for i, item in enumerate(value):
                yield from _walk(item, rest, f"{at}[{i}]")
        return
    if head == "{}":
        if isinstance(value, dict):
            for key, item in value.items():
                yield from _walk(item, rest, f"{at}[{key!r}]")
        return
    if not isinstance(value, dict):
        return
    child = value.get(head, _MISSING)
    yield from _walk(child, rest, f"{at}.{head}" if at else head)


def _split(path: str) -> list[str]:
    return [p for p in re.split(r"\.|(\[\]|\{\})", path) if p]


def _type_ok(kind: str, value) -> bool:
    if kind == "int":
        return type(value) is int
    if kind == "number":
        return type(value) in (int, float) and math.isfinite(value)
    if kind == "str":
        return isinstance(value, str)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "object":
        return isinstance(value, dict)
    if kind == "list":
        return isinstance(value, list)
    raise ValueError(f"unknown field kind {kind!r}")


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_field(field: Field, manifest: dict, where: Path | str = "") -> None:
    """Check one :class:`Field` row against ``manifest``; raises :class:`SchemaError`."""
    prefix = f"{where}: " if str(where) else ""
    for at, value in _walk(manifest, _split(field.path), ""):
        if value is _MISSING:
            if field.required:
                raise SchemaError(prefix + (field.missing or
                                            f"{at} is missing (it {field.describe()})"))
            continue
        ok = _type_ok(field.kind, value)  # bool is not an int or a number here
        if ok and field.choices:
            ok = value in field.choices
        if ok and (field.lo is not None or field.hi is not None):
            size = value if field.kind in ("int", "number") else len(value)
            ok = ((field.lo is None or size >= field.lo)
                  and (field.hi is None or size <= field.hi))
        if ok and field.pattern is not None:
            ok = re.fullmatch(field.pattern, value) is not None
        if not ok:
            raise SchemaError(f"{prefix}{at} {field.describe()}, got {_short(value)}")


def _applies(field: Field, version, mode) -> bool:
    return version in field.versions and mode in field.modes


# ---- cross-field rules (each raises SchemaError naming the fields) -------------------------


def _frame_times(m: dict) -> None:
    times = m["frame_times"]
    try:
        check_frame_times(times)
    except (ValueError, TypeError) as exc:
        raise SchemaError(f"frame_times: {exc}") from None
    if len(times) != m["frames"]:
        raise SchemaError(f"frame_times has {len(times)} entries, frames is {m['frames']}")


def _velocity_layers(m: dict) -> None:
    layers, vel = m["velocity_layers"], m["velocity"]
    if any(y <= x for x, y in zip(layers, layers[1:])) or vel not in layers:
        raise SchemaError(f"velocity_layers must be strictly increasing MIDI velocities "
                          f"(1..127) that include the pack's velocity {vel!r}, got "
                          f"{_short(layers)}")


def _anchors(m: dict) -> None:
    a = m["pitch_anchors"]
    if any(y <= x for x, y in zip(a, a[1:])):
        raise SchemaError(f"pitch_anchors must be strictly increasing, got {_short(a)}")


def _loop(m: dict) -> None:
    loop, frames = m["loop"], m["frames"]
    start, end = loop.get("start"), loop.get("end")
    if not (type(start) is int and type(end) is int and 0 <= start < end < frames):
        raise SchemaError(f"loop points {start!r}..{end!r} must satisfy 0 <= start < end < "
                          f"frames ({frames})")
    if loop.get("style") != "forward":
        raise SchemaError(f"loop.style must be \"forward\" (version {FORMAT_VERSIONS[-1]} loops "
                          f"forward, with the decay rates), got {loop.get('style')!r}")


def _corners(m: dict) -> None:
    corners, n = m["corners"], len(m["instruments"])
    if sorted(corners) != sorted(CORNERS) or not all(0 <= i < n for i in corners.values()):
        raise SchemaError(f"corners must map NW, NE, SW, SE to instrument indices 0..{n - 1}, "
                          f"got {_short(corners)}")


def _members(m: dict) -> None:
    members, mode = m["members"], m["mode"]
    for name in members:
        if not member_name_ok(name):
            raise SchemaError(f"member name {name!r} is not a plain .npy or .tflite file name")
        if name.endswith(".tflite") and mode != "neural":
            raise SchemaError(f"member {name}: only a neural pack carries a model")
    missing = sorted(set(MEMBERS) - set(members))
    if missing:
        raise SchemaError(f"manifest lacks required member(s) {', '.join(missing)}")
    if mode == "neural":
        missing = sorted((set(NEURAL_MEMBERS) | {DECODER}) - set(members))
        if missing:
            raise SchemaError(f"neural pack lacks its model member(s) {', '.join(missing)}")
        if m["model"]["sha256"] != members[DECODER]["sha256"]:
            raise SchemaError(f"model.sha256 in the manifest is not the SHA-256 of member "
                              f"{DECODER}")


def _sizes(m: dict) -> None:
    g, a, f = m["grid_size"], len(m["pitch_anchors"]), m["frames"]
    bins = m["harmonics"] + m["envelope_bands"] + m["noise_bands"]
    values = g * g * a * f * bins
    if values > MAX_GRID_VALUES:
        raise SchemaError(f"grid of {g}x{g} points x {a} anchors x {f} frames x {bins} "
                          f"partials and bands is {values} values, more than the "
                          f"{MAX_GRID_VALUES} this device can hold")
    n = len(m["instruments"])
    if n * a * f * bins > MAX_GRID_VALUES:
        raise SchemaError(f"{n} instruments x {a} anchors x {f} frames x {bins} partials and "
                          f"bands is more than the {MAX_GRID_VALUES} values this device can "
                          "hold")


#: Rules between fields, applied in order after every :data:`FIELDS` row passed.
CHECKS: tuple[Callable[[dict], None], ...] = (_frame_times, _velocity_layers, _anchors, _loop,
                                              _corners, _members, _sizes)


def check_manifest(manifest, where: Path | str = "") -> None:
    """Check a parsed manifest against :data:`FIELDS` (type, range, presence; in table order,
    the first three deciding which rows apply) and :data:`CHECKS`. A pack of a retired format
    version (1, 2: :data:`morphbox.device.packs.format.RETIRED_VERSIONS`) is refused before
    anything else, with how to rebuild it. Raises
    :class:`SchemaError` naming the field and the rule, with ``where`` in front."""
    prefix = f"{where}: " if str(where) else ""
    if not isinstance(manifest, dict):
        raise SchemaError(f"{prefix}not a morphbox pack (the manifest is not a JSON object)")
    version, mode = manifest.get("format_version"), manifest.get("mode")
    if manifest.get("format") == FORMAT and type(version) is int and version in RETIRED_VERSIONS:
        raise SchemaError(f"{prefix}{RETIRED_VERSIONS[version]}; this morphbox plays format "
                          f"version {FORMAT_VERSIONS[-1]} (48 kHz, full band, whole notes): "
                          f"{REBUILD}")
    for f in FIELDS:
        if f.path in ("format", "format_version", "mode"):
            check_field(f, manifest, where)
            version, mode = manifest.get("format_version"), manifest.get("mode")
        elif _applies(f, version, mode):
            check_field(f, manifest, where)
    for rule in CHECKS:
        try:
            rule(manifest)
        except SchemaError as exc:
            raise SchemaError(f"{prefix}{exc}") from None


def check_values(name: str, array: np.ndarray, where: Path | str = "") -> None:
    """Check the contents of member ``name`` against :data:`MEMBER_VALUES` (nothing to check
    for members not listed). Raises :class:`SchemaError` naming the member, the rule and
    how many values break it."""
    rule = MEMBER_VALUES.get(name)
    if rule is None:
        return
    prefix = f"{where}: " if str(where) else ""
    a = np.asarray(array)
    nan = np.isnan(a)
    bad = ~np.isfinite(a) & ~(nan if rule.nan_ok else False)
    with np.errstate(invalid="ignore"):
        low = (a <= rule.lo) if rule.lo_open else (a < rule.lo)
        bad |= (low | (a > rule.hi)) & ~nan
    count = int(np.count_nonzero(bad))
    if count:
        first = a.reshape(-1)[np.flatnonzero(bad.reshape(-1))[0]]
        raise SchemaError(f"{prefix}member {name} must hold values {rule.describe()}: {count} "
                          f"of {a.size} are not (e.g. {first!r})")


def field_table_markdown() -> str:
    """The table of :data:`FIELDS` as Markdown (docs/pack-format.md shows it)."""
    rows = ["| field | type | rule | required | versions, modes |", "|---|---|---|---|---|"]
    for f in FIELDS:
        where = ", ".join(map(str, f.versions)) + "; " + ", ".join(f.modes)
        rows.append(f"| `{f.path}` | {f.kind} | {f.describe()} | "
                    f"{'yes' if f.required else 'no'} | {where} |")
    return "\n".join(rows)
