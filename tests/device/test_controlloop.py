"""The control loop on simulated chips: touch -> snapshot, faults, pots, encoders, buttons,
patches, profiles, and the whole service running with the sim profile."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from morphbox.device.panel.build import attach
from morphbox.device.panel.profiles import ProfileError, available, load_profile
from morphbox.device.panel.simrig import SimRig, turn_mock_encoder
from morphbox.device.service import Service, ServiceConfig
from morphbox.hardware.errors import HardwareError
from tests.helpers import wait_until


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    monkeypatch.setenv("MORPHBOX_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("MORPHBOX_I2C", raising=False)


@pytest.fixture(scope="module")
def service():
    return Service(ServiceConfig(audio="none"))  # not started: tests call loop.step()


def make(service, name="sim", **overrides):
    """A loop on a fresh simulated box (no script: the test plays the chips)."""
    from morphbox.device.engine.controls import ControlState

    service.controls.snapshot = ControlState()
    profile = load_profile(name, {"sim": {}, **overrides} if name == "sim" else overrides)
    profile.data.pop("sim", None)
    rig = SimRig(profile)
    loop = attach(service, profile, rig=rig, clock=lambda: 0.0)  # time is what step() gets
    service._parts.remove(loop)  # the module's service is never started
    return loop, rig


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self, dt=0.004):
        self.t += dt
        return self.t


def test_touch_reaches_the_snapshot_and_lift_holds_it(service):
    loop, rig = make(service)
    now = Clock()
    rig.touch.touch(0.2, 0.7)
    loop.step(now())
    s = service.controls.snapshot
    assert s.touching and (s.x, s.y) == pytest.approx((0.2, 0.7), abs=1e-3)
    rig.touch.touch(0.8, 0.3)
    for _ in range(100):  # 0.4 s at 250 Hz: the one-euro filter has converged
        loop.step(now())
    s = service.controls.snapshot
    assert (s.x, s.y) == pytest.approx((0.8, 0.3), abs=0.01)
    rig.touch.lift()
    loop.step(now())
    s = service.controls.snapshot
    assert not s.touching and (s.x, s.y) == pytest.approx((0.8, 0.3), abs=0.01)
    loop.stop()


def test_lift_goes_home_when_configured(service):
    loop, rig = make(service, **{"touch.hold_on_release": False, "touch.home": [0.5, 0.0]})
    rig.touch.touch(0.9, 0.9)
    loop.step(1.0)
    rig.touch.lift()
    loop.step(1.01)
    s = service.controls.snapshot
    assert (s.x, s.y, s.touching) == (0.5, 0.0, False)
    loop.stop()


def test_filter_smooths_jitter_at_rest(service):
    loop, rig = make(service)
    now = Clock()
    rng = np.random.default_rng(1)
    xs = []
    for _ in range(200):
        rig.touch.touch(0.5 + rng.normal(0, 0.01), 0.5)
        loop.step(now())
        xs.append(service.controls.snapshot.x)
    assert np.std(xs[50:]) < 0.5 * 0.01
    loop.stop()


def test_faults_keep_the_last_value_and_a_returning_sensor_is_reinitialised(service, caplog):
    loop, rig = make(service)
    now = Clock()
    rig.touch.touch(0.3, 0.3)
    loop.step(now())
    held = service.controls.snapshot
    held = (held.x, held.y, held.touching)
    rig.touch.touch(0.9, 0.9)
    rig.bus.inject(0x28, "nack", 2)
    rig.bus.inject(0x28, "short_read", 1)
    rig.bus.inject(0x28, "ones", 1)  # implausible frame (locations 0xFFFF/sizes 0xFFFF...)
    chip = rig.bus.detach(0x28)  # then the sensor vanishes
    with caplog.at_level(logging.WARNING, logger="morphbox.hardware"):
        for _ in range(200):
            loop.step(now(0.01))
    s = service.controls.snapshot
    assert (s.x, s.y, s.touching) == held
    assert sum("touch surface" in r.message for r in caplog.records) == 1  # once per burst
    assert loop.touch_guard.failures >= 3
    n_identify = sum(w == bytes([0, 255]) for w in rig.bus.writes_to(0x28))
    rig.bus.attach(0x28, chip)  # back, at power-on state
    for _ in range(300):
        loop.step(now(0.01))
    assert sum(w == bytes([0, 255]) for w in rig.bus.writes_to(0x28)) == n_identify + 1
    assert chip.mode == 0 and loop.touch_guard.reinits == 1
    assert service.controls.snapshot.x == pytest.approx(0.9, abs=0.01)
    loop.stop()


def test_board_checksum_error_holds_touch_pots_and_encoders(service):
    loop, rig = make(service, "nsynth-super", **{"i2c.backend": "sim", "buttons.pins": []})
    now = Clock()
    board = rig.board
    board.touch(0.4, 0.6)
    board.set_pot(5, 0.6)
    loop.step(now())
    assert service.controls.snapshot.volume == pytest.approx(0.6, abs=0.01)
    board.touch(1.0, 1.0)
    board.set_pot(5, 0.1)
    for _ in range(5):
        rig.bus.inject(0x47, "ones")
        loop.step(now(0.5))
    s = service.controls.snapshot
    assert (s.x, s.y) == pytest.approx((0.4, 0.6)) and s.volume == pytest.approx(0.6, abs=0.01)
    loop.step(now(1.0))
    assert service.controls.snapshot.volume == pytest.approx(0.1, abs=0.01)
    loop.stop()


def test_pot_hysteresis_and_adsr_curves(service):
    loop, rig = make(service, **{"pots.every": 1})
    now = Clock()

    def settle():
        for _ in range(14):  # 6 pots round-robin, one conversion per poll
            loop.step(now())

    rig.set_pot("volume", 0.5)
    rig.set_pot("attack", 0.5)
    settle()
    s = service.controls.snapshot
    assert s.volume == pytest.approx(0.5, abs=2e-3)
    assert s.attack_s == pytest.approx(0.5 ** 2 * 4.0, rel=0.01)  # original curve a^2 4 s
    rig.set_pot("volume", 0.506)  # jitter within 1 %
    settle()
    assert service.controls.snapshot.volume == s.volume
    rig.set_pot("volume", 0.53)
    settle()
    assert service.controls.snapshot.volume == pytest.approx(0.53, abs=2e-3)
    rig.set_pot("position", 0.25)
    settle()
    assert loop.position_offset == pytest.approx(0.25, abs=2e-3)
    assert loop.service.controls.snapshot.position == pytest.approx(0.25, abs=2e-3)
    loop.stop()


def test_encoders_step_corners_with_wrap_around(service):
    loop, rig = make(service)
    sel = service.corners
    n = len(service.pack.instrument_names)
    sel.select({"NW": 0})
    sel.wait(60)
    pins = loop.profile["encoders"]["pins"]
    turn_mock_encoder(loop.pin_factory, *pins["NW"], -1)
    turn_mock_encoder(loop.pin_factory, *pins["SE"], 2)
    se = sel.corners["SE"]
    loop.step(1.0)
    assert sel.wait(60)
    assert sel.corners["NW"] == n - 1  # 0 - 1 wraps to the last instrument
    assert sel.corners["SE"] == (se + 2) % n
    assert loop.message == f"SE {service.pack.instrument_names[(se + 2) % n]}"
    loop.stop()


def test_long_press_saves_short_press_recalls(service, tmp_path):
    from morphbox.device.packs.patches import PatchStore
    service.patches = PatchStore(tmp_path / "state")
    loop, rig = make(service)
    pin = loop.pin_factory.pin(6)  # slot 2
    c = service.controls
    c.set_adsr(attack_s=1.25, release_s=2.0)
    c.set_volume(0.42)
    c.set_touch(0.1, 0.2)
    pin.drive_low()
    loop.step(10.0)
    loop.step(10.5)
    assert not (tmp_path / "state" / "patch-2.json").exists()  # not held long enough yet
    loop.step(10.8)
    saved = json.loads((tmp_path / "state" / "patch-2.json").read_text())
    assert saved["attack_s"] == 1.25 and saved["volume"] == 0.42 and saved["x"] == 0.1
    pin.drive_high()
    loop.step(11.0)  # release after a save: no recall
    assert loop.message == "saved patch 2"
    c.set_adsr(attack_s=0.01)
    c.set_volume(0.9)
    pin.drive_low()
    loop.step(12.0)
    pin.drive_high()
    loop.step(12.2)
    s = c.snapshot
    assert (s.attack_s, s.volume, s.x, s.y) == (1.25, 0.42, 0.1, 0.2)
    assert loop.message == "recalled patch 2"
    loop.pin_factory.pin(5).drive_low()
    loop.step(13.0)
    loop.pin_factory.pin(5).drive_high()
    loop.step(13.1)
    assert loop.message == "patch 1 empty"
    loop.stop()


def test_profiles_validate_and_name_the_part(service):
    assert {"sim", "trill", "nsynth-super"} <= set(available())
    with pytest.raises(ProfileError, match=r"'trill'.*\[touch\] Trill Square address 0x50"):
        load_profile("trill", {"touch.address": "0x50"})
    with pytest.raises(ProfileError, match=r"\[oled\] SSD1306 OLED address 0x3E"):
        load_profile("trill", {"oled": {"address": 0x3E}})
    with pytest.raises(ProfileError, match=r"\[pots\] ADS1115 pots ADC address 0x47"):
        load_profile("trill", {"pots.addresses": [0x48, 0x47]})
    with pytest.raises(ProfileError, match=r"button 1 GPIO 17 is already used by encoder NW"):
        load_profile("trill", {"buttons.pins": [17]})
    with pytest.raises(ProfileError, match="unknown key"):
        load_profile("trill", {"touch.adress": 0x29})
    with pytest.raises(ProfileError, match="no hardware profile 'nope'"):
        load_profile("nope")
    # a valid address where no chip answers: the part, address and profile are named
    good = load_profile("sim")
    rig = SimRig(good)
    with pytest.raises(HardwareError, match=r"'sim'.*Trill Square\) not found at I2C 0x29"):
        attach(service, load_profile("sim", {"touch.address": 0x29}), rig=rig)


def test_missing_oled_is_reported_once_and_the_rest_runs(service, caplog):
    profile = load_profile("sim")
    profile.data.pop("sim")
    rig = SimRig(profile)
    rig.bus.detach(0x3D)
    with caplog.at_level(logging.WARNING):
        loop = attach(service, profile, rig=rig, clock=lambda: 0.0)  # time is what step() gets
    service._parts.remove(loop)
    assert loop.display is None
    assert sum("running without a display" in r.message for r in caplog.records) == 1
    rig.touch.touch(0.6, 0.4)
    loop.step(1.0)
    assert service.controls.snapshot.x == pytest.approx(0.6, abs=1e-3)
    loop.stop()


def test_sim_profile_plays_the_whole_service_and_faults_never_stop_audio(monkeypatch):
    """The whole box on the sim profile, threads and all; every wait is for a condition."""
    svc = Service(ServiceConfig(audio="none"))
    loop = attach(svc, load_profile("sim", {"sim.period_s": 1.0, "sim.lift_every_s": 0,
                                            "sim.encoder_every_s": 0.3}))
    svc.start()
    try:
        wait_until(lambda: loop.polls > 20 and svc.controls.snapshot.touching,
                   what="the scripted finger on the surface")
        wait_until(lambda: loop.rig.oled.frames > 1, what="the screen drawn")
        x0 = svc.controls.snapshot.x
        chip = loop.rig.bus.detach(0x28)  # the touch surface vanishes ...
        wait_until(lambda: not loop.touch_guard.ok, what="the touch fault noticed")
        held = svc.controls.snapshot
        polls = loop.polls
        wait_until(lambda: loop.polls > polls + 20, what="polls during the fault")
        assert svc.controls.snapshot.x == held.x  # ... the position holds ...
        loop.rig.bus.attach(0x28, chip)  # ... and comes back
        frames = loop.rig.oled.frames
        loop.rig.bus.inject(0x3D, "nack", 5)  # the OLED misbehaves too
        wait_until(lambda: loop.touch_guard.ok and loop.touch_guard.reinits >= 1,
                   what="the touch surface re-initialised")
        wait_until(lambda: svc.controls.snapshot.x != x0, what="the finger moving again")
        wait_until(lambda: svc.corners.corners != svc.pack.corners,
                   what="the scripted encoders turning a corner")
        wait_until(lambda: loop.display_guard.failures >= 1, what="the OLED fault noticed")
        wait_until(lambda: loop.rig.oled.frames > frames, what="the screen drawn again")
        blocks_mid = svc.status()["blocks"]
        wait_until(lambda: svc.status()["blocks"] > blocks_mid, what="audio still running")
        status = svc.status()
    finally:
        svc.stop()
    assert status["errors"] == 0  # audio kept going, without a render error
    assert loop.stats()["loop_errors"] == 0
