"""The neural timbre model (issue 3): dataset, DDSP-style autoencoder, training, TFLite export.

Modules (TensorFlow is imported only by ``ddsp_tf``, ``network``, ``losses``, and lazily by
``train`` and ``export``):

* :mod:`~morphbox.host_tools.model.dataset` -- NSynth-style feature dataset from FluidR3_GM / WAV
folders
* :mod:`~morphbox.host_tools.model.ddsp_tf` -- differentiable twin of :mod:`morphbox.kernels.synth`
* :mod:`~morphbox.host_tools.model.network` -- causal-conv encoder (features -> z) and decoder
* :mod:`~morphbox.host_tools.model.losses` -- multi-resolution spectral loss
* :mod:`~morphbox.host_tools.model.train` -- seeded, resumable training from a TOML/JSON config
* :mod:`~morphbox.host_tools.model.export` -- TFLite float32 / int8 with ``decode`` / ``encode``
signatures

See docs/model.md.
"""
