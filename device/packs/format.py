"""Sound packs, format version 3: read, verify and write (format in docs/pack-format.md).

A pack is a directory holding ``manifest.json`` and one ``.npy`` file per member: the
full-band features (:mod:`morphbox.kernels.features`) of its instruments and of the morph grid
of its active corners, with each note's decay rates and velocity layers; a neural pack also
carries the learned embeddings of its instruments (``instruments_z``,
``instruments_z_scale``) and its TFLite decoder (``decoder.tflite``, read as bytes). The manifest
names every member with its SHA-256, dtype and shape. Packs of versions 1 and 2 (16 kHz
notes, 64 partials, 1.6 s per note) are refused first, with a message that says how to
rebuild them. :func:`load_pack` checks the manifest
against the schema first (:mod:`morphbox.device.packs.schema`: type, finiteness and range of
every field, nesting and size limits), then opens members as regular files only (no FIFO,
device or symbolic link), hashes them as they stream and reads each array after its header
matched the manifest's dtype and shape; it refuses a pack whose format or version it does not
know, a missing, extra-named, truncated or altered member, an array whose shape does not match
the manifest's dimensions, or float contents out of range, raising :class:`PackError` with the
reason. Arrays are never unpickled. :func:`write_pack` writes into a temporary sibling
directory and renames it into place, so a reader never sees half a pack.

Shared by the device (loading) and host_tools (building); numpy and the standard library only
(plus the TFLite runtime of :mod:`morphbox.device.packs.neural` to check a neural pack's decoder,
and :mod:`morphbox.device.packs.schema`, imported when a manifest is checked).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from morphbox.kernels.quant import dequantize_db

log = logging.getLogger(__name__)

FORMAT = "morphbox-pack"
FORMAT_VERSION = 3  # full-band packs (issue 11), spectral or neural
NEURAL_FORMAT_VERSION = FORMAT_VERSION  # one version for both modes since v3
FORMAT_VERSIONS = (FORMAT_VERSION,)
REBUILD = ("rebuild it with this morphbox: `morphbox pack build` (the default instruments) or "
           "`morphbox pack build --programs ... --wav NAME=FOLDER ...` from its sources (the "
           "manifest's instruments list them)")
RETIRED_VERSIONS = {
    1: "a version 1 (spectral, 16 kHz) pack from before full-band sound",
    2: "a version 2 (neural, 16 kHz) pack from before full-band sound",
}
DECAY_STEP = 0.25  # dB/s per code of the decay members (uint8: 0 .. -63.75 dB/s)
VELOCITY_STEP = 0.5  # dB per code of the velocity members (int8: -64 .. +63.5 dB)
MANIFEST = "manifest.json"
MODES = ("spectral", "neural")
QUANTIZATIONS = ("int8", "float32")
DECODER = "decoder.tflite"
_CHUNK = 1 << 16

_NAME = re.compile(r"[a-z][a-z0-9_]*\.(npy|tflite)")  # full match only: member_name_ok

# member -> (dtype, shape expressed in manifest dimensions); "channels" = harmonics +
# envelope_bands + noise_bands (one note frame, in that order), "layers" = velocity layers,
# "rates" = 2: the decay past the loop end, then the loop's own slope (dB/s codes)
MEMBERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "instruments_harmonics.npy": ("uint8", ("instruments", "anchors", "frames", "harmonics")),
    "instruments_envelope.npy": ("uint8", ("instruments", "anchors", "frames",
                                           "envelope_bands")),
    "instruments_noise.npy": ("uint8", ("instruments", "anchors", "frames", "noise_bands")),
    "instruments_loudness.npy": ("float32", ("instruments", "anchors", "frames")),
    "instruments_pitch_cents.npy": ("float32", ("instruments", "anchors")),
    "instruments_decay.npy": ("uint8", ("instruments", "anchors", "rates", "channels")),
    "instruments_velocity.npy": ("int8", ("instruments", "anchors", "layers", "channels")),
    "instruments_hold.npy": ("float32", ("instruments", "anchors")),
    "grid_harmonics.npy": ("uint8", ("grid", "grid", "anchors", "frames", "harmonics")),
    "grid_envelope.npy": ("uint8", ("grid", "grid", "anchors", "frames", "envelope_bands")),
    "grid_noise.npy": ("uint8", ("grid", "grid", "anchors", "frames", "noise_bands")),
    "grid_decay.npy": ("uint8", ("grid", "grid", "anchors", "rates", "channels")),
    "grid_velocity.npy": ("int8", ("grid", "grid", "anchors", "layers", "channels")),
    "grid_hold.npy": ("float32", ("grid", "grid", "anchors")),
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


def member_name_ok(name) -> bool:
    """Is ``name`` a plain member file name (``[a-z][a-z0-9_]*`` + ``.npy``/``.tflite``, the
    whole string: no path, no trailing newline)?"""
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


def _dims(manifest: dict) -> dict[str, int]:
    """The manifest's dimensions by name (call after the schema check)."""
    try:
        return {
            "instruments": len(manifest["instruments"]),
            "anchors": len(manifest["pitch_anchors"]),
            "frames": int(manifest["frames"]),
            "harmonics": int(manifest["harmonics"]),
            "envelope_bands": int(manifest["envelope_bands"]),
            "noise_bands": int(manifest["noise_bands"]),
            "channels": int(manifest["harmonics"]) + int(manifest["envelope_bands"])
            + int(manifest["noise_bands"]),
            "layers": len(manifest["velocity_layers"]),
            "rates": 2,
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

    @property
    def frame_times(self) -> np.ndarray:
        """``(F,)`` float64 frame times, s after note-on."""
        return np.asarray(self.manifest["frame_times"], np.float64)


def _check_manifest(manifest: dict, where: Path) -> None:
    """The manifest schema (:mod:`morphbox.device.packs.schema`); raises ``PackError``."""
    from morphbox.device.packs.schema import check_manifest
    check_manifest(manifest, where)


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
                             envelope_bands=manifest["envelope_bands"],
                             noise_bands=manifest["noise_bands"], num_threads=threads)
    except RuntimeMissing:
        raise
    except ModelError as exc:
        raise PackError(f"{path}: member {DECODER} is not a usable decoder: "
                        f"{str(exc).replace(str(path / DECODER) + ': ', '')}") from None


