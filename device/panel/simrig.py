"""The simulated box: the chips a profile names on a simulated I2C bus, and a script that
plays them (finger path, pots, encoder turns), for ``--profile sim``, tests and benchmarks.

Owns: :class:`SimRig`, :class:`SimScript`. Imports: :mod:`morphbox.hardware` (the chip
simulators), :mod:`morphbox.device.panel.profiles`, :mod:`morphbox.device.panel.paths`,
:mod:`morphbox.device.common`.
"""

from __future__ import annotations

from morphbox.device.common import ThreadPart, monotonic
from morphbox.device.panel import paths
from morphbox.device.panel.profiles import Profile
from morphbox.hardware import sim
from morphbox.hardware.i2c import SimBus


class SimRig:
    """The simulated chips for a profile (``touch``, ``adcs``, ``board``, ``oled`` attribute
    per part, None when absent) on ``bus`` (a :class:`morphbox.hardware.i2c.SimBus`)."""

    def __init__(self, profile: Profile, pace: bool | None = None):

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


class SimScript(ThreadPart):
    """Plays a simulated box: the finger follows a :mod:`morphbox.device.panel.paths` path
    (lifting for 0.5 s every ``lift_every_s``), pots sit at ``[sim.pots]``, one encoder turns
    a step every ``encoder_every_s``. A part (``start``/``stop``); :meth:`step` plays the box
    at time ``t`` (seconds since start) for tests that drive the clock themselves."""

    name = "sim-script"

    def __init__(self, rig: SimRig, profile: Profile, pin_factory=None, rate_hz: float = 100.0,
                 clock=monotonic):
        super().__init__()
        s = profile["sim"]
        period = float(s.get("period_s", 12.0))
        name = s.get("touch_path", "figure-eight")
        self.path = paths.PATHS[name](period_s=period)
        self.rig, self.profile, self.pin_factory = rig, profile, pin_factory
        self.lift_every = float(s.get("lift_every_s", 0.0))
        self.encoder_every = float(s.get("encoder_every_s", 0.0))
        self.rate_hz, self.clock = rate_hz, clock
        self.turns = 0

    def set_pots(self) -> None:
        for role, v in self.profile["sim"].get("pots", {}).items():
            self.rig.set_pot(role, v)

    def start(self) -> None:
        self.set_pots()
        self.turns = 0
        super().start()

    def _turn(self, k: int) -> None:
        e = self.profile["encoders"]
        corners = ["NW", "NE", "SE", "SW"]  # a tour around the square
        corner = corners[k % 4]
        if e.get("driver") == "gpio" and self.pin_factory is not None and corner in e["pins"]:
            turn_mock_encoder(self.pin_factory, *e["pins"][corner], 1)
        elif e.get("driver") == "nsynth-board":
            self.rig.board.turn(e["corners"].index(corner), 1)

    def step(self, t: float) -> None:
        """The finger, and any encoder turn due, at ``t`` seconds after the start."""
        if self.lift_every and t % self.lift_every > self.lift_every - 0.5:
            self.rig.touch.lift()
        else:
            self.rig.touch.touch(*self.path(t), 0.5)
        if self.encoder_every and t >= (self.turns + 1) * self.encoder_every:
            self._turn(self.turns)
            self.turns += 1

    def loop(self) -> None:
        t0 = self.clock()
        while not self.wait(1.0 / self.rate_hz):
            self.step(self.clock() - t0)
