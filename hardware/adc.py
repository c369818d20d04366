"""Pots through an ADS1115 (16-bit) or ADS1015 (12-bit) ADC at I2C 0x48-0x4B.

Conversions are single-shot and round-robin: each :meth:`ADS1x15Pots.read` fetches the result
of the conversion started by the previous call and starts the next channel, so a read costs two
short transactions and never waits for the converter (at 860/3300 SPS a conversion takes
1.2/0.3 ms; call ``read`` no faster than that -- the control loop reads pots every few polls).
Values are fractions 0..1 of ``vref_v`` (the pots' supply).
"""

from __future__ import annotations

from morphbox.hardware.errors import PartNotFound
from morphbox.hardware.sim import ADS_PGA_V

ADS_ADDRESSES = range(0x48, 0x4C)
_PGA_BITS = {v: i for i, v in enumerate(ADS_PGA_V[:6])}
_DR_BITS = {"ads1115": 0b111, "ads1015": 0b110}  # 860 SPS / 3300 SPS


class ADS1x15:
    """One ADS1115/ADS1015. ``pga_v``: full scale (6.144, 4.096, 2.048, 1.024, 0.512, 0.256 V).

    ``start(channel)`` starts a single-ended conversion of AIN0..3; ``result()`` returns the
    last conversion as a fraction of ``vref_v`` (clipped to 0..1). OSError on bus errors."""

    def __init__(self, bus, address: int = 0x48, model: str = "ads1115", pga_v: float = 4.096,
                 vref_v: float = 3.3):
        if model not in _DR_BITS:
            raise ValueError(f"unknown ADC model {model!r}: ads1115 or ads1015")
        if address not in ADS_ADDRESSES:
            raise ValueError(f"pots ADC ({model}): address 0x{address:02X} outside 0x48-0x4B")
        if pga_v not in _PGA_BITS:
            raise ValueError(f"pots ADC ({model}): pga_v must be one of {list(_PGA_BITS)}")
        self.bus, self.address, self.model = bus, address, model
        self.pga_v, self.vref_v = pga_v, vref_v
        self.part = f"pots ADC ({model.upper()})"

    def config_word(self, channel: int) -> int:
        """OS=1 (start), MUX=AINx vs GND, PGA, single-shot, data rate, comparator off."""
        if not 0 <= channel <= 3:
            raise ValueError(f"ADC channel must be 0..3, got {channel}")
        return (1 << 15 | (4 + channel) << 12 | _PGA_BITS[self.pga_v] << 9 | 1 << 8
                | _DR_BITS[self.model] << 5 | 0b00011)

    def init(self) -> None:
        try:
            cfg = self.bus.write_read(self.address, [1], 2)
        except OSError as exc:
            raise PartNotFound(f"{self.part} not found at I2C 0x{self.address:02X} on "
                               f"{self.bus.name}: {exc}") from exc
        word = cfg[0] << 8 | cfg[1]
        if word & 0x00FF == 0xFF or word == 0xFFFF:
            raise PartNotFound(f"{self.part} at I2C 0x{self.address:02X}: config reads "
                               f"0x{word:04X}, not an ADS1x15")

    def start(self, channel: int) -> None:
        w = self.config_word(channel)
        self.bus.write(self.address, [1, w >> 8, w & 0xFF])

    def result(self) -> float:
        raw = self.bus.write_read(self.address, [0], 2)
        code = int.from_bytes(raw, "big", signed=True)
        volts = code / 32768.0 * self.pga_v
        return min(1.0, max(0.0, volts / self.vref_v))


class ADS1x15Pots:
    """Pots by role over one or more ADCs: ``channels`` ``{role: (adc index, channel)}``.

    ``read()`` returns ``{role: 0..1}`` for the role whose conversion just completed (one role
    per call; all roles after ``len(channels)`` calls)."""

    def __init__(self, adcs: list[ADS1x15], channels: dict[str, tuple[int, int]]):
        for role, (i, ch) in channels.items():
            if not 0 <= i < len(adcs) or not 0 <= ch <= 3:
                raise ValueError(f"pot {role!r}: ADC {i} channel {ch} does not exist "
                                 f"({len(adcs)} ADC(s), channels 0..3)")
        self.adcs, self.order = adcs, list(channels.items())
        self._pending: int | None = None
        self._next = 0

    def init(self) -> None:
        for adc in self.adcs:
            adc.init()
        self._pending = None

    def read(self) -> dict[str, float]:
        out = {}
        if self._pending is not None:
            role, (i, _) = self.order[self._pending]
            self._pending = None
            out[role] = self.adcs[i].result()
        if self.order:
            role, (i, ch) = self.order[self._next]
            self.adcs[i].start(ch)
            self._pending = self._next
            self._next = (self._next + 1) % len(self.order)
        return out
