"""Laptop side of flashing: the signing key, pairing with a box, pack archives, upload.

Files in the config directory (:func:`config_dir`: ``$MORPHBOX_CONFIG_DIR``, else
``$XDG_CONFIG_HOME/morphbox``, else ``~/.config/morphbox``):

* ``signing_key.pem``: the laptop's Ed25519 private key (PKCS#8 PEM, mode 0600);
* ``signing_key.pub``: its public key, 64 hex digits (what pairing sends to the box);
* ``devices.json``: ``{"host:port": {"token": ..., "key_id": ...}}`` from ``morphbox pair``.

Every failure raises :class:`FlashError` with a message meant for the musician: device
unreachable, wrong token, signature rejected, not enough space, incompatible version.
HTTP is the standard library's ``http.client`` (streamed upload in 64 KiB chunks, so the
progress bar follows the bytes actually sent).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from morphbox.device.common import atomic_write
from morphbox.device.packs.archive import (
    SUFFIX,
    ArchiveError,
    key_id,
    peek_header,
    public_raw,
    write_archive,
)

DEFAULT_PORT = 8750
CHUNK = 1 << 16


class FlashError(Exception):
    """Flashing failed; the message says why and what to do."""


def config_dir() -> Path:
    env = os.environ.get("MORPHBOX_CONFIG_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CONFIG_HOME")
    return (Path(xdg) if xdg else Path.home() / ".config") / "morphbox"


# ---- keys ----------------------------------------------------------------------------------


def keys_init(force: bool = False, directory: Path | None = None) -> tuple[Path, str]:
    """Create the laptop's signing key; returns (private key path, key id). Refuses to
    overwrite an existing key unless ``force`` (packs signed with it would stop installing)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
    d = directory or config_dir()
    d.mkdir(parents=True, exist_ok=True)
    path = d / "signing_key.pem"
    if path.exists() and not force:
        raise FlashError(f"a signing key already exists at {path} (key "
                         f"{key_id(public_raw(load_key(d)))}); use --force to replace it")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    atomic_write(path, pem, mode=0o600)
    (d / "signing_key.pub").write_text(public_raw(key).hex() + "\n")
    return path, key_id(public_raw(key))


def load_key(directory: Path | None = None):
    """The laptop's ``Ed25519PrivateKey``; FlashError if there is none."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    path = (directory or config_dir()) / "signing_key.pem"
    try:
        return load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise FlashError(f"no signing key at {path}: run `morphbox keys init` first") from None


# ---- devices -------------------------------------------------------------------------------


def parse_device(device: str) -> tuple[str, int]:
    """``HOST``, ``HOST:PORT`` or ``http://HOST:PORT`` -> (host, port)."""
    parts = urlsplit(device if "//" in device else f"//{device}")
    if not parts.hostname:
        raise FlashError(f"bad device address {device!r}: use HOST or HOST:PORT")
    return parts.hostname, parts.port or DEFAULT_PORT


def _devices_file(directory: Path | None = None) -> Path:
    return (directory or config_dir()) / "devices.json"


def saved_token(device: str, directory: Path | None = None) -> str | None:
    host, port = parse_device(device)
    try:
        data = json.loads(_devices_file(directory).read_text())
    except (OSError, ValueError):
        return None
    return (data.get(f"{host}:{port}") or {}).get("token")


@dataclass
class Device:
    """An HTTP connection target; :meth:`request` maps transport failures to FlashError."""

    host: str
    port: int
    token: str | None = None
    timeout: float = 30.0

    @classmethod
    def of(cls, device: str, token: str | None = None) -> Device:
        host, port = parse_device(device)
        return cls(host, port, token or saved_token(device))

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    def _conn(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def _headers(self, extra=None) -> dict:
        h = {"Accept": "application/json"}
        if self.token:
            h["X-Morphbox-Token"] = self.token
        return {**h, **(extra or {})}

    def _unreachable(self, exc) -> FlashError:
        return FlashError(f"device unreachable at {self.where}: {exc}. Is the box on, on this "
                          f"network, and running `morphbox run --api` bound to that address?")

    def request(self, method: str, path: str, body: bytes | None = None) -> dict:
        conn = self._conn()
        try:
            conn.request(method, path, body=body,
                         headers=self._headers({"Content-Type": "application/json"}
                                               if body else None))
            return _answer(conn.getresponse())
        except (OSError, http.client.HTTPException) as exc:
            raise self._unreachable(exc) from None
        finally:
            conn.close()

    def upload(self, path: str, file: Path, progress=None) -> dict:
        """POST ``file`` streamed; ``progress(sent_bytes)`` after each chunk."""
        size = file.stat().st_size
        conn = self._conn()
        try:
            try:
                conn.putrequest("POST", path)
                for k, v in self._headers({"Content-Type": "application/octet-stream",
                                           "Content-Length": str(size)}).items():
                    conn.putheader(k, v)
                conn.endheaders()
            except OSError as exc:
                raise self._unreachable(exc) from None
            sent = 0
            try:
                with open(file, "rb") as f:
                    while chunk := f.read(CHUNK):
                        conn.send(chunk)
                        sent += len(chunk)
                        if progress:
                            progress(sent)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the device refused early: its answer says why
            try:
                return _answer(conn.getresponse())
            except (OSError, http.client.HTTPException) as exc:
                raise FlashError(f"the device at {self.where} closed the connection after "
                                 f"{sent} of {size} bytes: {exc}") from None
        finally:
            conn.close()


def _answer(resp) -> dict:
    data = resp.read()
    try:
        body = json.loads(data) if data else {}
    except ValueError:
        body = {"error": data[:200].decode(errors="replace")}
    if resp.status >= 400:
        msg = body.get("error", f"HTTP {resp.status}") if isinstance(body, dict) else str(body)
        raise FlashError(f"{msg} (HTTP {resp.status})")
    return body


def pair(device: str, token: str, label: str | None = None,
         directory: Path | None = None) -> str:
    """Put this laptop's public key on the box (needs the box's token, shown by ``morphbox
    token`` on it) and remember the token; returns the key id."""
    key = load_key(directory)
    dev = Device.of(device, token)
    body = json.dumps({"public_key": public_raw(key).hex(),
                       "label": label or socket.gethostname()}).encode()
    kid = dev.request("POST", "/api/keys", body)["key_id"]
    path = _devices_file(directory)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    data[dev.where] = {"token": token, "key_id": kid}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(data, indent=1).encode(), mode=0o600)
    return kid


