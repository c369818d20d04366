"""ADS1115/ADS1015 pots and GPIO encoders/buttons (gpiozero mock pins)."""

from __future__ import annotations

import pytest

from morphbox.hardware.adc import ADS1x15, ADS1x15Pots
from morphbox.hardware.errors import HardwareError, PartNotFound
from morphbox.hardware.gpio import GpioButtons, GpioEncoders, make_pin_factory
from morphbox.hardware.i2c import SimBus
from morphbox.hardware.sim import ADS1x15Sim


@pytest.fixture
def mock_gpio(monkeypatch):
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    return make_pin_factory("mock")


def test_ads1115_single_shot_config_bytes_and_value():
    bus = SimBus()
    chip = ADS1x15Sim("ads1115", vdd=3.3)
    bus.attach(0x49, chip)
    adc = ADS1x15(bus, 0x49, "ads1115", pga_v=4.096, vref_v=3.3)
    adc.init()
    chip.set_pot(1, 0.25)
    adc.start(1)
    # OS=1 | MUX=101 (AIN1) | PGA=001 (4.096 V) | MODE=1 | DR=111 (860 SPS) | COMP off
    assert bus.log[-1][1] == bytes([0x01, 0b11010011, 0b11100011])
    assert adc.result() == pytest.approx(0.25, abs=1e-3)
    assert bus.log[-1][1] == b"\x00" and len(bus.log[-1][2]) == 2


def test_ads1015_is_12_bit_left_justified():
    bus = SimBus()
    chip = ADS1x15Sim("ads1015")
    bus.attach(0x48, chip)
    adc = ADS1x15(bus, 0x48, "ads1015")
    chip.set_pot(3, 0.5)
    adc.start(3)
    assert bus.log[-1][1][2] >> 5 == 0b110  # 3300 SPS
    code = int.from_bytes(adc.bus.read_i2c_block_data(0x48, 0, 2), "big")
    assert code & 0x000F == 0
    assert adc.result() == pytest.approx(0.5, abs=2e-3)


def test_round_robin_pots_cover_every_role():
    bus = SimBus()
    chips = [ADS1x15Sim(), ADS1x15Sim()]
    bus.attach(0x48, chips[0])
    bus.attach(0x4B, chips[1])
    pots = ADS1x15Pots([ADS1x15(bus, 0x48), ADS1x15(bus, 0x4B)],
                       {"attack": (0, 0), "volume": (1, 3)})
    chips[0].set_pot(0, 0.1)
    chips[1].set_pot(3, 0.9)
    seen = {}
    for _ in range(3):
        seen.update(pots.read())
    assert seen == {"attack": pytest.approx(0.1, abs=1e-3), "volume": pytest.approx(0.9, abs=1e-3)}
    with pytest.raises(PartNotFound, match=r"ADS1115.*0x4A"):
        ADS1x15(bus, 0x4A).init()


def test_gpio_encoders_count_quadrature_both_ways(mock_gpio):
    from morphbox.device.panel.simrig import turn_mock_encoder

    enc = GpioEncoders({"NW": (17, 27), "SE": (12, 16)}, mock_gpio)
    try:
        turn_mock_encoder(mock_gpio, 17, 27, 3)
        turn_mock_encoder(mock_gpio, 12, 16, -2)
        assert enc.read() == {"NW": 3, "SE": -2}
        assert enc.read() == {}
    finally:
        enc.close()


def test_gpio_buttons_and_pin_conflicts(mock_gpio):
    buttons = GpioButtons([5, 6], mock_gpio)
    try:
        assert buttons.read() == (False, False)
        mock_gpio.pin(6).drive_low()  # pressed: pulled to ground
        assert buttons.read() == (False, True)
        with pytest.raises(HardwareError, match="buttons"):
            GpioButtons([6], mock_gpio)  # pin already in use
    finally:
        buttons.close()
