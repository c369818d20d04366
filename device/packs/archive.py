"""Signed pack archives (``.mbpack``): one file per pack, signed with Ed25519.

Shared by the laptop (:func:`write_archive` signs) and the device (:func:`extract_archive`
verifies while it extracts). The format is in ``docs/flashing.md``; in short, all integers
little-endian::

    offset 0        6 bytes   magic b"MBPACK"
    offset 6        u16       archive version (ARCHIVE_VERSION = 1)
    offset 8        u32       header length H (bytes, at most MAX_HEADER_BYTES)
    offset 12       H bytes   header: UTF-8 JSON, see below
    offset 12+H     64 bytes  Ed25519 signature over bytes 0 .. 12+H (magic, version,
                              length and header)
    offset 76+H     ...       member data, concatenated in the header's order, nothing after

Header fields: ``pack_format`` ("morphbox-pack"), ``pack_format_version`` (the pack's
manifest ``format_version``), ``name`` (pack name), ``key_id`` (signer, see :func:`key_id`),
``created`` (UTC ISO 8601), ``tool``, ``members``: a list of ``{"name", "bytes", "sha256"}``,
``manifest.json`` first. The header signs every member's SHA-256 and size, so the signature
covers the whole archive; the members are checked as they stream past.

Refusals raise :class:`ArchiveError` with a ``code`` (``format``, ``version``,
``signature``, ``traversal``, ``corrupt``, ``too_large``, ``schema``) and a message for
people.

numpy-free; needs ``cryptography`` (Ed25519).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from morphbox.device.packs.format import (
    FORMAT,
    FORMAT_VERSIONS,
    MANIFEST,
    REBUILD,
    RETIRED_VERSIONS,
    member_name_ok,
)
from morphbox.device.packs.schema import MAX_MANIFEST_BYTES, SchemaError, strict_json

MAGIC = b"MBPACK"
ARCHIVE_VERSION = 1
MAX_HEADER_BYTES = 1 << 20
SIGNATURE_BYTES = 64
SUFFIX = ".mbpack"
CHUNK = 1 << 16

# pack names: letters, digits, . _ -, at most 64, matched against the WHOLE name (fullmatch:
# with ``re.match`` and ``$`` a name ending in a newline would pass)
PACK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def pack_name_ok(name) -> bool:
    """Can a pack named ``name`` be installed (a plain name, no path, no control bytes)?"""
    return isinstance(name, str) and PACK_NAME.fullmatch(name) is not None


class ArchiveError(Exception):
    """An archive is refused. ``code``: format, version, signature, traversal, corrupt,
    too_large, schema (the HTTP API maps it to a status)."""

    def __init__(self, message: str, code: str = "format"):
        super().__init__(message)
        self.code = code


# ---- keys ----------------------------------------------------------------------------------


def key_id(public_raw: bytes) -> str:
    """Short id of a raw 32-byte Ed25519 public key: first 16 hex digits of its SHA-256."""
    return hashlib.sha256(public_raw).hexdigest()[:16]


def public_raw(private_key) -> bytes:
    """Raw 32-byte public key of an ``Ed25519PrivateKey``."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    return private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def parse_public_key(text: str) -> bytes:
    """A public key given as 64 hex digits -> raw 32 bytes; ValueError otherwise."""
    text = text.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", text):
        raise ValueError("a public key is 64 hex digits (32 bytes, Ed25519 raw)")
    return bytes.fromhex(text)


# ---- writing (laptop) ----------------------------------------------------------------------


