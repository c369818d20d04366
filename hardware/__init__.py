"""Drivers for the box's I2C/GPIO parts, each behind a swappable backend with a register-level
simulator (docs/hardware.md).

* :mod:`morphbox.hardware.i2c` -- the bus: smbus2 (``/dev/i2c-N``) or
  :class:`~morphbox.hardware.i2c.SimBus`, chosen by argument or ``MORPHBOX_I2C=sim|smbus2``.
* :mod:`morphbox.hardware.sim` -- chip simulators: Trill Square, the Open NSynth Super controller
  board, MPR121, ADS1115/ADS1015, SSD1306.
* :mod:`morphbox.hardware.touch` -- touch surfaces -> :class:`~morphbox.hardware.touch.TouchFrame`.
* :mod:`morphbox.hardware.adc`, :mod:`morphbox.hardware.gpio`, :mod:`morphbox.hardware.oled`
  -- pots, encoders and buttons (gpiozero), the OLED (luma.oled).
* :mod:`morphbox.hardware.fault` -- keep the last good value through bus faults.

Nothing here imports :mod:`morphbox.device`; :mod:`morphbox.device.panel` wires these parts to
the service.
"""
