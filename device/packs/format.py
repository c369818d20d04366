"""Sound packs v1 and v2: read, verify and write (format in docs/pack-format.md).

A pack is a directory holding ``manifest.json`` and one ``.npy`` file per member; a neural
pack (v2) also carries the learned embeddings of its instruments (``instruments_z``,
``instruments_z_scale``) and its TFLite decoder (``decoder.tflite``, read as bytes). The manifest
names every member with its SHA-256, dtype and shape; :func:`load_pack` refuses a pack whose
format or version it does not know, a missing, extra-named, truncated or altered member, or an
array whose shape does not match the manifest's dimensions, raising :class:`PackError` with the
reason. Arrays are read with ``allow_pickle=False``. :func:`write_pack` writes into a temporary
sibling directory and renames it into place, so a reader never sees half a pack.

Shared by the device (loading) and host_tools (building); numpy and the standard library only
(plus the TFLite runtime of :mod:`morphbox.device.packs.neural` to check a neural pack's decoder).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from morphbox.kernels.grid import CORNERS
from morphbox.kernels.quant import dequantize_db

log = logging.getLogger(__name__)

FORMAT = "morphbox-pack"
FORMAT_VERSION = 1  # spectral packs (the version v1 readers know)
NEURAL_FORMAT_VERSION = 2  # neural packs: v1 members + embeddings + decoder
FORMAT_VERSIONS = (FORMAT_VERSION, NEURAL_FORMAT_VERSION)
MANIFEST = "manifest.json"
MODES = ("spectral", "neural")
QUANTIZATIONS = ("int8", "float32")
DECODER = "decoder.tflite"

_NAME = re.compile(r"^[a-z][a-z0-9_]*\.(npy|tflite)$")

# member -> (dtype, shape expressed in manifest dimensions)
MEMBERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "instruments_harmonics.npy": ("uint8", ("instruments", "anchors", "frames", "harmonics")),
    "instruments_noise.npy": ("uint8", ("instruments", "anchors", "frames", "noise_bands")),
    "instruments_loudness.npy": ("float32", ("instruments", "anchors", "frames")),
    "instruments_pitch_cents.npy": ("float32", ("instruments", "anchors")),
    "grid_harmonics.npy": ("uint8", ("grid", "grid", "anchors", "frames", "harmonics")),
    "grid_noise.npy": ("uint8", ("grid", "grid", "anchors", "frames", "noise_bands")),
}
# required in a neural pack (format version 2), besides MEMBERS and DECODER
NEURAL_MEMBERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "instruments_z.npy": ("int8", ("instruments", "anchors", "frames", "z_dims")),
    "instruments_z_scale.npy": ("float32", ("instruments", "anchors")),
}
_SHAPES = {**MEMBERS, **NEURAL_MEMBERS}


class PackError(Exception):
    """A pack cannot be used; the message says which pack and why."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _dims(manifest: dict) -> dict[str, int]:
    for key in ("frames", "harmonics", "noise_bands", "grid_size"):
        if type(manifest.get(key)) is not int:
            raise PackError(f"manifest field {key} must be an integer, got "
                            f"{manifest.get(key)!r}")
    try:
        return {
            "instruments": len(manifest["instruments"]),
            "anchors": len(manifest["pitch_anchors"]),
            "frames": int(manifest["frames"]),
            "harmonics": int(manifest["harmonics"]),
            "noise_bands": int(manifest["noise_bands"]),
            "grid": int(manifest["grid_size"]),
            **({"z_dims": manifest["model"]["z_dims"]}
               if isinstance(manifest.get("model"), dict) and "z_dims" in manifest["model"]
               else {}),
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise PackError(f"manifest is missing or has a bad dimension field: {exc}") from None


def expected_shape(member: str, manifest: dict) -> tuple[int, ...]:
    """Shape the manifest's dimensions require of ``member``."""
    dims = _dims(manifest)
    return tuple(dims[d] for d in _SHAPES[member][1])


@dataclass(frozen=True)
class Pack:
    """A verified pack: its directory, manifest and arrays (name without ``.npy`` -> array)."""

    path: Path
    manifest: dict
    arrays: dict
    blobs: dict = field(default_factory=dict)  # ``.tflite`` members: name (no suffix) -> bytes
    decoder: object = None  # neural pack: its verified morphbox.device.packs.neural.NeuralDecoder
    decoder_error: str | None = None  # neural pack without a decoder: why (no TFLite runtime)

    @property
    def is_neural(self) -> bool:
        return self.manifest.get("mode") == "neural"

    def z_corners(self, idx: list[int]) -> np.ndarray:
        """Dequantised embeddings ``(len(idx), A, F, Z)`` float32 of instruments ``idx``."""
        z = self.arrays["instruments_z"][idx].astype(np.float32)
        return z * self.arrays["instruments_z_scale"][idx][:, :, None, None]

    @property
    def name(self) -> str:
        return self.manifest.get("name", self.path.name)

    @property
    def instrument_names(self) -> list[str]:
        return [i["name"] for i in self.manifest["instruments"]]

    @property
    def corners(self) -> dict[str, int]:
        """Active corner combination: corner name -> instrument index."""
        return dict(self.manifest["corners"])


def _check_manifest(manifest: dict, where: Path) -> None:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise PackError(f"{where}: not a morphbox pack (format field is not {FORMAT!r})")
    version = manifest.get("format_version")
    if type(version) is not int or version not in FORMAT_VERSIONS:
        raise PackError(f"{where}: unknown pack format version {version!r}; this morphbox "
                        f"reads versions {', '.join(map(str, FORMAT_VERSIONS))}")
    mode = manifest.get("mode")
    if mode not in MODES:
        raise PackError(f"{where}: unknown mode {mode!r} (expected one of "
                        f"{', '.join(MODES)})")
    # one layout per version: v1 spectral (no model), v2 neural (embeddings + decoder)
    if version == 2 and mode != "neural":
        raise PackError(f"{where}: pack format version 2 is for neural packs, but the mode is "
                        f"{mode!r} (a spectral pack is written as version 1)")
    if version == 1 and mode == "neural":
        raise PackError(f"{where}: a neural pack needs format version 2 (its embeddings and "
                        "decoder); version 1 cannot describe one")
    if mode == "neural":
        _check_model(manifest.get("model"), where)
        grid = manifest.get("neural_grid", {})
        if not (isinstance(grid, dict) and isinstance(grid.get("anchor_corners", False), bool)):
            raise PackError(f"{where}: neural_grid must be an object whose anchor_corners is "
                            f"true or false, got {grid!r}")
    dims = _dims(manifest)
    for key, value in dims.items():
        if value <= 0:
            raise PackError(f"{where}: dimension {key} must be positive, got {value}")
    for key in ("frame_rate", "source_sample_rate"):
        value = manifest.get(key)
        if not isinstance(value, (int, float)) or value <= 0:
            raise PackError(f"{where}: {key} must be a positive number, got {value!r}")
    if dims["grid"] < 2:
        raise PackError(f"{where}: grid_size must be at least 2")
    anchors = manifest["pitch_anchors"]
    if not isinstance(anchors, list) or not all(type(a) is int for a in anchors):
        raise PackError(f"{where}: pitch_anchors must be a list of MIDI note integers")
    if anchors != sorted(set(anchors)):
        raise PackError(f"{where}: pitch_anchors must be strictly increasing")
    loop = manifest.get("loop")
    if not isinstance(loop, dict):
        raise PackError(f"{where}: loop must be an object with start and end frames")
    start, end = loop.get("start"), loop.get("end")
    if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end < dims["frames"]):
        raise PackError(f"{where}: loop points {start!r}..{end!r} must satisfy "
                        f"0 <= start < end < frames ({dims['frames']})")
    corners = manifest.get("corners")
    if not isinstance(corners, dict) or sorted(corners) != sorted(CORNERS) or not all(
            isinstance(i, int) and 0 <= i < dims["instruments"] for i in corners.values()):
        raise PackError(f"{where}: corners must map NW, NE, SW, SE to instrument indices")
    members = manifest.get("members")
    if not isinstance(members, dict):
        raise PackError(f"{where}: manifest has no members table")
    for name, meta in members.items():
        if not _NAME.match(name):
            raise PackError(f"{where}: member name {name!r} is not a plain .npy or .tflite "
                            "file name")
        if name.endswith(".tflite") and mode != "neural":
            raise PackError(f"{where}: member {name}: only a neural pack carries a model")
        if not isinstance(meta, dict):
            raise PackError(f"{where}: member {name} has no hash record in the manifest")
    missing = sorted(set(MEMBERS) - set(members))
    if missing:
        raise PackError(f"{where}: manifest lacks required member(s) {', '.join(missing)}")
    if mode == "neural":
        missing = sorted((set(NEURAL_MEMBERS) | {DECODER}) - set(members))
        if missing:
            raise PackError(f"{where}: neural pack lacks its model member(s) "
                            f"{', '.join(missing)}")
        if manifest["model"]["sha256"] != members[DECODER].get("sha256"):
            raise PackError(f"{where}: model.sha256 in the manifest is not the SHA-256 of "
                            f"member {DECODER}")


