"""Touch surface drivers, all producing the same :class:`TouchFrame`.

* :class:`TrillSquare` -- Bela Trill Square (I2C 0x28-0x2F), centroid mode, up to 4 touches.
* :class:`NSynthBoard` -- the original Open NSynth Super controller board (STM32 at 0x47):
  11x11 touch grid, plus its encoder counters and pots (:class:`BoardEncoders`,
  :class:`BoardPots` read the same frame, no extra bus traffic).
* :class:`MPR121Pad` -- MPR121 (0x5A-0x5D) with electrodes laid as rows and columns, position
  from an interpolated centroid of the electrodes' deltas.

Every driver has ``init()`` (identify and configure; raises :class:`PartNotFound` naming the
part) and ``read() -> TouchFrame`` (raises OSError on a bus error and :class:`FrameError` on a
corrupt or implausible frame; a caller keeps its last good frame, see
:mod:`morphbox.hardware.fault`).
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass

from morphbox.hardware.errors import FrameError, PartNotFound
from morphbox.hardware.sim import (
    TRILL_CMD,
    TRILL_MODES,
    TRILL_NO_TOUCH,
    TRILL_STEPS,
    nsynth_checksum,
)

TRILL_ADDRESSES = range(0x28, 0x30)
NSYNTH_BOARD_ADDRESS = 0x47
MPR121_ADDRESSES = range(0x5A, 0x5E)


@dataclass(frozen=True)
class Touch:
    """One touch: ``x`` west->east and ``y`` north->south in 0..1; ``size`` 0..1 (contact
    area, driver-scaled; 0.5 for sensors that do not measure it)."""

    x: float
    y: float
    size: float = 0.5


@dataclass(frozen=True)
class TouchFrame:
    """What a surface reported at ``t`` (``time.monotonic()`` seconds, taken after the read):
    ``touches`` (0..4, the primary first); ``read_s`` is the bus time the read took."""

    touches: tuple[Touch, ...]
    t: float
    read_s: float = 0.0

    @property
    def count(self) -> int:
        return len(self.touches)

    @property
    def primary(self) -> Touch | None:
        return self.touches[0] if self.touches else None


def _not_found(part: str, address: int, bus, exc: Exception | str) -> PartNotFound:
    return PartNotFound(f"{part} not found at I2C 0x{address:02X} on {bus.name}: {exc}")


class TrillSquare:
    """Bela Trill Square in centroid mode.

    ``init()`` sends identify (checks the answer says Square), mode centroid, scan settings
    (``speed`` 0-3, ``bits`` 9-16), noise threshold, and a baseline update; each command is
    ``[0, cmd, args...]`` followed by ``settle_s`` (~10 ms on the chip). ``read()`` reads the
    32-byte frame (33 with firmware >= 3) at offset 4 in one ``i2c_rdwr`` transaction.
    """

    part = "touch surface (Trill Square)"

    def __init__(self, bus, address: int = 0x28, speed: int = 0, bits: int = 12,
                 noise_threshold: int = 8, settle_s: float = 0.01):
        if address not in TRILL_ADDRESSES:
            raise ValueError(f"{self.part}: address 0x{address:02X} outside 0x28-0x2F")
        if not 0 <= speed <= 3 or not 9 <= bits <= 16:
            raise ValueError(f"{self.part}: speed must be 0-3 and bits 9-16, got {speed}, {bits}")
        self.bus, self.address = bus, address
        self.speed, self.bits, self.noise_threshold = speed, bits, noise_threshold
        self.settle_s = settle_s
        self.firmware = 0
        self.frame_len = 32

    def _command(self, name: str, *args: int) -> None:
        self.bus.write(self.address, [0, TRILL_CMD[name], *args])
        if self.settle_s:
            time.sleep(self.settle_s)

    def init(self) -> None:
        try:
            self._command("identify")
            ident = self.bus.write_read(self.address, [0], 4)
        except OSError as exc:
            raise _not_found(self.part, self.address, self.bus, exc) from exc
        if ident[0] != 0xFE or ident[1] != 2:
            raise _not_found(self.part, self.address, self.bus,
                             f"identify answered {ident.hex(' ')}, not a Square (type 2)")
        self.firmware = ident[2]
        self.frame_len = 33 if self.firmware >= 3 else 32
        self._command("mode", TRILL_MODES["centroid"])
        self._command("scan", self.speed, self.bits)
        self._command("noise", self.noise_threshold)
        self._command("baseline")
        self.bus.write(self.address, [4])  # point reads at the data

    @staticmethod
    def decode(frame: bytes) -> tuple[Touch, ...]:
        """32 (or 33, status byte first) bytes -> touches. Raises FrameError if implausible."""
        if len(frame) == 33:
            frame = frame[1:]
        if len(frame) != 32:
            raise FrameError(f"Trill frame must be 32 bytes, got {len(frame)}")
        v = struct.unpack(">16H", frame)
        loc_y, size_y, loc_x, size_x = v[0:4], v[4:8], v[8:12], v[12:16]

        def axis(locs, sizes):
            out = []
            for loc, size in zip(locs, sizes):
                if loc == TRILL_NO_TOUCH:
                    break
                if loc >= TRILL_STEPS:
                    raise FrameError(f"Trill location {loc} beyond {TRILL_STEPS - 1}")
                if size:
                    out.append((loc / (TRILL_STEPS - 1), size))
            return out

        xs, ys = axis(loc_x, size_x), axis(loc_y, size_y)
        if not xs or not ys:
            return ()
        n = max(len(xs), len(ys))
        return tuple(Touch(xs[min(i, len(xs) - 1)][0], ys[min(i, len(ys) - 1)][0],
                           min(1.0, (xs[min(i, len(xs) - 1)][1] + ys[min(i, len(ys) - 1)][1])
                               / 8000.0)) for i in range(n))

    def read(self) -> TouchFrame:
        b0 = self.bus.bus_time_s
        raw = self.bus.write_read(self.address, [4], self.frame_len)
        return TouchFrame(self.decode(raw), time.monotonic(), self.bus.bus_time_s - b0)


@dataclass(frozen=True)
class BoardFrame:
    """One decoded controller-board frame: ``cell`` (x, y) in 0..10 or None, ``encoders``
    (4 uint8 counters), ``pots`` (6 uint8)."""

    cell: tuple[int, int] | None
    encoders: tuple[int, ...]
    pots: tuple[int, ...]


class NSynthBoard:
    """The original Open NSynth Super controller board (STM32F030, I2C slave 0x47).

    Write register 0, read 16 bytes (REFERENCE.md); the checksum is verified. The touch grid is
    11x11 (``x = cell / 10``). ``last`` holds the last good frame for :class:`BoardEncoders`
    and :class:`BoardPots`.
    """

    part = "controller board (Open NSynth Super)"

    def __init__(self, bus, address: int = NSYNTH_BOARD_ADDRESS):
        if address != NSYNTH_BOARD_ADDRESS:
            raise ValueError(f"{self.part}: the firmware answers at 0x47, not 0x{address:02X}")
        self.bus, self.address = bus, address
        self.last: BoardFrame | None = None

    @staticmethod
    def decode(raw: bytes) -> BoardFrame:
        """16 bytes -> frame. Raises FrameError on a bad checksum or an off-grid cell."""
        if len(raw) != 16:
            raise FrameError(f"board frame must be 16 bytes, got {len(raw)}")
        payload, (check,) = raw[:12], struct.unpack("<I", raw[12:])
        want = nsynth_checksum(payload)
        if check != want:
            raise FrameError(f"board checksum 0x{check:08X} != 0x{want:08X}")
        x, y = payload[0], payload[1]
        if (x, y) == (0xFF, 0xFF):
            cell = None
        elif x <= 10 and y <= 10:
            cell = (x, y)
        else:
            raise FrameError(f"board touch cell ({x}, {y}) outside 0..10")
        return BoardFrame(cell, tuple(payload[2:6]), tuple(payload[6:12]))

    def read_frame(self) -> BoardFrame:
        self.last = self.decode(self.bus.write_read(self.address, [0], 16))
        return self.last

    def init(self) -> None:
        try:
            self.read_frame()
        except (OSError, FrameError) as exc:
            raise _not_found(self.part, self.address, self.bus, exc) from exc

    def read(self) -> TouchFrame:
        b0 = self.bus.bus_time_s
        f = self.read_frame()
        touches = () if f.cell is None else (Touch(f.cell[0] / 10, f.cell[1] / 10),)
        return TouchFrame(touches, time.monotonic(), self.bus.bus_time_s - b0)


def wrap_delta(new: int, old: int) -> int:
    """Difference of two wrapping uint8 counters as int8 (-128..127): 250 -> 3 is +9."""
    return ((new - old + 128) & 0xFF) - 128


class BoardEncoders:
    """The board's four encoder counters as per-corner step deltas (from the last frame)."""

    def __init__(self, board: NSynthBoard, corners=("NW", "NE", "SW", "SE")):
        self.board, self.corners = board, tuple(corners)
        self._prev: tuple[int, ...] | None = None

    def init(self) -> None:
        self._prev = self.board.last.encoders if self.board.last else None

    def read(self) -> dict[str, int]:
        """``{corner: steps}`` since the last call (only non-zero entries)."""
        f = self.board.last
        if f is None:
            return {}
        if self._prev is None:
            self._prev = f.encoders
            return {}
        out = {c: wrap_delta(n, o) for c, n, o in zip(self.corners, f.encoders, self._prev)}
        self._prev = f.encoders
        return {c: d for c, d in out.items() if d}

    def close(self) -> None:
        pass


