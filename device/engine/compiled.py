"""The engine's compiled render path: which render an engine uses, the numba cache, warm-up.

:class:`morphbox.device.engine.voices.Engine` gathers each block's inputs (note events, the
control snapshot, the smoothed touch, bend and volume) in Python, then renders through one
of two functions with the same result: its numpy code (the reference) or
:class:`CompiledRender`, one call of :func:`morphbox.kernels.compiled.render` for the whole
block. Which one (:func:`choose`): ``EngineConfig.kernel`` ("auto", "compiled", "numpy"),
overridden by ``$MORPHBOX_ENGINE``; "auto" takes the compiled one when numba imports and its
warm-up block renders, else the numpy one, and says so in the log.

No compilation in the audio path: the kernels have explicit signatures, so importing
:mod:`morphbox.kernels.compiled` compiles them, or loads them from numba's on-disk cache, before
the first block; :func:`use_cache_dir` points that cache into the box's state directory (the
service calls it before it builds the engine, so a reboot loads instead of recompiling), and
:func:`kernel_status` says how long the load took and whether it came from the cache.

Compile ahead (an install step; the first start of a box would otherwise spend minutes
compiling on a Pi): ``python -m morphbox.device.engine.compiled [--state-dir DIR]`` compiles
the kernels into ``DIR/numba-cache`` (the state directory's default as the service picks it)
and prints :func:`kernel_status` as JSON.

Owns: the arena of one engine (its per-voice arrays live there, see
:class:`morphbox.kernels.compiled.Arena`). Imports numpy, :mod:`morphbox.kernels` and
(lazily) numba; never MIDI, the panel, the API or the service.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

from morphbox.kernels.features import envelope_centres, erb_rate
from morphbox.kernels.oscillator import (
    MAX_PARTIALS,
    TABLE_MAX,
    TABLE_MIN,
    band_edges_hz,
    schroeder_phases,
)

log = logging.getLogger("morphbox")

KERNELS = ("auto", "compiled", "numpy")
ENV = "MORPHBOX_ENGINE"
CACHE_ENV = "NUMBA_CACHE_DIR"
CACHE_SUBDIR = "numba-cache"  # numba's cache inside the state directory

_kernels = None          # the imported morphbox.kernels.compiled
_status: dict = {}       # kernel_status()
_warned: set = set()


def choose(setting: str = "auto") -> str:
    """The render to use, "compiled" or "numpy", for ``EngineConfig.kernel`` ``setting``
    ("auto", "compiled" or "numpy"; ``$MORPHBOX_ENGINE`` overrides it). "auto" is "compiled"
    when the kernels load (:func:`load_kernels`), else "numpy". Raises ``ValueError`` for an
    unknown setting and ``ImportError`` if "compiled" was asked for and numba is missing."""
    env = os.environ.get(ENV, "").strip().lower()
    want = env or setting
    if want not in KERNELS:
        where = f"${ENV}" if env else "EngineConfig.kernel"
        raise ValueError(f"{where} must be one of {', '.join(KERNELS)}, not {want!r}")
    if want == "numpy":
        _say_once("numpy", "engine: numpy render (%s)",
                  f"{ENV}=numpy" if env else "kernel=numpy")
        return "numpy"
    try:
        load_kernels()
    except Exception as exc:  # noqa: BLE001 - ImportError, or numba failing to compile here
        if want == "compiled":
            raise ImportError(f"the compiled engine needs numba: {exc}") from exc
        _say_once("fallback", "engine: numpy render, the compiled kernel is unavailable "
                  "(%s); it costs ~3x the CPU", exc, level=logging.WARNING)
        return "numpy"
    return "compiled"


def use_cache_dir(path: str | os.PathLike) -> Path:
    """Keep numba's compiled kernels in ``path`` (``$NUMBA_CACHE_DIR`` unless that is set
    already); returns the directory in use. Call before the first engine is built: once the
    kernels are imported, their cache location is fixed for the process."""
    current = os.environ.get(CACHE_ENV, "").strip()
    if not current:
        current = str(Path(path))
        os.environ[CACHE_ENV] = current
        if "numba" in sys.modules:  # imported by someone else: make it re-read the variable
            from numba.core import config
            config.reload_config()
    if _kernels is not None and _status.get("cache_dir") != current:
        log.info("engine: the compiled kernels were loaded before the cache moved to %s; "
                 "they stay cached in %s", current, _status.get("cache_dir"))
    return Path(current)


def load_kernels():
    """Import (compile, or load from numba's cache) :mod:`morphbox.kernels.compiled` once per
    process and render a warm-up block; returns the module. Raises ``ImportError`` without
    numba (or whatever numba raises when it cannot compile)."""
    global _kernels
    if _kernels is not None:
        return _kernels
    import numba

    from morphbox.kernels import compiled
    seconds = compiled.LOAD_S
    stats = getattr(compiled.render, "stats", None)
    cached = bool(stats and stats.cache_hits and not stats.cache_misses)
    from numba.core import config
    cache_dir = config.CACHE_DIR or str(Path(compiled.__file__).parent / "__pycache__")
    _status.update(numba=numba.__version__, load_s=round(seconds, 3), cached=cached,
                   cache_dir=cache_dir)
    _kernels = compiled
    log.info("engine: compiled render kernel %s in %.1f s (numba %s, cache %s)",
             "loaded from the cache" if cached else "compiled", seconds, numba.__version__,
             cache_dir)
    return compiled


def attach(engine) -> str:
    """Give ``engine`` its render (``engine._render``) as its config and the environment say
    (:func:`choose`); returns "compiled" or "numpy". With "auto", a compiled render that
    cannot be built falls back to numpy with a warning; with "compiled" it raises."""
    kind = choose(engine.config.kernel)
    if kind == "compiled":
        try:
            engine._render = CompiledRender(engine).render
        except Exception as exc:
            if (os.environ.get(ENV, "").strip().lower() or engine.config.kernel) == "compiled":
                raise
            _say_once("fallback-build", "engine: numpy render, the compiled one failed to "
                      "start (%s)", exc, level=logging.WARNING)
            return "numpy"
    return kind


def kernel_status() -> dict:
    """How the compiled kernels were loaded in this process: numba version, ``load_s``
    (seconds to compile or load them), ``cached`` (loaded from numba's cache), ``cache_dir``,
    ``warm_s`` (the warm-up block); empty before they are loaded."""
    return dict(_status)


def engine_status(engine) -> dict:
    """``{"render": "compiled" | "numpy", ...}``: which render ``engine`` uses and, compiled,
    :func:`kernel_status` (for the service's status and log). An engine that renders in
    another process (a proxy) answers for itself: its ``render_status()`` is returned (the
    other process's ``engine_status`` of its engine)."""
    own = getattr(engine, "render_status", None)
    if callable(own):
        return dict(own())
    kind = getattr(engine, "kernel", None)
    return {"render": kind, **(kernel_status() if kind == "compiled" else {})}


def _say_once(key: str, msg: str, *args, level: int = logging.INFO) -> None:
    if key in _warned:
        log.debug(msg, *args)
    else:
        _warned.add(key)
        log.log(level, msg, *args)


# the engine arrays that live in the arena: attribute -> field (kept in step with Engine)
_SHARED = ("_stage", "_fresh", "_phase", "_shift", "_note", "_size", "_anchor", "_vl",
           "_level", "_gain", "_vf", "_pgain", "_t", "_pos", "_latch", "_expr", "_ctl", "_out")


class CompiledRender:
    """The compiled render of one :class:`Engine`: ``render(grid, snap, vol0, vol1)`` fills
    ``engine._out`` exactly where the numpy render would (one kernel call).

    Built by the engine after its own arrays: moves them into an arena (same dtypes, shapes
    and values; the numpy code keeps working on them) next to the kernel's own state.
    """

    def __init__(self, engine):
        k = load_kernels()
        self._k = k
        self.engine = e = engine
        cfg = e.config
        if not 16 <= cfg.block_size <= 512 or cfg.block_size & (cfg.block_size - 1):
            raise ValueError(f"the compiled engine renders blocks of 16..512 frames, a power "
                             f"of two, not {cfg.block_size}")
        grid = e.grid
        cap = len(e._stage)
        bs = cfg.block_size
        nfft = e._noise.n_fft
        bins = nfft // 2 + 1
        nch = grid.frames_db.shape[-1]
        k_h, n_env = grid.n_harmonics, grid.n_envelope
        hmax = TABLE_MAX // 2
        work = hmax * (cap + 1)  # a batch of spectra: every voice and the noise frame
        ar = self.arena = k.Arena()
        fields = {"_stage": k.F_STAGE, "_fresh": k.F_FRESH, "_phase": k.F_PHASE,
                  "_shift": k.F_SHIFT, "_note": k.F_NOTE, "_size": k.F_SIZE,
                  "_anchor": k.F_ANCHOR, "_vl": k.F_VL, "_level": k.F_LEVEL, "_gain": k.F_GAIN,
                  "_vf": k.F_VF, "_pgain": k.F_PGAIN, "_t": k.F_T, "_pos": k.F_POS,
                  "_latch": k.F_LATCH, "_expr": k.F_EXPR, "_ctl": k.F_CTL, "_out": k.F_OUT}
        assert tuple(fields) == _SHARED
        for name, field in fields.items():
            arr = getattr(e, name)
            ar.add(field, arr.dtype, arr.shape)
        n_above = max(MAX_PARTIALS - k_h, 1)
        for field, dtype, shape in (
                (k.F_PARAMS, np.float64, k.N_PARAMS), (k.F_TSEL, np.uint8, cap),
                (k.F_TABLES, np.float32, (cap, 2, TABLE_MAX + 1)),
                (k.F_PKEY, np.float64, cap), (k.F_PSIZE, np.int64, cap),
                (k.F_INC, np.int64, cap), (k.F_NPART, np.int64, cap),
                (k.F_PGV, np.float32, (cap, MAX_PARTIALS)), (k.F_EIV, np.int32, (cap, n_above)),
                (k.F_EWV, np.float32, (cap, n_above)), (k.F_LIVE, np.int64, cap),
                (k.F_ENV0, np.float32, cap), (k.F_ROW, np.float32, nch),
                (k.F_DB, np.float32, MAX_PARTIALS), (k.F_CR, np.float32, work),
                (k.F_CI, np.float32, work), (k.F_XR, np.float32, work),
                (k.F_XI, np.float32, work), (k.F_YR, np.float32, work),
                (k.F_YI, np.float32, work), (k.F_MONO, np.float32, bs),
                (k.F_LANE, np.int64, cap), (k.F_AMP, np.float32, 2 * cap),
                (k.F_CLASS, np.int64, 2 * k.N_CLASSES),
                (k.F_DROOP, np.float32, (k.N_CLASSES, MAX_PARTIALS)),
                (k.F_BITS, np.int32, max(MAX_PARTIALS, grid.n_noise_bands)),
                (k.F_LIN, np.float32, max(MAX_PARTIALS, grid.n_noise_bands)),
                (k.F_NPOW, np.float32, max(grid.n_noise_bands, 1)),
                (k.F_CARRY, np.float64, nfft), (k.F_FRAME, np.float32, nfft),
                (k.F_RNG, np.uint64, 6),
                (k.F_POOL, np.float32, (e._noise._pool.shape[0], bins, 2)),
                (k.F_WINDOW, np.float64, nfft), (k.F_NBAND, np.int64, bins),
                (k.F_NW0, np.float32, bins), (k.F_NW1, np.float32, bins),
                (k.F_RAMP, np.float32, bs), (k.F_COS, np.float32, MAX_PARTIALS),
                (k.F_SIN, np.float32, MAX_PARTIALS), (k.F_TW, np.float32, 2 * hmax),
                (k.F_TWR, np.float32, TABLE_MAX), (k.F_LOG2K, np.float32, MAX_PARTIALS),
                (k.F_ECENTRE, np.float64, max(n_env, 1))):
            ar.add(field, dtype, shape)
        ar.build()
        missing = set(range(k.N_FIELDS)) - set(ar._spec)
        assert not missing, f"arena fields without a place: {sorted(missing)}"
        for name, field in fields.items():  # the engine's arrays move into the arena
            view = ar.view(field)
            view[...] = getattr(e, name)
            setattr(e, name, view)
        e._expr_to = e._ctl[:2]
        e._timbre = e._ctl[2]
        self._fill_constants(grid, cap, bs, nfft, n_env)
        self._params = p = ar.view(k.F_PARAMS)
        # the noise frame picks continue the numpy render's generator (numpy's PCG64, stepped
        # in the kernel: the same picks, nothing drawn in Python per block)
        st = e._noise._rng.bit_generator.state
        if st["bit_generator"] != "PCG64":
            raise ValueError(f"the compiled noise follows PCG64, not {st['bit_generator']}")
        full = (1 << 64) - 1
        ar.view(k.F_RNG)[:] = (st["state"]["state"] >> 64, st["state"]["state"] & full,
                               st["state"]["inc"] >> 64, st["state"]["inc"] & full,
                               st["has_uint32"], st["uinteger"])
        p[k.P_POOL] = e._noise._POOL
        p[k.P_DT] = e._dt
        p[k.P_FADE] = cfg.steal_fade_s
        p[k.P_SMOOTH] = e._smooth
        p[k.P_SMOOTH_EXPR] = e._smooth_expr
        p[k.P_VOICE_GAIN] = cfg.voice_gain
        p[k.P_SR] = cfg.sample_rate
        p[k.P_BAND_LO], p[k.P_BAND_HI] = band_edges_hz(cfg.sample_rate)
        lim = e._limiter
        p[k.P_LIM_GAIN] = lim.gain
        p[k.P_LIM_RECOVER] = lim._recover
        p[k.P_LIM_THRESHOLD] = lim.threshold
        p[k.P_LIM_KNEE] = lim.knee
        p[k.P_LIM_CEILING] = lim.ceiling
        p[k.P_NOISE_SCALE] = 2.0 / nfft
        p[k.P_CAP] = cap
        p[k.P_BS] = bs
        p[k.P_OUT_CH] = cfg.channels
        p[k.P_NFFT] = nfft
        p[k.P_MAXP] = MAX_PARTIALS
        p[k.P_TABLE_MAX] = TABLE_MAX
        p[k.P_PITCH_BEND] = np.nan
        self._pkey = ar.view(k.F_PKEY)
        self._pkey[:] = np.nan  # no voice's pitch is cached yet
        self._grid = None
        self._args = ()
        self._expression = None
        self._modes = {"follow": k.MODE_FOLLOW, "latch": k.MODE_LATCH, "mpe": k.MODE_MPE}
        self._kernel = k.render
        if "warm_s" not in _status:
            self._warm(grid)

    def _fill_constants(self, grid, cap, bs, nfft, n_env) -> None:
        k, ar, e = self._k, self.arena, self.engine
        ar.view(k.F_RAMP)[:] = e._ramp
        theta = schroeder_phases(MAX_PARTIALS) - np.pi / 2
        ar.view(k.F_COS)[:] = np.cos(theta)
        ar.view(k.F_SIN)[:] = np.sin(theta)
        hmax = TABLE_MAX // 2
        w = np.exp(2j * np.pi * np.arange(hmax) / hmax)
        ar.view(k.F_TW)[:] = np.concatenate([w.real, w.imag])
        w = np.exp(2j * np.pi * np.arange(hmax) / TABLE_MAX)
        ar.view(k.F_TWR)[:] = np.concatenate([w.real, w.imag])
        ar.view(k.F_LOG2K)[:] = e._log2k
        droop = ar.view(k.F_DROOP)
        for c in range(k.N_CLASSES):
            if TABLE_MIN <= 1 << c <= TABLE_MAX:
                droop[c] = k.droop_gains(1 << c, MAX_PARTIALS)
        if n_env:
            ar.view(k.F_ECENTRE)[:] = erb_rate(envelope_centres(n_env))
        noise = e._noise
        pool = noise._pool
        ar.view(k.F_POOL)[:] = np.stack([pool.real, pool.imag], axis=-1)
        ar.view(k.F_WINDOW)[:] = noise._window
        # the band -> bin map has at most two neighbouring bands per bin
        m = noise._map
        band = np.full(m.shape[1], -1, np.int64)
        w0 = np.zeros(m.shape[1], np.float32)
        w1 = np.zeros(m.shape[1], np.float32)
        for b in range(m.shape[1]):
            nz = np.flatnonzero(m[:, b])
            if len(nz) == 0:
                continue
            if len(nz) > 2 or (len(nz) == 2 and nz[1] != nz[0] + 1):
                raise ValueError("noise map with more than two neighbouring bands per bin")
            band[b] = nz[0]
            w0[b] = m[nz[0], b]
            w1[b] = m[nz[0] + 1, b] if nz[0] + 1 < m.shape[0] else 0.0
        ar.view(k.F_NBAND)[:] = band
        ar.view(k.F_NW0)[:] = w0
        ar.view(k.F_NW1)[:] = w1
        ar.view(k.F_CARRY)[:len(noise._carry)] = noise._carry

    def _adopt(self, grid) -> None:
        """Kernel arguments and grid dimensions for ``grid`` (the engine adopted it). Raises
        ``ValueError`` for a grid whose frame times, loop or velocity layers are not finite
        and increasing (the numpy render fails on such a grid too; the kernel must not index
        by them)."""
        k, p, e = self._k, self._params, self.engine
        t = np.asarray(grid.frame_times, np.float64)
        layers = np.asarray(grid.velocity_layers, np.float64)
        t0, t1 = e._loop_s
        if (grid.n_frames < 2 or grid.size < 2 or len(t) != grid.n_frames
                or not np.all(np.isfinite(t)) or not np.all(np.diff(t) > 0)
                or not (np.isfinite(t0) and np.isfinite(t1) and t1 > t0)
                or not 0 <= grid.loop_start < grid.loop_end < grid.n_frames
                or not len(layers) or not np.all(np.isfinite(layers))
                or not np.all(np.diff(layers) > 0)):
            raise ValueError(f"grid {grid.name!r}: frame times, loop or velocity layers are not "
                             "finite and increasing; the compiled engine cannot play it")
        c = grid.frames_db.shape[-1]
        self._args = (np.ascontiguousarray(e._flat, np.float32).reshape(-1, c),
                      np.ascontiguousarray(e._flat_vel, np.float32).reshape(-1, c),
                      np.ascontiguousarray(e._flat_decay, np.float32).reshape(-1, c),
                      np.ascontiguousarray(e._flat_hold, np.float32).reshape(-1),
                      np.ascontiguousarray(grid.frame_times, np.float64))
        p[k.P_G] = grid.size
        p[k.P_ANCHORS] = len(grid.anchors)
        p[k.P_FRAMES] = grid.n_frames
        p[k.P_CHANNELS] = c
        p[k.P_K] = grid.n_harmonics
        p[k.P_E] = grid.n_envelope
        p[k.P_LAYERS] = grid.velocity_db.shape[3]
        p[k.P_LOOP_END] = grid.loop_end
        p[k.P_LOOP_T0], p[k.P_LOOP_T1] = e._loop_s
        self._grid = grid

    def _set_expression(self, x) -> None:
        k, p = self._k, self._params
        p[k.P_TX], p[k.P_TY], p[k.P_PX], p[k.P_PY] = (x.timbre_x, x.timbre_y, x.pressure_x,
                                                      x.pressure_y)
        p[k.P_TCENTRE], p[k.P_BRIGHT], p[k.P_LOUD] = (x.timbre_centre, x.pressure_brightness,
                                                      x.pressure_loudness)
        self._expression = x

    def render(self, grid, snap, vol0: float, vol1: float) -> None:
        """One block into ``engine._out`` (the engine has drained its events, adopted
        ``grid`` and smoothed the touch, bend and volume)."""
        e, p, k = self.engine, self._params, self._k
        if grid is not self._grid:
            self._adopt(grid)
        if snap.expression is not self._expression:
            self._set_expression(snap.expression)
        p[1:5] = (snap.attack_s, snap.decay_s, snap.sustain, snap.release_s)
        p[6:8] = (self._modes[snap.morph_mode], e._spread)
        pb = e._pitch_bend
        p[10:19] = (e._glide, e._bend_glide, e._pitch_dirty, np.nan if pb is None else pb,
                    e._bend, e._x, e._y, snap.x, snap.y)
        p[26] = e._pgain_on
        p[28:30] = (vol0, vol1)
        self._kernel(self.arena.buffer, self.arena.layout, *self._args)
        e._spread = bool(p[7])
        glide, bend_glide, dirty, pitch_bend = p[10:14].tolist()
        e._glide, e._bend_glide, e._pitch_dirty = int(glide), int(bend_glide), bool(dirty)
        e._pitch_bend = None if pitch_bend != pitch_bend else pitch_bend
        e._pgain_on = bool(p[26])
        if p[k.P_NONFINITE]:
            e.nonfinite_blocks += int(p[k.P_NONFINITE])
            p[k.P_NONFINITE] = 0.0

    def _warm(self, grid) -> None:
        """Render one block with a voice on a copy of this arena (then put it back): the
        kernels run once before any audio does; their time goes into :func:`kernel_status`."""
        e, ar = self.engine, self.arena
        saved = ar.buffer.copy()
        attrs = {n: getattr(e, n) for n in ("_glide", "_bend_glide", "_pitch_dirty",
                                            "_pitch_bend", "_spread", "_pgain_on")}
        t0 = time.perf_counter()
        try:
            if e._grid_seen is not grid:
                e._adopt_grid(grid)
            e._stage[0] = 1
            e._note[0] = 60
            e._size[0] = 512
            e._shift[0] = 23
            e._gain[0] = 1.0
            e._fresh[0] = True
            e._pitch_dirty = True
            self.render(grid, e.controls.snapshot, 1.0, 1.0)
            if not np.all(np.isfinite(e._out)):
                raise FloatingPointError("the warm-up block is not finite")
        finally:
            ar.buffer[:] = saved
            for n, v in attrs.items():
                setattr(e, n, v)
            e._grid_seen = None  # the engine adopts its grid again at its first block
            self._grid = self._expression = None  # their params went back with the arena
        _status["warm_s"] = round(time.perf_counter() - t0, 6)
        log.info("engine: compiled render warmed up (one block with a voice) in %.1f ms",
                 _status["warm_s"] * 1000)


def main(argv: list[str] | None = None) -> int:
    """``python -m morphbox.device.engine.compiled``: compile (or load) the kernels into the
    state directory's numba cache; prints the status as one JSON line. Exit 1 without numba."""
    import argparse
    import json

    from morphbox.device.common import state_dir

    ap = argparse.ArgumentParser(description="Compile the engine's render kernels into the "
                                 "state directory's numba cache (an install step).")
    ap.add_argument("--state-dir", help="the service's state directory (default: "
                    "$MORPHBOX_STATE_DIR, else $XDG_STATE_HOME/morphbox, else "
                    "~/.local/state/morphbox)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    use_cache_dir(state_dir(args.state_dir) / CACHE_SUBDIR)
    try:
        load_kernels()
    except Exception as exc:  # noqa: BLE001 - ImportError, or numba failing to compile
        log.error("engine: the compiled kernels are unavailable here (%s); the engine will "
                  "render with numpy", exc)
        return 1
    print(json.dumps(kernel_status()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
