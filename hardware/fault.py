"""Keep a part's last good value through bus faults: retry with backoff, log once per burst,
re-initialise a part that vanished and came back.

:class:`Guard` wraps a part's ``read()`` (and ``init()``). A failed read (OSError or
:class:`morphbox.hardware.errors.FrameError`) returns the last good value; the next attempt waits
``backoff`` seconds, doubling from ``min_backoff_s`` to ``max_backoff_s``. The first failure of
a burst is logged as a warning; the recovery is logged with the burst's count. After
``reinit_after`` consecutive failures the part's ``init()`` runs before the next read (a sensor
that was unplugged has lost its configuration).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from morphbox.hardware.errors import FrameError, HardwareError

log = logging.getLogger("morphbox.hardware")

RECOVERABLE = (OSError, FrameError, HardwareError)


class Guard:
    """``poll(now) -> (value, fresh)``: ``fresh`` is True when ``value`` was read just now.

    Attributes: ``failures`` (total), ``burst`` (current consecutive failures), ``reinits``,
    ``last_error`` (text), ``ok`` (the last attempt succeeded)."""

    def __init__(self, name: str, read: Callable[[], Any], init: Callable[[], None] | None = None,
                 initial: Any = None, min_backoff_s: float = 0.005, max_backoff_s: float = 0.5,
                 reinit_after: int = 3, logger: logging.Logger = log):
        self.name, self._read, self._init = name, read, init
        self.value = initial
        self.min_backoff_s, self.max_backoff_s = min_backoff_s, max_backoff_s
        self.reinit_after = reinit_after
        self.log = logger
        self.failures = self.burst = self.reinits = 0
        self.last_error: str | None = None
        self.ok = True
        self._backoff = 0.0
        self._next_try = 0.0
        self._needs_init = False

    def poll(self, now: float | None = None) -> tuple[Any, bool]:
        now = time.monotonic() if now is None else now
        if now < self._next_try:
            return self.value, False
        try:
            if self._needs_init and self._init is not None:
                self._init()
                self.reinits += 1
                self._needs_init = False
            value = self._read()
        except RECOVERABLE as exc:
            self._fail(now, exc)
            return self.value, False
        if self.burst:
            self.log.info("%s: back after %d failed read(s)%s", self.name, self.burst,
                          " (re-initialised)" if self.reinits else "")
        self.burst = 0
        self._backoff = 0.0
        self.ok = True
        self.value = value
        return value, True

    def _fail(self, now: float, exc: Exception) -> None:
        self.failures += 1
        self.burst += 1
        self.ok = False
        self.last_error = f"{type(exc).__name__}: {exc}"
        if self.burst == 1:
            self.log.warning("%s: %s; keeping the last value and retrying", self.name,
                             self.last_error)
        if self.burst >= self.reinit_after:
            self._needs_init = True
        self._backoff = min(self.max_backoff_s, max(self.min_backoff_s, self._backoff * 2))
        self._next_try = now + self._backoff
