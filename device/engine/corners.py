"""Choosing the corner instruments on the device: rebuild the grid, swap it in between blocks.

The pack carries every source instrument's analysed frames, so a grid for any four of its N
instruments (N^4 combinations: 65,536 for 16, of which the original box offered 256) can be
made on the box. A rebuild runs on a background thread (nice 10, in the service process, never
in the audio process); the engine keeps playing the old grid
and picks up the new one at its next block (:meth:`morphbox.device.engine.voices.Engine.set_grid`
only swaps a
reference). Spectral mode mixes the corners' dB frames bilinearly (:func:`morphbox.kernels.grid.
spectral_grid`); a neural pack mixes the corners' embeddings z bilinearly and decodes every
grid point at every pitch anchor with the pack's TFLite decoder (:func:`decode_grid`). Either
way :func:`grid_codes` (shared with the host pack build, so both make the same grid) then
levels every point to its corners' power mix (:func:`morphbox.kernels.grid.power_gain`: a
morph keeps the loudness of what it mixes), mixes the decay rates and velocity layers
bilinearly, and keeps the loop seamless (:mod:`morphbox.kernels.sustain`).

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
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from morphbox.device.packs.format import (
    Grid,
    Pack,
    PackError,
    decay_from_codes,
    decay_to_codes,
    grid_from_arrays,
    grid_from_pack,
    velocity_from_codes,
    velocity_to_codes,
)
from morphbox.device.packs.neural import ModelError
from morphbox.kernels.features import channel_weights
from morphbox.kernels.grid import CORNERS, bilinear_weights, power_gain, spectral_grid
from morphbox.kernels.pitch import midi_to_hz
from morphbox.kernels.quant import DB_MIN, DB_STEP, dequantize_db
from morphbox.kernels.sustain import make_loopable


def decode_grid(decoder, z: np.ndarray, loudness_db: np.ndarray, anchors, size: int
                ) -> np.ndarray:
    """Decode a ``size x size`` morph grid from four corners' embeddings: ``(G, G, A, F, C)``
    float32 dB frames (partials, envelope, noise; :mod:`morphbox.kernels.features`).

    ``z``: ``(4, A, F, Z)`` float32 in ``CORNERS`` order; ``loudness_db``: ``(4, A, F)``.
    Each grid point's z and loudness are the corners' mixed with bilinear weights
    (:func:`morphbox.kernels.grid.corner_weights`; loudness in dB, as spectral mode mixes levels);
    f0 is the anchor's pitch. The notes go through ``decoder``
    (:meth:`morphbox.device.packs.neural.NeuralDecoder.decode_frames`) one anchor at a time
    (all grid points in one call). Raises ``ValueError`` on bad shapes, ``ModelError`` if the
    decoder fails.
    """
    out = None
    for a, frames_db in enumerate(iter_decoded(decoder, z, loudness_db, anchors, size,
                                               prefetch=False)):
        if out is None:
            out = np.empty((size, size, len(anchors)) + frames_db.shape[2:], np.float32)
        out[:, :, a] = frames_db
    return out


def iter_decoded(decoder, z: np.ndarray, loudness_db: np.ndarray, anchors, size: int, *,
                 prefetch: bool = True) -> Iterator[np.ndarray]:
    """:func:`decode_grid` one anchor at a time: yields ``(G, G, F, C)`` float32 dB per pitch
    anchor, in order. With ``prefetch`` the next anchor is decoded on a worker thread while the
    caller works on this one (the TFLite runtime releases the GIL while it runs, so a rebuild's
    decoding and its numpy post-processing overlap on two cores). Same arguments and errors as
    :func:`decode_grid`."""
    z = np.asarray(z, np.float32)
    loudness_db = np.asarray(loudness_db, np.float32)
    if z.ndim != 4 or z.shape[0] != 4 or loudness_db.shape != z.shape[:3]:
        raise ValueError(f"expected z (4, A, F, Z) and loudness (4, A, F); got {z.shape}, "
                         f"{loudness_db.shape}")
    _, _, frames, z_dims = z.shape
    w = bilinear_weights(size)

    def decode(a: int) -> np.ndarray:
        zg = (w @ z[:, a].reshape(4, -1)).reshape(-1, frames, z_dims)  # (G*G, F, Z)
        loud = (w @ loudness_db[:, a].reshape(4, -1)).reshape(-1, frames)
        f0 = np.full(loud.shape, float(midi_to_hz(anchors[a])))
        return decoder.decode_frames(zg, f0, loud).reshape(size, size, frames, -1)

    n = len(anchors)
    if not prefetch or n < 2:
        for a in range(n):
            yield decode(a)
        return
    with ThreadPoolExecutor(1, thread_name_prefix="grid-decode") as pool:
        pending = pool.submit(decode, 0)
        try:
            for a in range(n):
                frames_db = pending.result()
                if a + 1 < n:
                    pending = pool.submit(decode, a + 1)
                yield frames_db
        finally:
            pending.cancel()


def grid_codes(manifest: dict, corners: dict[str, np.ndarray],
               decoded: np.ndarray | Iterable[np.ndarray] | None = None
               ) -> dict[str, np.ndarray]:
    """The ``grid_*`` members of a pack for four corner instruments.

    ``manifest``: the pack's (dimensions, anchors, frame times, loop, ``neural_grid``);
    ``corners``: the corners' ``instruments_*`` members (``harmonics``, ``envelope``,
    ``noise`` codes, ``decay``, ``velocity``, ``hold``), each ``(4, ...)`` in ``CORNERS``
    order;
    ``decoded``: the neural grid in dB (:func:`decode_grid`, or its anchors one at a time
    from :func:`iter_decoded`), or None for a spectral grid (the corners mixed bilinearly in
    dB). A neural grid with ``neural_grid.anchor_corners`` gets
    each corner's reconstruction error added back with the bilinear weights (module
    docstring). Every point is then levelled to its corners' power mix, and kept loopable: the
    difference from the (loopable) spectral mix is crossfaded at the loop seam like a
    sustaining note, so corners stay the instruments code for code. Decay rates and velocity
    layers (and the hold weights) are the corners' mixed bilinearly. Returns uint8/int8 code
    arrays (float32 for ``grid_hold``).
    """
    m = manifest
    size = int(m["grid_size"])
    k, e = int(m["harmonics"]), int(m["envelope_bands"])
    corner_db = np.concatenate([dequantize_db(corners["instruments_harmonics"]),
                                dequantize_db(corners["instruments_envelope"]),
                                dequantize_db(corners["instruments_noise"])], axis=-1)
    weights = channel_weights(midi_to_hz(np.asarray(m["pitch_anchors"], np.float64)), k, e,
                              int(m["noise_bands"]), float(m["source_sample_rate"]))
    decay = spectral_grid(decay_from_codes(corners["instruments_decay"]), size)
    velocity = spectral_grid(velocity_from_codes(corners["instruments_velocity"]), size)
    times = np.asarray(m["frame_times"], np.float64)
    ls, le = int(m["loop"]["start"]), int(m["loop"]["end"])
    fade = float(m["loop"].get("crossfade_s", 0.3))
    anchored = bool(m.get("neural_grid", {}).get("anchor_corners", False))
    w = bilinear_weights(size)
    shape = (size, size) + corner_db.shape[1:]
    out = {name: np.empty(shape[:-1] + (n,), np.uint8) for name, n in
           (("grid_harmonics", k), ("grid_envelope", e),
            ("grid_noise", corner_db.shape[-1] - k - e))}
    per_anchor = None if decoded is None or isinstance(decoded, np.ndarray) else iter(decoded)
    for a in range(corner_db.shape[1]):  # one anchor at a time: ~1/19 of the memory
        c = corner_db[:, a:a + 1]
        mix = spectral_grid(c, size)
        if decoded is None:
            grid = mix.copy()
        else:
            grid = np.array(next(per_anchor)[:, :, None] if per_anchor is not None
                            else decoded[:, :, a:a + 1], np.float32)
            if anchored:
                grid = _anchor(grid, c, w)
        gain = power_gain(grid, c, weights[a:a + 1])
        grid += gain[..., None]
        diff = make_loopable(grid - mix, np.zeros(grid.shape[-1], np.float32), times, ls, le,
                             fade)
        final = (mix + diff)[:, :, 0]
        out["grid_harmonics"][:, :, a] = _codes(final[..., :k])
        out["grid_envelope"][:, :, a] = _codes(final[..., k:k + e])
        out["grid_noise"][:, :, a] = _codes(final[..., k + e:])
    out["grid_decay"] = decay_to_codes(decay)
    out["grid_velocity"] = velocity_to_codes(velocity)
    out["grid_hold"] = spectral_grid(corners["instruments_hold"], size).astype(np.float32)
    return out


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


CORNER_MEMBERS = ("instruments_harmonics", "instruments_envelope", "instruments_noise",
                  "instruments_decay", "instruments_velocity", "instruments_hold")


def build_grid(pack: Pack, corners: dict[str, int], *, stored: bool = True) -> Grid:
    """Grid for ``corners`` (``{"NW": i, ...}``, instrument indices) from ``pack``'s
    instruments (:func:`grid_codes`; a neural pack decodes their mixed embeddings with
    :func:`decode_grid`). Raises :class:`PackError` for an unknown corner or instrument index,
    :class:`morphbox.device.packs.neural.ModelError` if the decoder fails.

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
    decoded = None
    if m.get("mode") == "neural":
        if pack.decoder is None:
            raise PackError(f"{pack.path}: cannot decode a grid for other corners: "
                            f"{pack.decoder_error or 'neural pack loaded without its decoder'}"
                            "; the stored grid plays on")
        decoded = iter_decoded(pack.decoder, pack.z_corners(idx),
                               pack.arrays["instruments_loudness"][idx], m["pitch_anchors"],
                               int(m["grid_size"]))
    codes = grid_codes(m, {name: pack.arrays[name][idx] for name in CORNER_MEMBERS}, decoded)
    return grid_from_arrays(m, codes["grid_harmonics"], codes["grid_envelope"],
                            codes["grid_noise"], codes["grid_decay"], codes["grid_velocity"],
                            codes["grid_hold"],
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
        from morphbox.device.engine.process import lower_thread_priority
        lower_thread_priority()  # a background job: the audio and the inputs come first
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

