"""Choosing the corner instruments on the device: rebuild the grid, swap it in between blocks.

The pack carries every source instrument's analysed frames, so a grid for any four of its N
instruments (N^4 combinations: 65,536 for 16, of which the original box offered 256) can be
made on the box. A rebuild runs on a background thread; the engine keeps playing the old grid
and picks up the new one at its next block (:meth:`morphbox.device.engine.voices.Engine.set_grid`
only swaps a
reference). Spectral mode mixes the corners' dB frames bilinearly (:func:`morphbox.kernels.grid.
spectral_grid`); a neural pack mixes the corners' embeddings z bilinearly and decodes every
grid point at every pitch anchor with the pack's TFLite decoder in one batched call
(:func:`neural_grid_codes`, shared with the host pack build so both make the same grid).

Corner anchoring (a neural pack's ``neural_grid.anchor_corners``, on by default): the decoder
reconstructs each instrument only approximately (3.1 dB mean partial distance for the default
pack's 16 instruments with the default model, ``bench/corner_fidelity.py``), so a corner would
not quite sound like the instrument it names. Each corner's reconstruction error
``r_c = analysed_c - decoded_c`` (dB, per anchor, frame and partial/band) is added back with
the grid point's bilinear weights:
``grid(x, y) = decode(sum_c w_c z_c) + sum_c w_c r_c``. Corners are then the analysed
instruments exactly (as in spectral mode) and every point in between keeps what the latent
morph adds over a plain dB mix: ``grid - spectral_grid = decode(sum w z) - sum w decode(z)``.
This is the residual trick of hybrid coders (a model's prediction plus a stored correction).
"""

from __future__ import annotations

import threading
import time

import numpy as np

from morphbox.device.packs.format import Grid, Pack, PackError, grid_from_pack
from morphbox.device.packs.neural import ModelError
from morphbox.kernels.grid import CORNERS, corner_weights, spectral_grid
from morphbox.kernels.pitch import midi_to_hz
from morphbox.kernels.quant import DB_MIN, DB_STEP, dequantize_db


