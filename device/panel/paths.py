"""Touch paths: a simulated finger on the touch surface, as position over time.

A touch path maps time (s) to a position ``(x, y)`` in 0..1 (x west->east, y north->south):
the shipped curves (:data:`PATHS`) or a CSV of ``time,x,y`` rows. :class:`TouchPathPart` plays
one live into ``Controls.set_touch``; offline renders (:func:`morphbox.device.midi.files.play`)
and the simulated box (:mod:`morphbox.device.panel.simrig`) sample them directly.

Owns: the path shapes and the CSV format. Imports: numpy and :mod:`morphbox.device.common`.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from morphbox.device.common import ThreadPart, monotonic


class TouchPathError(ValueError):
    """A touch path cannot be made (unknown name, unreadable or malformed CSV)."""


@dataclass(frozen=True)
class TouchPath:
    """Position over time: ``path(t) -> (x, y)``; ``times``/``xs``/``ys`` are the key points
    (seconds, 0..1), linearly interpolated and held after the last one."""

    times: np.ndarray
    xs: np.ndarray
    ys: np.ndarray
    name: str = "path"

    def __call__(self, t: float) -> tuple[float, float]:
        return (float(np.interp(t, self.times, self.xs)), float(np.interp(t, self.times, self.ys)))

    def sample(self, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions at ``times`` (s): two arrays of the same shape."""
        return np.interp(times, self.times, self.xs), np.interp(times, self.times, self.ys)


def _curve(name: str, period_s: float, duration_s: float, fn) -> TouchPath:
    t = np.arange(0.0, duration_s + 0.01, 0.01)
    x, y = fn(2 * np.pi * t / period_s)
    return TouchPath(t, np.clip(x, 0, 1), np.clip(y, 0, 1), name)


def circle(period_s: float = 8.0, duration_s: float = 600.0, radius: float = 0.45) -> TouchPath:
    """A circle around the centre, clockwise from north."""
    return _curve("circle", period_s, duration_s,
                  lambda p: (0.5 + radius * np.sin(p), 0.5 - radius * np.cos(p)))


def figure_eight(period_s: float = 12.0, duration_s: float = 600.0) -> TouchPath:
    """A figure eight (Lissajous 1:2) through the centre reaching all four edges."""
    return _curve("figure-eight", period_s, duration_s,
                  lambda p: (0.5 + 0.5 * np.sin(p), 0.5 + 0.5 * np.sin(2 * p)))


def corners_tour(period_s: float = 16.0, duration_s: float = 600.0,
                 dwell: float = 0.35) -> TouchPath:
    """Visit NW, NE, SE, SW in turn, resting at each for ``dwell`` of its quarter and gliding
    (cosine ease) to the next: every corner's pure timbre is heard, then each morph."""
    pts = [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)]
    quarter = period_s / 4
    times, xs, ys = [], [], []
    t = 0.0
    i = 0
    while t <= duration_s + period_s:
        (x0, y0), (x1, y1) = pts[i % 4], pts[(i + 1) % 4]
        for u in np.linspace(0.0, 1.0, 25, endpoint=False):
            s = 0.0 if u < dwell else 0.5 - 0.5 * math.cos(math.pi * (u - dwell) / (1 - dwell))
            times.append(t + u * quarter)
            xs.append(x0 + (x1 - x0) * s)
            ys.append(y0 + (y1 - y0) * s)
        t += quarter
        i += 1
    return TouchPath(np.array(times), np.array(xs), np.array(ys), "corners")


def from_csv(path: str | Path) -> TouchPath:
    """Read ``time,x,y`` rows (seconds, 0..1; a header row is allowed; times increasing).

    Raises :class:`TouchPathError` naming the file and line of a bad row.
    """
    rows = []
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            for lineno, row in enumerate(csv.reader(fh), 1):
                if not row or row[0].strip().startswith("#"):
                    continue
                try:
                    t, x, y = (float(v) for v in row[:3])
                except ValueError:
                    if lineno == 1:
                        continue  # header
                    raise TouchPathError(f"{path}:{lineno}: expected time,x,y numbers, "
                                         f"got {row!r}") from None
                if not (0 <= x <= 1 and 0 <= y <= 1):
                    raise TouchPathError(f"{path}:{lineno}: x and y must be within 0..1")
                if rows and t <= rows[-1][0]:
                    raise TouchPathError(f"{path}:{lineno}: times must increase")
                rows.append((t, x, y))
    except OSError as exc:
        raise TouchPathError(f"cannot read touch path {path}: {exc}") from None
    if not rows:
        raise TouchPathError(f"{path}: no time,x,y rows")
    arr = np.array(rows)
    return TouchPath(arr[:, 0], arr[:, 1], arr[:, 2], Path(path).stem)


PATHS = {"circle": circle, "figure-eight": figure_eight, "corners": corners_tour}


def touch_path(spec: str) -> TouchPath:
    """``circle``, ``figure-eight``, ``corners`` or the name of a CSV file."""
    if spec in PATHS:
        return PATHS[spec]()
    if spec.lower().endswith(".csv"):
        return from_csv(spec)
    raise TouchPathError(f"unknown touch path {spec!r}: use {', '.join(PATHS)} or a .csv file")


class TouchPathPart(ThreadPart):
    """Simulated touch: follows ``path`` at ``rate`` Hz (a service part)."""

    name = "sim-touch"

    def __init__(self, controls, path: TouchPath, rate: float = 200.0, clock=monotonic):
        super().__init__()
        self.controls, self.path, self.rate, self.clock = controls, path, rate, clock

    def loop(self) -> None:
        t0 = self.clock()
        while not self.wait(1.0 / self.rate):
            self.controls.set_touch(*self.path(self.clock() - t0))
