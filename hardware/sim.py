"""Register-level simulators of the box's I2C chips, for :class:`morphbox.hardware.i2c.SimBus`.

Each simulator answers the bytes a driver writes and reads as the chip does (command and
register layout from REFERENCE.md and the chips' datasheets) and offers a "physical" side for
tests and ``--sim`` runs: put a finger down (``touch(x, y, size)``/``lift()``), turn an
encoder, set a pot. Positions are 0..1, x west->east, y north->south.

Interface seen by the bus: ``power_on()`` (registers to their reset values), ``on_write(data)``
and ``on_read(n) -> bytes``.
"""

from __future__ import annotations

import math
import struct
import threading

import numpy as np


class SimChip:
    """Base: a lock so the physical side can be changed from another thread."""

    def __init__(self):
        self.lock = threading.Lock()
        self.power_ons = 0

    def power_on(self) -> None:
        self.power_ons += 1

    def on_write(self, data: bytes) -> None:
        raise NotImplementedError

    def on_read(self, n: int) -> bytes:
        raise NotImplementedError


# ------------------------------------------------------------------------------------------
# Bela Trill Square

TRILL_TYPES = {"bar": 1, "square": 2, "craft": 3, "ring": 4, "hex": 5}
TRILL_CMD = {"mode": 1, "scan": 2, "prescaler": 3, "noise": 4, "idac": 5, "baseline": 6,
             "min_size": 7, "autoscan": 16, "identify": 255}
TRILL_MODES = {"centroid": 0, "raw": 1, "baseline": 2, "diff": 3}
TRILL_STEPS = 1792  # centroid steps per axis on the Square (7 x 256)
TRILL_NO_TOUCH = 0xFFFF


class TrillSquareSim(SimChip):
    """Trill Square: commands ``[0, cmd, args...]``; identify answers ``[0xFE, type, fw, 0]`` at
    offset 0; centroid frames at offset 4: four y locations, four y sizes, four x locations,
    four x sizes (uint16 big-endian; location 0xFFFF = none), preceded by a frame-counter
    status byte when ``firmware >= 3``.

    The real power-on mode is not documented; the simulator powers on with no mode set and
    answers data reads with zeros until the driver chooses one, so a driver that skips
    initialisation (e.g. after the sensor was unplugged) reads no touches.
    """

    def __init__(self, firmware: int = 2, device_type: str = "square"):
        super().__init__()
        self.firmware = firmware
        self.device_type = TRILL_TYPES[device_type]
        self.touches: list[tuple[float, float, float]] = []
        self.power_on()

    def power_on(self) -> None:
        super().power_on()
        self.mode: int | None = None
        self.offset = 4
        self.commands: list[tuple[int, bytes]] = []
        self.settings: dict[str, tuple] = {}
        self.identified = False
        self.frame_counter = 0

    # physical side
    def touch(self, x: float, y: float, size: float = 0.5) -> None:
        with self.lock:
            self.touches = [(x, y, size)]

    def set_touches(self, touches) -> None:
        """Up to 4 ``(x, y, size)`` touches (size 0..1)."""
        with self.lock:
            self.touches = [tuple(t) for t in touches][:4]

    def lift(self) -> None:
        with self.lock:
            self.touches = []

    # bus side
    def on_write(self, data: bytes) -> None:
        self.offset = data[0]
        if self.offset == 0 and len(data) > 1:
            cmd, args = data[1], bytes(data[2:])
            self.commands.append((cmd, args))
            if cmd == TRILL_CMD["identify"]:
                self.identified = True
            elif cmd == TRILL_CMD["mode"] and args:
                self.mode = args[0]
            elif cmd == TRILL_CMD["scan"]:
                self.settings["scan"] = tuple(args)
            else:
                self.settings[str(cmd)] = tuple(args)

    def on_read(self, n: int) -> bytes:
        if self.offset == 0:
            out = bytes([0xFE, self.device_type, self.firmware, 0])
        elif self.mode != TRILL_MODES["centroid"]:
            out = bytes(n)
        else:
            out = self._frame()
        return (out + bytes(n))[:n]

    def _frame(self) -> bytes:
        with self.lock:
            touches = list(self.touches)
        loc_x, size_x, loc_y, size_y = ([TRILL_NO_TOUCH] * 4, [0] * 4, [TRILL_NO_TOUCH] * 4,
                                        [0] * 4)
        for i, (x, y, s) in enumerate(touches):
            loc_x[i] = min(TRILL_STEPS - 1, max(0, round(x * (TRILL_STEPS - 1))))
            loc_y[i] = min(TRILL_STEPS - 1, max(0, round(y * (TRILL_STEPS - 1))))
            size_x[i] = size_y[i] = max(1, min(0xFFFE, round(s * 4000)))
        body = struct.pack(">16H", *loc_y, *size_y, *loc_x, *size_x)
        if self.firmware >= 3:
            self.frame_counter = (self.frame_counter + 1) & 0xFF
            body = bytes([self.frame_counter]) + body
        return body


# ------------------------------------------------------------------------------------------
# The original Open NSynth Super controller board (STM32F030 at 0x47)