def _check_model(model, where: Path) -> None:
    """The manifest's ``model`` record of a neural pack."""
    if not isinstance(model, dict):
        raise PackError(f"{where}: neural pack has no model record (version, sha256, "
                        "quantization, z_dims) in its manifest")
    if not isinstance(model.get("version"), str) or not model["version"]:
        raise PackError(f"{where}: model.version must be a non-empty string")
    sha = model.get("sha256")
    if not (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha)):
        raise PackError(f"{where}: model.sha256 must be a hex SHA-256, got {sha!r}")
    if model.get("quantization") not in QUANTIZATIONS:
        raise PackError(f"{where}: model.quantization must be one of {', '.join(QUANTIZATIONS)},"
                        f" got {model.get('quantization')!r}")
    z = model.get("z_dims")
    if type(z) is not int or z <= 0:
        raise PackError(f"{where}: model.z_dims must be a positive integer, got {z!r}")


def load_decoder(path: Path, manifest: dict, num_threads: int | None = None):
    """The verified pack's decoder (``path / decoder.tflite``) as a
    :class:`morphbox.device.packs.neural.NeuralDecoder`; raises :class:`PackError` naming the
    member when the model's signature or sizes do not match the manifest.

    ``num_threads`` defaults to one core fewer than the machine has, at most 2: a grid rebuild
    runs while the box plays, and the audio callback, MIDI router and control loop need a
    core (a Pi 4 decodes on 2 of its 4; this 2-core laptop on 1, 0.23 s against 0.22 s on 2).
    Raises :class:`morphbox.device.packs.neural.RuntimeMissing` as it is when no TFLite runtime is
    installed (the pack is not at fault).
    """
    from morphbox.device.packs.neural import ModelError, NeuralDecoder, RuntimeMissing
    threads = num_threads or max(1, min(2, (os.cpu_count() or 1) - 1))
    try:
        return NeuralDecoder(path / DECODER, z_dims=manifest["model"]["z_dims"],
                             harmonics=manifest["harmonics"],
                             noise_bands=manifest["noise_bands"], num_threads=threads)
    except RuntimeMissing:
        raise
    except ModelError as exc:
        raise PackError(f"{path}: member {DECODER} is not a usable decoder: "
                        f"{str(exc).replace(str(path / DECODER) + ': ', '')}") from None


