"""Building the panel from a hardware profile: drivers on the real bus or on simulators, then a
:class:`morphbox.device.panel.loop.ControlLoop` added to the service.

Owns: :func:`attach`. Imports: :mod:`morphbox.hardware`, the rest of
:mod:`morphbox.device.panel`, :mod:`morphbox.device.packs.patches`.
"""

from __future__ import annotations

import logging
import os

from morphbox.device.common import monotonic
from morphbox.device.packs.patches import PatchStore
from morphbox.device.panel.loop import ControlLoop, LoopConfig
from morphbox.device.panel.profiles import Profile, ProfileError
from morphbox.device.panel.simrig import SimRig, SimScript
from morphbox.hardware.errors import HardwareError

log = logging.getLogger("morphbox.controls")


def attach(service, profile: Profile, *, backend: str | None = None,
           rig: SimRig | None = None, pin_factory=None, clock=monotonic) -> ControlLoop:
    """Build the drivers ``profile`` names, add a :class:`ControlLoop` to ``service`` and
    return it (started with the service, or at once if it already runs).

    The I2C backend is ``backend``, else ``MORPHBOX_I2C``, else the profile's ``[i2c] backend``.
    On ``"sim"`` the chips are simulated (``loop.rig``, a :class:`SimRig`, or the ``rig``
    given), GPIO uses a gpiozero ``MockFactory`` (``loop.pin_factory``), and if the profile
    has a ``[sim]`` table a :class:`SimScript` plays the box. ``pin_factory`` overrides the
    GPIO pin factory. ``clock``: the loop's time (seconds, increasing; tests pass their own).

    Raises :class:`morphbox.hardware.errors.HardwareError` (a required part -- touch surface, pots,
    encoders, buttons -- missing or another chip at its address; the message names the part,
    address and profile) or :class:`morphbox.device.panel.profiles.ProfileError`. A missing
    optional OLED is logged once and the box runs without it.
    """
    from morphbox.hardware import adc, gpio, touch
    from morphbox.hardware.i2c import open_bus
    from morphbox.hardware.oled import Oled

    name = profile.name
    i2c, t, p, e, b, o = (profile[k] for k in ("i2c", "touch", "pots", "encoders", "buttons",
                                               "oled"))
    choice = backend or os.environ.get("MORPHBOX_I2C", "").strip() or i2c["backend"]
    closers: list = []
    extra: list = []
    if choice == "sim" or rig is not None:
        rig = rig or SimRig(profile)
        bus = rig.bus
        if pin_factory is None:
            pin_factory = gpio.make_pin_factory("mock")
    else:
        try:
            bus = open_bus(choice, i2c["bus"], i2c["clock_hz"])
        except (OSError, ValueError) as exc:
            raise HardwareError(f"profile {name!r}: {exc}") from exc
        if pin_factory is None:
            pin_factory = gpio.make_pin_factory(profile["gpio"]["pin_factory"])
    closers.append(bus.close)

    def fail(exc: Exception):
        for close in reversed(closers):
            try:
                close()
            except Exception:  # noqa: BLE001
                pass
        if isinstance(exc, ValueError):
            return ProfileError(f"profile {name!r}: {exc}")
        return type(exc)(f"profile {name!r}: {exc}") if isinstance(exc, HardwareError) \
            else HardwareError(f"profile {name!r}: {exc}")

    try:
        board = None
        if t["driver"] == "trill-square":
            surface = touch.TrillSquare(bus, t["address"], speed=t.get("speed", 0),
                                        bits=t.get("bits", 12),
                                        noise_threshold=t.get("noise_threshold", 8))
        elif t["driver"] == "mpr121":
            surface = touch.MPR121Pad(bus, t["address"], rows=t.get("rows", range(6)),
                                      cols=t.get("cols", range(6, 12)))
        else:
            surface = board = touch.NSynthBoard(bus, t["address"])
        surface.init()

        pots = None
        if p["driver"] == "nsynth-board":
            pots = touch.BoardPots(board, p["channels"])
        elif p["driver"] in ("ads1115", "ads1015"):
            adcs = [adc.ADS1x15(bus, a, p["driver"], vref_v=p["vref_v"]) for a in p["addresses"]]
            pots = adc.ADS1x15Pots(adcs, p["channels"])
            pots.init()

        encoders = None
        if e["driver"] == "nsynth-board":
            encoders = touch.BoardEncoders(board, e["corners"])
            encoders.init()
        elif e["driver"] == "gpio":
            encoders = gpio.GpioEncoders(e["pins"], pin_factory)
            closers.append(encoders.close)

        buttons = None
        if b.get("pins"):
            buttons = gpio.GpioButtons(b["pins"], pin_factory)
            closers.append(buttons.close)
    except (HardwareError, ValueError) as exc:
        raise fail(exc) from exc

    display = None
    if o.get("driver") == "ssd1306":
        try:
            if o["reset_pin"] >= 0:
                gpio.pulse_reset(o["reset_pin"], pin_factory)
            display = Oled(bus, o["address"])
            closers.insert(1, display.close)  # hide the panel before the bus closes
        except Exception as exc:  # noqa: BLE001 - the OLED is optional
            if not o.get("optional", True):
                raise fail(exc) from exc
            log.warning("profile %r: %s; running without a display", name, exc)

    d = profile["patches"].get("dir") or None
    if d:
        service.patches = PatchStore(d)
    loop = ControlLoop(service, surface, pots=pots, encoders=encoders, buttons=buttons,
                       display=display, config=LoopConfig.from_profile(profile),
                       extra_parts=extra, closers=closers, clock=clock)
    loop.rig = rig
    loop.pin_factory = pin_factory
    loop.bus = bus
    loop.profile = profile
    if rig is not None and profile["sim"]:
        loop.extra_parts.append(SimScript(rig, profile, pin_factory))
    service.add(loop)
    return loop
