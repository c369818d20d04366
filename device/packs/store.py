"""The device's pack store: installed packs, the active pointer, paired keys, the token.

State directory (:func:`state_root`: ``$MORPHBOX_STATE_DIR``, else
``$XDG_STATE_HOME/morphbox``, else ``~/.local/state/morphbox``; ``/var/lib/morphbox`` on the
Pi, so the root filesystem can stay read-only)::

    <state>/
      token                  pairing token (text, mode 0600), created on first use
      keys/<key id>.pub      paired laptop public keys (64 hex digits, Ed25519 raw)
      packs/<id>/            installed, verified packs; id = <name>-<12 hex of manifest SHA-256>
      packs/.incoming-*/     uploads being verified (removed on next start)
      packs/.trash-*/        packs being deleted (removed on next start)
      active.json            {"active": id, "previous": id | null, ...}
      recordings/            session recordings (device/midi/recorder.py)

The shipped pack (``device/packs/default``) has the id ``builtin``; it is always a valid
fallback and cannot be deleted.

Crash safety (a SIGKILL or power cut at any moment leaves a loadable active pack):

* an upload is extracted and verified (size, SHA-256, signature, schema via
  :func:`morphbox.device.packs.format.load_pack`) in ``packs/.incoming-*`` on the same filesystem,
  every file
  fsynced, then renamed to ``packs/<id>`` in one ``rename(2)``; a directory with an id name is
  therefore always complete;
* ``active.json`` is replaced by write-temp + fsync + ``os.replace`` + directory fsync, and only
  after the new pack has loaded (and, on a running service, is playing);
* deletion renames the pack to ``.trash-*`` first, and the active pack cannot be deleted;
* at start, :meth:`PackStore.startup` tries the active pack, then the previous one, then the
  built-in one, and rewrites the pointer if it had to fall back.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from morphbox.device.common import atomic_write, fsync_dir, state_dir
from morphbox.device.packs.archive import PACK_NAME, ArchiveError, extract_archive, key_id
from morphbox.device.packs.format import (
    DEFAULT_PACK,
    MANIFEST,
    Pack,
    PackError,
    grid_from_pack,
    load_pack,
)

log = logging.getLogger("morphbox.packstore")

BUILTIN = "builtin"
POINTER = "active.json"
DEFAULT_MAX_PACK_BYTES = 256 * 1024 * 1024
DEFAULT_RESERVE_BYTES = 32 * 1024 * 1024
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}-[0-9a-f]{12}$")


state_root = state_dir  # the one rule for the state directory: device/common.py


class StoreError(Exception):
    """A store request is refused. ``status``: the HTTP status the API answers with;
    ``code``: a short machine word (not_found, in_use, no_space, load_failed, auth, bad_key,
    plus the :class:`morphbox.device.packs.archive.ArchiveError` codes)."""

    def __init__(self, message: str, status: int = 400, code: str = "error"):
        super().__init__(message)
        self.status, self.code = status, code


ARCHIVE_STATUS = {"format": 400, "traversal": 400, "corrupt": 422, "version": 422,
                  "signature": 403, "too_large": 413}


@dataclass(frozen=True)
class Activation:
    """Result of :meth:`PackStore.activate`: the pack now active, the one before it, and
    seconds spent loading (``load_s``) and swapping into the engine (``swap_s``)."""

    id: str
    previous: str | None
    pack: Pack
    load_s: float
    swap_s: float


class PackStore:
    """Installed packs under ``root`` (default :func:`state_root`).

    ``max_pack_bytes``: largest archive accepted. ``reserve_bytes``: free space that must
    remain on the state filesystem after an install. ``builtin``: the fallback pack.
    Thread-safe: installs, activations and deletions are serialised by one lock.
    """

    def __init__(self, root: str | os.PathLike | None = None, *,
                 max_pack_bytes: int = DEFAULT_MAX_PACK_BYTES,
                 reserve_bytes: int = DEFAULT_RESERVE_BYTES, builtin: Path = DEFAULT_PACK):
        self.root = Path(root).expanduser() if root is not None else state_root()
        self.packs_dir = self.root / "packs"
        self.keys_dir = self.root / "keys"
        self.recordings_dir = self.root / "recordings"
        self.max_pack_bytes = max_pack_bytes
        self.reserve_bytes = reserve_bytes
        self.builtin = Path(builtin)
        self.last_recovery: list[str] = []
        self._lock = threading.RLock()
        for d in (self.root, self.packs_dir, self.keys_dir, self.recordings_dir):
            d.mkdir(parents=True, exist_ok=True)

    # ---- token and keys ---------------------------------------------------------------------

    @property
    def token(self) -> str:
        """The pairing token (created on first use; shown by ``morphbox token`` on the box)."""
        path = self.root / "token"
        try:
            tok = path.read_text().strip()
            if tok:
                return tok
        except FileNotFoundError:
            pass
        tok = secrets.token_urlsafe(12)
        atomic_write(path, (tok + "\n").encode(), mode=0o600)
        return tok

    def check_token(self, given: str | None) -> None:
        """Raise :class:`StoreError` (401 missing, 403 wrong) unless ``given`` is the token."""
        if not given:
            raise StoreError("missing pairing token: send the X-Morphbox-Token header (the "
                             "token is on the device: `morphbox token`, or the file "
                             f"{self.root / 'token'})", 401, "auth")
        if not hmac.compare_digest(given.strip().encode(), self.token.encode()):
            raise StoreError("wrong pairing token: pair again with `morphbox pair --device "
                             "HOST --token TOKEN`", 403, "auth")

    def trusted_keys(self) -> dict[str, bytes]:
        """Paired keys: key id -> raw 32-byte Ed25519 public key."""
        keys = {}
        for p in sorted(self.keys_dir.glob("*.pub")):
            try:
                raw = bytes.fromhex(p.read_text().split()[0])
            except (ValueError, IndexError, OSError):
                log.warning("ignoring unreadable key file %s", p)
                continue
            if len(raw) == 32:
                keys[key_id(raw)] = raw
        return keys

    def add_key(self, raw: bytes, label: str = "") -> str:
        """Pair a public key (raw 32 bytes); returns its id. Idempotent."""
        if len(raw) != 32:
            raise StoreError("a public key is 32 bytes (Ed25519 raw, 64 hex digits)", 400,
                             "bad_key")
        kid = key_id(raw)
        label = re.sub(r"[^\w .@-]", "", label)[:64]
        atomic_write(self.keys_dir / f"{kid}.pub", f"{raw.hex()} {label}\n".encode())
        return kid

    def remove_key(self, kid: str) -> None:
        path = self.keys_dir / f"{kid}.pub"
        if not re.fullmatch(r"[0-9a-f]{16}", kid) or not path.exists():
            raise StoreError(f"no paired key {kid!r}", 404, "not_found")
        path.unlink()

    # ---- packs ------------------------------------------------------------------------------

    def pack_path(self, pid: str) -> Path:
        """Directory of installed pack ``pid`` (``builtin``: the shipped pack)."""
        if pid == BUILTIN:
            return self.builtin
        if not isinstance(pid, str) or not _ID.match(pid):
            raise StoreError(f"no such pack {pid!r} (bad pack id)", 404, "not_found")
        path = self.packs_dir / pid
        if not path.is_dir():
            raise StoreError(f"no such pack {pid!r}", 404, "not_found")
        return path

    def pointer(self) -> dict:
        """``active.json`` contents; ``{"active": "builtin", "previous": None}`` if absent
        or unreadable."""
        try:
            ptr = json.loads((self.root / POINTER).read_text())
            if isinstance(ptr, dict) and isinstance(ptr.get("active"), str):
                return ptr
        except (OSError, ValueError):
            pass
        return {"active": BUILTIN, "previous": None}

    def _write_pointer(self, active: str, previous: str | None, **extra) -> None:
        body = {"active": active, "previous": previous, "since": time.time(), **extra}
        atomic_write(self.root / POINTER, (json.dumps(body, indent=1) + "\n").encode())

    def list_packs(self) -> list[dict]:
        """Installed packs (built-in first): id, name, instruments, corners, bytes, mode,
        installed (Unix time), active, previous. Reads manifests only (no hashing)."""
        ptr = self.pointer()
        out = []
        dirs = [(BUILTIN, self.builtin)] + [
            (p.name, p) for p in sorted(self.packs_dir.iterdir()) if _ID.match(p.name)]
        for pid, path in dirs:
            try:
                m = json.loads((path / MANIFEST).read_text())
                names = [i["name"] for i in m["instruments"]]
                info = {"name": m.get("name", pid), "mode": m.get("mode"),
                        "instruments": names,
                        "corners": {c: names[i] for c, i in m["corners"].items()},
                        "bytes": sum(v["bytes"] for v in m["members"].values())}
            except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
                info = {"name": pid, "error": f"unreadable manifest: {exc}"}
            out.append({"id": pid, **info, "builtin": pid == BUILTIN,
                        "installed": path.stat().st_mtime,
                        "active": pid == ptr["active"], "previous": pid == ptr.get("previous")})
        return out

    def free_bytes(self) -> int:
        """Bytes an install may still use: free space on the state filesystem minus
        ``reserve_bytes`` (may be negative)."""
        return shutil.disk_usage(self.root).free - self.reserve_bytes

    def check_space(self, needed: int) -> None:
        """Raise :class:`StoreError` 507 if ``needed`` bytes do not fit."""
        free = self.free_bytes()
        if needed > free:
            raise StoreError(f"not enough space on the device: the pack needs "
                             f"{needed / 1e6:.1f} MB, {max(free, 0) / 1e6:.1f} MB free (delete "
                             f"packs or recordings)", 507, "no_space")

    def cleanup(self) -> None:
        """Remove leftovers of interrupted uploads and deletions."""
        for p in self.packs_dir.iterdir():
            if p.name.startswith((".incoming-", ".trash-")):
                shutil.rmtree(p, ignore_errors=True)

    def install(self, stream, content_length: int | None = None) -> str:
        """Verify and install the ``.mbpack`` archive read from binary stream ``stream``;
        returns the pack id (already installed: the same id, nothing written).

        Raises :class:`StoreError` (status and code from the archive check, 507 not enough
        space, 422 a pack that does not load); nothing installed or active changes then.
        """
        if content_length is not None:
            if content_length > self.max_pack_bytes:
                raise StoreError(f"upload of {content_length / 1e6:.1f} MB is larger than the "
                                 f"{self.max_pack_bytes / 1e6:.1f} MB this device accepts",
                                 413, "too_large")
            self.check_space(content_length)
        tmp = Path(tempfile.mkdtemp(prefix=".incoming-", dir=self.packs_dir))
        try:
            try:
                hdr = extract_archive(_Checked(stream, self), tmp, self.trusted_keys(),
                                      self.max_pack_bytes)
            except ArchiveError as exc:
                raise StoreError(str(exc), ARCHIVE_STATUS.get(exc.code, 400), exc.code) \
                    from None
            try:
                load_pack(tmp)
            except PackError as exc:
                reason = str(exc).split(": ", 1)[-1]
                raise StoreError(f"pack {hdr.name!r} refused: {reason}", 422, "schema") \
                    from None
            fsync_dir(tmp)
            pid = f"{hdr.name}-{hdr.members[0]['sha256'][:12]}"
            with self._lock:
                final = self.packs_dir / pid
                if final.exists():
                    try:
                        load_pack(final)
                        return pid  # identical pack already installed
                    except PackError:
                        self._trash(final)
                os.rename(tmp, final)
                fsync_dir(self.packs_dir)
            log.info("installed pack %s", pid)
            return pid
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def install_file(self, path: str | os.PathLike) -> str:
        """:meth:`install` from an archive file."""
        with open(path, "rb") as f:
            return self.install(f, os.fstat(f.fileno()).st_size)

    def _trash(self, path: Path) -> None:
        trash = Path(tempfile.mkdtemp(prefix=f".trash-{path.name}-", dir=self.packs_dir))
        os.rename(path, trash / path.name)
        fsync_dir(self.packs_dir)
        shutil.rmtree(trash, ignore_errors=True)

    def delete(self, pid: str) -> None:
        """Delete installed pack ``pid``. Refused (409) for the built-in and the active pack."""
        with self._lock:
            if pid == BUILTIN:
                raise StoreError("the built-in pack cannot be deleted", 409, "in_use")
            path = self.pack_path(pid)
            ptr = self.pointer()
            if ptr["active"] == pid:
                raise StoreError(f"pack {pid} is active: activate another pack first", 409,
                                 "in_use")
            if ptr.get("previous") == pid:
                self._write_pointer(ptr["active"], None)
            self._trash(path)

    def activate(self, pid: str, apply: Callable[[Pack], None] | None = None) -> Activation:
        """Make ``pid`` the active pack. The pack is loaded and verified here (call this off
        the audio thread), then ``apply(pack)`` puts it to use (a running service swaps its
        grid: :meth:`morphbox.device.service.Service.switch_pack`); ``apply`` raising
        ``ValueError`` refuses the pack. The pointer is written last. If the pack fails to load
        or is refused, nothing changes, the old pack keeps playing, and :class:`StoreError`
        422 ``load_failed`` says why.
        """
        with self._lock:
            path = self.pack_path(pid)
            ptr = self.pointer()
            t0 = time.perf_counter()
            try:
                pack = load_pack(path)
                grid_from_pack(pack)
            except (PackError, ValueError, KeyError) as exc:
                raise StoreError(f"pack {pid} failed to load, rolled back to "
                                 f"{ptr['active']} (still playing): {exc}", 422,
                                 "load_failed") from None
            t1 = time.perf_counter()
            if apply is not None:
                try:
                    apply(pack)
                except ValueError as exc:
                    raise StoreError(f"pack {pid} does not fit this engine, rolled back to "
                                     f"{ptr['active']} (still playing): {exc}", 422,
                                     "load_failed") from None
            t2 = time.perf_counter()
            previous = ptr["active"] if ptr["active"] != pid else ptr.get("previous")
            self._write_pointer(pid, previous)
            log.info("active pack now %s (previous %s)", pid, previous)
            return Activation(pid, previous, pack, t1 - t0, t2 - t1)

    def startup(self) -> tuple[str, Pack]:
        """Pick and load the pack to start with: the active one, else the previous one, else
        the built-in one; rewrites the pointer after a fallback and keeps the reasons in
        ``last_recovery``. Also removes leftovers (:meth:`cleanup`)."""
        with self._lock:
            self.cleanup()
            ptr = self.pointer()
            tried, problems = [], []
            for pid in (ptr.get("active"), ptr.get("previous"), BUILTIN):
                if not isinstance(pid, str) or pid in tried:
                    continue
                tried.append(pid)
                try:
                    pack = load_pack(self.pack_path(pid))
                except (PackError, StoreError) as exc:
                    problems.append(f"{pid}: {exc}")
                    log.error("pack %s does not load, falling back: %s", pid, exc)
                    continue
                if pid != ptr.get("active"):
                    self._write_pointer(pid, None, recovered_from=problems)
                self.last_recovery = problems
                return pid, pack
            raise PackError("no loadable pack, not even the built-in one: " + "; ".join(problems))


class _Checked:
    """Binary stream wrapper: ``read(n)`` returns exactly n bytes unless the stream ends, and
    refuses more than ``store.max_pack_bytes`` in total (413)."""

    def __init__(self, stream, store: PackStore):
        self._s, self._limit, self.count = stream, store.max_pack_bytes, 0

    def read(self, n: int) -> bytes:
        parts, left = [], n
        while left > 0:
            chunk = self._s.read(left)
            if not chunk:
                break
            parts.append(chunk)
            left -= len(chunk)
        data = b"".join(parts)
        self.count += len(data)
        if self.count > self._limit + 1:
            raise ArchiveError(f"upload is larger than the {self._limit / 1e6:.1f} MB this "
                               f"device accepts", "too_large")
        return data


__all__ = ["PACK_NAME", "BUILTIN", "PackStore", "StoreError", "Activation", "state_root",
           "atomic_write"]
