"""What sounds: the polyphonic voice engine and what feeds its audio callback.

* :mod:`~morphbox.device.engine.voices` -- :class:`Engine`: voices, morph, mix, limiter, one
  block at a time (:meth:`Engine.render_block`, live or offline).
* :mod:`~morphbox.device.engine.compiled` -- which render an engine uses (the compiled
  kernel of :mod:`morphbox.kernels.compiled` or the numpy reference), numba's cache, warm-up.
* :mod:`~morphbox.device.engine.controls` -- the player's control state as a lock-free
  immutable snapshot.
* :mod:`~morphbox.device.engine.corners` -- corner choice: a grid for any four instruments,
  rebuilt in the background and swapped in at a block boundary.
* :mod:`~morphbox.device.engine.audio` -- the PyAudio callback stream and the paced null
  output, with their render statistics.

Owns the audio path (no locks, no I/O, no waiting in it). Imports :mod:`morphbox.kernels`,
:mod:`morphbox.device.packs` and :mod:`morphbox.device.common`; never MIDI, the panel, the API
or the service.
"""
