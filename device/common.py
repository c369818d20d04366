"""What every part of the device service shares: the state directory, the clock, the life
cycle of a service part, and the one atomic file write.

* :func:`state_dir` -- where the box keeps its state (packs, keys, token, patches,
  recordings). One rule: the ``state`` argument a caller was given, else
  ``$MORPHBOX_STATE_DIR``, else ``$XDG_STATE_HOME/morphbox``, else ``~/.local/state/morphbox``.
  On the Pi the systemd unit sets ``MORPHBOX_STATE_DIR=/var/lib/morphbox`` so the root
  filesystem can stay read-only; inside the service the directory is passed down explicitly.
* :data:`monotonic` -- the default clock. Code that depends on time takes a ``clock``
  (seconds, increasing) and, where it polls, a ``step(now)`` method, so tests drive time
  instead of sleeping.
* :class:`ThreadPart` -- a service part (``start()``/``stop()``) that runs its ``loop`` on a
  daemon thread and waits with :meth:`ThreadPart.wait`; an exception in the loop is logged and
  the loop restarted after ``restart_s`` (an input never stops the box).
* :func:`atomic_write` -- temp file in the same directory, fsync, rename, fsync the directory:
  a crash or power cut leaves either the old or the new content.

Owns: nothing of the box's state. Imports: the standard library only; every other device
module may import it.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("morphbox")

#: The default clock of time-dependent code: seconds, increasing (``time.monotonic``).
monotonic: Callable[[], float] = time.monotonic


def state_dir(state: str | os.PathLike | None = None) -> Path:
    """The state directory (not created here): ``state`` if given, else
    ``$MORPHBOX_STATE_DIR``, else ``$XDG_STATE_HOME/morphbox``, else
    ``~/.local/state/morphbox``."""
    if state is not None and str(state).strip():
        return Path(state).expanduser()
    env = os.environ.get("MORPHBOX_STATE_DIR", "").strip()
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_STATE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "state") / "morphbox"


def fsync_dir(path: Path) -> None:
    """fsync directory ``path`` (makes a rename inside it durable)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, data: bytes, mode: int = 0o644) -> Path:
    """Replace ``path`` with ``data`` atomically and durably: temp file in the same directory,
    fsync, ``os.replace``, fsync the directory. A crash leaves either the old or the new
    content, never a mix. Raises ``OSError`` (the old file is left as it was)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


class ThreadPart:
    """A service part that runs :meth:`loop` on its own daemon thread until stopped.

    Subclasses implement ``loop()`` and pause with ``self.wait(seconds)``, which returns True
    when the part is being stopped. A part with more than one thread (the control loop and its
    display) overrides :meth:`targets`. If a loop raises, the error is logged and the loop
    restarts after ``restart_s``: an input never stops the box. ``start()`` on a running part
    and ``stop()`` on a stopped one do nothing.
    """

    name = "part"
    restart_s = 1.0
    join_s = 2.0

    def __init__(self):
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def loop(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def targets(self) -> list[tuple[str, Callable[[], None]]]:
        """``(thread name, function)`` pairs started by :meth:`start` (default: ``loop``)."""
        return [(self.name, self.loop)]

    def wait(self, seconds: float | None) -> bool:
        """Sleep up to ``seconds``; True if the part is stopping."""
        return self._stop.wait(seconds)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def _guarded(self, fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            while not self._stop.is_set():
                try:
                    fn()
                    return
                except Exception:  # noqa: BLE001 - a part never stops the box
                    log.exception("%s failed; restarting in %g s", self.name, self.restart_s)
                    self._stop.wait(self.restart_s)
        return run

    def start(self) -> None:
        if self.running:
            return
        self._stop.clear()
        self._threads = [threading.Thread(target=self._guarded(fn), name=name, daemon=True)
                         for name, fn in self.targets()]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout=self.join_s)
        self._threads = []