def nsynth_checksum(payload: bytes) -> int:
    """0xAA55AA55 + the three little-endian uint32 words of the 12-byte payload, mod 2^32."""
    return (0xAA55AA55 + sum(struct.unpack("<3I", payload))) & 0xFFFFFFFF


class NSynthBoardSim(SimChip):
    """The board's frame: write register 0, read 16 bytes: touch x, y (0..10, 0xFF = none),
    four uint8 encoder counters, six uint8 pots, uint32 LE checksum."""

    def __init__(self):
        super().__init__()
        self.encoders = [0, 0, 0, 0]
        self.pots = [0, 0, 0, 0, 0, 0]
        self.cell: tuple[int, int] | None = None
        self.power_on()

    def power_on(self) -> None:
        super().power_on()
        self.register = 0

    def touch(self, x: float, y: float, size: float = 0.5) -> None:
        with self.lock:
            self.cell = (min(10, max(0, round(x * 10))), min(10, max(0, round(y * 10))))

    def lift(self) -> None:
        with self.lock:
            self.cell = None

    def turn(self, encoder: int, steps: int) -> None:
        with self.lock:
            self.encoders[encoder] = (self.encoders[encoder] + steps) & 0xFF

    def set_pot(self, index: int, fraction: float) -> None:
        with self.lock:
            self.pots[index] = min(255, max(0, round(fraction * 255)))

    def frame(self) -> bytes:
        with self.lock:
            x, y = self.cell if self.cell is not None else (0xFF, 0xFF)
            payload = bytes([x, y, *self.encoders, *self.pots])
        return payload + struct.pack("<I", nsynth_checksum(payload))

    def on_write(self, data: bytes) -> None:
        self.register = data[0]

    def on_read(self, n: int) -> bytes:
        return (self.frame() if self.register == 0 else bytes(16) + bytes(n))[:n]


# ------------------------------------------------------------------------------------------
# MPR121

MPR121_ECR = 0x5E
MPR121_SOFTRESET = 0x80
MPR121_CONFIG1 = 0x5C
MPR121_CONFIG2 = 0x5D


class MPR121Sim(SimChip):
    """MPR121: registers with auto-increment; touch status 0x00-0x01, filtered data 0x04-0x1D
    (10-bit, LSB first), baselines 0x1E-0x2A (value >> 2), thresholds 0x41-0x5A, ECR 0x5E
    (electrodes run only when ECR's low bits are non-zero), soft reset 0x80 <- 0x63 (CONFIG2
    reads 0x24 after reset). A finger over a grid of ``rows`` and ``cols`` electrodes (electrode
    indices) lowers each electrode's count by a bell of its distance to the finger.
    """

    RAW = 720  # untouched count

    def __init__(self, rows=(0, 1, 2, 3, 4, 5), cols=(6, 7, 8, 9, 10, 11), strength=120.0):
        super().__init__()
        self.rows, self.cols, self.strength = list(rows), list(cols), strength
        self.finger: tuple[float, float, float] | None = None
        self.power_on()

    def power_on(self) -> None:
        super().power_on()
        self.regs = bytearray(0x81)
        self.regs[MPR121_CONFIG1] = 0x10
        self.regs[MPR121_CONFIG2] = 0x24
        self.pointer = 0

    def touch(self, x: float, y: float, size: float = 0.5) -> None:
        with self.lock:
            self.finger = (x, y, size)

    def lift(self) -> None:
        with self.lock:
            self.finger = None

    def deltas(self) -> np.ndarray:
        d = np.zeros(13)
        with self.lock:
            finger = self.finger
        if finger is None:
            return d
        x, y, s = finger
        for lines, pos in ((self.cols, x), (self.rows, y)):
            n = len(lines)
            sigma = 0.7 / max(1, n - 1)
            for i, e in enumerate(lines):
                c = i / max(1, n - 1)
                d[e] = self.strength * (0.5 + s) * math.exp(-0.5 * ((c - pos) / sigma) ** 2)
        return d

    def _live(self) -> None:
        """Refresh the measured registers if the electrodes run."""
        n_ele = self.regs[MPR121_ECR] & 0x0F
        if n_ele == 0:
            return
        d = self.deltas()
        status = 0
        for e in range(min(12, n_ele)):
            filt = int(max(0, min(1023, self.RAW - d[e])))
            self.regs[0x04 + 2 * e] = filt & 0xFF
            self.regs[0x05 + 2 * e] = filt >> 8
            self.regs[0x1E + e] = self.RAW >> 2
            if d[e] > self.regs[0x41 + 2 * e]:
                status |= 1 << e
        self.regs[0x00], self.regs[0x01] = status & 0xFF, status >> 8

    def on_write(self, data: bytes) -> None:
        reg = data[0]
        if reg == MPR121_SOFTRESET and data[1:2] == b"\x63":
            self.power_on()
            return
        for i, v in enumerate(data[1:]):
            if reg + i < len(self.regs):
                self.regs[reg + i] = v
        self.pointer = reg

    def on_read(self, n: int) -> bytes:
        self._live()
        out = bytes(self.regs[self.pointer:self.pointer + n])
        return out + bytes(n - len(out))


