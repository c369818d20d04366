"""Rotary encoders and push buttons on GPIO, through gpiozero (RPi.GPIO/lgpio on the Pi).

The pin factory is gpiozero's: ``pin_factory="mock"`` uses ``MockFactory`` (tests, ``--sim``
runs, laptops); ``None``/``"default"`` lets gpiozero choose (``GPIOZERO_PIN_FACTORY``).
Pins are BCM numbers.
"""

from __future__ import annotations

from morphbox.hardware.errors import HardwareError


def make_pin_factory(name: str | None):
    """``"mock"`` -> a new gpiozero MockFactory; ``None``/``"default"`` -> None (gpiozero's
    default, which honours GPIOZERO_PIN_FACTORY)."""
    if name in (None, "", "default"):
        return None
    if name == "mock":
        from gpiozero.pins.mock import MockFactory

        return MockFactory()
    raise ValueError(f"unknown GPIO pin factory {name!r}: default or mock")


def _device_error(part: str, exc: Exception) -> HardwareError:
    return HardwareError(f"{part}: cannot open GPIO ({type(exc).__name__}: {exc}); on a laptop "
                         "use the sim profile or GPIOZERO_PIN_FACTORY=mock")


class GpioEncoders:
    """Quadrature encoders, one per corner: ``pins`` ``{corner: (a, b)}``.

    ``read()`` returns ``{corner: steps}`` turned since the last call (non-zero only; clockwise
    positive). gpiozero counts edges in its own callbacks, so no step is lost between reads."""

    def __init__(self, pins: dict[str, tuple[int, int]], pin_factory=None):
        from gpiozero import RotaryEncoder

        self.encoders = {}
        try:
            for corner, (a, b) in pins.items():
                self.encoders[corner] = RotaryEncoder(a, b, max_steps=0, pin_factory=pin_factory)
        except Exception as exc:  # gpiozero raises many types (BadPinFactory, PinInUse...)
            self.close()
            raise _device_error("encoders", exc) from exc
        self._last = {c: 0 for c in self.encoders}

    def init(self) -> None:
        pass

    def read(self) -> dict[str, int]:
        out = {}
        for corner, enc in self.encoders.items():
            steps = enc.steps
            if steps != self._last[corner]:
                out[corner] = steps - self._last[corner]
                self._last[corner] = steps
        return out

    def close(self) -> None:
        for enc in self.encoders.values():
            enc.close()


class GpioButtons:
    """Push buttons to ground with pull-ups: ``pins`` list (slot order). ``read()`` -> tuple of
    bools (pressed)."""

    def __init__(self, pins: list[int], pin_factory=None):
        from gpiozero import Button

        self.buttons = []
        try:
            for pin in pins:
                self.buttons.append(Button(pin, pull_up=True, pin_factory=pin_factory))
        except Exception as exc:  # noqa: BLE001 - see GpioEncoders
            self.close()
            raise _device_error("buttons", exc) from exc

    def read(self) -> tuple[bool, ...]:
        return tuple(b.is_pressed for b in self.buttons)

    def close(self) -> None:
        for b in self.buttons:
            b.close()


def pulse_reset(pin: int, pin_factory=None, low_s: float = 0.01) -> None:
    """Pull a reset line (e.g. the OLED's, GPIO 4 on the original box) low for ``low_s`` then
    leave it high."""
    import time

    from gpiozero import DigitalOutputDevice

    dev = DigitalOutputDevice(pin, initial_value=False, pin_factory=pin_factory)
    try:
        time.sleep(low_s)
        dev.on()
        time.sleep(low_s)
    finally:
        dev.close()
