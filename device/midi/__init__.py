"""What is played: MIDI into the engine.

* :mod:`~morphbox.device.midi.router` -- performance state (notes, pedal, bend, CC map,
  program change) -> engine and service operations; its own thread.
* :mod:`~morphbox.device.midi.inputs` -- USB (ALSA), JACK and DIN inputs with hot-plug and a
  byte parser that skips malformed input.
* :mod:`~morphbox.device.midi.files` -- MIDI files: timed messages, offline render, live
  playback as an input.
* :mod:`~morphbox.device.midi.recorder` -- session recording (MIDI + morph + audio).

Imports :mod:`morphbox.device.engine` (controls), :mod:`morphbox.device.common` and
:mod:`morphbox.kernels`; reaches the service only through the hooks it is given.
"""
