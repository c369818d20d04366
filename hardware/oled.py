"""The 128x64 SSD1306 OLED (I2C 0x3C/0x3D) through luma.oled: what the box shows.

:func:`render_screen` draws a :class:`ScreenView` into a 128x64 1-bit PIL image (pure, no
I/O); :class:`Oled` sends it to the panel through any :class:`morphbox.hardware.i2c.I2CBus` (luma
uses the bus's ``write_i2c_block_data``, so the simulator sees the real command and data bytes).

Layout (pixels; font: PIL's built-in bitmap font, 6x11 px per character):

* row 0 (y 0..10): NW instrument at x 0, NE right-aligned to x 127;
* row y 53..63: SW at x 0, SE right-aligned;
* the morph square: outline x 0..41, y 11..52; the position marker is a 5x5 filled square
  centred at ``(2 + round(x * 37), 13 + round(y * 37))``, hollow (outline) while no finger
  touches;
* right panel from x 46: ``A`` attack, ``D`` decay (y 12), ``S`` sustain, ``R`` release (y 22),
  ``Vol`` volume % (y 32); a message, inverted, at y 42.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from morphbox.hardware.errors import PartNotFound

WIDTH, HEIGHT = 128, 64
OLED_ADDRESSES = (0x3C, 0x3D)
BOX = (0, 11, 41, 52)  # morph square outline (x0, y0, x1, y1)
MARKER_SPAN = 37  # marker centre travel in pixels
CHAR_W = 6
PANEL_X = 46


def font():
    from PIL import ImageFont

    return ImageFont.load_default_imagefont()


@dataclass(frozen=True)
class ScreenView:
    """What to show: morph position ``x``, ``y`` (0..1), ``touching``; ``corners``
    ``{"NW": name, ...}``; ADSR (seconds; sustain 0..1); ``volume`` 0..1; ``message``."""

    x: float = 0.5
    y: float = 0.5
    touching: bool = False
    corners: dict = field(default_factory=dict)
    attack_s: float = 0.01
    decay_s: float = 0.3
    sustain: float = 0.8
    release_s: float = 0.4
    volume: float = 0.8
    message: str | None = None


def marker_centre(x: float, y: float) -> tuple[int, int]:
    """Pixel centre of the position marker for morph position ``(x, y)``."""
    x, y = min(1.0, max(0.0, x)), min(1.0, max(0.0, y))
    return BOX[0] + 2 + round(x * MARKER_SPAN), BOX[1] + 2 + round(y * MARKER_SPAN)


def _secs(s: float) -> str:
    return f"{s * 1000:.0f}ms" if s < 1 else f"{s:.1f}s"


def fit(text: str, chars: int) -> str:
    """``text`` cut to ``chars`` characters."""
    return text if len(text) <= chars else text[: chars - 1].rstrip() + "."


def render_screen(view: ScreenView):
    """The screen for ``view``: a PIL image, mode ``"1"``, 128x64."""
    from PIL import Image, ImageDraw

    img = Image.new("1", (WIDTH, HEIGHT), 0)
    d = ImageDraw.Draw(img)
    f = font()
    names = view.corners
    for corner, y in (("NW", 0), ("NE", 0), ("SW", 53), ("SE", 53)):
        text = fit(str(names.get(corner, "")), 10)
        x = 0 if corner.endswith("W") else WIDTH - CHAR_W * len(text)
        d.text((x, y), text, font=f, fill=1)
    d.rectangle(BOX, outline=1)
    cx, cy = marker_centre(view.x, view.y)
    d.rectangle((cx - 2, cy - 2, cx + 2, cy + 2), outline=1, fill=1 if view.touching else 0)
    d.text((PANEL_X, 12), f"A{_secs(view.attack_s)} D{_secs(view.decay_s)}", font=f, fill=1)
    d.text((PANEL_X, 22), f"S{view.sustain * 100:.0f}% R{_secs(view.release_s)}", font=f, fill=1)
    d.text((PANEL_X, 32), f"Vol {view.volume * 100:.0f}%", font=f, fill=1)
    if view.message:
        text = fit(view.message, (WIDTH - PANEL_X) // CHAR_W)
        d.rectangle((PANEL_X - 1, 42, WIDTH - 1, 52), fill=1)
        d.text((PANEL_X, 42), text, font=f, fill=0)
    return img


class Oled:
    """An SSD1306 on ``bus`` at ``address``. Construction initialises the panel; raises
    :class:`PartNotFound` naming the part if it does not answer. ``show(view)`` renders and
    sends a frame (OSError or luma's errors on bus failure)."""

    part = "OLED (SSD1306)"

    def __init__(self, bus, address: int = 0x3D, width: int = WIDTH, height: int = HEIGHT):
        if address not in OLED_ADDRESSES:
            raise ValueError(f"{self.part}: address 0x{address:02X} is not 0x3C or 0x3D")
        import luma.core.error
        from luma.core.interface.serial import i2c
        from luma.oled.device import ssd1306

        self.address = address
        try:
            self.device = ssd1306(i2c(bus=bus, address=address), width=width, height=height)
        except (OSError, luma.core.error.Error) as exc:
            raise PartNotFound(f"{self.part} not found at I2C 0x{address:02X} on "
                               f"{bus.name}: {exc}") from exc
        self.last_view: ScreenView | None = None

    def show(self, view: ScreenView) -> None:
        self.device.display(render_screen(view))
        self.last_view = view

    def close(self) -> None:
        try:
            self.device.hide()
        except Exception:  # noqa: BLE001 - closing must not fail
            pass