def load_pack(path: str | os.PathLike) -> Pack:
    """Load and verify the pack in directory ``path``.

    Raises :class:`PackError` naming the problem: unreadable manifest, unknown format or
    version, missing member, SHA-256 mismatch (bit flip, truncation), unreadable array, or an
    array whose dtype or shape differs from what the manifest declares.
    """
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PackError(f"{path}: no {MANIFEST} (is this a pack directory?)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PackError(f"{path}: cannot read {MANIFEST}: {exc}") from None
    _check_manifest(manifest, path)
    arrays, blobs = {}, {}
    for name, meta in manifest["members"].items():
        file = path / name
        try:
            data = file.read_bytes()
        except FileNotFoundError:
            raise PackError(f"{path}: member {name} is missing") from None
        except OSError as exc:
            raise PackError(f"{path}: cannot read member {name}: {exc}") from None
        if sha256_bytes(data) != meta.get("sha256"):
            raise PackError(f"{path}: member {name} is corrupt (SHA-256 mismatch; "
                            f"{len(data)} bytes on disk)")
        if name.endswith(".tflite"):
            blobs[name[:-7]] = data
            continue
        try:
            array = np.load(io.BytesIO(data), allow_pickle=False)
        except Exception as exc:  # numpy raises several types for malformed headers
            raise PackError(f"{path}: member {name} is not a readable array: {exc}") from None
        if name in _SHAPES:
            dtype, _ = _SHAPES[name]
            shape = expected_shape(name, manifest)
            if array.dtype != np.dtype(dtype) or array.shape != shape:
                raise PackError(f"{path}: member {name} has {array.dtype}{list(array.shape)}, "
                                f"expected {dtype}{list(shape)}")
        arrays[name[:-4]] = array
    decoder = None
    if manifest["mode"] == "neural":
        scale = arrays["instruments_z_scale"]
        if not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
            raise PackError(f"{path}: member instruments_z_scale.npy must be finite and "
                            "positive")
        from morphbox.device.packs.neural import RuntimeMissing
        try:
            decoder = load_decoder(path, manifest)
        except RuntimeMissing as exc:
            # the stored grid still plays; only a rebuild for other corners needs the decoder
            # (morphbox.device.engine.corners.build_grid refuses it with this reason)
            log.warning("%s: %s; the stored grid plays, its corners cannot be changed",
                        path, exc)
            return Pack(path=path, manifest=manifest, arrays=arrays, blobs=blobs,
                        decoder_error=str(exc))
    return Pack(path=path, manifest=manifest, arrays=arrays, blobs=blobs, decoder=decoder)


def write_pack(path: str | os.PathLike, manifest: dict, arrays: dict[str, np.ndarray]) -> Path:
    """Write a pack directory atomically; returns its path.

    ``manifest``: every field but ``members``, ``format`` and ``format_version`` (filled in
    here: 2 for a neural pack, 1 otherwise). ``arrays``: member name without suffix -> array
    (``.npy``) or ``bytes`` (a ``.tflite`` model). Replaces an existing pack at ``path``.
    Raises :class:`PackError` if the result would not verify.
    """
    path = Path(path)
    version = NEURAL_FORMAT_VERSION if manifest.get("mode") == "neural" else FORMAT_VERSION
    manifest = dict(manifest, format=FORMAT, format_version=version)
    manifest["members"] = {}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        for key in sorted(arrays):
            value = arrays[key]
            if isinstance(value, (bytes, bytearray)):
                data, name = bytes(value), f"{key}.tflite"
                meta = {"kind": "tflite"}
            else:
                buf = io.BytesIO()
                np.save(buf, np.ascontiguousarray(value), allow_pickle=False)
                data, name = buf.getvalue(), f"{key}.npy"
                meta = {"dtype": str(value.dtype), "shape": list(value.shape)}
            if not _NAME.match(name):
                raise PackError(f"{path}: member name {name!r} is not a plain .npy or .tflite "
                                "file name")
            (tmp / name).write_bytes(data)
            manifest["members"][name] = {"sha256": sha256_bytes(data), "bytes": len(data),
                                         **meta}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n",
                                    encoding="utf-8")
        try:
            load_pack(tmp)  # refuse to publish what we could not read back
        except PackError as exc:
            raise PackError(f"{path}: not written, it would not verify: "
                            f"{str(exc).split(': ', 1)[-1]}") from None
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
            try:
                tmp.rename(path)
            except OSError:
                old.rename(path)  # put the previous pack back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