def open_regular(path: Path, what: str, where: Path | str) -> int:
    """Open ``path`` for reading only if it is a regular file: never a FIFO (opening one
    would wait for a writer), a device, a socket, a directory or a symbolic link (which could
    lead out of the pack). Returns the file descriptor; raises :class:`PackError` naming
    ``what``."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise PackError(f"{where}: {what} is missing") from None
    except OSError as exc:
        raise PackError(f"{where}: cannot read {what}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise PackError(f"{where}: {what} is not a regular file ({_kind(st.st_mode)}); "
                        "a pack holds plain files only")
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:  # replaced since the lstat: a link (ELOOP), gone, unreadable
        raise PackError(f"{where}: cannot read {what}: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise PackError(f"{where}: {what} is not a regular file; a pack holds plain files only")
    os.set_blocking(fd, True)
    return fd


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a file"


def read_manifest(path: str | os.PathLike) -> dict:
    """The manifest of the pack directory ``path``, read safely (a regular file of at most
    :data:`morphbox.device.packs.schema.MAX_MANIFEST_BYTES`) and checked against the schema
    (:func:`morphbox.device.packs.schema.parse_manifest`) before anything else of the pack is
    read. Raises :class:`PackError` naming the field and the rule."""
    from morphbox.device.packs.schema import MAX_MANIFEST_BYTES, parse_manifest
    path = Path(path)
    if not path.is_dir():
        raise PackError(f"{path}: not a pack directory (no {MANIFEST}; is this a pack "
                        "directory?)")
    fd = open_regular(path / MANIFEST, MANIFEST, path)
    with os.fdopen(fd, "rb") as f:
        try:
            data = f.read(MAX_MANIFEST_BYTES + 1)
        except OSError as exc:
            raise PackError(f"{path}: cannot read {MANIFEST}: {exc.strerror}") from None
    return parse_manifest(data, path)


def _hash_file(f, where: Path, name: str) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    try:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            n += len(chunk)
    except OSError as exc:
        raise PackError(f"{where}: cannot read member {name}: {exc.strerror}") from None
    return h.hexdigest(), n


def _read_npy(f, where: Path, name: str, manifest: dict) -> np.ndarray:
    """The array in ``.npy`` file ``f``: its header is checked against the manifest's dtype and
    shape before any data is allocated; object (pickle) arrays and trailing bytes refused."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except Exception as exc:  # noqa: BLE001 - numpy raises several types for bad headers
        raise PackError(f"{where}: member {name} is not a readable array: {exc}") from None
    if dtype.hasobject:
        raise PackError(f"{where}: member {name} is not a readable array: it holds Python "
                        "objects (a pickle), which a pack may not")
    if name in _SHAPES:
        want_dtype, _ = _SHAPES[name]
        want = expected_shape(name, manifest)
        if dtype != np.dtype(want_dtype) or tuple(shape) != want:
            raise PackError(f"{where}: member {name} has {dtype}{list(shape)}, expected "
                            f"{want_dtype}{list(want)}")
    else:  # a member the manifest lists but this version does not use: bounded by its size
        size = os.fstat(f.fileno()).st_size
        if int(np.prod(shape, dtype=np.int64)) * dtype.itemsize > size:
            raise PackError(f"{where}: member {name} is not a readable array: its header "
                            "promises more data than the file holds")
    array = np.empty(shape, dtype, order="F" if fortran else "C")
    buf = memoryview(array.reshape(-1, order="A")).cast("B")
    got = 0
    while got < len(buf):
        n = f.readinto(buf[got:])
        if not n:
            raise PackError(f"{where}: member {name} is not a readable array: its data ends "
                            f"{len(buf) - got} bytes short")
        got += n
    if f.read(1):
        raise PackError(f"{where}: member {name} has bytes after its array data")
    return array


