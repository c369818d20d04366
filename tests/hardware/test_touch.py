"""Touch drivers against the register-level simulators: bytes on the bus, decoded frames,
checksums, implausible frames, re-initialisation."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from morphbox.hardware.errors import FrameError, PartNotFound
from morphbox.hardware.i2c import SimBus
from morphbox.hardware.sim import MPR121Sim, NSynthBoardSim, TrillSquareSim
from morphbox.hardware.touch import (
    BoardEncoders,
    BoardPots,
    MPR121Pad,
    NSynthBoard,
    TrillSquare,
    wrap_delta,
)

# ---------------------------------------------------------------------------- Trill Square


def trill(firmware=2):
    bus = SimBus()
    chip = TrillSquareSim(firmware=firmware)
    bus.attach(0x29, chip)
    drv = TrillSquare(bus, 0x29, speed=1, bits=12, noise_threshold=8, settle_s=0)
    drv.init()
    return bus, chip, drv


def test_trill_init_sends_identify_mode_scan_threshold_baseline():
    bus, chip, _ = trill()
    assert [(w, r) for a, w, r in bus.log] == [
        (bytes([0, 255]), b""),                    # identify
        (bytes([0]), bytes([0xFE, 2, 2, 0])),      # answer: Square, firmware 2
        (bytes([0, 1, 0]), b""),                   # mode centroid
        (bytes([0, 2, 1, 12]), b""),               # scan: speed 1, 12 bits
        (bytes([0, 4, 8]), b""),                   # noise threshold
        (bytes([0, 6]), b""),                      # baseline update
        (bytes([4]), b""),                         # reads from the data offset
    ]
    assert chip.mode == 0


def test_trill_frame_is_read_in_one_transaction_past_the_smbus_limit():
    bus, chip, drv = trill()
    chip.touch(0.25, 0.75, 0.5)
    frame = drv.read()
    addr, written, read = bus.log[-1]
    assert written == b"\x04" and len(read) == 32  # one i2c_rdwr, no SMBus block
    loc_y, loc_x = struct.unpack(">4H", read[0:8]), struct.unpack(">4H", read[16:24])
    assert loc_y[0] == round(0.75 * 1791) and loc_x[0] == round(0.25 * 1791)
    assert loc_y[1:] == (0xFFFF,) * 3
    assert frame.count == 1
    assert frame.primary.x == pytest.approx(0.25, abs=1e-3)
    assert frame.primary.y == pytest.approx(0.75, abs=1e-3)


def test_trill_multi_touch_and_33_byte_frames_on_new_firmware():
    bus, chip, drv = trill(firmware=3)
    chip.set_touches([(0.1, 0.2, 0.3), (0.9, 0.8, 0.6), (0.5, 0.4, 0.2)])
    frame = drv.read()
    assert len(bus.log[-1][2]) == 33
    assert [(round(t.x, 2), round(t.y, 2)) for t in frame.touches] == [
        (0.1, 0.2), (0.9, 0.8), (0.5, 0.4)]
    chip.lift()
    assert drv.read().count == 0


def test_trill_implausible_location_is_a_frame_error():
    bad = struct.pack(">16H", 2000, *[0xFFFF] * 3, 100, 0, 0, 0, 500, *[0xFFFF] * 3,
                      100, 0, 0, 0)
    with pytest.raises(FrameError, match="2000"):
        TrillSquare.decode(bad)


def test_trill_wrong_chip_or_address_names_the_part():
    bus = SimBus()
    bus.attach(0x28, TrillSquareSim(device_type="bar"))
    with pytest.raises(PartNotFound, match=r"Trill Square.*0x28.*not a Square"):
        TrillSquare(bus, 0x28, settle_s=0).init()
    with pytest.raises(PartNotFound, match=r"Trill Square\) not found at I2C 0x2A"):
        TrillSquare(bus, 0x2A, settle_s=0).init()
    with pytest.raises(ValueError, match="0x28-0x2F"):
        TrillSquare(bus, 0x48)


def test_trill_that_lost_power_reads_nothing_until_reinitialised():
    bus, chip, drv = trill()
    chip.touch(0.5, 0.5)
    bus.detach(0x29)
    with pytest.raises(OSError):
        drv.read()
    bus.attach(0x29, chip)  # back, registers at power-on values
    assert drv.read().count == 0
    drv.init()
    assert drv.read().count == 1


# ------------------------------------------------------------------ NSynth controller board


def board_frame(x, y, enc, pots) -> bytes:
    payload = bytes([x, y, *enc, *pots])
    words = struct.unpack("<3I", payload)
    return payload + struct.pack("<I", (0xAA55AA55 + sum(words)) % 2**32)


def test_board_reads_register_0_and_verifies_the_checksum():
    bus = SimBus()
    chip = NSynthBoardSim()
    bus.attach(0x47, chip)
    drv = NSynthBoard(bus)
    chip.touch(0.3, 1.0)
    for i, v in enumerate((0.0, 0.2, 0.4, 0.6, 0.8, 1.0)):
        chip.set_pot(i, v)
    chip.turn(2, -1)
    frame = drv.read()
    assert bus.log[-1][1] == b"\x00"
    assert bus.log[-1][2] == board_frame(3, 10, [0, 0, 255, 0], [0, 51, 102, 153, 204, 255])
    assert (frame.primary.x, frame.primary.y) == (0.3, 1.0)
    assert drv.last.encoders == (0, 0, 255, 0)
    assert BoardPots(drv, {"attack": 1, "volume": 5}).read() == {"attack": 0.2, "volume": 1.0}
    chip.lift()
    assert drv.read().count == 0


def test_board_bad_checksum_and_off_grid_cell_are_frame_errors():
    good = board_frame(0xFF, 0xFF, [1, 2, 3, 4], [5, 6, 7, 8, 9, 10])
    assert NSynthBoard.decode(good).cell is None
    bad = bytearray(good)
    bad[6] ^= 0x01
    with pytest.raises(FrameError, match="checksum"):
        NSynthBoard.decode(bytes(bad))
    with pytest.raises(FrameError, match="outside 0..10"):
        NSynthBoard.decode(board_frame(11, 3, [0] * 4, [0] * 6))
    bus = SimBus()
    bus.attach(0x47, NSynthBoardSim())
    bus.inject(0x47, "ones")  # bus stuck high
    with pytest.raises(FrameError):
        NSynthBoard(bus).read()


def test_board_encoder_counters_wrap_as_int8_differences():
    assert wrap_delta(3, 250) == 9
    assert wrap_delta(250, 3) == -9
    assert wrap_delta(0, 255) == 1
    bus = SimBus()
    chip = NSynthBoardSim()
    bus.attach(0x47, chip)
    drv = NSynthBoard(bus)
    chip.encoders[:] = [250, 0, 0, 128]
    drv.init()
    enc = BoardEncoders(drv)
    enc.init()
    chip.turn(0, 9)    # 250 -> 3
    chip.turn(3, -130)  # 128 -> 254
    drv.read()
    assert chip.encoders[0] == 3
    assert enc.read() == {"NW": 9, "SE": 126}  # -130 is beyond int8: reads as +126


# ---------------------------------------------------------------------------------- MPR121


def mpr(rows=(0, 1, 2, 3, 4, 5), cols=(6, 7, 8, 9, 10, 11)):
    bus = SimBus()
    chip = MPR121Sim(rows=rows, cols=cols)
    bus.attach(0x5B, chip)
    drv = MPR121Pad(bus, 0x5B, rows=rows, cols=cols)
    return bus, chip, drv


def test_mpr121_init_bytes():
    bus, chip, drv = mpr()
    drv.init()
    writes = bus.writes_to(0x5B)
    assert writes[0] == bytes([0x80, 0x63])           # soft reset
    assert writes[1] == bytes([0x5D])                 # read CONFIG2 (0x24 after reset)
    assert writes[2] == bytes([0x5E, 0x00])           # stop mode
    assert writes[3] == bytes([0x41] + [12, 6] * 12)  # touch/release thresholds
    assert writes[-1] == bytes([0x5E, 0x8C])          # run 12 electrodes, baseline tracking
    assert chip.regs[0x5E] == 0x8C


def test_mpr121_without_run_mode_reports_no_touch():
    _, chip, drv = mpr()
    chip.touch(0.5, 0.5)
    assert drv.read().count == 0  # power-on: stop mode, no data


@settings(max_examples=40, deadline=None)
@given(st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_mpr121_interpolated_centroid_tracks_the_finger(x, y):
    _, chip, drv = mpr()
    drv.init()
    chip.touch(x, y, 0.5)
    t = drv.read().primary
    assert t is not None
    assert t.x == pytest.approx(x, abs=0.08) and t.y == pytest.approx(y, abs=0.08)


def test_mpr121_finer_than_its_electrode_pitch_and_lift():
    _, chip, drv = mpr()
    drv.init()
    xs = []
    for x in (0.40, 0.45, 0.50):  # all between two column electrodes (pitch 0.2)
        chip.touch(x, 0.5)
        xs.append(drv.read().primary.x)
    assert xs[0] < xs[1] < xs[2]
    chip.lift()
    assert drv.read().count == 0


def test_mpr121_wrong_chip_and_overcurrent():
    bus, chip, drv = mpr()
    chip.regs[0x5D] = 0x00
    chip.on_write = lambda data: None  # a chip that ignores the reset: not an MPR121
    with pytest.raises(PartNotFound, match=r"MPR121.*0x5B.*CONFIG2"):
        drv.init()
    raw = bytearray(42)
    raw[1] = 0x80
    bus2 = SimBus()

    class Stuck:
        def on_write(self, data):
            pass

        def on_read(self, n):
            return bytes(raw[:n])

    bus2.attach(0x5A, Stuck())
    with pytest.raises(FrameError, match="over-current"):
        MPR121Pad(bus2, 0x5A).read()
