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
      active.json.bak        the same pointer, written just before it (read when active.json
                             is unreadable: random bytes, empty, not an object, a directory)
      recordings/            session recordings (device/midi/recorder.py); the oldest are
                             pruned past ``recordings_cap_bytes``

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
  built-in one, and rewrites the pointer if it had to fall back. *Any* exception while
  loading (or proving, with ``check``) a pack counts as a failed pack, and a broken state
  directory (``packs`` or ``active.json`` of the wrong kind, garbage in the pointer) is moved
  aside and logged, never a reason not to start.

Disk use: installs keep ``reserve_bytes`` free on the state filesystem and the packs within
``packs_quota_bytes`` (507 otherwise), counting uploads still in flight, and checked from the
archive's signed header before a member is written (chunked uploads too); a disk that fills
up anyway (ENOSPC) is a 507, not a crash. Recordings are capped at ``recordings_cap_bytes``:
:meth:`PackStore.prune_recordings` deletes the oldest first.
"""

from __future__ import annotations

import errno
import hmac
import json
import logging
import os
import re
import secrets
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from morphbox.device.common import atomic_write, fsync_dir, state_dir
from morphbox.device.packs.archive import (
    PACK_NAME,
    ArchiveError,
    ArchiveHeader,
    extract_archive,
    key_id,
)
from morphbox.device.packs.format import (
    DEFAULT_PACK,
    MANIFEST,
    Pack,
    PackError,
    grid_from_pack,
    load_pack,
    open_regular,
)
from morphbox.device.packs.schema import MAX_MANIFEST_BYTES, SchemaError, strict_json

log = logging.getLogger("morphbox.packstore")

BUILTIN = "builtin"
POINTER = "active.json"
POINTER_BACKUP = "active.json.bak"
DEFAULT_MAX_PACK_BYTES = 256 * 1024 * 1024
DEFAULT_RESERVE_BYTES = 32 * 1024 * 1024
DEFAULT_PACKS_QUOTA_BYTES = 2048 * 1024 * 1024
DEFAULT_RECORDINGS_CAP_BYTES = 1024 * 1024 * 1024
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}-[0-9a-f]{12}")  # full match only
_RECORDING = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\.(wav|mid)")  # full match only
_CHECK_EVERY = 4 << 20  # a streamed upload re-checks free space every this many bytes


state_root = state_dir  # the one rule for the state directory: device/common.py


def _env_mb(name: str, default: int) -> int:
    """Bytes from environment variable ``name`` given in MB (e.g. in /etc/default/morphbox);
    ``default`` if unset; a bad value is logged and ignored."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        mb = float(text)
        if not 0 <= mb < 1e9:
            raise ValueError
    except ValueError:
        log.error("%s=%r is not a size in MB; using %d MB", name, text, default >> 20)
        return default
    return int(mb * 1024 * 1024)


def pack_id_ok(pid) -> bool:
    """Is ``pid`` an installed pack's id form (``<name>-<12 hex>``, whole string)?"""
    return isinstance(pid, str) and _ID.fullmatch(pid) is not None


def recording_name_ok(name) -> bool:
    """Is ``name`` a plain recording file name (``.wav``/``.mid``, no path, whole string)?"""
    return isinstance(name, str) and _RECORDING.fullmatch(name) is not None


class StoreError(Exception):
    """A store request is refused. ``status``: the HTTP status the API answers with;
    ``code``: a short machine word (not_found, in_use, no_space, load_failed, auth, bad_key,
    timeout, plus the :class:`morphbox.device.packs.archive.ArchiveError` codes)."""

    def __init__(self, message: str, status: int = 400, code: str = "error"):
        super().__init__(message)
        self.status, self.code = status, code


ARCHIVE_STATUS = {"format": 400, "traversal": 400, "corrupt": 422, "version": 422,
                  "signature": 403, "too_large": 413, "schema": 422}


@dataclass(frozen=True)
class Activation:
    """Result of :meth:`PackStore.activate`: the pack now active, the one before it, and
    seconds spent loading (``load_s``) and swapping into the engine (``swap_s``)."""

    id: str
    previous: str | None
    pack: Pack
    load_s: float
    swap_s: float


