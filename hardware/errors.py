"""Errors of the hardware layer."""

from __future__ import annotations


class HardwareError(Exception):
    """A part cannot be used (not found, wrong chip, bad configuration)."""


class PartNotFound(HardwareError):
    """A part did not answer at its address, or another chip answered. The message names the
    part, its address and the bus."""


class FrameError(HardwareError):
    """A frame read from a part is corrupt (bad checksum) or implausible (values out of the
    chip's range). Treated like an I2C error: the last good value is kept."""
