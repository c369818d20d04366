"""The I2C layer: backend choice, argument checks, bus time, fault injection."""

from __future__ import annotations

import errno

import pytest

from morphbox.hardware.i2c import SimBus, open_bus, transfer_bits
from morphbox.hardware.sim import ADS1x15Sim


def test_env_var_chooses_the_simulator(monkeypatch):
    monkeypatch.setenv("MORPHBOX_I2C", "sim")
    assert isinstance(open_bus(), SimBus)
    monkeypatch.setenv("MORPHBOX_I2C", "spi")
    with pytest.raises(ValueError, match="MORPHBOX_I2C"):
        open_bus()


def test_real_backend_explains_a_missing_bus(monkeypatch):
    monkeypatch.delenv("MORPHBOX_I2C", raising=False)
    with pytest.raises(OSError, match=r"/dev/i2c-7.*MORPHBOX_I2C=sim"):
        open_bus("smbus2", bus=7)


def test_bad_arguments_are_refused_before_the_bus():
    bus = SimBus()
    for bad in (0x00, 0x78, "0x28", None):
        with pytest.raises(ValueError, match="7-bit"):
            bus.read(bad, 1)
    with pytest.raises(ValueError, match="bytes"):
        bus.write(0x48, [256])
    with pytest.raises(ValueError, match="write or read"):
        bus.transfer(0x48)
    assert bus.transactions == 0 and not bus.log


def test_bytes_and_bus_time_are_accounted():
    bus = SimBus(clock_hz=400_000)
    bus.attach(0x48, ADS1x15Sim())
    assert bus.write_read(0x48, [1], 2) == bytes([0x85, 0x83])  # config reset value
    # start + addr + 1 byte, repeated start + addr + 2 bytes, stop
    assert transfer_bits(1, 2) == (1 + 9 + 9) + (1 + 9 + 18) + 1
    assert bus.bus_time_s == pytest.approx(48 / 400_000)
    assert list(bus.log) == [(0x48, b"\x01", b"\x85\x83")]


def test_faults_nack_short_read_and_missing_device():
    bus = SimBus()
    bus.attach(0x48, ADS1x15Sim())
    bus.inject(0x48, "nack")
    bus.inject(0x48, "short_read")
    with pytest.raises(OSError) as e:
        bus.read(0x48, 2)
    assert e.value.errno == errno.EREMOTEIO
    with pytest.raises(OSError, match="short read") as e:
        bus.read(0x48, 2)
    assert e.value.errno == errno.EIO
    assert len(bus.read(0x48, 2)) == 2  # faults used up
    with pytest.raises(OSError, match="0x49"):
        bus.read(0x49, 1)