@dataclass(frozen=True)
class Grid:
    """What the engine plays: the active morph grid in dB, ready for look-ups.

    Attributes:
        frames_db: ``(G, G, anchors, frames, harmonics + noise_bands)`` float32 dB: per grid
            point, pitch anchor and analysis frame, the partial amplitudes followed by the
            noise band gains (one array so one gather serves both).
        n_harmonics: how many of the last axis are partials.
        anchors: ``(anchors,)`` int MIDI pitches the grid was made at.
        frame_rate: Hz; ``loop_start``/``loop_end``: sustain loop, frame indices.
        source_rate: analysis sample rate, Hz.
        name: the pack's name.
    """

    frames_db: np.ndarray
    n_harmonics: int
    anchors: np.ndarray
    frame_rate: float
    loop_start: int
    loop_end: int
    source_rate: float
    name: str = ""

    @classmethod
    def from_parts(cls, harmonics_db: np.ndarray, noise_db: np.ndarray, **fields) -> Grid:
        """Build from ``(G, G, A, F, K)`` and ``(G, G, A, F, B)`` dB arrays."""
        frames_db = np.concatenate([harmonics_db, noise_db], axis=-1).astype(np.float32)
        return cls(frames_db=frames_db, n_harmonics=harmonics_db.shape[-1],
                   anchors=np.asarray(fields.pop("anchors"), np.int64), **fields)

    @property
    def size(self) -> int:
        return self.frames_db.shape[0]

    @property
    def n_frames(self) -> int:
        return self.frames_db.shape[3]

    @property
    def n_noise_bands(self) -> int:
        return self.frames_db.shape[-1] - self.n_harmonics

    @property
    def harmonics_db(self) -> np.ndarray:
        return self.frames_db[..., :self.n_harmonics]

    @property
    def noise_db(self) -> np.ndarray:
        return self.frames_db[..., self.n_harmonics:]


def grid_from_pack(pack: Pack) -> Grid:
    """The active grid of a verified pack, dequantised to dB float32."""
    m = pack.manifest
    return Grid.from_parts(dequantize_db(pack.arrays["grid_harmonics"]),
                           dequantize_db(pack.arrays["grid_noise"]),
                           anchors=m["pitch_anchors"], frame_rate=float(m["frame_rate"]),
                           loop_start=int(m["loop"]["start"]), loop_end=int(m["loop"]["end"]),
                           source_rate=float(m["source_sample_rate"]), name=pack.name)


DEFAULT_PACK = Path(__file__).resolve().parent / "default"
# the default timbre model (int8; encode + decode signatures) the default pack is built with
DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "models" / "default_int8.tflite"


def load_default_grid() -> Grid:
    """The grid of the pack shipped in the repo (``device/packs/default``)."""
    return grid_from_pack(load_pack(DEFAULT_PACK))