class BoardPots:
    """The board's six pots (0..1) by role, ``channels``: ``{role: index 0..5}``."""

    def __init__(self, board: NSynthBoard, channels: dict[str, int]):
        bad = {r: i for r, i in channels.items() if not (isinstance(i, int) and 0 <= i < 6)}
        if bad:
            raise ValueError(f"board pots: channel(s) {bad} outside 0..5")
        self.board, self.channels = board, dict(channels)

    def init(self) -> None:
        pass

    def read(self) -> dict[str, float]:
        f = self.board.last
        if f is None:
            return {}
        return {r: f.pots[i] / 255.0 for r, i in self.channels.items()}


class MPR121Pad:
    """MPR121 with ``rows`` and ``cols`` electrode indices forming an XY pad.

    ``init()``: soft reset, check CONFIG2 reads its reset value 0x24 (identifies the chip),
    stop mode, touch/release thresholds per electrode, filter config, then run mode with
    baseline tracking. ``read()``: one 42-byte read from 0x00 (status, filtered data,
    baselines); each line's delta = baseline - filtered; the position on each axis is the
    delta-weighted centroid of the touched lines' positions (``i / (n - 1)``).
    """

    part = "touch surface (MPR121)"

    def __init__(self, bus, address: int = 0x5A, rows=(0, 1, 2, 3, 4, 5),
                 cols=(6, 7, 8, 9, 10, 11), touch_threshold: int = 12,
                 release_threshold: int = 6):
        if address not in MPR121_ADDRESSES:
            raise ValueError(f"{self.part}: address 0x{address:02X} outside 0x5A-0x5D")
        used = list(rows) + list(cols)
        if len(set(used)) != len(used) or not all(0 <= e < 12 for e in used) \
                or len(rows) < 2 or len(cols) < 2:
            raise ValueError(f"{self.part}: rows {list(rows)} and cols {list(cols)} must be at "
                             "least 2 distinct electrodes 0..11 each")
        self.bus, self.address = bus, address
        self.rows, self.cols = tuple(rows), tuple(cols)
        self.touch_threshold, self.release_threshold = touch_threshold, release_threshold
        self.n_electrodes = max(used) + 1

    def init(self) -> None:
        a, w = self.address, self.bus.write
        try:
            w(a, [0x80, 0x63])  # soft reset
            cfg2 = self.bus.write_read(a, [0x5D], 1)[0]
        except OSError as exc:
            raise _not_found(self.part, a, self.bus, exc) from exc
        if cfg2 != 0x24:
            raise _not_found(self.part, a, self.bus,
                             f"CONFIG2 reads 0x{cfg2:02X} after reset, expected 0x24")
        w(a, [0x5E, 0x00])  # stop mode to configure
        th = []
        for _ in range(12):
            th += [self.touch_threshold, self.release_threshold]
        w(a, [0x41, *th])
        w(a, [0x5B, 0x00])  # debounce
        w(a, [0x5C, 0x10, 0x20])  # 6 samples first filter, 16 uA; 0.5 us, 1 ms period
        w(a, [0x5E, 0x80 | self.n_electrodes])  # run, baseline tracking from first values

    def _axis(self, lines, deltas, status) -> tuple[float, float] | None:
        if not any(status >> e & 1 for e in lines):
            return None
        w = [max(0.0, deltas[e] - self.release_threshold) for e in lines]
        total = sum(w)
        if total <= 0:
            return None
        n = len(lines)
        return sum(wi * i / (n - 1) for i, wi in enumerate(w)) / total, total

    def read(self) -> TouchFrame:
        b0 = self.bus.bus_time_s
        raw = self.bus.write_read(self.address, [0x00], 42)
        status = raw[0] | raw[1] << 8
        if status & 0x8000:
            raise FrameError("MPR121 over-current flag set")
        deltas = []
        for e in range(12):
            filt = raw[4 + 2 * e] | raw[5 + 2 * e] << 8
            if filt > 1023:
                raise FrameError(f"MPR121 electrode {e} data {filt} beyond 10 bits")
            deltas.append((raw[0x1E + e] << 2) - filt)
        touches = ()
        if status & 0x0FFF:
            ax, ay = self._axis(self.cols, deltas, status), self._axis(self.rows, deltas, status)
            if ax and ay:
                touches = (Touch(ax[0], ay[0], min(1.0, (ax[1] + ay[1]) / 1000.0)),)
        return TouchFrame(touches, time.monotonic(), self.bus.bus_time_s - b0)