def load_pack(path: str | os.PathLike) -> Pack:
    """Load and verify the pack in directory ``path``.

    The manifest is read and checked against the schema first
    (:func:`read_manifest`); then each member is opened as a regular file only
    (:func:`open_regular`), hashed as it streams (SHA-256 against the manifest), and read
    with its header checked against the manifest's dtype and shape before the data is
    allocated; float members are checked for finite, in-range values
    (:func:`morphbox.device.packs.schema.check_values`). Raises :class:`PackError` naming the
    problem: unreadable manifest, a field that breaks the schema, missing member, a member
    that is not a regular file, SHA-256 mismatch (bit flip, truncation), unreadable array, an
    array whose dtype or shape differs from what the manifest declares, or out-of-range
    contents.
    """
    from morphbox.device.packs.schema import check_values
    path = Path(path)
    manifest = read_manifest(path)
    arrays, blobs = {}, {}
    for name, meta in manifest["members"].items():
        fd = open_regular(path / name, f"member {name}", path)
        with os.fdopen(fd, "rb") as f:
            digest, size = _hash_file(f, path, name)
            if digest != meta["sha256"]:
                raise PackError(f"{path}: member {name} is corrupt (SHA-256 mismatch; "
                                f"{size} bytes on disk)")
            f.seek(0)
            if name.endswith(".tflite"):
                blobs[name[:-7]] = f.read()
                continue
            array = _read_npy(f, path, name, manifest)
        check_values(name, array, path)
        arrays[name[:-4]] = array
    decoder = None
    if manifest["mode"] == "neural":
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
    here: :data:`FORMAT_VERSION`). ``arrays``: member name without suffix -> array
    (``.npy``) or ``bytes`` (a ``.tflite`` model). Replaces an existing pack at ``path``.
    Raises :class:`PackError` if the result would not verify.
    """
    path = Path(path)
    manifest = dict(manifest, format=FORMAT, format_version=FORMAT_VERSION)
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
            if not member_name_ok(name):
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
        frames_db: ``(G, G, anchors, frames, channels)`` float32 dB: per grid point, pitch
            anchor and frame, the partial levels, then the harmonic envelope, then the noise
            band gains (:mod:`morphbox.kernels.features`; one array so one gather serves all).
        n_harmonics, n_envelope: how many of the last axis are partials, envelope bands (the
            rest are noise bands).
        anchors: ``(anchors,)`` int MIDI pitches the grid was made at.
        frame_times: ``(frames,)`` float64 s after note-on of each frame.
        loop_start, loop_end: the sustain loop, frame indices (:mod:`morphbox.kernels.sustain`):
            past ``loop_end`` a held sustaining note goes on from ``loop_start``; a decaying
            one holds its last frame and keeps decaying.
        decay_db: ``(G, G, anchors, 2, channels)`` float32 dB per second (<= 0): ``[..., 0,
            :]`` the rate each channel keeps falling by past the loop end, ``[..., 1, :]``
            the loop's own slope (both 0 for a sustaining note).
        hold: ``(G, G, anchors)`` float32 0..1: 1 where a decaying note holds its last
            frame past the loop end, 0 where the note loops (a morph mixes the two).
        velocity_db: ``(G, G, anchors, layers, channels)`` float32 dB added at each velocity
            layer (0 at the pack's reference velocity); velocities between layers
            interpolate, outside them the DLS curve ``40 log10(v / v_layer)`` extends it.
        velocity_layers: ``(layers,)`` MIDI velocities of the layers.
        source_rate: analysis sample rate, Hz.
        name: the pack's name.
    """

    frames_db: np.ndarray
    n_harmonics: int
    anchors: np.ndarray
    frame_times: np.ndarray
    loop_start: int
    loop_end: int
    source_rate: float
    n_envelope: int = 0
    decay_db: np.ndarray | None = None
    hold: np.ndarray | None = None
    velocity_db: np.ndarray | None = None
    velocity_layers: np.ndarray = field(default_factory=lambda: np.array([100]))
    name: str = ""

    def __post_init__(self):
        g = self.frames_db.shape
        if self.decay_db is None:
            object.__setattr__(self, "decay_db", np.zeros(g[:3] + (2,) + g[4:], np.float32))
        if self.hold is None:
            object.__setattr__(self, "hold", np.zeros(g[:3], np.float32))
        if self.velocity_db is None:
            object.__setattr__(self, "velocity_db", np.zeros(g[:3] + (1,) + g[4:],
                                                             np.float32))
        object.__setattr__(self, "frame_times", np.asarray(self.frame_times, np.float64))
        object.__setattr__(self, "velocity_layers",
                           np.asarray(self.velocity_layers, np.float64).reshape(-1))

    @classmethod
    def from_parts(cls, harmonics_db: np.ndarray, noise_db: np.ndarray,
                   envelope_db: np.ndarray | None = None, *, frame_rate: float | None = None,
                   **fields) -> Grid:
        """Build from ``(G, G, A, F, K)``, ``(G, G, A, F, B)`` and (optional, else none)
        ``(G, G, A, F, E)`` dB arrays. ``frame_rate`` (Hz) stands for evenly spaced
        ``frame_times``."""
        if envelope_db is None:
            envelope_db = np.zeros(harmonics_db.shape[:-1] + (0,), np.float32)
        frames_db = np.concatenate([harmonics_db, envelope_db, noise_db],
                                   axis=-1).astype(np.float32)
        if "frame_times" not in fields:
            fields["frame_times"] = np.arange(harmonics_db.shape[3]) / float(frame_rate)
        return cls(frames_db=frames_db, n_harmonics=harmonics_db.shape[-1],
                   n_envelope=envelope_db.shape[-1],
                   anchors=np.asarray(fields.pop("anchors"), np.int64), **fields)

    @property
    def size(self) -> int:
        return self.frames_db.shape[0]

    @property
    def n_frames(self) -> int:
        return self.frames_db.shape[3]

    @property
    def n_noise_bands(self) -> int:
        return self.frames_db.shape[-1] - self.n_harmonics - self.n_envelope

    @property
    def harmonics_db(self) -> np.ndarray:
        return self.frames_db[..., :self.n_harmonics]

    @property
    def envelope_db(self) -> np.ndarray:
        return self.frames_db[..., self.n_harmonics:self.n_harmonics + self.n_envelope]

    @property
    def noise_db(self) -> np.ndarray:
        return self.frames_db[..., self.n_harmonics + self.n_envelope:]


