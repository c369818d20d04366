"""Helpers shared by the tests.

:func:`wait_until` waits for a *condition*, never for a duration: it polls ``pred`` and returns
as soon as it holds. The deadline is generous (the suite runs on loaded CI machines with
another CPU); it only turns a hang into a failure with a message.
"""

from __future__ import annotations

import time
from collections.abc import Callable

DEADLINE_S = 60.0


def becomes_true(pred: Callable[[], object], timeout: float = DEADLINE_S,
                 poll_s: float = 0.01) -> bool:
    """Poll ``pred()`` until it is true (True) or ``timeout`` seconds pass (its last value,
    as a bool): for tests that collect failures instead of stopping at the first."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return bool(pred())
        time.sleep(poll_s)
    return True


def wait_until(pred: Callable[[], object], timeout: float = DEADLINE_S,
               what: str = "condition", poll_s: float = 0.01) -> None:
    """Return once ``pred()`` is true; AssertionError after ``timeout`` seconds."""
    if not becomes_true(pred, timeout, poll_s):
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
