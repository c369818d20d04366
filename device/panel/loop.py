"""The hardware control loop: touch surface, pots, encoders, buttons and OLED -> the service.

:func:`morphbox.device.panel.build.attach` builds the drivers a profile names (on the real bus
or on chip simulators) and adds a :class:`ControlLoop` to the service. The loop polls the touch
surface at ``[touch] rate_hz`` (>= 200 Hz), smooths the position with a one-euro filter and
publishes it through ``service.controls.set_touch`` (the engine reads an immutable snapshot,
lock-free). Every ``[pots] every`` polls it reads the pots (hysteresis; attack, decay, sustain,
release, volume, position offset); every poll the encoders (``service.corners.step``, which
rebuilds the grid in the background) and the patch buttons (short press: recall; held
``hold_s``: save -- the service's patch operations). The OLED is redrawn on its own thread, so
its 1 KB frames never delay a touch poll.

Faults: every part is read through :class:`morphbox.hardware.fault.Guard` -- an I2C error, a bad
checksum or an implausible frame keeps the last good value, retries with backoff, logs once
per burst, and re-initialises a part that vanished. Nothing an input does stops the audio.

Time: every poll takes ``now`` from the loop's ``clock`` (default
:data:`morphbox.device.common.monotonic`); tests call :meth:`ControlLoop.step` with their own
times instead of running the thread.

Owns: the panel's poll loop and OLED view. Imports: :mod:`morphbox.hardware`,
:mod:`morphbox.device.panel.conditioning`, :mod:`morphbox.device.engine.controls`,
:mod:`morphbox.device.common`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from morphbox.device.common import ThreadPart, monotonic
from morphbox.device.engine.controls import adsr_from_pots
from morphbox.device.packs.patches import Patch, PatchError
from morphbox.device.panel.conditioning import Hysteresis, OneEuroFilter, PressDetector
from morphbox.device.panel.profiles import Profile
from morphbox.hardware.errors import HardwareError
from morphbox.hardware.fault import Guard

log = logging.getLogger("morphbox.controls")


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


class ControlLoop(ThreadPart):
    """A service part (``start()``/``stop()``) driving ``service`` from the hardware.

    Args:
        service: a :class:`morphbox.device.service.Service` (its ``controls``, ``corners``,
            ``pack`` and the ``step_corner``, ``save_patch``, ``recall_patch`` operations).
        touch: a touch driver (``init()``, ``read() -> TouchFrame``); required.
        pots: ``read() -> {role: 0..1}`` (roles attack, decay, sustain, release, volume,
            position) or None; encoders: ``read() -> {corner: steps}`` or None;
        buttons: ``read() -> tuple[bool, ...]`` (slot order) or None; display: an
            :class:`morphbox.hardware.oled.Oled` or None.
        extra_parts: parts started and stopped with the loop (the sim script); ``closers``:
            callables run at stop (close GPIO, the bus). ``clock``: seconds, increasing.

    ``step(now)`` runs one poll (tests and benches call it directly). ``stats`` counts polls
    and faults; ``position_offset`` holds the position pot (0..1), also sent to the engine as
    the start point of new notes; ``message`` the OLED text.
    """

    name = "controls"

    def __init__(self, service, touch, *, pots=None, encoders=None, buttons=None, display=None,
                 config: LoopConfig | None = None, extra_parts=(), closers=(), clock=monotonic):
        super().__init__()
        self.service, self.touch = service, touch
        self.pots, self.encoders, self.buttons = pots, encoders, buttons
        self.display, self.clock = display, clock
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
        service.message_listeners.append(self.say)

    # -- messages -----------------------------------------------------------------------------
    def say(self, text: str, seconds: float | None = None) -> None:
        """Show ``text`` on the OLED for ``seconds`` (default ``config.message_s``)."""
        self._message = (text, self.clock() + (seconds or self.config.message_s))

    @property
    def message(self) -> str | None:
        if not self.touch_guard.ok:
            return "touch: I2C error"
        m = self._message
        return m[0] if m and self.clock() < m[1] else None

    # -- one poll -----------------------------------------------------------------------------
    def step(self, now: float | None = None) -> None:
        """One poll: touch, encoders, buttons, and (every ``pot_every``) pots."""
        now = self.clock() if now is None else now
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
        name = self.service.step_corner(corner, steps)
        self.service.say(f"{corner} {name}")

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
        """Patch button held: the service stores the current sound in ``slot`` (1..4)."""
        try:
            return self.service.save_patch(slot)
        except PatchError as exc:
            log.error("%s", exc)
            return None

    def recall(self, slot: int) -> Patch | None:
        """Patch button pressed: the service applies ``slot``; the pots take over again when
        moved, the finger when it touches."""
        try:
            patch = self.service.recall_patch(slot)
        except PatchError as exc:
            log.warning("%s", exc)
            return None
        self._published = (patch.x, patch.y)
        self._fx.reset()
        self._fy.reset()
        return patch

    # -- display ------------------------------------------------------------------------------
    def view(self):
        """What the OLED shows now (:class:`morphbox.hardware.oled.ScreenView`)."""
        from morphbox.hardware.oled import ScreenView

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
        end = self.stopped_t if self.stopped_t is not None else self.clock()
        return self.polls / max(1e-9, end - self.started_t)

    def stats(self) -> dict:
        g = self.touch_guard
        return {"polls": self.polls, "poll_rate_hz": round(self.poll_rate, 1),
                "touch_failures": g.failures, "touch_reinits": g.reinits,
                "touch_ok": g.ok, "pot_failures": self.pot_guard.failures if self.pot_guard
                else 0, "display_failures": self.display_guard.failures
                if self.display_guard else 0, "loop_errors": self.loop_errors}

    def targets(self):
        out = [("controls", self._run)]
        if self.display_guard is not None:
            out.append(("oled", self._run_display))
        return out

    def start(self) -> None:
        if self.running:
            return
        self.started_t, self.stopped_t, self.polls = self.clock(), None, 0
        super().start()
        for part in self.extra_parts:
            part.start()

    def _run(self) -> None:
        period = 1.0 / self.config.rate_hz if self.config.rate_hz > 0 else 0.0
        next_t = self.clock()
        while not self.stopping:
            try:
                self.step()
            except Exception:  # noqa: BLE001 - an input never stops the box
                self.loop_errors += 1
                if self.loop_errors == 1 or self.loop_errors % 1000 == 0:
                    log.exception("control loop error (%d so far)", self.loop_errors)
            if period:
                next_t += period
                delay = next_t - self.clock()
                if delay > 0:
                    self.wait(delay)
                elif delay < -0.05:  # fell behind: resynchronise instead of bursting
                    next_t = self.clock()

    def _run_display(self) -> None:
        period = 1.0 / self.config.display_hz
        while not self.wait(period):
            try:
                self.display_guard.poll()
            except Exception:  # noqa: BLE001 - the display never stops the box
                log.exception("display error")

    def stop(self) -> None:
        for part in reversed(self.extra_parts):
            part.stop()
        super().stop()
        self.stopped_t = self.clock()
        for close in reversed(self.closers):
            try:
                close()
            except Exception:  # noqa: BLE001 - closing one part must not strand the rest
                log.exception("closing %r", close)
        self.closers = []
