"""The hardware panel: touch surface, pots, encoders, patch buttons and OLED.

* :mod:`~morphbox.device.panel.profiles` -- hardware profiles (TOML): which parts at which
  addresses and pins, validated before any bus opens.
* :mod:`~morphbox.device.panel.build` -- drivers for a profile (real bus or simulators) and
  the control loop added to the service.
* :mod:`~morphbox.device.panel.loop` -- the control loop: polls, smooths and publishes to the
  service; the OLED view.
* :mod:`~morphbox.device.panel.conditioning` -- one-euro filter, pot hysteresis, press/hold.
* :mod:`~morphbox.device.panel.simrig` -- the simulated box (chips on a SimBus, a script that
  plays them); :mod:`~morphbox.device.panel.paths` -- touch paths.

Imports :mod:`morphbox.hardware`, :mod:`morphbox.device.engine` (controls),
:mod:`morphbox.device.packs` (patches) and :mod:`morphbox.device.common`; changes the box only
through the service's operations.
"""
