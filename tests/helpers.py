"""Helpers shared by the tests.

:func:`wait_until` waits for a *condition*, never for a duration: it polls ``pred`` and returns
as soon as it holds. The deadline is generous (the suite runs on loaded CI machines with
another CPU); it only turns a hang into a failure with a message.
"""

from __future__ import annotations

import time
from collections.abc import Callable

DEADLINE_S = 60.0


def wait_until(pred: Callable[[], object], timeout: float = DEADLINE_S,
               what: str = "condition", poll_s: float = 0.01) -> None:
    """Return once ``pred()`` is true; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll_s)
