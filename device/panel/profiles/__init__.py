"""Hardware profiles: which touch surface, pots, encoders, buttons and OLED a box has, with
their addresses and pins, in TOML (``device/panel/profiles/<name>.toml``).

Shipped: ``nsynth-super`` (the original controller board), ``trill`` (Trill Square, ADS1115,
GPIO encoders, SSD1306) and ``sim`` (the trill layout on chip simulators, runs anywhere).
:func:`load_profile` reads one by name or path, applies overrides and validates everything,
so a wrong address or pin is reported before any bus is opened, naming the part.
"""

from __future__ import annotations

import copy
import tomllib
from dataclasses import dataclass
from pathlib import Path

from morphbox.kernels.grid import CORNERS

PROFILE_DIR = Path(__file__).resolve().parent
POT_ROLES = ("position", "attack", "decay", "sustain", "release", "volume")

TOUCH_DRIVERS = {"trill-square": ("Trill Square", range(0x28, 0x30)),
                 "nsynth-board": ("Open NSynth Super controller board", range(0x47, 0x48)),
                 "mpr121": ("MPR121", range(0x5A, 0x5E))}
ADC_DRIVERS = {"ads1115": range(0x48, 0x4C), "ads1015": range(0x48, 0x4C)}
OLED_ADDRESSES = (0x3C, 0x3D)

_KEYS = {
    "": {"name", "description", "i2c", "gpio", "touch", "pots", "encoders", "buttons", "oled",
         "patches", "sim"},
    "i2c": {"backend", "bus", "clock_hz"},
    "gpio": {"pin_factory"},
    "touch": {"driver", "address", "rate_hz", "hold_on_release", "home", "min_cutoff_hz",
              "beta", "d_cutoff_hz", "rows", "cols", "speed", "bits", "noise_threshold"},
    "pots": {"driver", "addresses", "every", "hysteresis", "channels", "vref_v"},
    "encoders": {"driver", "pins", "corners"},
    "buttons": {"pins", "hold_s"},
    "oled": {"driver", "address", "reset_pin", "optional", "rate_hz"},
    "patches": {"dir"},
    "sim": {"touch_path", "period_s", "lift_every_s", "encoder_every_s", "pace", "pots"},
}


class ProfileError(ValueError):
    """A profile cannot be found, parsed or used; the message names the profile and part."""


@dataclass(frozen=True)
class Profile:
    """A validated profile: ``name``, ``source`` (file), ``data`` (the TOML tables, with
    overrides applied and addresses as ints). Sections read as ``profile["touch"]``; missing
    optional sections read as ``{}``."""

    name: str
    source: Path
    data: dict

    def __getitem__(self, section: str) -> dict:
        return self.data.get(section, {})

    def get(self, section: str) -> dict:
        return self.data.get(section, {})


