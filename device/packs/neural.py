"""The neural decoder on the device: (z, f0, loudness) -> synthesis controls, with TFLite.

Runs the ``decode`` signature of a model file written by ``morphbox.host_tools.model.export``
(float32 or full-integer int8; both take and return float32) under ai-edge-litert
(``ai_edge_litert.interpreter``), or tflite-runtime when that is what the system has. Never
imports TensorFlow. Not for the audio callback: a grid rebuild calls it from a background
thread (DDSP-VST likewise keeps its network off the audio thread).

The model's outputs are in dB (``amplitude_db``, ``harmonic_db``, ``envelope_db`` relative to
the amplitude, ``noise_db``) and become a note's frames in the layout of
:mod:`morphbox.kernels.features` through :meth:`NeuralDecoder.decode_frames` (DDSP, Engel et
al. 2020: amplitude x harmonic distribution, plus the envelope and noise band gains).
"""

from __future__ import annotations

import os
import threading

import numpy as np

from morphbox.kernels.pitch import hz_to_midi

SIGNATURE = "decode"
# input -> (rank, fixed trailing dims); output -> (rank, fixed trailing dims); None = the
# model's own z size / harmonic and band counts, read from the file and reported
INPUTS = {"z": 3, "f0_midi": 2, "loudness_db": 2}
OUTPUTS = {"amplitude_db": 2, "harmonic_db": 3, "envelope_db": 3, "noise_db": 3}


class ModelError(Exception):
    """A decoder model cannot be loaded or used; the message names the file and the reason."""


class RuntimeMissing(ModelError):
    """No TFLite runtime is installed: no model can be run, whatever the file."""


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError as exc:
            raise RuntimeMissing("no TFLite runtime: install ai-edge-litert (or "
                                 "tflite-runtime)") from exc
    return Interpreter