def _file_sha(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def write_archive(pack_dir: str | os.PathLike, out: str | os.PathLike, private_key,
                  tool: str = "morphbox") -> Path:
    """Sign the pack directory ``pack_dir`` into the archive file ``out`` (written to a temp
    file and renamed). The pack is verified with :func:`morphbox.device.packs.format.load_pack`
    first (raises :class:`morphbox.device.packs.format.PackError`); ``private_key`` is an
    ``Ed25519PrivateKey``."""
    from morphbox.device.packs.format import load_pack
    pack_dir, out = Path(pack_dir), Path(out)
    pack = load_pack(pack_dir)
    if not pack_name_ok(pack.name):
        raise ArchiveError(f"pack name {pack.name!r} cannot be installed: use letters, digits, "
                           ". _ - (at most 64)", "format")
    names = [MANIFEST] + sorted(pack.manifest["members"])
    members = []
    for name in names:
        sha, size = _file_sha(pack_dir / name)
        members.append({"name": name, "bytes": size, "sha256": sha})
    pub = public_raw(private_key)
    header = {"pack_format": FORMAT, "pack_format_version": pack.manifest["format_version"],
              "name": pack.name, "key_id": key_id(pub),
              "created": datetime.now(UTC).isoformat(timespec="seconds"),
              "tool": tool, "members": members}
    return write_raw_archive(out, header, [pack_dir / n for n in names], private_key)


def write_raw_archive(out: str | os.PathLike, header: dict, files: list, private_key,
                      version: int = ARCHIVE_VERSION) -> Path:
    """Low level: write ``header`` as given, signed, followed by ``files`` (paths or bytes)
    in order. No checks: tests use it to build hostile archives."""
    out = Path(out)
    hb = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    prefix = MAGIC + struct.pack("<HI", version, len(hb)) + hb
    sig = private_key.sign(prefix)
    tmp = out.with_name(f".{out.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(prefix + sig)
        for item in files:
            if isinstance(item, (bytes, bytearray)):
                f.write(item)
            else:
                with open(item, "rb") as src:
                    while chunk := src.read(CHUNK):
                        f.write(chunk)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out)
    return out


# ---- reading (device) ----------------------------------------------------------------------


@dataclass(frozen=True)
class ArchiveHeader:
    """A parsed, signature-checked header. ``total_bytes``: size the whole archive must have."""

    header: dict
    key_id: str
    header_bytes: int
    total_bytes: int

    @property
    def name(self) -> str:
        return self.header["name"]

    @property
    def members(self) -> list[dict]:
        return self.header["members"]


def _read_exact(f, n: int, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise ArchiveError(f"archive is truncated: ended inside the {what}", "corrupt")
    return data


def peek_header(f) -> tuple[bytes, bytes, bytes, dict]:
    """Read the fixed part, header and signature from ``f`` without checking the signature:
    (first 12 bytes, header bytes, signature, header dict). Raises :class:`ArchiveError` for
    bad magic, an unknown archive version or a malformed header."""
    fixed = f.read(12)
    if len(fixed) < 12 or fixed[:6] != MAGIC:
        raise ArchiveError("not a morphbox pack archive (.mbpack): bad magic bytes; build one "
                           "with `morphbox pack archive`", "format")
    version, hlen = struct.unpack("<HI", fixed[6:])
    if version != ARCHIVE_VERSION:
        raise ArchiveError(f"incompatible archive version {version}: this side reads "
                           f"version {ARCHIVE_VERSION}; update morphbox on the older side",
                           "version")
    if hlen > MAX_HEADER_BYTES:
        raise ArchiveError(f"archive header of {hlen} bytes is larger than the "
                           f"{MAX_HEADER_BYTES} allowed", "format")
    hb = _read_exact(f, hlen, "header")
    sig = _read_exact(f, SIGNATURE_BYTES, "signature")
    try:
        header = strict_json(hb, "archive header")
    except SchemaError:
        header = None
    if not (isinstance(header, dict) and isinstance(header.get("key_id"), str)):
        raise ArchiveError("archive header is not valid JSON with a key_id", "format")
    return fixed, hb, sig, header


def read_header(f, trusted: dict[str, bytes], max_bytes: int | None = None) -> ArchiveHeader:
    """Read and check the header from binary stream ``f``.

    ``trusted``: key id -> raw public key of the paired keys. Checks, in order: magic, archive
    version, header JSON, signature (by a trusted key), pack format and version, member names
    (``manifest.json`` first, then plain ``.npy`` names: no paths), sizes and, if
    ``max_bytes`` is given, the total size. Raises :class:`ArchiveError`.
    """
    fixed, hb, sig, header = peek_header(f)
    kid = header["key_id"]
    pub = trusted.get(kid)
    if pub is None:
        raise ArchiveError(f"signature rejected: the pack is signed by key {kid}, which is not "
                           f"paired with this device (run `morphbox pair`)", "signature")
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    try:
        Ed25519PublicKey.from_public_bytes(pub).verify(sig, fixed + hb)
    except InvalidSignature:
        raise ArchiveError(f"signature rejected: the archive header does not match its "
                           f"signature by key {kid} (altered or damaged)", "signature") from None
    if header.get("pack_format") != FORMAT:
        raise ArchiveError(f"not a morphbox pack (pack_format {header.get('pack_format')!r})",
                           "format")
    pv = header.get("pack_format_version")
    if pv not in FORMAT_VERSIONS:
        hint = f"; {REBUILD}" if pv in RETIRED_VERSIONS else ""
        raise ArchiveError(f"incompatible pack: format version {pv!r}, this device reads "
                           f"versions {', '.join(map(str, FORMAT_VERSIONS))}{hint}", "version")
    name = header.get("name")
    if not pack_name_ok(name):
        raise ArchiveError(f"pack name {name!r} is not allowed (letters, digits, . _ -; at most "
                           f"64; no paths)", "traversal")
    members = header.get("members")
    if not isinstance(members, list) or not members:
        raise ArchiveError("archive header lists no members", "format")
    seen = set()
    total = 12 + len(hb) + SIGNATURE_BYTES
    for i, m in enumerate(members):
        if not isinstance(m, dict):
            raise ArchiveError("archive member record is not an object", "format")
        mname = m.get("name")
        ok = mname == MANIFEST if i == 0 else member_name_ok(mname)
        if not ok:
            if i == 0 and mname != MANIFEST:
                raise ArchiveError(f"first member must be {MANIFEST}, got {mname!r}", "format")
            raise ArchiveError(f"refused member name {mname!r}: not a plain .npy file name "
                               f"(path traversal)", "traversal")
        if mname in seen:
            raise ArchiveError(f"member {mname} appears twice", "format")
        seen.add(mname)
        size, sha = m.get("bytes"), m.get("sha256")
        if type(size) is not int or size < 0 or not (
                isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha)):
            raise ArchiveError(f"member {mname} has a bad size or SHA-256 record", "format")
        if mname == MANIFEST and size > MAX_MANIFEST_BYTES:
            raise ArchiveError(f"{MANIFEST} of {size} bytes is larger than the "
                               f"{MAX_MANIFEST_BYTES} a pack may have", "too_large")
        total += size
    if max_bytes is not None and total > max_bytes:
        raise ArchiveError(f"pack archive is {total / 1e6:.1f} MB, more than the "
                           f"{max_bytes / 1e6:.1f} MB this device accepts", "too_large")
    return ArchiveHeader(header=header, key_id=kid, header_bytes=len(hb), total_bytes=total)


def extract_archive(f, dest: str | os.PathLike, trusted: dict[str, bytes],
                    max_bytes: int | None = None, on_header=None) -> ArchiveHeader:
    """Verify and extract the archive in stream ``f`` into the existing empty directory
    ``dest``: header (see :func:`read_header`), then each member's size and SHA-256 as it is
    written, fsynced; nothing may follow the last member. ``dest`` then holds a pack
    directory that still has to pass :func:`morphbox.device.packs.format.load_pack` (the caller
    does that). ``on_header(header)`` is called once the signed header is checked, before any
    member is written (the store checks the space the archive needs there; it may raise).
    Raises :class:`ArchiveError`; ``dest`` may hold partial files then (the caller removes
    it)."""
    dest = Path(dest)
    hdr = read_header(f, trusted, max_bytes)
    if on_header is not None:
        on_header(hdr)
    for m in hdr.members:
        h = hashlib.sha256()
        left = m["bytes"]
        with open(dest / m["name"], "xb") as out:
            while left:
                chunk = f.read(min(CHUNK, left))
                if not chunk:
                    raise ArchiveError(f"archive is truncated: member {m['name']} ends "
                                       f"{left} bytes short", "corrupt")
                h.update(chunk)
                out.write(chunk)
                left -= len(chunk)
            out.flush()
            os.fsync(out.fileno())
        if h.hexdigest() != m["sha256"]:
            raise ArchiveError(f"member {m['name']} is corrupt or tampered with (SHA-256 "
                               f"mismatch)", "corrupt")
    if f.read(1):
        raise ArchiveError("archive has data after its last member", "corrupt")
    try:
        manifest = strict_json((dest / MANIFEST).read_bytes(), MANIFEST)
    except SchemaError as exc:
        raise ArchiveError(f"pack refused: {exc}", "schema") from None
    listed = set(manifest.get("members", {})) if isinstance(manifest, dict) else set()
    extra = sorted({m["name"] for m in hdr.members[1:]} - listed)
    if extra:
        raise ArchiveError(f"member(s) {', '.join(extra)} not listed in the pack manifest",
                           "format")
    if isinstance(manifest, dict) and manifest.get("name", hdr.name) != hdr.name:
        raise ArchiveError(f"archive name {hdr.name!r} differs from the manifest's "
                           f"{manifest.get('name')!r}", "format")
    return hdr
