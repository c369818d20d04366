"""The neural timbre model: dataset, DDSP-style autoencoder, training, TFLite export.

Modules (TensorFlow is imported only by ``network``, and lazily by ``train`` and ``export``):

* :mod:`~morphbox.host_tools.model.dataset` -- NSynth-style full-band feature dataset from
  FluidR3_GM / WAV folders
* :mod:`~morphbox.host_tools.model.network` -- causal-conv encoder (features -> z) and decoder
* :mod:`~morphbox.host_tools.model.train` -- seeded, resumable training from a TOML/JSON config
  (a feature-domain loss: dB per channel and per frame)
* :mod:`~morphbox.host_tools.model.export` -- TFLite float32 / int8 with ``decode`` / ``encode``
  signatures
* :mod:`~morphbox.host_tools.model.evaluate` -- ``morphbox model eval``: the report on held-out
  instruments

See docs/model.md.
"""