def archive(pack_dir: str | os.PathLike, out: str | os.PathLike | None = None,
            directory: Path | None = None) -> Path:
    """Sign pack directory ``pack_dir`` into ``out`` (default ``<pack dir>.mbpack``)."""
    pack_dir = Path(pack_dir)
    out = Path(out) if out else pack_dir.with_name(pack_dir.name + SUFFIX)
    return write_archive(pack_dir, out, load_key(directory), tool="morphbox flash")


def _check_archive(file: Path, status: dict) -> None:
    """Refuse locally what the device would refuse for its version (before uploading)."""
    try:
        with open(file, "rb") as f:
            fixed, _, _, header = peek_header(f)
    except (OSError, ArchiveError) as exc:
        raise FlashError(f"{file}: {exc}") from None
    av = int.from_bytes(fixed[6:8], "little")
    pv = header.get("pack_format_version")
    readable = status.get("pack_format_versions", [status.get("pack_format_version")])
    if av != status.get("archive_version") or pv not in readable:
        raise FlashError(f"incompatible version: {file.name} is pack format {pv} (archive "
                         f"{av}), the device (morphbox {status.get('version')}) reads pack "
                         f"format {', '.join(map(str, readable))} (archive "
                         f"{status.get('archive_version')}); update morphbox on the older "
                         f"side")


def flash(pack: str | os.PathLike, device: str, token: str | None = None,
          activate: bool = True, show_progress: bool = True,
          directory: Path | None = None) -> dict:
    """Upload ``pack`` (a pack directory, signed on the fly, or a ``.mbpack``) to ``device``
    and activate it. Checks the device first (reachable, versions, space, size limit).
    Returns the device's answer plus ``"bytes"``. Raises :class:`FlashError`."""
    pack = Path(pack)
    dev = Device.of(device, token)
    if not dev.token:
        raise FlashError(f"no token for {dev.where}: run `morphbox pair --device "
                         f"{device} --token TOKEN` first (TOKEN: `morphbox token` on the box)")
    status = dev.request("GET", "/api/status")
    with tempfile.TemporaryDirectory() as tmp:
        if pack.is_dir():
            file = archive(pack, Path(tmp) / (pack.name + SUFFIX), directory)
            _check_archive(file, status)
        else:
            file = pack
            _check_archive(file, status)
        size = file.stat().st_size
        if size > status.get("max_upload_bytes", size):
            raise FlashError(f"{file.name} is {size / 1e6:.1f} MB, more than the "
                             f"{status['max_upload_bytes'] / 1e6:.1f} MB the device accepts")
        if size > status.get("free_bytes", size):
            raise FlashError(f"not enough space on the device: {file.name} needs "
                             f"{size / 1e6:.1f} MB, {status['free_bytes'] / 1e6:.1f} MB free "
                             f"(delete packs or recordings)")
        path = "/api/packs" + ("?activate=1" if activate else "")
        if show_progress:
            from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
            with Progress("[progress.description]{task.description}", BarColumn(),
                          DownloadColumn(), TransferSpeedColumn()) as bar:
                task = bar.add_task(f"flashing {file.name} to {dev.where}", total=size)
                answer = dev.upload(path, file, lambda n: bar.update(task, completed=n))
        else:
            answer = dev.upload(path, file)
    return {**answer, "bytes": size}


def record(action: str, device: str = "127.0.0.1:8750", token: str | None = None,
           state_dir: str | None = None) -> dict:
    """Start, stop or toggle recording on a running service through its HTTP API
    (``POST /api/recording``); returns the recorder's status. The token is ``token``, else the
    box's own token file in ``state_dir`` (on the box itself), else the one
    :func:`pair` saved for ``device``. Raises :class:`FlashError` (unreachable, refused)."""
    from morphbox.device.common import state_dir as find_state_dir
    if action not in ("start", "stop", "toggle"):
        raise FlashError(f"record action must be start, stop or toggle, not {action!r}")
    if token is None:
        try:
            token = (find_state_dir(state_dir) / "token").read_text().strip() or None
        except OSError:
            token = None
    dev = Device.of(device, token)
    return dev.request("POST", "/api/recording", json.dumps({"action": action}).encode())
