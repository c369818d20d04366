"""The hardware control loop: touch surface, pots, encoders, buttons and OLED -> the service.

:func:`attach` builds the drivers a :class:`device.profiles.Profile` names (on the real bus or
on chip simulators) and adds a :class:`ControlLoop` to the service. The loop polls the touch
surface at ``[touch] rate_hz`` (>= 200 Hz), smooths the position with a one-euro filter and
publishes it through ``service.controls.set_touch`` (the engine reads an immutable snapshot,
lock-free). Every ``[pots] every`` polls it reads the pots (hysteresis; attack, decay, sustain,
release, volume, position offset); every poll the encoders (``service.corners.step``, which
rebuilds the grid in the background) and the patch buttons (short press: recall; held
``hold_s``: save, :mod:`device.patches`). The OLED is redrawn on its own thread, so its 1 KB
frames never delay a touch poll.

Faults: every part is read through :class:`hardware.fault.Guard` -- an I2C error, a bad
checksum or an implausible frame keeps the last good value, retries with backoff, logs once
per burst, and re-initialises a part that vanished. Nothing an input does stops the audio.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from dataclasses import dataclass

from device.controls import adsr_from_pots
from device.patches import Patch, PatchError, PatchStore
from device.profiles import Profile, ProfileError
from hardware.errors import HardwareError
from hardware.fault import Guard

log = logging.getLogger("morphbox.controls")


# ------------------------------------------------------------------------------------------
# Signal conditioning

class OneEuroFilter:
    """One-euro filter (Casiez et al. 2012) of one coordinate: an adaptive low-pass whose
    cutoff rises with speed -- smooth when still, little lag when moving.

    ``min_cutoff_hz``: cutoff at rest; ``beta``: cutoff increase per unit/s of speed;
    ``d_cutoff_hz``: cutoff of the speed estimate. ``__call__(value, t)`` (t in seconds,
    increasing) returns the filtered value; ``reset()`` makes the next value pass unfiltered.
    """

    def __init__(self, min_cutoff_hz: float = 1.0, beta: float = 10.0, d_cutoff_hz: float = 1.0):
        if min_cutoff_hz <= 0 or d_cutoff_hz <= 0 or beta < 0:
            raise ValueError("one-euro filter: cutoffs must be > 0 and beta >= 0")
        self.min_cutoff, self.beta, self.d_cutoff = min_cutoff_hz, beta, d_cutoff_hz
        self.reset()

    def reset(self) -> None:
        self._x: float | None = None
        self._dx = 0.0
        self._t = 0.0

    @staticmethod
    def _alpha(cutoff: float, dt: float) -> float:
        tau = 1.0 / (2 * math.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    def __call__(self, x: float, t: float) -> float:
        if self._x is None:
            self._x, self._t = x, t
            return x
        dt = t - self._t
        if dt <= 0:
            return self._x
        self._t = t
        a_d = self._alpha(self.d_cutoff, dt)
        self._dx = a_d * (x - self._x) / dt + (1 - a_d) * self._dx
        a = self._alpha(self.min_cutoff + self.beta * abs(self._dx), dt)
        self._x = a * x + (1 - a) * self._x
        return self._x


class Hysteresis:
    """A pot value 0..1 that only changes when the input moves more than ``threshold`` from
    the last output (kills ADC jitter). ``update(v)`` returns the new output or None."""

    def __init__(self, threshold: float = 0.01):
        self.threshold = threshold
        self.value: float | None = None

    def update(self, v: float) -> float | None:
        if self.value is None or abs(v - self.value) > self.threshold:
            self.value = v
            return v
        return None


class PressDetector:
    """Short press vs hold of one button: ``update(pressed, now)`` returns ``"short"`` on a
    release before ``hold_s``, ``"long"`` once when held ``hold_s`` (on the original box: recall
    and save), else None."""

    def __init__(self, hold_s: float = 0.75):
        self.hold_s = hold_s
        self._down_t: float | None = None
        self._fired = False

    def update(self, pressed: bool, now: float) -> str | None:
        if pressed:
            if self._down_t is None:
                self._down_t, self._fired = now, False
            elif not self._fired and now - self._down_t >= self.hold_s:
                self._fired = True
                return "long"
            return None
        if self._down_t is None:
            return None
        fired, self._down_t = self._fired, None
        return None if fired else "short"


# ------------------------------------------------------------------------------------------
# The loop

@dataclass
class LoopConfig:
    """``rate_hz``: touch polls per second (0: as fast as possible); ``pot_every``: pots read
    every N polls; ``hold_on_release``: lifting keeps the position (else it goes to ``home``);
    filter and hysteresis settings; ``hold_s``: button hold that saves; ``display_hz``."""

    rate_hz: float = 250.0
    pot_every: int = 4
    hold_on_release: bool = True
    home: tuple[float, float] = (0.5, 0.5)
    min_cutoff_hz: float = 2.0
    beta: float = 10.0
    d_cutoff_hz: float = 1.0
    hysteresis: float = 0.01
    hold_s: float = 0.75
    display_hz: float = 10.0
    message_s: float = 2.0

    @classmethod
    def from_profile(cls, profile: Profile) -> LoopConfig:
        t, p = profile["touch"], profile["pots"]
        return cls(rate_hz=t["rate_hz"], pot_every=p.get("every", 4),
                   hold_on_release=bool(t["hold_on_release"]), home=tuple(t["home"]),
                   min_cutoff_hz=t["min_cutoff_hz"], beta=t["beta"],
                   d_cutoff_hz=t["d_cutoff_hz"], hysteresis=p.get("hysteresis", 0.01),
                   hold_s=profile["buttons"].get("hold_s", 0.75),
                   display_hz=profile["oled"].get("rate_hz", 10.0))


class ControlLoop:
    """A service part (``start()``/``stop()``) driving ``service`` from the hardware.

    Args:
        service: a :class:`device.service.Service` (uses ``controls``, ``corners``, ``pack``).
        touch: a touch driver (``init()``, ``read() -> TouchFrame``); required.
        pots: ``read() -> {role: 0..1}`` (roles attack, decay, sustain, release, volume,
            position) or None; encoders: ``read() -> {corner: steps}`` or None;
        buttons: ``read() -> tuple[bool, ...]`` (slot order) or None; display: an
            :class:`hardware.oled.Oled` or None; patches: a :class:`PatchStore` or None.
        extra_parts: parts started and stopped with the loop (the sim script); ``closers``:
            callables run at stop (close GPIO, the bus).

    ``step(now)`` runs one poll (tests and benches call it directly). ``stats`` counts polls
    and faults; ``position_offset`` holds the position pot (0..1), also sent to the engine as
    the start point of new notes; ``message`` the OLED text.
    """

    def __init__(self, service, touch, *, pots=None, encoders=None, buttons=None, display=None,
                 patches: PatchStore | None = None, config: LoopConfig | None = None,
                 extra_parts=(), closers=()):
        self.service, self.touch = service, touch
        self.pots, self.encoders, self.buttons = pots, encoders, buttons
        self.display, self.patches = display, patches
        self.config = cfg = config or LoopConfig()
        self.extra_parts, self.closers = list(extra_parts), list(closers)
        self.touch_guard = Guard("touch surface", touch.read, touch.init)
        self.pot_guard = Guard("pots", pots.read, getattr(pots, "init", None), initial={}) \
            if pots is not None else None
        self.display_guard = Guard("OLED", self._show, None, max_backoff_s=2.0) \
            if display is not None else None
        self._fx = OneEuroFilter(cfg.min_cutoff_hz, cfg.beta, cfg.d_cutoff_hz)
        self._fy = OneEuroFilter(cfg.min_cutoff_hz, cfg.beta, cfg.d_cutoff_hz)
        self._hyst: dict[str, Hysteresis] = {}
        self._pot_values = {"attack": None, "decay": None, "sustain": None, "release": None}
        self._presses = [PressDetector(cfg.hold_s) for _ in range(4)]
        self.position_offset = 0.0
        self.touching = False
        self.polls = 0
        self.loop_errors = 0
        self.started_t: float | None = None
        self.stopped_t: float | None = None
        self.last_frame = None
        self._published: tuple[float, float] | None = None
        self._reinits_seen = 0
        self._message: tuple[str, float] | None = None
        self._target: dict | None = None
        self._target_t = 0.0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- messages -----------------------------------------------------------------------------
    def say(self, text: str, seconds: float | None = None) -> None:
        """Show ``text`` on the OLED for ``seconds`` (default ``config.message_s``)."""
        self._message = (text, time.monotonic() + (seconds or self.config.message_s))
        log.info("%s", text)

    @property
    def message(self) -> str | None:
        if not self.touch_guard.ok:
            return "touch: I2C error"
        m = self._message
        return m[0] if m and time.monotonic() < m[1] else None

    # -- one poll -----------------------------------------------------------------------------
    def step(self, now: float | None = None) -> None:
        """One poll: touch, encoders, buttons, and (every ``pot_every``) pots."""
        now = time.monotonic() if now is None else now
        self.polls += 1
        self._touch(now)
        if self.encoders is not None:
            if self.touch_guard.reinits != self._reinits_seen:  # board re-initialised
                self._reinits_seen = self.touch_guard.reinits
                self.encoders.init()
            for corner, steps in self.encoders.read().items():
                self._encoder(corner, steps)
        if self.buttons is not None:
            for slot, pressed in enumerate(self.buttons.read()[:4], start=1):
                event = self._presses[slot - 1].update(pressed, now)
                if event == "short":
                    self.recall(slot)
                elif event == "long":
                    self.save(slot)
        if self.pot_guard is not None and self.polls % self.config.pot_every == 0:
            values, fresh = self.pot_guard.poll(now)
            if fresh:
                self._pots(values)

    def _touch(self, now: float) -> None:
        frame, fresh = self.touch_guard.poll(now)
        if not fresh:
            return  # fault: the last published position stays
        self.last_frame = frame
        c = self.service.controls
        if frame.count:
            t = frame.touches[0]
            if not self.touching:
                self._fx.reset()
                self._fy.reset()
            x, y = self._fx(t.x, frame.t), self._fy(t.y, frame.t)
            if not self.touching or self._published is None or \
                    abs(x - self._published[0]) > 1e-5 or abs(y - self._published[1]) > 1e-5:
                c.set_touch(x, y)
                self._published = (x, y)
            self.touching = True
        elif self.touching:
            self.touching = False
            if self.config.hold_on_release:
                c.release_touch()
            else:
                hx, hy = self.config.home
                c.set_touch(hx, hy, touching=False)
                self._published = (hx, hy)

    def _encoder(self, corner: str, steps: int) -> None:
        sel = self.service.corners
        names = self.service.pack.instrument_names
        now = time.monotonic()
        # where the selector is heading: our own count while turning, its choice otherwise
        if self._target is None or now - self._target_t > 2.0:
            self._target = dict(sel.corners)
        self._target_t = now
        self._target[corner] = (self._target[corner] + steps) % len(names)
        sel.step(corner, steps)
        self.say(f"{corner} {names[self._target[corner]]}")

    def _pots(self, values: dict) -> None:
        c = self.service.controls
        adsr_changed = []
        for role, v in values.items():
            h = self._hyst.setdefault(role, Hysteresis(self.config.hysteresis))
            out = h.update(v)
            if out is None:
                continue
            if role == "volume":
                c.set_volume(out)
            elif role == "position":
                self.position_offset = out
                c.set_position(out)
            elif role in self._pot_values:
                self._pot_values[role] = out
                adsr_changed.append(role)
        if adsr_changed:
            pots = {k: (v if v is not None else 0.0) for k, v in self._pot_values.items()}
            curves = adsr_from_pots(pots["attack"], pots["decay"], pots["sustain"],
                                    pots["release"])
            key = {"attack": "attack_s", "decay": "decay_s", "sustain": "sustain",
                   "release": "release_s"}
            c.set_adsr(**{key[r]: curves[key[r]] for r in adsr_changed})

    # -- patches ------------------------------------------------------------------------------
    def save(self, slot: int) -> Patch | None:
        """Store the current corners, ADSR, volume and position in ``slot`` (1..4)."""
        if self.patches is None:
            return None
        s = self.service.controls.snapshot
        patch = Patch(corners=dict(self.service.corners.corners), attack_s=s.attack_s,
                      decay_s=s.decay_s, sustain=s.sustain, release_s=s.release_s,
                      volume=s.volume, x=s.x, y=s.y)
        try:
            self.patches.save(slot, patch)
        except PatchError as exc:
            log.error("%s", exc)
            self.say(f"save {slot} failed")
            return None
        self.say(f"saved patch {slot}")
        return patch

    def recall(self, slot: int) -> Patch | None:
        """Apply the patch in ``slot``; the pots take over again when moved."""
        if self.patches is None:
            return None
        try:
            patch = self.patches.load(slot)
        except PatchError as exc:
            log.error("%s", exc)
            self.say(f"patch {slot} unreadable")
            return None
        if patch is None:
            self.say(f"patch {slot} empty")
            return None
        n = len(self.service.pack.instrument_names)
        if any(i >= n for i in patch.corners.values()):
            self.say(f"patch {slot}: not this pack")
            return None
        c = self.service.controls
        self.service.corners.select(patch.corners)
        self._target = None
        c.set_adsr(attack_s=patch.attack_s, decay_s=patch.decay_s, sustain=patch.sustain,
                   release_s=patch.release_s)
        c.set_volume(patch.volume)
        c.set_touch(patch.x, patch.y, touching=self.touching)
        self._published = (patch.x, patch.y)
        self._fx.reset()
        self._fy.reset()
        self.say(f"recalled patch {slot}")
        return patch

    # -- display ------------------------------------------------------------------------------
    def view(self):
        """What the OLED shows now (:class:`hardware.oled.ScreenView`)."""
        from hardware.oled import ScreenView

        s = self.service.controls.snapshot
        names = self.service.pack.instrument_names
        corners = {k: names[i] for k, i in self.service.corners.corners.items()}
        return ScreenView(x=s.x, y=s.y, touching=s.touching, corners=corners,
                          attack_s=s.attack_s, decay_s=s.decay_s, sustain=s.sustain,
                          release_s=s.release_s, volume=s.volume, message=self.message)

    def _show(self):
        import luma.core.error

        view = self.view()
        if view != self.display.last_view:
            try:
                self.display.show(view)
            except luma.core.error.Error as exc:
                raise HardwareError(str(exc)) from exc
        return view

    # -- threads ------------------------------------------------------------------------------
    @property
    def poll_rate(self) -> float:
        """Achieved polls per second since start."""
        if self.started_t is None:
            return 0.0
        end = self.stopped_t if self.stopped_t is not None else time.monotonic()
        return self.polls / max(1e-9, end - self.started_t)

    def stats(self) -> dict:
        g = self.touch_guard
        return {"polls": self.polls, "poll_rate_hz": round(self.poll_rate, 1),
                "touch_failures": g.failures, "touch_reinits": g.reinits,
                "touch_ok": g.ok, "pot_failures": self.pot_guard.failures if self.pot_guard
                else 0, "display_failures": self.display_guard.failures
                if self.display_guard else 0, "loop_errors": self.loop_errors}

    def start(self) -> None:
        self._stop.clear()
        self.started_t, self.stopped_t, self.polls = time.monotonic(), None, 0
        self._threads = [threading.Thread(target=self._run, name="controls", daemon=True)]
        if self.display_guard is not None:
            self._threads.append(threading.Thread(target=self._run_display, name="oled",
                                                  daemon=True))
        for t in self._threads:
            t.start()
        for part in self.extra_parts:
            part.start()

    def _run(self) -> None:
        period = 1.0 / self.config.rate_hz if self.config.rate_hz > 0 else 0.0
        next_t = time.monotonic()
        while not self._stop.is_set():
            try:
                self.step()
            except Exception:  # noqa: BLE001 - an input never stops the box
                self.loop_errors += 1
                if self.loop_errors == 1 or self.loop_errors % 1000 == 0:
                    log.exception("control loop error (%d so far)", self.loop_errors)
            if period:
                next_t += period
                delay = next_t - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                elif delay < -0.05:  # fell behind: resynchronise instead of bursting
                    next_t = time.monotonic()

    def _run_display(self) -> None:
        period = 1.0 / self.config.display_hz
        while not self._stop.wait(period):
            try:
                self.display_guard.poll()
            except Exception:  # noqa: BLE001 - the display never stops the box
                log.exception("display error")

    def stop(self) -> None:
        for part in reversed(self.extra_parts):
            part.stop()
        self._stop.set()
        for t in self._threads:
            t.join(timeout=2)
        self.stopped_t = time.monotonic()
        for close in reversed(self.closers):
            try:
                close()
            except Exception:  # noqa: BLE001 - closing one part must not strand the rest
                log.exception("closing %r", close)


# ------------------------------------------------------------------------------------------
# Simulated box: chips on a SimBus and a script that plays them

class SimRig:
    """The simulated chips for a profile (``touch``, ``adcs``, ``board``, ``oled`` attribute
    per part, None when absent) on ``bus`` (a :class:`hardware.i2c.SimBus`)."""

    def __init__(self, profile: Profile, pace: bool | None = None):
        from hardware import sim
        from hardware.i2c import SimBus

        i2c, t = profile["i2c"], profile["touch"]
        pace = bool(profile["sim"].get("pace", False)) if pace is None else pace
        self.bus = SimBus(clock_hz=i2c["clock_hz"], pace=pace)
        self.bus.name = f"simulated bus {i2c['bus']}"
        self.board = self.oled = None
        self.adcs: list = []
        if t["driver"] == "trill-square":
            self.touch = sim.TrillSquareSim()
        elif t["driver"] == "mpr121":
            self.touch = sim.MPR121Sim(rows=t.get("rows", range(6)),
                                       cols=t.get("cols", range(6, 12)))
        else:
            self.touch = self.board = sim.NSynthBoardSim()
        self.bus.attach(t["address"], self.touch)
        p = profile["pots"]
        if p["driver"] in ("ads1115", "ads1015"):
            for a in p["addresses"]:
                adc = sim.ADS1x15Sim(p["driver"], vdd=p["vref_v"])
                self.adcs.append(adc)
                self.bus.attach(a, adc)
        o = profile["oled"]
        if o.get("driver") == "ssd1306":
            self.oled = sim.SSD1306Sim()
            self.bus.attach(o["address"], self.oled)
        self.profile = profile

    def set_pot(self, role: str, fraction: float) -> None:
        """Turn the pot with ``role`` to ``fraction`` (0..1)."""
        p = self.profile["pots"]
        where = p.get("channels", {}).get(role)
        if where is None:
            return
        if p["driver"] == "nsynth-board":
            self.board.set_pot(where, fraction)
        else:
            self.adcs[where[0]].set_pot(where[1], fraction)


def turn_mock_encoder(pin_factory, a: int, b: int, steps: int) -> None:
    """Drive a gpiozero MockFactory quadrature encoder on pins ``a``, ``b`` by ``steps``
    detents (positive: clockwise)."""
    pa, pb = pin_factory.pin(a), pin_factory.pin(b)
    seq = [(0, 1), (0, 0), (1, 0), (1, 1)] if steps > 0 else [(1, 0), (0, 0), (0, 1), (1, 1)]
    for _ in range(abs(steps)):
        for va, vb in seq:
            (pa.drive_high if va else pa.drive_low)()
            (pb.drive_high if vb else pb.drive_low)()


class SimScript:
    """Plays a simulated box: the finger follows a :mod:`device.sim` path (lifting for 0.5 s
    every ``lift_every_s``), pots sit at ``[sim.pots]``, one encoder turns a step every
    ``encoder_every_s``. A part (``start``/``stop``)."""

    def __init__(self, rig: SimRig, profile: Profile, pin_factory=None, rate_hz: float = 100.0):
        from device import sim as paths

        s = profile["sim"]
        period = float(s.get("period_s", 12.0))
        name = s.get("touch_path", "figure-eight")
        self.path = {"circle": paths.circle, "figure-eight": paths.figure_eight,
                     "corners": paths.corners_tour}[name](period_s=period)
        self.rig, self.profile, self.pin_factory = rig, profile, pin_factory
        self.lift_every = float(s.get("lift_every_s", 0.0))
        self.encoder_every = float(s.get("encoder_every_s", 0.0))
        self.rate_hz = rate_hz
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        for role, v in self.profile["sim"].get("pots", {}).items():
            self.rig.set_pot(role, v)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="sim-script", daemon=True)
        self._thread.start()

    def _turn(self, k: int) -> None:
        e = self.profile["encoders"]
        corners = ["NW", "NE", "SE", "SW"]
        corner = corners[k % 4]
        if e.get("driver") == "gpio" and self.pin_factory is not None and corner in e["pins"]:
            turn_mock_encoder(self.pin_factory, *e["pins"][corner], 1)
        elif e.get("driver") == "nsynth-board":
            self.rig.board.turn(e["corners"].index(corner), 1)

    def _run(self) -> None:
        t0 = time.monotonic()
        turns = 0
        while not self._stop.wait(1.0 / self.rate_hz):
            t = time.monotonic() - t0
            if self.lift_every and t % self.lift_every > self.lift_every - 0.5:
                self.rig.touch.lift()
            else:
                self.rig.touch.touch(*self.path(t), 0.5)
            if self.encoder_every and t >= (turns + 1) * self.encoder_every:
                self._turn(turns)
                turns += 1

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1)


# ------------------------------------------------------------------------------------------
# Building a box from a profile

def attach(service, profile: Profile, *, backend: str | None = None,
           rig: SimRig | None = None, pin_factory=None) -> ControlLoop:
    """Build the drivers ``profile`` names, add a :class:`ControlLoop` to ``service`` and
    return it (started with the service, or at once if it already runs).

    The I2C backend is ``backend``, else ``MORPHBOX_I2C``, else the profile's ``[i2c] backend``.
    On ``"sim"`` the chips are simulated (``loop.rig``, a :class:`SimRig`, or the ``rig``
    given), GPIO uses a gpiozero ``MockFactory`` (``loop.pin_factory``), and if the profile
    has a ``[sim]`` table a :class:`SimScript` plays the box. ``pin_factory`` overrides the
    GPIO pin factory.

    Raises :class:`hardware.errors.HardwareError` (a required part -- touch surface, pots,
    encoders, buttons -- missing or another chip at its address; the message names the part,
    address and profile) or :class:`device.profiles.ProfileError`. A missing optional OLED is
    logged once and the box runs without it.
    """
    from hardware import adc, gpio, touch
    from hardware.i2c import open_bus
    from hardware.oled import Oled

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
    loop = ControlLoop(service, surface, pots=pots, encoders=encoders, buttons=buttons,
                       display=display, patches=PatchStore(d), config=LoopConfig.from_profile(
                           profile), extra_parts=extra, closers=closers)
    loop.rig = rig
    loop.pin_factory = pin_factory
    loop.bus = bus
    loop.profile = profile
    if rig is not None and profile["sim"]:
        loop.extra_parts.append(SimScript(rig, profile, pin_factory))
    service.add(loop)
    return loop
