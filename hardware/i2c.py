"""I2C access behind a swappable backend: the real bus (smbus2 on ``/dev/i2c-N``) or a bus of
register-level chip simulators.

The pattern is gpiozero's pin factory and mido's ``BasePort``: :class:`I2CBus` owns locking,
argument checks, statistics and the simulated bus time; a backend implements one primitive,
:meth:`I2CBus._transfer` (an optional write then an optional read, joined by a repeated start,
as ``i2c_rdwr`` does). Every driver and luma.oled talk to either backend through the same
methods, so tests exercise the real driver code against chip simulators.

Choose the backend with :func:`open_bus` (``backend="smbus2"`` or ``"sim"``) or the
environment variable ``MORPHBOX_I2C=sim|smbus2``.

Errors: a transfer that fails raises :class:`OSError` (as smbus2 does: ``EREMOTEIO`` for a NACK
or a missing device, ``EIO`` for a short read); bad arguments raise :class:`ValueError`.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections import deque
from collections.abc import Iterable

BACKENDS = ("smbus2", "sim")
ENV_VAR = "MORPHBOX_I2C"
DEFAULT_CLOCK_HZ = 400_000
SMBUS_BLOCK_MAX = 32  # bytes in one SMBus block transfer; longer transfers need i2c_rdwr
MAX_TRANSFER = 4096


def transfer_bits(write_len: int, read_len: int) -> int:
    """Bus clock cycles of one transaction: start, address+R/W and ACK (9 bits) per message,
    9 bits per data byte, a repeated start between write and read, and a stop."""
    bits = 1  # stop
    for n in (write_len, read_len):
        if n:
            bits += 1 + 9 + 9 * n
    return bits


class I2CBus:
    """Base class of every backend: thread-safe (one transaction at a time), validating.

    Attributes:
        clock_hz: bus clock used for :attr:`bus_time_s` (and for pacing the simulator).
        transactions: transactions completed; ``bytes_moved``: data bytes written + read.
        bus_time_s: total time those transactions take on a bus at ``clock_hz``.
    """

    name = "i2c"

    def __init__(self, clock_hz: int = DEFAULT_CLOCK_HZ):
        if clock_hz <= 0:
            raise ValueError(f"I2C clock must be positive, got {clock_hz} Hz")
        self.clock_hz = int(clock_hz)
        self._lock = threading.Lock()
        self.transactions = 0
        self.bytes_moved = 0
        self.bus_time_s = 0.0
        self.closed = False

    # -- the one primitive a backend implements ------------------------------------------------
    def _transfer(self, address: int, write: bytes, read_len: int) -> bytes:
        raise NotImplementedError

    # -- public API ----------------------------------------------------------------------------
    def transfer(self, address: int, write: Iterable[int] = b"", read_len: int = 0) -> bytes:
        """Write ``write`` (0..4096 bytes) then read ``read_len`` (0..4096) bytes from the 7-bit
        ``address`` (0x03..0x77) in one transaction. Returns exactly ``read_len`` bytes.

        Raises ValueError for bad arguments, OSError for a failed transfer (and ``EIO`` if fewer
        bytes than asked came back)."""
        if not isinstance(address, int) or not 0x03 <= address <= 0x77:
            raise ValueError(f"I2C address must be a 7-bit address 0x03..0x77, got {address!r}")
        try:
            data = bytes(write)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"I2C write data must be bytes 0..255: {exc}") from None
        if len(data) > MAX_TRANSFER or not 0 <= read_len <= MAX_TRANSFER:
            raise ValueError(f"I2C transfer too long (write {len(data)}, read {read_len}; "
                             f"max {MAX_TRANSFER})")
        if not data and not read_len:
            raise ValueError("an I2C transfer must write or read something")
        if self.closed:
            raise OSError(errno.EBADF, f"{self.name} is closed")
        with self._lock:
            out = self._transfer(address, data, read_len)
            self.transactions += 1
            self.bytes_moved += len(data) + len(out)
            self.bus_time_s += transfer_bits(len(data), read_len) / self.clock_hz
        if len(out) != read_len:
            raise OSError(errno.EIO, f"short read from I2C 0x{address:02X}: got {len(out)} of "
                                     f"{read_len} bytes")
        return out

    def write(self, address: int, data: Iterable[int]) -> None:
        """Plain write of ``data`` to ``address``."""
        self.transfer(address, data, 0)

    def read(self, address: int, length: int) -> bytes:
        """Plain read of ``length`` bytes from ``address``."""
        return self.transfer(address, b"", length)

    def write_read(self, address: int, data: Iterable[int], length: int) -> bytes:
        """Write ``data`` (usually a register offset), repeated start, read ``length`` bytes."""
        return self.transfer(address, data, length)

    # -- smbus2-compatible subset (what luma.oled and simple callers use) ----------------------
    def write_i2c_block_data(self, i2c_addr: int, register: int, data) -> None:
        self.transfer(i2c_addr, [register, *data], 0)

    def read_i2c_block_data(self, i2c_addr: int, register: int, length: int) -> list[int]:
        return list(self.transfer(i2c_addr, [register], length))

    def write_byte_data(self, i2c_addr: int, register: int, value: int) -> None:
        self.transfer(i2c_addr, [register, value], 0)

    def read_byte_data(self, i2c_addr: int, register: int) -> int:
        return self.transfer(i2c_addr, [register], 1)[0]

    def close(self) -> None:
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class SMBus2Bus(I2CBus):
    """The real bus: ``/dev/i2c-<bus>`` through smbus2's ``i2c_rdwr`` (no 32-byte block limit).

    Raises OSError (ENOENT) at construction if the bus device does not exist."""

    def __init__(self, bus: int = 1, clock_hz: int = DEFAULT_CLOCK_HZ):
        super().__init__(clock_hz)
        import smbus2

        self._msg = smbus2.i2c_msg
        self.name = f"/dev/i2c-{bus}"
        self._bus = smbus2.SMBus(bus)

    def _transfer(self, address: int, write: bytes, read_len: int) -> bytes:
        msgs = []
        if write:
            msgs.append(self._msg.write(address, write))
        if read_len:
            rd = self._msg.read(address, read_len)
            msgs.append(rd)
        self._bus.i2c_rdwr(*msgs)
        return bytes(rd) if read_len else b""

    def close(self) -> None:
        super().close()
        self._bus.close()


class SimBus(I2CBus):
    """A bus of simulated chips (:mod:`morphbox.hardware.sim`), for tests, ``--sim`` runs and
    benches.

    ``attach(address, device)`` puts a chip on the bus; ``detach(address)`` pulls it off (it
    then NACKs); re-attaching calls its ``power_on()``. ``inject(address, fault, count)`` makes
    the next ``count`` transactions to ``address`` fail: ``"nack"`` (OSError EREMOTEIO),
    ``"short_read"`` (half the bytes), ``"ones"`` (bus stuck high: every byte read is 0xFF).
    ``log`` keeps the last ``log_size`` transactions as ``(address, written, read)``.
    With ``pace=True`` each transaction takes its real time at ``clock_hz``.
    """

    name = "sim"

    def __init__(self, clock_hz: int = DEFAULT_CLOCK_HZ, pace: bool = False,
                 log_size: int = 4096):
        super().__init__(clock_hz)
        self.devices: dict[int, object] = {}
        self.pace = pace
        self.log: deque[tuple[int, bytes, bytes]] = deque(maxlen=log_size)
        self._faults: dict[int, list[str]] = {}

    def attach(self, address: int, device) -> None:
        if address in self.devices:
            raise ValueError(f"I2C address 0x{address:02X} already has "
                             f"{type(self.devices[address]).__name__}")
        self.devices[address] = device
        if hasattr(device, "power_on"):
            device.power_on()

    def detach(self, address: int):
        return self.devices.pop(address)

    def inject(self, address: int, fault: str, count: int = 1) -> None:
        if fault not in ("nack", "short_read", "ones"):
            raise ValueError(f"unknown fault {fault!r}: nack, short_read or ones")
        self._faults.setdefault(address, []).extend([fault] * count)

    def writes_to(self, address: int) -> list[bytes]:
        """Data written to ``address`` in the logged transactions, oldest first."""
        return [w for a, w, _ in self.log if a == address and w]

    def _transfer(self, address: int, write: bytes, read_len: int) -> bytes:
        t0 = time.perf_counter()
        faults = self._faults.get(address)
        fault = faults.pop(0) if faults else None
        dev = self.devices.get(address)
        try:
            if dev is None or fault == "nack":
                self.log.append((address, write, b""))
                raise OSError(errno.EREMOTEIO, f"I2C 0x{address:02X}: no ACK (Remote I/O error)")
            if write:
                dev.on_write(write)
            out = bytes(dev.on_read(read_len)) if read_len else b""
            if fault == "short_read":
                out = out[: read_len // 2]
            elif fault == "ones":
                out = b"\xff" * read_len
            self.log.append((address, write, out))
            return out
        finally:
            if self.pace:  # sleep (releases the GIL, as the real ioctl does), then spin the rest
                end = t0 + transfer_bits(len(write), read_len) / self.clock_hz
                ahead = end - time.perf_counter()
                if ahead > 0.0003:  # one reading: a second could be past the end (< 0)
                    time.sleep(ahead - 0.0002)
                while time.perf_counter() < end:
                    pass


def open_bus(backend: str | None = None, bus: int = 1, clock_hz: int = DEFAULT_CLOCK_HZ,
             **sim_options) -> I2CBus:
    """Open a bus: ``backend`` is ``"smbus2"`` or ``"sim"``; ``None`` takes ``MORPHBOX_I2C``
    from the environment, else ``"smbus2"``. ``sim_options`` go to :class:`SimBus`.

    Raises ValueError for an unknown backend, OSError if ``/dev/i2c-<bus>`` cannot be opened."""
    choice = backend or os.environ.get(ENV_VAR, "").strip() or "smbus2"
    if choice not in BACKENDS:
        raise ValueError(f"unknown I2C backend {choice!r} (from "
                         f"{'argument' if backend else ENV_VAR}): choose {' or '.join(BACKENDS)}")
    if choice == "sim":
        return SimBus(clock_hz=clock_hz, **sim_options)
    try:
        return SMBus2Bus(bus, clock_hz)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot open I2C bus /dev/i2c-{bus}: {exc.strerror or exc} "
                                 f"(enable I2C, or use MORPHBOX_I2C=sim)") from exc