def decay_from_codes(codes: np.ndarray) -> np.ndarray:
    """uint8 decay codes -> dB per second, float32 (<= 0)."""
    return np.asarray(codes, np.float32) * np.float32(-DECAY_STEP)


def decay_to_codes(db_per_s: np.ndarray) -> np.ndarray:
    """dB per second (<= 0; clipped to the code range) -> uint8 codes."""
    q = np.round(-np.asarray(db_per_s, np.float64) / DECAY_STEP)
    return np.clip(q, 0, 255).astype(np.uint8)


def velocity_from_codes(codes: np.ndarray) -> np.ndarray:
    """int8 velocity-layer codes -> dB, float32."""
    return np.asarray(codes, np.float32) * np.float32(VELOCITY_STEP)


def velocity_to_codes(db: np.ndarray) -> np.ndarray:
    """dB (clipped to -64 .. +63.5) -> int8 codes."""
    q = np.round(np.asarray(db, np.float64) / VELOCITY_STEP)
    return np.clip(q, -128, 127).astype(np.int8)


def grid_from_arrays(manifest: dict, harmonics, envelope, noise, decay, velocity, hold,
                     name: str = "") -> Grid:
    """A :class:`Grid` from a pack's grid-shaped codes (``grid_*`` members, or any grid built
    like them: uint8 ``(G, G, A, F, K)``, ``(G, G, A, F, E)``, ``(G, G, A, F, B)`` level codes,
    uint8 ``(G, G, A, 2, C)`` decay codes, int8 ``(G, G, A, layers, C)`` velocity codes,
    ``(G, G, A)`` hold) and its manifest.

    The levels are filled one grid row at a time through a 256-entry table of the codes' dB
    values (:func:`morphbox.kernels.quant.dequantize_db`), so building the grid needs no
    whole-grid temporaries: peak memory is the float32 grid itself, not three times that."""
    harmonics, envelope, noise = (np.asarray(x) for x in (harmonics, envelope, noise))
    k, e = harmonics.shape[-1], envelope.shape[-1]
    lut = dequantize_db(np.arange(256, dtype=np.uint8)).astype(np.float32)
    frames_db = np.empty(harmonics.shape[:-1] + (k + e + noise.shape[-1],), np.float32)
    for iy in range(harmonics.shape[0]):
        np.take(lut, harmonics[iy], out=frames_db[iy, ..., :k], mode="clip")
        np.take(lut, envelope[iy], out=frames_db[iy, ..., k:k + e], mode="clip")
        np.take(lut, noise[iy], out=frames_db[iy, ..., k + e:], mode="clip")
    return Grid(frames_db=frames_db, n_harmonics=k, n_envelope=e,
                anchors=np.asarray(manifest["pitch_anchors"], np.int64),
                frame_times=manifest["frame_times"],
                loop_start=int(manifest["loop"]["start"]),
                loop_end=int(manifest["loop"]["end"]),
                source_rate=float(manifest["source_sample_rate"]),
                decay_db=decay_from_codes(decay), hold=np.asarray(hold, np.float32),
                velocity_db=velocity_from_codes(velocity),
                velocity_layers=manifest["velocity_layers"], name=name)


def grid_from_pack(pack: Pack) -> Grid:
    """The active grid of a verified pack, dequantised to dB float32 (:func:`grid_from_arrays`:
    one grid row at a time, no whole-grid temporaries)."""
    a = pack.arrays
    return grid_from_arrays(pack.manifest, a["grid_harmonics"], a["grid_envelope"],
                            a["grid_noise"], a["grid_decay"], a["grid_velocity"],
                            a["grid_hold"], pack.name)


DEFAULT_PACK = Path(__file__).resolve().parent / "default"
# the default timbre model (int8; encode + decode signatures) the default pack is built with
DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "models" / "default_int8.tflite"


def load_default_grid() -> Grid:
    """The grid of the pack shipped in the repo (``device/packs/default``)."""
    return grid_from_pack(load_pack(DEFAULT_PACK))
