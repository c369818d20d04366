"""What is stored: sound packs and the box's other persistent state.

* :mod:`~morphbox.device.packs.format` -- the pack format: load and verify, write, the
  engine's :class:`~morphbox.device.packs.format.Grid`; ``default/`` is the shipped pack.
* :mod:`~morphbox.device.packs.neural` -- a neural pack's TFLite decoder (ai-edge-litert or
  tflite-runtime, never TensorFlow).
* :mod:`~morphbox.device.packs.archive` -- signed ``.mbpack`` archives (write on the laptop,
  verify and extract on the box).
* :mod:`~morphbox.device.packs.store` -- installed packs, the active pointer, paired keys and
  the pairing token in the state directory, crash-safe.
* :mod:`~morphbox.device.packs.patches` -- the four patch slots.

Imports :mod:`morphbox.kernels` and :mod:`morphbox.device.common` only (host tools import the
format from here to build packs).
"""
