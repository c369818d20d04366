"""The Raspberry Pi service: ``python -m morphbox.device`` runs the box.

Sub-packages, lowest first; each may import only those above it in this list (and
:mod:`morphbox.kernels`, :mod:`morphbox.hardware`, the standard library and the device
dependencies). The device never imports TensorFlow or :mod:`morphbox.host_tools`.

* :mod:`morphbox.device.common` -- state directory, clock, the service-part life cycle
  (:class:`~morphbox.device.common.ThreadPart`), atomic file writes.
* :mod:`morphbox.device.packs` -- what is stored: the pack format and its loader, signed
  archives, the pack store on disk, patches, the pack's TFLite decoder.
* :mod:`morphbox.device.engine` -- what sounds: the voice engine and its render callback, the
  control snapshot, corner choice (grid rebuilds), the audio output.
* :mod:`morphbox.device.midi` -- what is played: the MIDI router, USB/JACK/DIN inputs, MIDI
  files, the session recorder.
* :mod:`morphbox.device.panel` -- the hardware panel: touch, pots, encoders, buttons and OLED
  from a profile, the control loop, the simulated box.
* :mod:`morphbox.device.api` -- the HTTP API and web page (pack flashing, recordings).
* :mod:`morphbox.device.service` -- the running box: owns the state above and the operations
  on it; :mod:`morphbox.device.main` builds it from options.
"""