def _dir_bytes(path: Path) -> int:
    """Bytes of the regular files under ``path`` (no symlinks followed)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


class PackStore:
    """Installed packs under ``root`` (default :func:`state_root`).

    ``max_pack_bytes``: largest archive accepted. ``reserve_bytes``: free space that must
    remain on the state filesystem after an install (and that a recording stops at).
    ``packs_quota_bytes``: most the installed packs may take together
    (``$MORPHBOX_PACKS_QUOTA_MB``, default 2048 MB). ``recordings_cap_bytes``: most the
    recordings may take; the oldest are pruned past it (``$MORPHBOX_RECORDINGS_CAP_MB``,
    default 1024 MB). ``builtin``: the fallback pack.
    Thread-safe: installs, activations and deletions are serialised by one lock, which an
    upload takes only to rename its verified directory into place (its network reading and
    verification run outside it).
    """

    def __init__(self, root: str | os.PathLike | None = None, *,
                 max_pack_bytes: int = DEFAULT_MAX_PACK_BYTES,
                 reserve_bytes: int = DEFAULT_RESERVE_BYTES,
                 packs_quota_bytes: int | None = None,
                 recordings_cap_bytes: int | None = None,
                 builtin: Path = DEFAULT_PACK):
        self.root = Path(root).expanduser() if root is not None else state_root()
        self.packs_dir = self.root / "packs"
        self.keys_dir = self.root / "keys"
        self.recordings_dir = self.root / "recordings"
        self.max_pack_bytes = max_pack_bytes
        self.reserve_bytes = reserve_bytes
        self.packs_quota_bytes = packs_quota_bytes if packs_quota_bytes is not None else \
            _env_mb("MORPHBOX_PACKS_QUOTA_MB", DEFAULT_PACKS_QUOTA_BYTES)
        self.recordings_cap_bytes = recordings_cap_bytes if recordings_cap_bytes is not None \
            else _env_mb("MORPHBOX_RECORDINGS_CAP_MB", DEFAULT_RECORDINGS_CAP_BYTES)
        self.builtin = Path(builtin)
        self.last_recovery: list[str] = []
        self._lock = threading.RLock()
        self._inflight_lock = threading.Lock()
        self._inflight = 0  # bytes promised to uploads being extracted
        for d in (self.root, self.packs_dir, self.keys_dir, self.recordings_dir):
            self._ensure_dir(d)

    @staticmethod
    def _ensure_dir(d: Path) -> None:
        """Make directory ``d``; something else in its place (a file, a dangling link) is
        moved aside and logged. Never raises: a store that cannot write still starts (it plays
        the built-in pack and refuses installs with the reason)."""
        try:
            if d.is_symlink() or (d.exists() and not d.is_dir()):
                aside = d.with_name(f"{d.name}.broken-{int(time.time())}")
                os.replace(d, aside)
                log.error("%s was not a directory: moved it aside to %s", d, aside)
            d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.error("cannot make the state directory %s: %s", d, exc)

    @property
    def lock(self) -> threading.RLock:
        """The lock that serialises installs' final rename, activations, deletions and
        rollbacks (re-entrant: held around a rollback that also writes the pointer)."""
        return self._lock

    # ---- token and keys ---------------------------------------------------------------------

    @property
    def token(self) -> str:
        """The pairing token (created on first use; shown by ``morphbox token`` on the box)."""
        path = self.root / "token"
        try:
            tok = path.read_text().strip()
            if tok:
                return tok
        except (FileNotFoundError, UnicodeDecodeError):
            pass
        tok = secrets.token_urlsafe(12)
        atomic_write(path, (tok + "\n").encode(), mode=0o600)
        return tok

    def check_token(self, given: str | None) -> None:
        """Raise :class:`StoreError` (401 missing, 403 wrong) unless ``given`` is the token.
        Any string is compared in constant time, whatever bytes it holds."""
        if not given or not given.strip():
            raise StoreError("missing pairing token: send the X-Morphbox-Token header (the "
                             "token is on the device: `morphbox token`, or the file "
                             f"{self.root / 'token'})", 401, "auth")
        raw = given.strip().encode("utf-8", "surrogateescape")
        if not hmac.compare_digest(raw, self.token.encode()):
            raise StoreError("wrong pairing token: pair again with `morphbox pair --device "
                             "HOST --token TOKEN`", 403, "auth")

    def trusted_keys(self) -> dict[str, bytes]:
        """Paired keys: key id -> raw 32-byte Ed25519 public key."""
        keys = {}
        for p in sorted(self.keys_dir.glob("*.pub")):
            try:
                raw = bytes.fromhex(p.read_text()[:200].split()[0])
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
        if not pack_id_ok(pid):
            raise StoreError(f"no such pack {pid!r} (bad pack id)", 404, "not_found")
        path = self.packs_dir / pid
        if path.is_symlink() or not path.is_dir():
            raise StoreError(f"no such pack {pid!r}", 404, "not_found")
        return path

    @staticmethod
    def _valid_pointer(ptr) -> bool:
        if not (isinstance(ptr, dict) and (ptr.get("active") == BUILTIN
                                           or pack_id_ok(ptr.get("active")))):
            return False
        prev = ptr.get("previous")
        return prev is None or prev == BUILTIN or pack_id_ok(prev)

    def _read_pointer_file(self, name: str) -> tuple[dict | None, str | None]:
        """(pointer, None) or (None, why it is unreadable); (None, None) if absent."""
        path = self.root / name
        try:
            fd = open_regular(path, name, self.root)
        except PackError as exc:
            if not path.exists() and not path.is_symlink():
                return None, None
            return None, str(exc).split(": ", 1)[-1]
        with os.fdopen(fd, "rb") as f:
            data = f.read(MAX_MANIFEST_BYTES + 1)
        try:
            ptr = strict_json(data, name)
        except SchemaError as exc:
            return None, str(exc)
        if not self._valid_pointer(ptr):
            return None, f"{name} does not name an active pack: {data[:80]!r}"
        return ptr, None

    def pointer(self) -> dict:
        """``active.json`` contents: ``{"active": id, "previous": id | None, ...}``. If it is
        unreadable (garbage, empty, not an object, not a file) the backup copy
        ``active.json.bak`` answers, with ``"pointer_error"`` saying what was wrong; with
        neither, ``{"active": "builtin", "previous": None}``."""
        ptr, why = self._read_pointer_file(POINTER)
        if ptr is not None:
            return ptr
        backup, _ = self._read_pointer_file(POINTER_BACKUP)
        if backup is not None:
            return dict(backup, pointer_error=why or f"{POINTER} is missing")
        out = {"active": BUILTIN, "previous": None}
        if why:
            out["pointer_error"] = why
        return out

    def _write_pointer(self, active: str, previous: str | None, **extra) -> None:
        body = {"active": active, "previous": previous, "since": time.time(), **extra}
        data = (json.dumps(body, indent=1) + "\n").encode()
        for name in (POINTER_BACKUP, POINTER):  # a crash between them: the backup is newer
            path = self.root / name
            if path.is_dir() and not path.is_symlink():  # garbage in the way: move it aside
                aside = path.with_name(f"{name}.broken-{int(time.time())}")
                os.replace(path, aside)
                log.error("%s was a directory: moved it aside to %s", path, aside)
            atomic_write(path, data)

    def _manifest_info(self, path: Path, pid: str) -> dict:
        try:
            fd = open_regular(path / MANIFEST, MANIFEST, path)
            with os.fdopen(fd, "rb") as f:
                m = strict_json(f.read(MAX_MANIFEST_BYTES + 1), MANIFEST)
            names = [str(i["name"]) for i in m["instruments"]]
            return {"name": str(m.get("name", pid)), "mode": m.get("mode"),
                    "instruments": names,
                    "corners": {str(c): names[i] for c, i in m["corners"].items()},
                    "bytes": sum(int(v["bytes"]) for v in m["members"].values())}
        except Exception as exc:  # noqa: BLE001 - one bad pack never breaks the listing
            return {"name": pid, "error": f"unreadable manifest: {exc}"}

    def list_packs(self) -> list[dict]:
        """Installed packs (built-in first): id, name, instruments, corners, bytes, mode,
        installed (Unix time), active, previous. Reads manifests only (no hashing)."""
        ptr = self.pointer()
        out = []
        try:
            entries = sorted(self.packs_dir.iterdir())
        except OSError:
            entries = []
        dirs = [(BUILTIN, self.builtin)] + [
            (p.name, p) for p in entries
            if pack_id_ok(p.name) and p.is_dir() and not p.is_symlink()]
        for pid, path in dirs:
            info = self._manifest_info(path, pid)
            try:
                installed = path.stat().st_mtime
            except OSError:
                installed = None
            out.append({"id": pid, **info, "builtin": pid == BUILTIN, "installed": installed,
                        "active": pid == ptr["active"], "previous": pid == ptr.get("previous")})
        return out

    # ---- disk space -------------------------------------------------------------------------

    def free_bytes(self) -> int:
        """Bytes an install may still use: free space on the state filesystem minus
        ``reserve_bytes`` (may be negative)."""
        try:
            return shutil.disk_usage(self.root).free - self.reserve_bytes
        except OSError:
            return -self.reserve_bytes

    def packs_bytes(self) -> int:
        """Bytes the installed packs (and uploads being verified) take."""
        return _dir_bytes(self.packs_dir)

    def recordings_bytes(self) -> int:
        return _dir_bytes(self.recordings_dir)

    def check_space(self, needed: int) -> None:
        """Raise :class:`StoreError` 507 if ``needed`` more bytes do not fit: in the free space
        (minus the reserve and what uploads in flight were promised) or in the packs quota."""
        free = self.free_bytes() - self._inflight
        if needed > free:
            raise StoreError(f"not enough space on the device: the pack needs "
                             f"{needed / 1e6:.1f} MB, {max(free, 0) / 1e6:.1f} MB free (delete "
                             f"packs or recordings)", 507, "no_space")
        used = self.packs_bytes() + self._inflight
        if used + needed > self.packs_quota_bytes:
            raise StoreError(f"not enough space for packs: the pack needs {needed / 1e6:.1f} "
                             f"MB, the packs already take {used / 1e6:.1f} of the "
                             f"{self.packs_quota_bytes / 1e6:.1f} MB quota (delete packs)",
                             507, "no_space")

    def _reserve(self, needed: int) -> None:
        with self._inflight_lock:
            self.check_space(needed)
            self._inflight += needed

    def _release(self, promised: int) -> None:
        with self._inflight_lock:
            self._inflight -= promised

    def prune_recordings(self, keep: int = 1) -> list[str]:
        """Delete the oldest recordings past ``recordings_cap_bytes``
        (:func:`prune_recordings`); the newest ``keep`` sessions stay (one may be running)."""
        return prune_recordings(self.recordings_dir, self.recordings_cap_bytes, keep)

    # ---- install ----------------------------------------------------------------------------

    def cleanup(self) -> None:
        """Remove leftovers of interrupted uploads and deletions."""
        try:
            entries = list(self.packs_dir.iterdir())
        except OSError:
            return
        for p in entries:
            if p.name.startswith((".incoming-", ".trash-")):
                shutil.rmtree(p, ignore_errors=True)

    def install(self, stream, content_length: int | None = None) -> str:
        """Verify and install the ``.mbpack`` archive read from binary stream ``stream``;
        returns the pack id (already installed: the same id, nothing written).

        Space is checked from ``content_length`` if given, then from the archive's signed
        header before any member is written (so a chunked upload is held to the same
        reserve and quota), counting other uploads in flight. Raises :class:`StoreError`
        (status and code from the archive check, 507 not enough space or a disk that filled
        up, 422 a pack that does not load); nothing installed or active changes then.
        """
        if content_length is not None:
            if content_length > self.max_pack_bytes:
                raise StoreError(f"upload of {content_length / 1e6:.1f} MB is larger than the "
                                 f"{self.max_pack_bytes / 1e6:.1f} MB this device accepts",
                                 413, "too_large")
            self.check_space(content_length)
        promised = [0]

        def on_header(hdr: ArchiveHeader) -> None:
            self._reserve(hdr.total_bytes)
            promised[0] = hdr.total_bytes

        try:
            tmp = Path(tempfile.mkdtemp(prefix=".incoming-", dir=self.packs_dir))
        except OSError as exc:
            raise _disk_error(exc, "cannot stage the upload") from None
        try:
            try:
                hdr = extract_archive(_Checked(stream, self), tmp, self.trusted_keys(),
                                      self.max_pack_bytes, on_header=on_header)
            except ArchiveError as exc:
                raise StoreError(str(exc), ARCHIVE_STATUS.get(exc.code, 400), exc.code) \
                    from None
            except OSError as exc:
                raise _disk_error(exc, "cannot write the pack") from None
            try:
                load_pack(tmp)
            except PackError as exc:
                reason = str(exc).split(": ", 1)[-1]
                raise StoreError(f"pack {hdr.name!r} refused: {reason}", 422, "schema") \
                    from None
            pid = f"{hdr.name}-{hdr.members[0]['sha256'][:12]}"
            try:
                fsync_dir(tmp)
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
            except OSError as exc:
                raise _disk_error(exc, "cannot install the pack") from None
            log.info("installed pack %s", pid)
            return pid
        finally:
            if promised[0]:
                self._release(promised[0])
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
            try:
                if ptr.get("previous") == pid:
                    self._write_pointer(ptr["active"], None)
                self._trash(path)
            except OSError as exc:
                raise _disk_error(exc, f"cannot delete pack {pid}") from None

    # ---- activate ---------------------------------------------------------------------------

    def activate(self, pid: str, apply: Callable[[Pack], None] | None = None) -> Activation:
        """Make ``pid`` the active pack. The pack is loaded and verified here (call this off
        the audio thread), then ``apply(pack)`` puts it to use (a running service proves and
        swaps its grid: :meth:`morphbox.device.service.Service.switch_pack`); without
        ``apply`` the grid is built here once, as a check. The pointer is written last. If the
        pack fails to load, or ``apply`` raises (``ValueError``: it does not fit or fails
        the sound check), nothing changes, the old pack keeps playing, and
        :class:`StoreError` 422 ``load_failed`` says why.
        """
        with self._lock:
            path = self.pack_path(pid)
            ptr = self.pointer()
            t0 = time.perf_counter()
            try:
                pack = load_pack(path)
                if apply is None:
                    grid_from_pack(pack)
            except Exception as exc:  # noqa: BLE001 - any failure refuses the pack alone
                if not isinstance(exc, PackError):
                    log.exception("pack %s failed to load", pid)
                raise StoreError(f"pack {pid} failed to load, rolled back to "
                                 f"{ptr['active']} (still playing): {exc}", 422,
                                 "load_failed") from None
            t1 = time.perf_counter()
            if apply is not None:
                try:
                    apply(pack)
                except ValueError as exc:
                    why = "failed its sound check" if str(exc).startswith("sound check") \
                        else "does not fit this engine"
                    raise StoreError(f"pack {pid} {why}, rolled back to {ptr['active']} "
                                     f"(still playing): {exc}", 422, "load_failed") from None
                except Exception as exc:  # noqa: BLE001
                    log.exception("pack %s could not be put to use", pid)
                    raise StoreError(f"pack {pid} could not be played, rolled back to "
                                     f"{ptr['active']} (still playing): {exc}", 422,
                                     "load_failed") from None
            t2 = time.perf_counter()
            previous = ptr["active"] if ptr["active"] != pid else ptr.get("previous")
            try:
                self._write_pointer(pid, previous)
            except OSError as exc:
                raise _disk_error(exc, f"pack {pid} plays now, but the choice cannot be "
                                       "saved for the next start") from None
            log.info("active pack now %s (previous %s)", pid, previous)
            return Activation(pid, previous, pack, t1 - t0, t2 - t1)

    def record_rollback(self, failed: str, to: str, reason: str) -> None:
        """The service rolled back from pack ``failed`` to ``to`` at run time (the watchdog):
        point at ``to``, keep the reason for ``GET /api/status`` (``recovered_from``)."""
        with self._lock:
            try:
                self._write_pointer(to, None, recovered_from=[f"{failed}: {reason}"])
            except OSError as exc:
                log.error("cannot record the rollback from %s to %s: %s", failed, to, exc)

    # ---- start ------------------------------------------------------------------------------

    def startup(self, check: Callable[[Pack], object] | None = None) -> tuple[str, Pack]:
        """Pick and load the pack to start with: the active one, else the previous one, else
        the built-in one. *Any* exception while loading a pack, or from ``check(pack)`` (the
        service's sound check), makes that pack a failed one. An unreadable ``active.json``
        falls back to its backup copy (else the built-in pack), logged. After a fallback the
        pointer is rewritten and the reasons kept in ``last_recovery`` (and in the pointer's
        ``recovered_from``). Also removes leftovers (:meth:`cleanup`). Raises
        :class:`PackError` only if not even the built-in pack loads."""
        with self._lock:
            self.cleanup()
            ptr = self.pointer()
            tried, problems = [], []
            if "pointer_error" in ptr:
                problems.append(f"{POINTER}: {ptr['pointer_error']}")
                log.error("%s is unreadable (%s); starting from %s", self.root / POINTER,
                          ptr["pointer_error"],
                          "its backup copy" if ptr["active"] != BUILTIN or ptr.get("previous")
                          else "the built-in pack")
            for pid in (ptr.get("active"), ptr.get("previous"), BUILTIN):
                if not isinstance(pid, str) or pid in tried:
                    continue
                tried.append(pid)
                try:
                    pack = load_pack(self.pack_path(pid))
                    if check is not None:
                        check(pack)
                except Exception as exc:  # noqa: BLE001 - any failure: the next pack
                    problems.append(f"{pid}: {exc}")
                    log.error("pack %s cannot play, falling back: %s", pid, exc)
                    continue
                if problems:
                    try:
                        self._write_pointer(pid, None if pid != ptr.get("active") else
                                            ptr.get("previous"), recovered_from=problems)
                    except OSError as exc:
                        log.error("cannot rewrite %s: %s", self.root / POINTER, exc)
                    log.warning("started with pack %s after: %s", pid, "; ".join(problems))
                self.last_recovery = problems
                return pid, pack
            raise PackError("no loadable pack, not even the built-in one: " + "; ".join(problems))


def prune_recordings(directory: Path, cap_bytes: int, keep: int = 1) -> list[str]:
    """Delete the oldest recordings in ``directory`` (a session's ``.wav`` and ``.mid``
    together, oldest modification first) until they take at most ``cap_bytes``; the newest
    ``keep`` sessions are never deleted (one may be recording). Returns the names deleted."""
    try:
        files = [p for p in Path(directory).iterdir()
                 if recording_name_ok(p.name) and p.is_file() and not p.is_symlink()]
        sizes = {p: p.stat() for p in files}
    except OSError:
        return []
    sessions: dict[str, list[Path]] = {}
    for p in files:
        sessions.setdefault(p.stem, []).append(p)
    order = sorted(sessions.values(), key=lambda ps: max(sizes[p].st_mtime for p in ps))
    total = sum(st.st_size for st in sizes.values())
    deleted = []
    for ps in order[:max(len(order) - keep, 0)]:
        if total <= cap_bytes:
            break
        for p in ps:
            try:
                p.unlink()
                total -= sizes[p].st_size
                deleted.append(p.name)
            except OSError as exc:
                log.warning("cannot prune recording %s: %s", p, exc)
    if deleted:
        log.info("pruned the oldest recordings past the %.0f MB cap: %s", cap_bytes / 1e6,
                 ", ".join(sorted(deleted)))
    return deleted


def _disk_error(exc: OSError, what: str) -> StoreError:
    """An OSError while writing the state directory as a StoreError: 507 for a full disk or
    quota, else 500 (a storage fault, not the request's)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return StoreError(f"{what}: the device's storage is full ({exc.strerror}); delete packs "
                          "or recordings", 507, "no_space")
    return StoreError(f"{what}: storage error ({exc.strerror or exc})", 500, "storage")


class _Checked:
    """Binary stream wrapper: ``read(n)`` returns exactly n bytes unless the stream ends,
    refuses more than ``store.max_pack_bytes`` in total (413), and every few MB re-checks that
    the filesystem still keeps its reserve (507; a chunked upload has no length to check
    up front)."""

    def __init__(self, stream, store: PackStore):
        self._s, self._store, self._limit, self.count = stream, store, store.max_pack_bytes, 0
        self._next_check = _CHECK_EVERY

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
        if self.count >= self._next_check:
            self._next_check += _CHECK_EVERY
            if self._store.free_bytes() < 0:
                raise StoreError("not enough space on the device: the disk filled up during "
                                 "the upload (delete packs or recordings)", 507, "no_space")
        return data


__all__ = ["PACK_NAME", "BUILTIN", "PackStore", "StoreError", "Activation", "state_root",
           "atomic_write", "pack_id_ok", "recording_name_ok", "prune_recordings"]