# ------------------------------------------------------------------------------------------
# ADS1115 / ADS1015

ADS_PGA_V = (6.144, 4.096, 2.048, 1.024, 0.512, 0.256, 0.256, 0.256)


class ADS1x15Sim(SimChip):
    """ADS1115 (16-bit) or ADS1015 (12-bit, left-justified): pointer register then 16-bit
    big-endian registers: 0 conversion, 1 config (reset 0x8583), 2 lo, 3 hi threshold.
    Writing config with OS=1 converts the input selected by MUX at once (single-ended 4..7)."""

    def __init__(self, model: str = "ads1115", vdd: float = 3.3):
        super().__init__()
        if model not in ("ads1115", "ads1015"):
            raise ValueError(f"unknown ADC model {model!r}")
        self.model, self.vdd = model, vdd
        self.volts = [0.0] * 4
        self.conversions = 0
        self.power_on()

    def power_on(self) -> None:
        super().power_on()
        self.regs = [0x0000, 0x8583, 0x8000, 0x7FFF]
        self.pointer = 0

    def set_pot(self, channel: int, fraction: float) -> None:
        with self.lock:
            self.volts[channel] = min(1.0, max(0.0, fraction)) * self.vdd

    def on_write(self, data: bytes) -> None:
        self.pointer = data[0] & 0x03
        if len(data) >= 3:
            value = (data[1] << 8) | data[2]
            if self.pointer == 1:
                if value & 0x8000:
                    self._convert(value)
                value |= 0x8000  # OS reads 1: not converting
            self.regs[self.pointer] = value

    def _convert(self, config: int) -> None:
        mux = (config >> 12) & 0x7
        fs = ADS_PGA_V[(config >> 9) & 0x7]
        with self.lock:
            v = self.volts[mux - 4] if mux >= 4 else 0.0
        code = max(-32768, min(32767, round(v / fs * 32767)))
        if self.model == "ads1015":
            code = (max(-2048, min(2047, round(v / fs * 2047)))) << 4
        self.regs[0] = code & 0xFFFF
        self.conversions += 1

    def on_read(self, n: int) -> bytes:
        v = self.regs[self.pointer]
        return (bytes([v >> 8, v & 0xFF]) * ((n + 1) // 2))[:n]


# ------------------------------------------------------------------------------------------
# SSD1306

_SSD1306_ARGS = {0x81: 1, 0x20: 1, 0x21: 2, 0x22: 2, 0xA8: 1, 0xD3: 1, 0x8D: 1, 0xDA: 1,
                 0xD5: 1, 0xD9: 1, 0xDB: 1, 0x26: 6, 0x27: 6, 0x29: 5, 0x2A: 5, 0xA3: 2}


class SSD1306Sim(SimChip):
    """SSD1306 128x64 over I2C: control byte 0x00 (commands) or 0x40 (display RAM data).
    Handles horizontal addressing (column 0x21 / page 0x22 windows), display on/off, contrast;
    ``image()`` returns the display RAM as a PIL ``"1"`` image (what the panel shows)."""

    def __init__(self, width: int = 128, height: int = 64):
        super().__init__()
        self.width, self.height = width, height
        self.power_on()

    def power_on(self) -> None:
        super().power_on()
        self.ram = np.zeros((self.height // 8, self.width), dtype=np.uint8)
        self.on = False
        self.contrast = 0x7F
        self.col_window = (0, self.width - 1)
        self.page_window = (0, self.height // 8 - 1)
        self.col, self.page = 0, 0
        self.commands: list[int] = []
        self.frames = 0

    def on_write(self, data: bytes) -> None:
        control, payload = data[0], data[1:]
        if control & 0x40:
            for b in payload:
                self.ram[self.page, self.col] = b
                self.col += 1
                if self.col > self.col_window[1]:
                    self.col = self.col_window[0]
                    self.page += 1
                    if self.page > self.page_window[1]:
                        self.page = self.page_window[0]
                        self.frames += 1
            return
        i = 0
        while i < len(payload):
            cmd = payload[i]
            args = payload[i + 1:i + 1 + _SSD1306_ARGS.get(cmd, 0)]
            i += 1 + len(args)
            self.commands.append(cmd)
            if cmd == 0xAE:
                self.on = False
            elif cmd == 0xAF:
                self.on = True
            elif cmd == 0x81 and args:
                self.contrast = args[0]
            elif cmd == 0x21 and len(args) == 2:
                self.col_window = (args[0], args[1])
                self.col = args[0]
            elif cmd == 0x22 and len(args) == 2:
                self.page_window = (args[0], args[1])
                self.page = args[0]

    def on_read(self, n: int) -> bytes:
        return bytes(n)  # status reads are not used over I2C

    def image(self):
        """The display RAM as a PIL image (mode ``"1"``, white = lit pixel)."""
        from PIL import Image

        bits = np.unpackbits(self.ram[:, None, :], axis=1, bitorder="little")
        pixels = bits.reshape(self.height, self.width) * 255
        return Image.fromarray(pixels.astype(np.uint8), "L").convert("1")