def available() -> list[str]:
    """Names of the shipped profiles."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


def _apply(data: dict, overrides: dict) -> None:
    for key, value in overrides.items():
        if isinstance(value, dict) and "." not in key and isinstance(data.get(key), dict):
            _apply(data[key], value)
            continue
        parts = key.split(".")
        node = data
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ProfileError(f"override {key!r}: {p!r} is not a table")
        node[parts[-1]] = value


class _Check:
    def __init__(self, profile: str):
        self.profile = profile

    def fail(self, where: str, msg: str):
        raise ProfileError(f"profile {self.profile!r}: [{where}] {msg}")

    def int_(self, where, key, v, lo=None, hi=None) -> int:
        if isinstance(v, str):
            try:
                v = int(v, 0)
            except ValueError:
                self.fail(where, f"{key} must be an integer, got {v!r}")
        if isinstance(v, bool) or not isinstance(v, int):
            self.fail(where, f"{key} must be an integer, got {v!r}")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            self.fail(where, f"{key} must be {lo}..{hi}, got {v}")
        return v

    def num(self, where, key, v, lo, hi) -> float:
        if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
            self.fail(where, f"{key} must be a number in {lo}..{hi}, got {v!r}")
        return float(v)

    def address(self, where, part, v, allowed) -> int:
        a = self.int_(where, f"{part} address", v, 0, 0x7F)
        if a not in allowed:
            span = (f"0x{allowed[0]:02X}-0x{allowed[-1]:02X}" if isinstance(allowed, range)
                    else " or ".join(f"0x{x:02X}" for x in allowed))
            self.fail(where, f"{part} address 0x{a:02X} is wrong: a {part} answers at {span}")
        return a

    def pin(self, where, key, v) -> int:
        return self.int_(where, key, v, 0, 27)


def _validate(name: str, data: dict) -> dict:
    c = _Check(name)
    for section, allowed in _KEYS.items():
        table = data if section == "" else data.get(section, {})
        if not isinstance(table, dict):
            c.fail(section, "must be a table")
        unknown = set(table) - allowed
        if unknown:
            c.fail(section or "top", f"unknown key(s) {sorted(unknown)}; known: {sorted(allowed)}")
    i2c = data.setdefault("i2c", {})
    i2c.setdefault("backend", "smbus2")
    if i2c["backend"] not in ("smbus2", "sim"):
        c.fail("i2c", f"backend must be smbus2 or sim, got {i2c['backend']!r}")
    i2c["bus"] = c.int_("i2c", "bus", i2c.get("bus", 1), 0, 255)
    i2c["clock_hz"] = c.int_("i2c", "clock_hz", i2c.get("clock_hz", 400000), 10000, 3400000)
    gpio = data.setdefault("gpio", {})
    if gpio.setdefault("pin_factory", "default") not in ("default", "mock"):
        c.fail("gpio", f"pin_factory must be default or mock, got {gpio['pin_factory']!r}")

    t = data.get("touch")
    if not t:
        c.fail("touch", "a profile needs a touch surface")
    if t.get("driver") not in TOUCH_DRIVERS:
        c.fail("touch", f"driver must be one of {sorted(TOUCH_DRIVERS)}, got {t.get('driver')!r}")
    part, addrs = TOUCH_DRIVERS[t["driver"]]
    t["address"] = c.address("touch", part, t.get("address", addrs[0]), addrs)
    t["rate_hz"] = c.num("touch", "rate_hz", t.get("rate_hz", 250), 1, 5000)
    t.setdefault("hold_on_release", True)
    home = t.setdefault("home", [0.5, 0.5])
    if not (isinstance(home, list) and len(home) == 2):
        c.fail("touch", f"home must be [x, y], got {home!r}")
    t["home"] = [c.num("touch", "home", v, 0, 1) for v in home]
    for key, default in (("min_cutoff_hz", 1.0), ("beta", 10.0), ("d_cutoff_hz", 1.0)):
        t[key] = c.num("touch", key, t.get(key, default), 0, 1000)

    p = data.get("pots") or {"driver": "none"}
    data["pots"] = p
    drv = p.get("driver", "none")
    if drv not in ("none", "nsynth-board", *ADC_DRIVERS):
        c.fail("pots", f"driver must be none, nsynth-board, ads1115 or ads1015, got {drv!r}")
    chans = p.get("channels", {})
    bad = set(chans) - set(POT_ROLES)
    if bad:
        c.fail("pots", f"unknown pot role(s) {sorted(bad)}; roles: {', '.join(POT_ROLES)}")
    if drv == "nsynth-board":
        if t["driver"] != "nsynth-board":
            c.fail("pots", "driver nsynth-board needs the board as the touch surface too")
        p["channels"] = {r: c.int_("pots", f"channel of {r}", v, 0, 5) for r, v in chans.items()}
    elif drv in ADC_DRIVERS:
        addresses = p.get("addresses", [0x48])
        if not isinstance(addresses, list) or not addresses:
            c.fail("pots", "addresses must be a list of ADC addresses")
        p["addresses"] = [c.address("pots", f"{drv.upper()} pots ADC", a, ADC_DRIVERS[drv])
                          for a in addresses]
        out = {}
        for r, v in chans.items():
            if not (isinstance(v, list) and len(v) == 2):
                c.fail("pots", f"channel of {r} must be [ADC index, channel], got {v!r}")
            out[r] = (c.int_("pots", f"ADC index of {r}", v[0], 0, len(addresses) - 1),
                      c.int_("pots", f"channel of {r}", v[1], 0, 3))
        if len(set(out.values())) != len(out):
            c.fail("pots", "two pots share an ADC channel")
        p["channels"] = out
    p["every"] = c.int_("pots", "every", p.get("every", 4), 1, 1000)
    p["hysteresis"] = c.num("pots", "hysteresis", p.get("hysteresis", 0.01), 0, 0.5)
    p["vref_v"] = c.num("pots", "vref_v", p.get("vref_v", 3.3), 0.1, 6.0)

    used_pins: dict[int, str] = {}

    def claim(where, what, v):
        pin = c.pin(where, what, v)
        if pin in used_pins:
            c.fail(where, f"{what} GPIO {pin} is already used by {used_pins[pin]}")
        if pin in (2, 3):
            c.fail(where, f"{what} GPIO {pin} is the I2C bus")
        used_pins[pin] = what
        return pin

    e = data.get("encoders") or {"driver": "none"}
    data["encoders"] = e
    drv = e.get("driver", "none")
    if drv not in ("none", "gpio", "nsynth-board"):
        c.fail("encoders", f"driver must be none, gpio or nsynth-board, got {drv!r}")
    if drv == "gpio":
        pins = e.get("pins", {})
        if set(pins) - set(CORNERS) or not pins:
            c.fail("encoders", f"pins must map corners {', '.join(CORNERS)} to [A, B]")
        e["pins"] = {k: tuple(claim("encoders", f"encoder {k} {ab}", v)
                              for ab, v in zip("AB", pins[k])) for k in pins}
        if any(len(v) != 2 for v in e["pins"].values()):
            c.fail("encoders", "each encoder needs two pins [A, B]")
    elif drv == "nsynth-board":
        if t["driver"] != "nsynth-board":
            c.fail("encoders", "driver nsynth-board needs the board as the touch surface too")
        corners = e.setdefault("corners", list(CORNERS))
        if sorted(corners) != sorted(CORNERS):
            c.fail("encoders", f"corners must order {', '.join(CORNERS)}, got {corners!r}")

    b = data.setdefault("buttons", {})
    b["pins"] = [claim("buttons", f"button {i + 1}", v) for i, v in enumerate(b.get("pins", []))]
    if len(b["pins"]) > 4:
        c.fail("buttons", "at most 4 patch buttons")
    b["hold_s"] = c.num("buttons", "hold_s", b.get("hold_s", 0.75), 0.05, 10)

    o = data.get("oled") or {"driver": "none"}
    data["oled"] = o
    if o.get("driver", "none") not in ("none", "ssd1306"):
        c.fail("oled", f"driver must be none or ssd1306, got {o.get('driver')!r}")
    if o.get("driver") == "ssd1306":
        o["address"] = c.address("oled", "SSD1306 OLED", o.get("address", 0x3D), OLED_ADDRESSES)
        rp = o.get("reset_pin", -1)
        o["reset_pin"] = -1 if rp == -1 else claim("oled", "OLED reset", rp)
        o.setdefault("optional", True)
        o["rate_hz"] = c.num("oled", "rate_hz", o.get("rate_hz", 10), 0.1, 60)

    s = data.get("sim", {})
    if s:
        if s.get("touch_path", "figure-eight") not in ("circle", "figure-eight", "corners"):
            c.fail("sim", f"touch_path must be circle, figure-eight or corners, "
                          f"got {s.get('touch_path')!r}")
        for key in ("period_s", "lift_every_s", "encoder_every_s"):
            if key in s:
                s[key] = c.num("sim", key, s[key], 0, 3600)
        for r, v in s.get("pots", {}).items():
            if r not in POT_ROLES:
                c.fail("sim", f"unknown pot role {r!r}")
            c.num("sim", f"pot {r}", v, 0, 1)
    return data


def load_profile(name_or_path: str | Path, overrides: dict | None = None) -> Profile:
    """A profile by shipped name (:func:`available`) or TOML file path, with ``overrides``
    applied: ``{"touch.address": 0x29}`` (dotted keys) or nested tables; addresses may be
    ints or strings like ``"0x29"``. Raises ProfileError naming the profile, section and part."""
    p = Path(name_or_path)
    path = p if (p.suffix == ".toml" or p.exists()) else PROFILE_DIR / f"{name_or_path}.toml"
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ProfileError(f"no hardware profile {str(name_or_path)!r}: shipped profiles are "
                           f"{', '.join(available())}, or give a .toml path") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ProfileError(f"cannot read profile {path}: {exc}") from exc
    if overrides:
        _apply(data, copy.deepcopy(overrides))
    name = str(data.get("name", path.stem))
    return Profile(name=name, source=path, data=_validate(name, data))
