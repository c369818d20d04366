"""The OLED: luma.oled's real SSD1306 driver writing to the simulated controller; the panel's
RAM saved as PNG and checked pixel by pixel."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from morphbox.hardware.errors import PartNotFound
from morphbox.hardware.i2c import SimBus
from morphbox.hardware.oled import Oled, ScreenView
from morphbox.hardware.sim import SSD1306Sim

CORNERS = {"NW": "Cello", "NE": "Flute", "SW": "Piano", "SE": "Organ"}


def shown(view, tmp_path, address=0x3C):
    bus = SimBus()
    panel = SSD1306Sim()
    bus.attach(address, panel)
    Oled(bus, address).show(view)
    assert panel.on
    png = tmp_path / "screen.png"
    panel.image().save(png)
    return np.array(Image.open(png).convert("L")) > 0, bus


def text_pixels(text, size=(64, 11)):
    img = Image.new("1", size, 0)
    ImageDraw.Draw(img).text((0, 0), text, font=ImageFont.load_default_imagefont(), fill=1)
    return np.array(img.convert("L")) > 0


def marker(px):
    """Centre of the filled 5x5 marker inside the morph square (x 1..40, y 12..51)."""
    inner = px[12:52, 1:41]
    ys, xs = np.nonzero(inner)
    return xs.mean() + 1, ys.mean() + 12


@pytest.mark.parametrize("x,y", [(0.0, 0.0), (1.0, 1.0), (0.25, 0.75)])
def test_marker_follows_the_morph_position(tmp_path, x, y):
    px, _ = shown(ScreenView(x=x, y=y, touching=True, corners=CORNERS), tmp_path)
    cx, cy = marker(px)
    assert cx == pytest.approx(2 + x * 37, abs=0.6)
    assert cy == pytest.approx(13 + y * 37, abs=0.6)
    assert px[11, 0:42].all() and px[52, 0:42].all()  # the square's outline


def test_corner_names_adsr_volume_and_message_are_drawn(tmp_path):
    view = ScreenView(corners=CORNERS, volume=0.55, attack_s=2.5, message="saved patch 2")
    px, bus = shown(view, tmp_path)
    assert (px[0:11, 0:30] == text_pixels("Cello", (30, 11))).all()
    assert (px[0:11, 128 - 30:128] == text_pixels("Flute", (30, 11))).all()
    assert (px[53:64, 0:30] == text_pixels("Piano", (30, 11))).all()
    assert (px[53:64, 98:128] == text_pixels("Organ", (30, 11))).all()
    # (row 42 is the top of the message bar)
    assert (px[32:42, 46:46 + 42] == text_pixels("Vol 55%", (42, 11))[:10]).all()
    assert (px[12:23, 46:46 + 30] == text_pixels("A2.5s", (30, 11))).all()
    # the message is inverted: dark text on a lit bar
    assert (~px[42:53, 46:46 + 78] == text_pixels("saved patch 2", (78, 11))).all()
    # luma drove the controller: display on, column/page window, 1024 bytes of RAM per frame
    data = sum(len(w) - 1 for a, w, _ in bus.log if w[:1] == b"\x40")
    assert data == 2 * 1024  # the clear at init + our frame


def test_hollow_marker_when_no_finger_and_a_changed_name_changes_pixels(tmp_path):
    px, _ = shown(ScreenView(x=0.5, y=0.5, touching=False, corners=CORNERS), tmp_path)
    cx, cy = 2 + round(0.5 * 37), 13 + round(0.5 * 37)
    assert px[cy, cx - 2] and not px[cy, cx]  # outline only
    px2, _ = shown(ScreenView(x=0.5, y=0.5, corners={**CORNERS, "NW": "Violin"}), tmp_path)
    assert (px[0:11, 0:40] != px2[0:11, 0:40]).any()


def test_missing_panel_names_the_part():
    with pytest.raises(PartNotFound, match=r"OLED \(SSD1306\) not found at I2C 0x3D"):
        Oled(SimBus(), 0x3D)
    with pytest.raises(ValueError, match="0x3C or 0x3D"):
        Oled(SimBus(), 0x3E)