def neural_grid_codes(decoder, z: np.ndarray, loudness_db: np.ndarray, anchors,
                      size: int, corner_codes: tuple[np.ndarray, np.ndarray] | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Decode a ``size x size`` morph grid from four corners' embeddings.

    ``z``: ``(4, A, F, Z)`` float32 in ``CORNERS`` order; ``loudness_db``: ``(4, A, F)``.
    Each grid point's z and loudness are the corners' mixed with bilinear weights
    (:func:`morphbox.kernels.grid.corner_weights`; loudness in dB, as spectral mode mixes levels);
    f0 is the anchor's pitch. All ``size * size * A`` notes go through ``decoder``
    (:class:`morphbox.device.packs.neural.NeuralDecoder`) in one batched call. Returns the pack's
    dB codes
    ``(grid_harmonics (G, G, A, F, K), grid_noise (G, G, A, F, B))`` uint8: partial amplitude
    = amplitude x harmonic distribution, noise = band gains.

    ``corner_codes``: the corners' analysed ``(harmonics (4, A, F, K), noise (4, A, F, B))`` in
    the pack's uint8 dB codes (``instruments_*`` rows); if given, the corners are anchored to
    them (module docstring): each corner's reconstruction error is added back with the
    bilinear weights.
    """
    z = np.asarray(z, np.float32)
    loudness_db = np.asarray(loudness_db, np.float32)
    if z.ndim != 4 or z.shape[0] != 4 or loudness_db.shape != z.shape[:3]:
        raise ValueError(f"expected z (4, A, F, Z) and loudness (4, A, F); got {z.shape}, "
                         f"{loudness_db.shape}")
    _, n_anchors, frames, z_dims = z.shape
    axis = np.linspace(0.0, 1.0, size)
    w = corner_weights(axis[None, :], axis[:, None]).astype(np.float32).reshape(-1, 4)
    zg = (w @ z.reshape(4, -1)).reshape(-1, frames, z_dims)  # (G*G*A, F, Z)
    loud = (w @ loudness_db.reshape(4, -1)).reshape(-1, frames)
    f0 = np.broadcast_to(midi_to_hz(np.asarray(anchors, np.float64))[None, :, None],
                         (size * size, n_anchors, frames)).reshape(-1, frames)
    out = decoder.decode_db(zg, f0, loud)
    # partial k in dB = amplitude_db + harmonic_db_k - 20 log10(sum_j 10^(harmonic_db_j / 20))
    # (amplitude x normalised distribution, as morphbox.kernels.synth.controls_from_db), computed in
    # the dB domain in float32: a rebuild is ~10 M values and this is most of its numpy time
    h = out["harmonic_db"]
    total = np.power(np.float32(10.0), h * np.float32(0.05)).sum(axis=-1)
    level = out["amplitude_db"] - np.float32(20.0) * np.log10(total)
    shape = (size, size, n_anchors, frames)
    harm = (h + level[..., None]).reshape(shape + (-1,))
    noise = out["noise_db"].reshape(shape + (-1,))
    if corner_codes is not None:
        harm, noise = (_anchor(g, dequantize_db(c), w) for g, c in zip((harm, noise),
                                                                        corner_codes))
    return _codes(harm), _codes(noise)


def _anchor(grid_db: np.ndarray, corner_db: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``grid_db`` ``(G, G, A, F, C)`` plus each corner's error (``corner_db`` ``(4, A, F, C)``
    minus the grid's own corner point) mixed with the points' weights ``w`` ``(G*G, 4)``."""
    if corner_db.shape != (4,) + grid_db.shape[2:]:
        raise ValueError(f"corner dB {corner_db.shape} do not match the grid "
                         f"{(4,) + grid_db.shape[2:]}")
    last = grid_db.shape[0] - 1
    decoded = grid_db[[0, 0, last, last], [0, last, 0, last]]  # NW, NE, SW, SE = CORNERS
    error = (corner_db - decoded).reshape(4, -1)
    grid_db += (w @ error).reshape(grid_db.shape)
    return grid_db


def _codes(db: np.ndarray) -> np.ndarray:
    """dB float32 -> the pack's uint8 codes (:func:`morphbox.kernels.quant.quantize_db`, in
    float32)."""
    q = np.rint((db - np.float32(DB_MIN)) * np.float32(1.0 / DB_STEP))
    return np.clip(q, 0, 255, out=q).astype(np.uint8)


def build_grid(pack: Pack, corners: dict[str, int], *, stored: bool = True) -> Grid:
    """Grid for ``corners`` (``{"NW": i, ...}``, instrument indices) from ``pack``'s
    instruments: spectral mode mixes their dB frames, neural mode decodes their mixed
    embeddings (:func:`neural_grid_codes`). Raises :class:`PackError` for an unknown corner or
    instrument index, :class:`morphbox.device.packs.neural.ModelError` if the decoder fails.

    Cross-machine contract: for the pack's own corners the grid stored in the pack is used as
    is (``stored``; False forces a rebuild), so it sounds code for code as built on the laptop.
    Any other combination is decoded here by the int8 TFLite decoder, whose rounding differs
    between CPUs (x86 vs ARM, XNNPACK builds): a rebuild on another machine agrees with the
    laptop's within two code steps (1 dB) everywhere, one step (0.5 dB) for all but 0.1 % of
    the values, 0.05 dB on average; corners anchored to their instruments are exact.
    """
    n = len(pack.instrument_names)
    if sorted(corners) != sorted(CORNERS):
        raise PackError(f"corners must name {', '.join(CORNERS)}, got {sorted(corners)}")
    bad = {c: i for c, i in corners.items() if not (isinstance(i, int) and 0 <= i < n)}
    if bad:
        raise PackError(f"no such instrument for corner(s) {bad}: the pack has {n}")
    if stored and dict(corners) == pack.corners:
        return grid_from_pack(pack)
    m = pack.manifest
    idx = [corners[c] for c in CORNERS]
    size = int(m["grid_size"])
    if m.get("mode") == "neural":
        if pack.decoder is None:
            raise PackError(f"{pack.path}: cannot decode a grid for other corners: "
                            f"{pack.decoder_error or 'neural pack loaded without its decoder'}"
                            "; the stored grid plays on")
        anchored = bool(m.get("neural_grid", {}).get("anchor_corners", False))
        codes = neural_grid_codes(pack.decoder, pack.z_corners(idx),
                                  pack.arrays["instruments_loudness"][idx],
                                  m["pitch_anchors"], size,
                                  (pack.arrays["instruments_harmonics"][idx],
                                   pack.arrays["instruments_noise"][idx]) if anchored else None)
        harm, noise = (dequantize_db(c) for c in codes)
    else:
        harm = spectral_grid(dequantize_db(pack.arrays["instruments_harmonics"][idx]), size)
        noise = spectral_grid(dequantize_db(pack.arrays["instruments_noise"][idx]), size)
    return Grid.from_parts(harm, noise, anchors=m["pitch_anchors"],
                           frame_rate=float(m["frame_rate"]), loop_start=int(m["loop"]["start"]),
                           loop_end=int(m["loop"]["end"]),
                           source_rate=float(m["source_sample_rate"]),
                           name=f"{pack.name}:{'/'.join(str(i) for i in idx)}")


class CornerSelector:
    """Owns the active corner choice of a running engine.

    :meth:`select` returns at once; the newest request wins if several arrive during a
    rebuild. ``on_change(corners, seconds)`` is called from the worker after each swap (for the
    OLED, logs); ``last_error`` keeps the reason a request was refused (the old grid plays on).
    """

    def __init__(self, engine, pack: Pack, corners: dict[str, int] | None = None,
                 on_change=None):
        self.engine = engine
        self.pack = pack
        self.corners = dict(corners or pack.corners)
        self.on_change = on_change
        self.last_error: str | None = None
        self.last_seconds = 0.0
        self._wanted: dict | None = None  # the next combination to build, if any
        self._target = dict(self.corners)  # the newest combination asked for (maybe building)
        self._generation = 0  # bumped by set_pack: a rebuild from the old pack is dropped
        self._cv = threading.Condition()
        self._idle = threading.Event()
        self._idle.set()
        self._thread: threading.Thread | None = None

    def select(self, corners: dict[str, int]) -> None:
        """Ask for a new combination (any subset of corners may be given)."""
        with self._cv:
            self._target = {**self._target, **corners}
            self._wanted = dict(self._target)
            self._idle.clear()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="corner-rebuild",
                                                daemon=True)
                self._thread.start()
            self._cv.notify()

    def set_pack(self, pack: Pack, grid=None) -> None:
        """Switch to another pack (its own corner choice); pending requests are dropped and a
        rebuild already running from the old pack is discarded, not swapped in. If ``grid`` is
        given it is swapped into the engine under the same lock, so nothing can overtake it."""
        with self._cv:
            self._generation += 1
            self._wanted = None
            self.pack = pack
            self.corners = dict(pack.corners)
            self._target = dict(pack.corners)
            if grid is not None:
                self.engine.set_grid(grid)

    def step(self, corner: str, delta: int) -> None:
        """Move ``corner`` ``delta`` instruments on, wrapping (an encoder turn)."""
        with self._cv:  # relative to the newest request, even one still being built
            n = len(self.pack.instrument_names)
            self.select({corner: (self._target[corner] + delta) % n})

    @property
    def target(self) -> dict[str, int]:
        """The newest combination asked for (maybe still being built)."""
        with self._cv:
            return dict(self._target)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until no rebuild is pending (tests, CLI); True if idle."""
        return self._idle.wait(timeout)

    def _work(self) -> None:
        while True:
            with self._cv:
                wanted = self._wanted
                self._wanted = None
                if wanted is None:
                    self._idle.set()
                    self._thread = None
                    return
                pack, generation = self.pack, self._generation
            t0 = time.perf_counter()
            try:
                grid = build_grid(pack, wanted)
            except (PackError, ValueError, ModelError) as exc:
                self.last_error = str(exc)
                with self._cv:
                    if self._wanted is None:  # nothing newer: steps start from what plays
                        self._target = dict(self.corners)
                continue
            with self._cv:
                if generation != self._generation:
                    continue  # the pack changed meanwhile: this grid is stale
                self.engine.set_grid(grid)
                self.corners = wanted
            self.last_error = None
            self.last_seconds = time.perf_counter() - t0
            if self.on_change is not None:
                self.on_change(dict(wanted), self.last_seconds)


def instrument_names(pack: Pack, corners: dict[str, int]) -> dict[str, str]:
    """Corner -> instrument name, for display."""
    names = pack.instrument_names
    return {c: names[i] for c, i in corners.items()}