class NeuralDecoder:
    """A loaded ``decode`` signature.

    Args:
        path: ``.tflite`` file.
        z_dims, harmonics, noise_bands, envelope_bands: what the caller (a pack) expects; a
            model with other sizes is refused. ``None`` accepts what the model has.
        num_threads: interpreter threads.

    Raises :class:`ModelError` if the file is unreadable, has no ``decode`` signature, or its
    inputs/outputs differ in names, dtype (float32), rank or sizes from the above.
    Thread-safe (calls are serialised).
    """

    def __init__(self, path: str | os.PathLike, z_dims: int | None = 16,
                 harmonics: int | None = 64, noise_bands: int | None = 32,
                 num_threads: int = 1, envelope_bands: int | None = 24):
        self.path = os.fspath(path)
        Interpreter = _interpreter_class()
        try:
            self._interp = Interpreter(model_path=self.path, num_threads=num_threads)
            signatures = self._interp.get_signature_list()
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelError(f"{self.path}: not a loadable TFLite model ({exc})") from exc
        if SIGNATURE not in signatures:
            raise ModelError(f"{self.path}: no {SIGNATURE!r} signature (has "
                             f"{sorted(signatures) or 'none'}); export the decoder with "
                             "morphbox.host_tools.model.export")
        sig = signatures[SIGNATURE]
        if sorted(sig["inputs"]) != sorted(INPUTS) or sorted(sig["outputs"]) != sorted(OUTPUTS):
            raise ModelError(f"{self.path}: {SIGNATURE!r} has inputs {sorted(sig['inputs'])} "
                             f"and outputs {sorted(sig['outputs'])}; expected "
                             f"{sorted(INPUTS)} and {sorted(OUTPUTS)}")
        self._runner = self._interp.get_signature_runner(SIGNATURE)
        ins = self._runner.get_input_details()
        outs = self._runner.get_output_details()
        for kind, details, ranks in (("input", ins, INPUTS), ("output", outs, OUTPUTS)):
            for name, rank in ranks.items():
                d = details[name]
                shape = d.get("shape_signature", d["shape"])
                if d["dtype"] != np.float32 or len(shape) != rank:
                    raise ModelError(f"{self.path}: {kind} {name!r} is {np.dtype(d['dtype'])} "
                                     f"of shape {list(shape)}; expected float32 of rank {rank}")
        self.z_dims = int(ins["z"].get("shape_signature", ins["z"]["shape"])[-1])
        self.harmonics = int(outs["harmonic_db"]["shape"][-1])
        self.envelope_bands = int(outs["envelope_db"]["shape"][-1])
        self.noise_bands = int(outs["noise_db"]["shape"][-1])
        for what, want, have in (("z size", z_dims, self.z_dims),
                                 ("harmonics", harmonics, self.harmonics),
                                 ("envelope bands", envelope_bands, self.envelope_bands),
                                 ("noise bands", noise_bands, self.noise_bands)):
            if want is not None and want != have:
                raise ModelError(f"{self.path}: the model has {have} {what}, expected {want}")
        self._lock = threading.Lock()

    def decode_db(self, z: np.ndarray, f0_hz: np.ndarray,
                  loudness_db: np.ndarray) -> dict[str, np.ndarray]:
        """Raw model outputs in dB for ``z`` ``(B, T, Z)`` (or ``(T, Z)``), ``f0_hz`` and
        ``loudness_db`` ``(B, T)`` (or ``(T,)``; Hz > 0 and dB). Returns ``{"amplitude_db":
        (B, T), "harmonic_db": (B, T, K), "envelope_db": (B, T, E), "noise_db": (B, T, N)}``
        float32 (no batch axis if
        none was given). Raises ``ValueError`` on bad shapes, :class:`ModelError` if the
        runtime fails."""
        z = np.asarray(z, np.float32)
        single = z.ndim == 2
        if single:
            z = z[None]
        f0 = np.asarray(f0_hz, np.float64).reshape(z.shape[:2]) if np.size(f0_hz) == \
            z.shape[0] * z.shape[1] else None
        loud = np.asarray(loudness_db, np.float32)
        if z.ndim != 3 or z.shape[2] != self.z_dims or f0 is None \
                or loud.size != f0.size:
            raise ValueError(f"expected z (B, T, {self.z_dims}), f0_hz and loudness_db (B, T);"
                             f" got {np.shape(z)}, {np.shape(f0_hz)}, {np.shape(loudness_db)}")
        if not np.all(f0 > 0):
            raise ValueError("f0_hz must be positive")
        args = {"z": z, "f0_midi": hz_to_midi(f0).astype(np.float32),
                "loudness_db": loud.reshape(z.shape[:2])}
        with self._lock:
            try:
                out = self._runner(**args)
            except (ValueError, RuntimeError) as exc:
                raise ModelError(f"{self.path}: decode failed ({exc})") from exc
        out = {k: np.array(out[k], np.float32) for k in OUTPUTS}
        return {k: v[0] for k, v in out.items()} if single else out

    def decode_frames(self, z: np.ndarray, f0_hz: np.ndarray, loudness_db: np.ndarray
                      ) -> np.ndarray:
        """Decoded frames ``(B, T, K + E + N)`` float32 dB (or ``(T, K + E + N)``) in the
        layout of :mod:`morphbox.kernels.features`: partial ``k`` = amplitude + harmonic_k -
        20 log10(sum_j 10^(harmonic_j / 20)) (amplitude x normalised distribution), envelope
        = amplitude + envelope, noise = the noise bands (the numpy twin of
        :func:`morphbox.host_tools.model.network.frames_from_outputs`). Shapes and errors as
        :meth:`decode_db`."""
        return frames_from_db(self.decode_db(z, f0_hz, loudness_db))


def frames_from_db(out: dict) -> np.ndarray:
    """Decoder outputs in dB (``amplitude_db``, ``harmonic_db``, ``envelope_db``,
    ``noise_db``) -> frames ``(..., K + E + N)`` float32 dB (:meth:`NeuralDecoder.
    decode_frames`)."""
    h = np.asarray(out["harmonic_db"], np.float32)
    total = np.power(np.float32(10.0), h * np.float32(0.05)).sum(axis=-1)
    amp = np.asarray(out["amplitude_db"], np.float32)
    level = amp - np.float32(20.0) * np.log10(total)
    return np.concatenate([h + level[..., None], out["envelope_db"] + amp[..., None],
                           out["noise_db"]], axis=-1).astype(np.float32)
