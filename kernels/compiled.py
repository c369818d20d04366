"""The engine's per-block work for all voices as compiled code (numba): one call per block.

:func:`render` does, for every sounding voice at once, what the numpy engine
(:mod:`morphbox.device.engine.voices`, the reference it is tested against) does with ~40 numpy
calls: the ADSR (:mod:`morphbox.kernels.envelope`), the per-voice expression glide and morph
position (each voice its own ``(x, y)``), the note time past the loop
(:func:`morphbox.kernels.sustain.loop_time`), the bilinear grid gather of the voice's four
points and two frames with its velocity layers, decay and hold (the engine's ``_mix_voices``),
the partial levels with the harmonic envelope above the first ``K``
(:func:`morphbox.kernels.features.envelope_interp`), dB -> linear, the band limit and
interpolation droop (:func:`morphbox.kernels.oscillator.partial_gains`), the single-cycle table
(an inverse real FFT, :class:`morphbox.kernels.oscillator.WavetableBank`), the crossfaded table
read (:func:`morphbox.kernels.oscillator.read_crossfade`), the amplitude ramp, the noise of all
voices (:class:`morphbox.kernels.noise.NoiseSynth`), the master volume and the soft limiter
(:class:`morphbox.kernels.limiter.SoftLimiter`). Numbers follow the numpy engine in float32
(float64 where it uses float64); the inverse FFTs are float32 here (float64 in numpy), so the
two engines agree to ~1e-6 of full scale, not bit for bit.

Memory: every array the kernel touches between blocks lives in one byte buffer, the *arena*
(:class:`Arena`), at offsets the int64 ``layout`` table holds (``layout[FIELD]``): a call
unboxes 7 arrays, not 40 (numba's per-argument cost is ~0.2-1 us). The engine's own per-voice
arrays (stage, level, phase, ...) are views into it, so note events written by Python are what
the kernel reads. Nothing is allocated per block. Per-block inputs and the few scalars the
kernel updates (glide counters, limiter gain, ...) are the float64 ``params`` field (``P_*``).

Compiled ahead of use (explicit signatures, ``cache=True``, ``nogil=True``): importing this
module compiles the kernels, or loads them from numba's cache (``NUMBA_CACHE_DIR``, which must
be set before numba is imported to take effect). Raises ``ImportError`` without numba.

Imports: numpy, numba and :data:`morphbox.kernels.features.DB_FLOOR`.
"""

from __future__ import annotations

import math
import time

_T0 = time.perf_counter()

import numpy as np  # noqa: E402
from numba import njit  # noqa: E402

from morphbox.kernels.features import DB_FLOOR  # noqa: E402

_FLOOR = np.float32(DB_FLOOR)  # this level (pack code 0) and below is silence
_ONE = np.float32(1.0)
_ZERO = np.float32(0.0)

# ---- arena fields (layout indices) ------------------------------------------------------------
(F_PARAMS, F_STAGE, F_FRESH, F_TSEL, F_PHASE, F_SHIFT, F_NOTE, F_SIZE, F_ANCHOR, F_VL,
 F_LEVEL, F_GAIN, F_VF, F_PGAIN, F_T, F_POS, F_LATCH, F_EXPR, F_CTL,
 F_TABLES, F_PKEY, F_PSIZE, F_INC, F_NPART, F_PGV, F_EIV, F_EWV,
 F_LIVE, F_ENV0, F_ROW, F_DB, F_CR, F_CI, F_XR, F_XI, F_YR, F_YI, F_MONO, F_OUT, F_NPOW,
 F_CARRY, F_FRAME, F_RNG, F_POOL, F_WINDOW, F_NBAND, F_NW0, F_NW1,
 F_RAMP, F_COS, F_SIN, F_TW, F_TWR, F_LOG2K, F_ECENTRE, F_LANE, F_AMP, F_CLASS,
 F_DROOP, F_BITS, F_LIN) = range(61)
N_FIELDS = 61
N_CLASSES = 13  # table sizes 2**0 .. 2**12 (voices 256..2048, the noise frame)

# ---- params (float64 field F_PARAMS) -----------------------------------------------------------
(P_DT, P_ATTACK, P_DECAY, P_SUSTAIN, P_RELEASE, P_FADE,
 P_MODE, P_SPREAD, P_SMOOTH, P_SMOOTH_EXPR, P_GLIDE, P_BEND_GLIDE, P_PITCH_DIRTY,
 P_PITCH_BEND, P_BEND, P_X, P_Y, P_SNAP_X, P_SNAP_Y,
 P_TX, P_TY, P_PX, P_PY, P_TCENTRE, P_BRIGHT, P_LOUD, P_PGAIN_ON,
 P_VOICE_GAIN, P_VOL0, P_VOL1,
 P_SR, P_BAND_LO, P_BAND_HI,
 P_LIM_GAIN, P_LIM_RECOVER, P_LIM_THRESHOLD, P_LIM_KNEE, P_LIM_CEILING,
 P_POOL, P_NOISE_SCALE,
 P_G, P_ANCHORS, P_FRAMES, P_CHANNELS, P_K, P_E, P_LAYERS, P_LOOP_END, P_LOOP_T0, P_LOOP_T1,
 P_CAP, P_BS, P_OUT_CH, P_NFFT, P_MAXP, P_TABLE_MAX, P_LIVE, P_NONFINITE) = range(58)
N_PARAMS = 64

MODE_FOLLOW, MODE_LATCH, MODE_MPE = 0, 1, 2
IDLE, ATTACK, DECAY, SUSTAIN, RELEASE, FADE = 0, 1, 2, 3, 4, 5  # as kernels.envelope
WEIGHT_FLOOR = 1e-9  # as the engine's _mix_voices: smaller bilinear/frame factors are 0
_LN10_20 = np.float32(np.log(10.0) / 20.0)
_ATTACK_DONE = np.float32(1.0 - 1e-6)
_END_LEVEL = np.float32(1e-4)
_SUSTAIN_NEAR = np.float32(1e-3)
_LN1000 = math.log(1000.0)
_PITCH_MIN, _PITCH_MAX = -60.0, 135.0
_HEADROOM = 0.3


class Arena:
    """Typed numpy views into one byte buffer, 64-byte aligned, and the ``layout`` table of
    their byte offsets (indexed by the ``F_*`` constants) the kernel finds them by.

    ``add(field, dtype, shape)`` reserves a field (before :meth:`build`); after it,
    ``view(field)`` is the array (zeros until written).
    """

    def __init__(self):
        self._spec: dict[int, tuple[np.dtype, tuple[int, ...]]] = {}
        self.buffer: np.ndarray | None = None
        self.layout = np.zeros(N_FIELDS, np.int64)
        self._views: dict[int, np.ndarray] = {}

    def add(self, field: int, dtype, shape) -> None:
        self._spec[field] = (np.dtype(dtype), tuple(int(s) for s in np.atleast_1d(shape)))

    def build(self) -> None:
        offset = 0
        for field, (dtype, shape) in self._spec.items():
            self.layout[field] = offset
            offset += -(-max(int(np.prod(shape)), 1) * dtype.itemsize // 64) * 64
        self.buffer = np.zeros(offset, np.uint8)
        for field, (dtype, shape) in self._spec.items():
            o = int(self.layout[field])
            n = int(np.prod(shape)) * dtype.itemsize
            self._views[field] = self.buffer[o:o + n].view(dtype).reshape(shape)

    def view(self, field: int) -> np.ndarray:
        return self._views[field]

    @property
    def nbytes(self) -> int:
        return 0 if self.buffer is None else self.buffer.nbytes


# ---- typed views inside the kernel ------------------------------------------------------------
@njit(cache=True, nogil=True, inline="always")
def _f64(a, lay, f, n):
    o = lay[f]
    return a[o:o + 8 * n].view(np.float64)


@njit(cache=True, nogil=True, inline="always")
def _f32(a, lay, f, n):
    o = lay[f]
    return a[o:o + 4 * n].view(np.float32)


@njit(cache=True, nogil=True, inline="always")
def _i64(a, lay, f, n):
    o = lay[f]
    return a[o:o + 8 * n].view(np.int64)


@njit(cache=True, nogil=True, inline="always")
def _i32(a, lay, f, n):
    o = lay[f]
    return a[o:o + 4 * n].view(np.int32)


@njit(cache=True, nogil=True, inline="always")
def _u32(a, lay, f, n):
    o = lay[f]
    return a[o:o + 4 * n].view(np.uint32)


@njit(cache=True, nogil=True, inline="always")
def _i8(a, lay, f, n):
    o = lay[f]
    return a[o:o + n].view(np.int8)


@njit(cache=True, nogil=True, inline="always")
def _u8(a, lay, f, n):
    o = lay[f]
    return a[o:o + n]


# ---- inverse real FFT ------------------------------------------------------------------------
@njit(cache=True, nogil=True, fastmath={"contract"})
def _radix4(xr, xi, yr, yi, a0, step, o, run, w1r, w1i, w2r, w2i, w3r, w3i):
    """``run`` radix-4 inverse butterflies: inputs at ``a0 + k * step``, outputs at
    ``o + k * run`` (k = 0..3, contiguous runs, vectorised), output k times ``w_k``."""
    x0r = xr[a0:a0 + run]
    x0i = xi[a0:a0 + run]
    x1r = xr[a0 + step:a0 + step + run]
    x1i = xi[a0 + step:a0 + step + run]
    x2r = xr[a0 + 2 * step:a0 + 2 * step + run]
    x2i = xi[a0 + 2 * step:a0 + 2 * step + run]
    x3r = xr[a0 + 3 * step:a0 + 3 * step + run]
    x3i = xi[a0 + 3 * step:a0 + 3 * step + run]
    y0r = yr[o:o + run]
    y0i = yi[o:o + run]
    y1r = yr[o + run:o + 2 * run]
    y1i = yi[o + run:o + 2 * run]
    y2r = yr[o + 2 * run:o + 3 * run]
    y2i = yi[o + 2 * run:o + 3 * run]
    y3r = yr[o + 3 * run:o + 4 * run]
    y3i = yi[o + 3 * run:o + 4 * run]
    for q in range(run):
        ar = x0r[q]
        ai = x0i[q]
        br = x1r[q]
        bi = x1i[q]
        cr = x2r[q]
        ci = x2i[q]
        dr = x3r[q]
        di = x3i[q]
        s0r = ar + cr
        s0i = ai + ci
        d0r = ar - cr
        d0i = ai - ci
        s1r = br + dr
        s1i = bi + di
        d1r = br - dr
        d1i = bi - di
        y0r[q] = s0r + s1r
        y0i[q] = s0i + s1i
        t1r = d0r - d1i  # d0 + j d1
        t1i = d0i + d1r
        t2r = s0r - s1r
        t2i = s0i - s1i
        t3r = d0r + d1i  # d0 - j d1
        t3i = d0i - d1r
        y1r[q] = t1r * w1r - t1i * w1i
        y1i[q] = t1r * w1i + t1i * w1r
        y2r[q] = t2r * w2r - t2i * w2i
        y2i[q] = t2r * w2i + t2i * w2r
        y3r[q] = t3r * w3r - t3i * w3i
        y3i[q] = t3r * w3i + t3i * w3r


@njit(cache=True, nogil=True, fastmath={"contract"})
def _radix4_short(xr, xi, yr, yi, m, run, twr, twi, step):
    """A radix-4 stage of :func:`_ifft` whose runs are shorter than a vector: ``m`` groups of
    ``run`` butterflies, twiddle ``k`` of group p at ``twr[k * p * step]``."""
    span = run * m
    for p in range(m):
        i1 = p * step
        w1r = twr[i1]
        w1i = twi[i1]
        w2r = twr[2 * i1]
        w2i = twi[2 * i1]
        w3r = twr[3 * i1]
        w3i = twi[3 * i1]
        for q in range(run):
            a = run * p + q
            o = 4 * run * p + q
            ar = xr[a]
            ai = xi[a]
            br = xr[a + span]
            bi = xi[a + span]
            cr = xr[a + 2 * span]
            ci = xi[a + 2 * span]
            dr = xr[a + 3 * span]
            di = xi[a + 3 * span]
            s0r = ar + cr
            s0i = ai + ci
            d0r = ar - cr
            d0i = ai - ci
            s1r = br + dr
            s1i = bi + di
            d1r = br - dr
            d1i = bi - di
            yr[o] = s0r + s1r
            yi[o] = s0i + s1i
            t1r = d0r - d1i
            t1i = d0i + d1r
            t2r = s0r - s1r
            t2i = s0i - s1i
            t3r = d0r + d1i
            t3i = d0i - d1r
            yr[o + run] = t1r * w1r - t1i * w1i
            yi[o + run] = t1r * w1i + t1i * w1r
            yr[o + 2 * run] = t2r * w2r - t2i * w2i
            yi[o + 2 * run] = t2r * w2i + t2i * w2r
            yr[o + 3 * run] = t3r * w3r - t3i * w3i
            yi[o + 3 * run] = t3r * w3i + t3i * w3r


@njit(cache=True, nogil=True, fastmath={"contract"})
def _radix2(xr, xi, yr, yi, a0, a1, o, run, tr, ti):
    """``run`` radix-2 inverse butterflies: inputs at ``a0``, ``a1``, outputs at ``o`` and
    ``o + run`` (the second times ``tr + j ti``)."""
    x0r = xr[a0:a0 + run]
    x0i = xi[a0:a0 + run]
    x1r = xr[a1:a1 + run]
    x1i = xi[a1:a1 + run]
    y0r = yr[o:o + run]
    y0i = yi[o:o + run]
    y1r = yr[o + run:o + 2 * run]
    y1i = yi[o + run:o + 2 * run]
    for q in range(run):
        ar = x0r[q]
        ai = x0i[q]
        br = x1r[q]
        bi = x1i[q]
        y0r[q] = ar + br
        y0i[q] = ai + bi
        dr = ar - br
        di = ai - bi
        y1r[q] = dr * tr - di * ti
        y1i[q] = dr * ti + di * tr


@njit(cache=True, nogil=True)
def _ifft(xr, xi, yr, yi, twr, twi, n, tw_stride, lanes):
    """Unnormalised inverse complex FFTs of ``lanes`` interleaved signals: signal ``v``'s point
    ``i`` is ``xr[i * lanes + v] + j xi[i * lanes + v]``, ``n`` points (a power of two).
    Stockham autosort (natural order in and out), radix 4 (and one radix-2 stage when
    ``log2 n`` is odd); every butterfly runs over ``s * lanes`` contiguous values (``s`` the
    stage's stride), so the lanes vectorise even in the first stages. The work buffers ``y*``
    are overwritten. ``tw*``: ``exp(2 pi j k / M)`` for k < M (M = ``n * tw_stride``).
    Returns 0 when the result is in ``x*``, 1 when in ``y*``."""
    nc = n
    s = 1
    flip = 0
    while nc > 1:
        run = s * lanes
        if nc % 4 == 0:
            m = nc // 4
            if run < 4:  # short runs (the first stage of a few lanes): no slices, plain loops
                _radix4_short(xr, xi, yr, yi, m, run, twr, twi, s * tw_stride)
            else:
                for p in range(m):
                    i1 = p * s * tw_stride
                    _radix4(xr, xi, yr, yi, run * p, run * m, 4 * run * p, run, twr[i1],
                            twi[i1], twr[2 * i1], twi[2 * i1], twr[3 * i1], twi[3 * i1])
            nc = m
            s *= 4
        else:
            m = nc // 2
            if run < 4:
                for p in range(m):
                    i1 = p * s * tw_stride
                    tr = twr[i1]
                    ti = twi[i1]
                    for q in range(run):
                        a0 = run * p + q
                        a1 = a0 + run * m
                        o = 2 * run * p + q
                        ar = xr[a0]
                        ai = xi[a0]
                        br = xr[a1]
                        bi = xi[a1]
                        yr[o] = ar + br
                        yi[o] = ai + bi
                        dr = ar - br
                        di = ai - bi
                        yr[o + run] = dr * tr - di * ti
                        yi[o + run] = dr * ti + di * tr
            else:
                for p in range(m):
                    i1 = p * s * tw_stride
                    _radix2(xr, xi, yr, yi, run * p, run * (p + m), 2 * run * p, run,
                            twr[i1], twi[i1])
            nc = m
            s *= 2
        xr, yr = yr, xr
        xi, yi = yi, xi
        flip ^= 1
    return flip


@njit(cache=True, nogil=True)
def real_tables(cr, ci, n, lanes, xr, xi, yr, yi, twr, twi, tw_stride, pwr, pwi, pw_stride):
    """Inverse real FFTs of ``lanes`` spectra at once: signal ``v`` is
    ``x_v[t] = Re sum_{p=1}^{n/2-1} c_v[p] exp(2 pi j p t / n)``, t in 0..n-1, with
    ``c_v[p] = cr[p * lanes + v] + j ci[p * lanes + v]`` (p < n/2; p = 0 is ignored and the
    Nyquist bin is 0): one ``n/2``-point complex FFT per signal. Returns ``(zr, zi)``, the work
    buffers holding the result: ``x_v[2t] = zr[t * lanes + v]``, ``x_v[2t + 1] =
    zi[t * lanes + v]``. ``tw*``: :func:`_ifft` twiddles; ``pw*``: ``exp(2 pi j k / N)`` for
    k < N / 2 with ``N = n * pw_stride``."""
    m = n // 2
    # E_p = (c_p + conj c_{m-p}) / 2, O_p = (c_p - conj c_{m-p}) / 2 * exp(2 pi j p / n),
    # Z_p = E_p + j O_p; z = IDFT_m(Z): x[2t] = Re z_t, x[2t + 1] = Im z_t
    half = np.float32(0.5)
    for v in range(lanes):
        xr[v] = 0.0
        xi[v] = 0.0
    for p in range(1, (m + 1) // 2):  # Z_p and Z_{m-p} from the same two bins
        q = m - p
        wr = pwr[p * pw_stride]  # exp(2 pi j p / n); exp(2 pi j q / n) = -conj of it
        wi = pwi[p * pw_stride]
        ap = p * lanes
        aq = q * lanes
        for v in range(lanes):
            ar = cr[ap + v]
            ai = ci[ap + v]
            br = cr[aq + v]
            bi = ci[aq + v]
            er = half * (ar + br)  # E_p = (c_p + conj c_q) / 2, E_q = conj E_p
            ei = half * (ai - bi)
            dr = half * (ar - br)  # D_p = (c_p - conj c_q) / 2, D_q = -conj D_p
            di = half * (ai + bi)
            orr = dr * wr - di * wi  # O_p = D_p w_p
            oi = dr * wi + di * wr
            xr[ap + v] = er - oi  # Z_p = E_p + j O_p
            xi[ap + v] = ei + orr
            # O_q = D_q w_q = (-conj D_p)(-conj w_p) = conj O_p
            xr[aq + v] = er + oi
            xi[aq + v] = orr - ei
    if m % 2 == 0 and m >= 2:  # the middle bin pairs with itself
        p = m // 2
        wr = pwr[p * pw_stride]
        wi = pwi[p * pw_stride]
        ap = p * lanes
        for v in range(lanes):
            ar = cr[ap + v]
            ai = ci[ap + v]
            er = ar  # E = (c + conj c) / 2
            dr = np.float32(0.0)  # D = (c - conj c) / 2 = j ai
            di = ai
            orr = dr * wr - di * wi
            oi = dr * wi + di * wr
            xr[ap + v] = er - oi
            xi[ap + v] = orr
    if _ifft(xr, xi, yr, yi, twr, twi, m, tw_stride, lanes):
        return yr, yi
    return xr, xi


# ---- pieces of the block ----------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _adsr(stage, level, cap, dt, attack_s, decay_s, sustain, release_s, fade_s):
    """kernels.envelope.advance_adsr, float32 like numpy 1.x."""
    attack_s = max(attack_s, 1e-3)
    decay_s = max(decay_s, 1e-3)
    release_s = max(release_s, 1e-3)
    fade_s = max(fade_s, 1e-3)
    sus = min(max(sustain, 0.0), 1.0)
    sus32 = np.float32(sus)
    up = np.float32(dt / attack_s)
    kd = np.float32(math.exp(-dt * 5.0 / decay_s))
    kr = np.float32(math.exp(-dt * _LN1000 / release_s))
    down = np.float32(dt / fade_s)
    for s in range(cap):
        st = stage[s]
        if st == IDLE:
            continue
        if st == SUSTAIN:
            level[s] = sus32
        elif st == ATTACK:
            lv = level[s] + up
            if lv >= _ATTACK_DONE:
                lv = np.float32(1.0)
                stage[s] = DECAY
            level[s] = lv
        elif st == DECAY:
            lv = sus32 + (level[s] - sus32) * kd
            if abs(lv - sus32) < _SUSTAIN_NEAR:
                stage[s] = SUSTAIN
            level[s] = lv
        elif st == RELEASE:
            level[s] = level[s] * kr
        elif st == FADE:
            level[s] = max(level[s] - down, np.float32(0.0))
        if stage[s] >= RELEASE and level[s] < _END_LEVEL:
            level[s] = 0.0
            stage[s] = IDLE


@njit(cache=True, nogil=True)
def _interp_index(x, times, n):
    """np.interp(x, times, arange(n)) for increasing ``times``."""
    if x <= times[0]:
        return 0.0
    if x >= times[n - 1]:
        return float(n - 1)
    lo = 0
    hi = n - 1
    while hi - lo > 1:
        mid = (lo + hi) >> 1
        if times[mid] <= x:
            lo = mid
        else:
            hi = mid
    slope = 1.0 / (times[lo + 1] - times[lo])
    return slope * (x - times[lo]) + lo


@njit(cache=True, nogil=True)
def _glide_to(pos, r, s, target, smooth):
    """One-pole step of ``pos[r, s]`` towards ``target``; lands on it once within 1e-12 (no
    tail into denormals), as the numpy engine does."""
    d = target - pos[r, s]
    pos[r, s] += d * smooth
    if abs(d) < 1e-12:
        pos[r, s] = target


@njit(cache=True, nogil=True)
def _floor_weight(w):
    return 0.0 if w < WEIGHT_FLOOR else w


@njit(cache=True, nogil=True)
def _mix(row, nch, flat, flat_vel, flat_decay, hold, g, n_anchors, n_frames, n_layers,
         loop_end, x, y, anchor, i0, fr, layer, layer_fr, past_a, past_b):
    """One voice's frame in dB, ``row[:nch]``: the engine's ``_mix_voices`` for one voice.
    Every index is kept inside the grid whatever the numbers (NaN included): a bad value can
    make the block non-finite (dropped by the caller), never read outside the arrays."""
    x = x if x >= 0.0 else 0.0  # NaN -> 0
    y = y if y >= 0.0 else 0.0
    layer = min(max(layer, 0), max(n_layers - 2, 0))
    fx = min(max(x, 0.0), 1.0) * (g - 1)
    fy = min(max(y, 0.0), 1.0) * (g - 1)
    ix0 = min(int(fx), g - 2)
    iy0 = min(int(fy), g - 2)
    ay = fy - iy0
    ax = fx - ix0
    y0 = _floor_weight(1.0 - ay)
    y1 = _floor_weight(ay)
    x0 = _floor_weight(1.0 - ax)
    x1 = _floor_weight(ax)
    f0 = _floor_weight(1.0 - fr)
    f1 = _floor_weight(fr)
    w4 = (y0 * x0, y0 * x1, y1 * x0, y1 * x1)
    point = (iy0 * g + ix0) * n_anchors + anchor
    cells = (point, point + n_anchors, point + g * n_anchors, point + (g + 1) * n_anchors)
    for c in range(nch):
        row[c] = 0.0
    past = past_a > 0.0
    lf0 = _floor_weight(1.0 - layer_fr)
    lf1 = _floor_weight(layer_fr)
    up = 1 if layer < n_layers - 1 else 0
    for j in range(4):
        cell = cells[j]
        wj = w4[j]
        beta = hold[cell] if past else 0.0
        loop_w = wj * (1.0 - beta)
        base = cell * n_frames + i0
        wa = np.float32(loop_w * f0)
        wb = np.float32(loop_w * f1)
        ra = flat[base]
        rb = flat[base + 1]
        vb = cell * n_layers + layer
        wl0 = np.float32(wj * lf0)
        wl1 = np.float32(wj * lf1)
        va = flat_vel[vb]
        vc = flat_vel[vb + up]
        for c in range(nch):
            row[c] += wa * ra[c] + wb * rb[c] + wl0 * va[c] + wl1 * vc[c]
        if past:  # decay and loop slope; a held last frame
            wr = np.float32(wj * past_a)
            ws = np.float32(loop_w * past_b)
            wh = np.float32(wj * beta)
            da = flat_decay[cell * 2]
            ds = flat_decay[cell * 2 + 1]
            rh = flat[cell * n_frames + loop_end]
            for c in range(nch):
                row[c] += wr * da[c] + ws * ds[c] + wh * rh[c]


_DB_LOG2 = np.float32(np.log2(10.0) / 20.0)  # dB -> log2 of the linear amplitude
# 2^f on [0, 1): Taylor series of exp(f ln 2) to f^8 (relative error < 2e-8 there)
_EXP2 = tuple(np.float32(math.log(2.0) ** i / math.factorial(i)) for i in range(8, -1, -1))


@njit(cache=True, nogil=True)
def db_to_linear(db, out, bits, n):
    """``out[j] = 10 ** (db[j] / 20)`` for j < n, float32 (``bits``: int32 scratch of n).

    As ``2^i * 2^f`` (``i + f = db log2(10) / 20``, a polynomial for ``2^f``, ``2^i`` made from
    its float32 bits) so the loops vectorise (``math.exp`` does not without SVML): within 2e-6
    of ``np.exp(db * ln(10) / 20)``. Below -760 dB it is 0; above +760 dB, NaN or inf it is
    what ``math.exp`` gives (inf, NaN)."""
    c8, c7, c6, c5, c4, c3, c2, c1, c0 = _EXP2
    for j in range(n):
        x = min(max(db[j] * _DB_LOG2, np.float32(-126.0)), np.float32(126.0))
        fi = math.floor(x)
        f = x - fi
        p = c8 * f + c7
        p = p * f + c6
        p = p * f + c5
        p = p * f + c4
        p = p * f + c3
        p = p * f + c2
        p = p * f + c1
        p = p * f + c0
        out[j] = p
        bits[j] = (np.int32(fi) + np.int32(127)) << np.int32(23)
    scale = bits[:n].view(np.float32)
    for j in range(n):
        out[j] *= scale[j]
    for j in range(n):  # outside the clamp (or NaN): what exp gives
        x = db[j] * _DB_LOG2
        if not (np.float32(-126.0) <= x <= np.float32(126.0)):
            out[j] = 0.0 if x < np.float32(-126.0) else np.float32(math.exp(db[j] * _LN10_20))


def droop_gains(size: int, maxp: int) -> np.ndarray:
    """``(maxp,)`` float32: ``1 / sinc^2(p / size)`` for partials p = 1..maxp below the
    table headroom, 0 above (the droop factor of
    :func:`morphbox.kernels.oscillator.partial_gains`, computed as it does)."""
    rel = np.arange(1, maxp + 1, dtype=np.float64) / size
    return np.where(rel < _HEADROOM, 1.0 / np.sinc(np.minimum(rel, 0.5)) ** 2, 0.0).astype(
        np.float32)


@njit(cache=True, nogil=True)
def _pitch(s, note, bend_total, size, sr, band_lo, band_hi, k, n_env, maxp, incv, npart, pgv,
           eiv, ewv, ecentre, droop):
    """The engine's ``_update_pitch`` for slot ``s``: f0, phase increment, partial count,
    partial gains (band limit, headroom, droop) and the envelope interpolation above ``k``.
    ``droop``: ``(maxp,)`` float32 ``1 / sinc^2(p / size)`` below the headroom, 0 above
    (:func:`droop_gains`)."""
    pitch = min(max(note + bend_total, _PITCH_MIN), _PITCH_MAX)
    f0 = 440.0 * np.exp2((pitch - 69.0) / 12.0)
    incv[s] = np.int64(np.uint32(f0 * (4294967296.0 / sr)))
    cap = maxp if n_env else min(k, maxp)
    top = np.int64(math.floor(band_hi / f0))
    n = min(min(top, cap), np.int64(_HEADROOM * size))
    npart[s] = n
    f32 = np.float32(f0)
    hi32 = np.float32(band_hi)
    span32 = np.float32(band_hi - band_lo)
    g = pgv[s]
    for j in range(n):
        b = (hi32 - f32 * np.float32(j + 1)) / span32
        g[j] = min(max(b, np.float32(0.0)), np.float32(1.0)) * droop[j]
    if n_env and n > k:
        ei = eiv[s]
        ew = ewv[s]
        jc = 0
        top_c = n_env - 1
        for j in range(k, n):
            e = 21.4 * math.log10(1.0 + 0.00437 * (f0 * (j + 1)))
            if e <= ecentre[0]:
                pos = 0.0
            elif e >= ecentre[top_c]:
                pos = float(top_c)
            else:
                while ecentre[jc + 1] <= e:
                    jc += 1
                pos = (e - ecentre[jc]) / (ecentre[jc + 1] - ecentre[jc]) + jc
            i = min(int(math.floor(pos)), n_env - 2)
            ei[j - k] = i
            ew[j - k] = np.float32(pos - i)


# ---- the block ---------------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _limit(x, ramp, bs, prm):
    """SoftLimiter.process on ``x[:bs]`` in place (gain in ``prm[P_LIM_GAIN]``)."""
    hi = -np.inf
    lo = np.inf
    for i in range(bs):
        v = x[i]
        if v > hi:
            hi = v
        if v < lo:
            lo = v
    peak = max(float(hi), -float(lo))
    threshold = prm[P_LIM_THRESHOLD]
    gain = prm[P_LIM_GAIN]
    target = min(1.0, threshold / peak) if peak > 0 else 1.0
    if target < gain:
        new = target
    else:
        new = target + (gain - target) * prm[P_LIM_RECOVER]
    if new > 0.9999:
        new = 1.0
    if new != 1.0 or gain != 1.0:
        g0 = np.float32(gain)
        dg = np.float32(new - gain)
        for i in range(bs):
            x[i] *= g0 + dg * ramp[i]
    prm[P_LIM_GAIN] = new
    knee = prm[P_LIM_KNEE]
    if peak * max(gain, new) <= knee:
        return
    k32 = np.float32(knee)
    span = prm[P_LIM_CEILING] - knee
    s32 = np.float32(span)
    for i in range(bs):
        v = x[i]
        m = abs(v)
        if m > k32:
            c = k32 + s32 * np.float32(math.tanh((m - k32) / s32))
            x[i] = c if v > 0 else -c


@njit(cache=True, nogil=True)
def _voices(a, lay, prm, flat, flat_vel, flat_decay, hold, times, n_live, cap, bs, nfft, maxp,
            wmax, hmax, nch, k, n_env, n_noise):
    stage = _i8(a, lay, F_STAGE, cap)
    fresh = _u8(a, lay, F_FRESH, cap)
    tsel = _u8(a, lay, F_TSEL, cap)
    phase = _u32(a, lay, F_PHASE, cap)
    shift = _u32(a, lay, F_SHIFT, cap)
    note = _i64(a, lay, F_NOTE, cap)
    size = _i64(a, lay, F_SIZE, cap)
    anchor = _i64(a, lay, F_ANCHOR, cap)
    vl = _i64(a, lay, F_VL, cap)
    level = _f32(a, lay, F_LEVEL, cap)
    gain = _f32(a, lay, F_GAIN, cap)
    vf = _f32(a, lay, F_VF, cap)
    pgain = _f32(a, lay, F_PGAIN, cap)
    tv = _f64(a, lay, F_T, cap)
    pos = _f64(a, lay, F_POS, 2 * cap).reshape((2, cap))
    latch = _f64(a, lay, F_LATCH, 2 * cap).reshape((2, cap))
    expr = _f64(a, lay, F_EXPR, 2 * cap).reshape((2, cap))
    ctl = _f64(a, lay, F_CTL, 3 * cap).reshape((3, cap))
    tables = _f32(a, lay, F_TABLES, cap * 2 * wmax).reshape((cap, 2, wmax))
    pkey = _f64(a, lay, F_PKEY, cap)
    psize = _i64(a, lay, F_PSIZE, cap)
    incv = _i64(a, lay, F_INC, cap)
    npart = _i64(a, lay, F_NPART, cap)
    pgv = _f32(a, lay, F_PGV, cap * maxp).reshape((cap, maxp))
    n_above = max(maxp - k, 1)
    eiv = _i32(a, lay, F_EIV, cap * n_above).reshape((cap, n_above))
    ewv = _f32(a, lay, F_EWV, cap * n_above).reshape((cap, n_above))
    live = _i64(a, lay, F_LIVE, cap)
    env0 = _f32(a, lay, F_ENV0, cap)
    row = _f32(a, lay, F_ROW, nch)
    db = _f32(a, lay, F_DB, maxp)
    work = hmax * (cap + 1)  # the largest batch: every voice and the noise at TABLE_MAX
    xr = _f32(a, lay, F_XR, work)
    xi = _f32(a, lay, F_XI, work)
    yr = _f32(a, lay, F_YR, work)
    yi = _f32(a, lay, F_YI, work)
    mono = _f32(a, lay, F_MONO, bs)
    npow = _f32(a, lay, F_NPOW, max(n_noise, 1))
    ramp = _f32(a, lay, F_RAMP, bs)
    cosv = _f32(a, lay, F_COS, maxp)
    sinv = _f32(a, lay, F_SIN, maxp)
    twr = _f32(a, lay, F_TW, 2 * hmax)    # exp(2 pi j k / hmax), k < hmax: [re | im]
    twi = _f32(a, lay, F_TW, 2 * hmax)[hmax:]
    pwr = _f32(a, lay, F_TWR, wmax - 1)   # exp(2 pi j k / TABLE_MAX), k < TABLE_MAX / 2
    pwi = _f32(a, lay, F_TWR, wmax - 1)[hmax:]
    log2k = _f32(a, lay, F_LOG2K, maxp)
    lin = _f32(a, lay, F_LIN, max(maxp, n_noise))
    bits = _i32(a, lay, F_BITS, max(maxp, n_noise))
    ecentre = _f64(a, lay, F_ECENTRE, max(n_env, 1))
    dt = prm[P_DT]
    g = np.int64(prm[P_G])
    n_anchors = np.int64(prm[P_ANCHORS])
    n_frames = np.int64(prm[P_FRAMES])
    n_layers = np.int64(prm[P_LAYERS])
    loop_end = np.int64(prm[P_LOOP_END])
    t0 = prm[P_LOOP_T0]
    t1 = prm[P_LOOP_T1]
    length = t1 - t0
    sr = prm[P_SR]
    table_max = wmax - 1

    # envelopes (every slot), keeping each live voice's level at the block start
    for v in range(n_live):
        env0[v] = level[live[v]]
    _adsr(stage, level, cap, dt, prm[P_ATTACK], prm[P_DECAY], prm[P_SUSTAIN], prm[P_RELEASE],
          prm[P_FADE])

    # per-voice bend and pressure glide (every slot)
    glide = np.int64(prm[P_GLIDE])
    if glide:
        glide -= 1
        if glide:
            se = prm[P_SMOOTH_EXPR]
            for r in range(2):
                for s in range(cap):
                    expr[r, s] += (ctl[r, s] - expr[r, s]) * se
        else:
            for r in range(2):
                for s in range(cap):
                    expr[r, s] = ctl[r, s]
            prm[P_PITCH_DIRTY] = 1.0
        bg = np.int64(prm[P_BEND_GLIDE])
        if bg:
            prm[P_BEND_GLIDE] = bg - 1
            prm[P_PITCH_DIRTY] = 1.0
        prm[P_GLIDE] = glide

    # morph positions: every slot smoothed towards its mode's target
    mode = np.int64(prm[P_MODE])
    shared = mode == MODE_FOLLOW and prm[P_SPREAD] == 0.0
    if not shared:
        sm = prm[P_SMOOTH]
        if mode == MODE_LATCH:
            for r in range(2):
                for s in range(cap):
                    _glide_to(pos, r, s, latch[r, s], sm)
        elif mode == MODE_MPE:
            tx = prm[P_TX]
            ty = prm[P_TY]
            px = prm[P_PX]
            py = prm[P_PY]
            tc = prm[P_TCENTRE]
            sx = prm[P_SNAP_X]
            sy = prm[P_SNAP_Y]
            for s in range(cap):
                tt_ = ctl[2, s] - tc
                pr = ctl[1, s]
                _glide_to(pos, 0, s, min(max(tx * tt_ + px * pr + sx, 0.0), 1.0), sm)
                _glide_to(pos, 1, s, min(max(ty * tt_ + py * pr + sy, 0.0), 1.0), sm)
        else:
            sx = prm[P_SNAP_X]
            sy = prm[P_SNAP_Y]
            for s in range(cap):
                _glide_to(pos, 0, s, sx, sm)
                _glide_to(pos, 1, s, sy, sm)
            far = 0.0
            for v in range(n_live):
                s = live[v]
                far = max(far, abs(pos[0, s] - prm[P_X]), abs(pos[1, s] - prm[P_Y]))
            if far < 1e-9:
                prm[P_SPREAD] = 0.0

    # pitch: when the engine would recompute it (a note started, a bend moved), for every live
    # voice whose played pitch or table size differs from what its cache holds
    bend = prm[P_BEND]
    droop = _f32(a, lay, F_DROOP, N_CLASSES * maxp).reshape((N_CLASSES, maxp))
    if prm[P_PITCH_DIRTY] != 0.0 or bend != prm[P_PITCH_BEND]:
        for v in range(n_live):
            s = live[v]
            pt = note[s] + (expr[0, s] + bend)
            if pt != pkey[s] or size[s] != psize[s]:
                _pitch(s, float(note[s]), expr[0, s] + bend, float(size[s]), sr,
                       prm[P_BAND_LO], prm[P_BAND_HI], k, n_env, maxp, incv, npart, pgv,
                       eiv, ewv, ecentre, droop[_log2(size[s])])
                pkey[s] = pt
                psize[s] = size[s]
        prm[P_PITCH_DIRTY] = 0.0
        prm[P_PITCH_BEND] = bend

    # table classes: the live voices (and the noise frame) grouped by table size, each
    # group's spectra interleaved lane by lane for one batched inverse FFT
    counts = _i64(a, lay, F_CLASS, 2 * N_CLASSES)[:N_CLASSES]
    coff = _i64(a, lay, F_CLASS, 2 * N_CLASSES)[N_CLASSES:]
    lane = _i64(a, lay, F_LANE, cap)
    for c in range(N_CLASSES):
        counts[c] = 0
    for v in range(n_live):
        c = _log2(size[live[v]])
        lane[v] = counts[c]
        counts[c] += 1
    cn = _log2(nfft)
    noise_lane = counts[cn]
    counts[cn] += 1
    total = 0
    for c in range(N_CLASSES):
        coff[c] = total
        total += (np.int64(1) << c) // 2 * counts[c]
    cr = _f32(a, lay, F_CR, total)
    ci = _f32(a, lay, F_CI, total)
    for i in range(total):
        cr[i] = 0.0
        ci[i] = 0.0

    bright = prm[P_BRIGHT]
    loud = prm[P_LOUD]
    use_pg = loud > 0.0 or prm[P_PGAIN_ON] != 0.0
    vg = np.float32(prm[P_VOICE_GAIN])
    amps_ = _f32(a, lay, F_AMP, 2 * cap)
    for c in range(n_noise):
        npow[c] = 0.0
    # pass 1: each voice's frame, partial spectrum and amplitude, the noise power
    for v in range(n_live):
        s = live[v]
        # note time (the table is the note at the block's end) and frames
        t = tv[s] + dt
        if t > t1:
            n_pass = math.floor((t - t0) / length)
            tt = t - n_pass * length
            past_a = t - t1
            past_b = t1 - tt
        else:
            tt = t
            past_a = 0.0
            past_b = 0.0
        tv[s] = t
        fpos = _interp_index(tt, times, n_frames)
        if not fpos >= 0.0:  # NaN (a grid whose frame times are not numbers): frame 0
            fpos = 0.0
        elif fpos > n_frames - 1:
            fpos = float(n_frames - 1)
        i0 = min(np.int64(fpos), n_frames - 2)
        fr = fpos - i0
        if shared:
            vx = prm[P_X]
            vy = prm[P_Y]
        else:
            vx = pos[0, s]
            vy = pos[1, s]
        _mix(row, nch, flat, flat_vel, flat_decay, hold, g, n_anchors, n_frames, n_layers,
             loop_end, vx, vy, anchor[s], i0, fr, vl[s], float(vf[s]), past_a, past_b)
        # partial levels (own below k, the envelope's above), dB -> linear, gains
        n = npart[s]
        for j in range(min(n, k)):
            db[j] = row[j]
        if n > k:
            ei = eiv[s]
            ew = ewv[s]
            for j in range(k, n):
                e = k + ei[j - k]
                lo = row[e]
                db[j] = lo + (row[e + 1] - lo) * ew[j - k]
        if bright > 0.0:
            dark = np.float32(bright * (1.0 - expr[1, s]))
            for j in range(n):
                db[j] = db[j] - dark * log2k[j]
        c = _log2(size[s])
        lanes = counts[c]
        base = coff[c] + lane[v]
        gv = pgv[s]
        db_to_linear(db, lin, bits, n)
        for j in range(n):  # at or below the floor: silence (x 0, so NaN stays NaN)
            amp = lin[j] * (_ONE if db[j] > _FLOOR else _ZERO) * gv[j]
            cr[base + (j + 1) * lanes] = amp * cosv[j]
            ci[base + (j + 1) * lanes] = amp * sinv[j]
        # amplitude: ADSR x velocity gain x voice gain (x pressure gain), ramped
        gn = gain[s] * vg
        e0 = env0[v]
        e1 = level[s]
        end = e1 * gn
        if use_pg:
            g1 = np.float32(1.0 - loud) + np.float32(loud) * np.float32(expr[1, s])
            start = e0 * gn * pgain[s]
            end = end * g1
            pgain[s] = g1
            dstep = end - start
        else:
            start = e0 * gn
            dstep = (e1 - e0) * gn
        amps_[2 * v] = start
        amps_[2 * v + 1] = dstep
        # this voice's noise power
        db_to_linear(row[k + n_env:], lin, bits, n_noise)
        for c in range(n_noise):
            b = lin[c] * end * (_ONE if row[k + n_env + c] > _FLOOR else _ZERO)
            npow[c] += b * b
    prm[P_PGAIN_ON] = 1.0 if loud > 0.0 else 0.0
    _noise_spectrum(a, lay, prm, npow, n_noise, nfft, cr, ci, coff[cn] + noise_lane, counts[cn])

    # pass 2: one batched inverse FFT per table size; each voice's table into its slot's other
    # buffer (the previous one crossfades into it), the noise frame into its scratch
    frame = _f32(a, lay, F_FRAME, nfft)
    for c in range(N_CLASSES):
        lanes = counts[c]
        if lanes == 0:
            continue
        nt = np.int64(1) << c
        half = nt // 2
        o = coff[c]
        zr, zi = real_tables(cr[o:o + half * lanes], ci[o:o + half * lanes], nt, lanes, xr, xi,
                             yr, yi, twr, twi, hmax // half, pwr, pwi, table_max // nt)
        for v in range(n_live):
            s = live[v]
            if size[s] != nt:
                continue
            cur = tables[s, 1 - tsel[s]]
            ln = lane[v]
            for t in range(half):
                cur[2 * t] = zr[t * lanes + ln]
                cur[2 * t + 1] = zi[t * lanes + ln]
            cur[nt] = cur[0]
        if c == cn:
            for t in range(half):
                frame[2 * t] = zr[t * lanes + noise_lane]
                frame[2 * t + 1] = zi[t * lanes + noise_lane]

    # pass 3: read the tables, previous crossfaded into new, times the amplitude ramp
    for i in range(bs):
        mono[i] = 0.0
    for v in range(n_live):
        s = live[v]
        nt = size[s]
        sel = tsel[s]
        cur = tables[s, 1 - sel]
        prev = tables[s, sel]
        if fresh[s]:  # a new note fades in from silence over its first block
            for i in range(nt + 1):
                prev[i] = 0.0
            fresh[s] = 0
        tsel[s] = 1 - sel
        start = amps_[2 * v]
        dstep = amps_[2 * v + 1]
        ph = np.int64(phase[s])
        inc = incv[s]
        sh = np.int64(shift[s])
        mask = (np.int64(1) << sh) - 1
        scale = np.float32(1.0) / np.float32(np.int64(1) << sh)
        for i in range(bs):
            p = (ph + inc * i) & 0xFFFFFFFF
            idx = p >> sh
            f = np.float32(p & mask) * scale
            pa = prev[idx]
            wa = pa + (prev[idx + 1] - pa) * f
            pc = cur[idx]
            wb = pc + (cur[idx + 1] - pc) * f
            wa = wa + (wb - wa) * ramp[i]
            mono[i] += wa * (start + dstep * ramp[i])
        phase[s] = np.uint32((ph + inc * bs) & 0xFFFFFFFF)
    _noise_add(a, lay, mono, frame, bs, nfft)


@njit(cache=True, nogil=True)
def _log2(n):
    c = 0
    while (np.int64(1) << c) < n:
        c += 1
    return c


# numpy's PCG64 (XSL-RR 128/64): 128-bit state * multiplier + increment, as 64-bit halves
_PCG_MUL_HI = np.uint64(0x2360ED051FC65DA4)
_PCG_MUL_LO = np.uint64(0x4385DF649FCCF645)
_MASK32 = np.uint64(0xFFFFFFFF)


@njit(cache=True, nogil=True)
def _mulhi64(a, b):
    """High 64 bits of the 128-bit product of uint64 ``a`` and ``b``."""
    a_lo = a & _MASK32
    a_hi = a >> np.uint64(32)
    b_lo = b & _MASK32
    b_hi = b >> np.uint64(32)
    p0 = a_lo * b_lo
    p1 = a_lo * b_hi
    p2 = a_hi * b_lo
    mid = (p0 >> np.uint64(32)) + (p1 & _MASK32) + (p2 & _MASK32)
    return a_hi * b_hi + (p1 >> np.uint64(32)) + (p2 >> np.uint64(32)) + (mid >> np.uint64(32))


@njit(cache=True, nogil=True)
def _pcg64_uint32(st):
    """numpy's ``PCG64`` ``next_uint32``: ``st`` = uint64 ``[state_hi, state_lo, inc_hi,
    inc_lo, has_uint32, uinteger]`` (its ``bit_generator.state``), advanced in place."""
    if st[4] != np.uint64(0):
        st[4] = np.uint64(0)
        return st[5]
    sh = st[0]
    sl = st[1]
    lo = sl * _PCG_MUL_LO
    hi = sh * _PCG_MUL_LO + sl * _PCG_MUL_HI + _mulhi64(sl, _PCG_MUL_LO)
    nlo = lo + st[3]
    nhi = hi + st[2] + (np.uint64(1) if nlo < lo else np.uint64(0))
    st[0] = nhi
    st[1] = nlo
    x = nhi ^ nlo
    rot = nhi >> np.uint64(58)
    out = (x >> rot) | (x << ((np.uint64(64) - rot) & np.uint64(63)))
    st[4] = np.uint64(1)
    st[5] = out >> np.uint64(32)
    return out & _MASK32


@njit(cache=True, nogil=True)
def pcg64_integer(st, n):
    """``numpy.random.Generator(PCG64).integers(n)`` (0 <= value < n, n <= 2^32) from the
    state ``st`` (:func:`_pcg64_uint32`): Lemire's bounded integer as numpy draws it, so the
    compiled engine's noise is the numpy engine's, pick for pick."""
    rng = np.uint64(n)
    m = _pcg64_uint32(st) * rng
    left = m & _MASK32
    if left < rng:
        threshold = (np.uint64(0x100000000) - rng) % rng
        while left < threshold:
            m = _pcg64_uint32(st) * rng
            left = m & _MASK32
    return np.int64(m >> np.uint64(32))


@njit(cache=True, nogil=True)
def _noise_spectrum(a, lay, prm, npow, n_noise, nfft, cr, ci, base, lanes):
    """NoiseSynth.render's spectrum: a pooled complex Gaussian frame shaped by the voices'
    summed band powers, into lane ``base`` (stride ``lanes``) of ``cr``/``ci``."""
    bins = nfft // 2 + 1
    nband = _i64(a, lay, F_NBAND, bins)
    nw0 = _f32(a, lay, F_NW0, bins)
    nw1 = _f32(a, lay, F_NW1, bins)
    o = lay[F_RNG]
    pick = pcg64_integer(a[o:o + 48].view(np.uint64), np.int64(prm[P_POOL]))
    po = lay[F_POOL] + pick * bins * 8
    pool = a[po:po + bins * 8].view(np.float32)  # (bins, [re, im])
    scale = np.float32(prm[P_NOISE_SCALE])  # 2 / nfft: irfft's normalisation
    for p in range(1, nfft // 2):  # DC and Nyquist lie outside the noise bands
        b = nband[p]
        if b < 0:
            continue
        pw = npow[b] * nw0[p]
        if b + 1 < n_noise:
            pw += npow[b + 1] * nw1[p]
        mag = np.float32(math.sqrt(pw)) * scale
        cr[base + p * lanes] = pool[2 * p] * mag
        ci[base + p * lanes] = pool[2 * p + 1] * mag


@njit(cache=True, nogil=True)
def _noise_add(a, lay, mono, frame, bs, nfft):
    """NoiseSynth.render's overlap-add: the windowed frame plus the carried tails into
    ``mono``; the rest carried on."""
    carry = _f64(a, lay, F_CARRY, nfft)
    window = _f64(a, lay, F_WINDOW, nfft)
    keep = nfft - bs
    for i in range(bs):
        mono[i] += np.float32(frame[i] * window[i] + carry[i])
    for i in range(keep):
        j = i + bs
        v = frame[j] * window[j]
        if j < keep:
            v += carry[j]
        carry[i] = v


@njit("void(uint8[::1], int64[::1], float32[:, ::1], float32[:, ::1], float32[:, ::1], "
      "float32[::1], float64[::1])", cache=True, nogil=True)
def render(a, lay, flat, flat_vel, flat_decay, hold, times):
    """Render one block into the arena's ``F_OUT`` ``(block, channels)`` float32.

    ``a``: the arena buffer, ``lay``: its layout (:class:`Arena`); ``flat`` the grid's
    ``frames_db`` as ``(G * G * anchors * frames, channels)``, ``flat_vel`` its
    ``velocity_db`` as ``(G * G * anchors * layers, channels)``, ``flat_decay`` its
    ``decay_db`` as ``(G * G * anchors * 2, channels)``, ``hold`` ``(G * G * anchors,)``,
    ``times`` ``(frames,)`` s. Reads and updates the per-voice fields and ``params``.
    """
    prm = _f64(a, lay, F_PARAMS, N_PARAMS)
    cap = np.int64(prm[P_CAP])
    bs = np.int64(prm[P_BS])
    n_out = np.int64(prm[P_OUT_CH])
    nfft = np.int64(prm[P_NFFT])
    maxp = np.int64(prm[P_MAXP])
    wmax = np.int64(prm[P_TABLE_MAX]) + 1
    nch = np.int64(prm[P_CHANNELS])
    k = np.int64(prm[P_K])
    n_env = np.int64(prm[P_E])
    n_noise = nch - k - n_env
    hmax = wmax // 2  # TABLE_MAX / 2: the largest complex FFT
    stage = _i8(a, lay, F_STAGE, cap)
    live = _i64(a, lay, F_LIVE, cap)
    mono = _f32(a, lay, F_MONO, bs)
    ramp = _f32(a, lay, F_RAMP, bs)
    carry = _f64(a, lay, F_CARRY, nfft)
    n_live = 0
    for s in range(cap):
        if stage[s] != IDLE:
            live[n_live] = s
            n_live += 1
    prm[P_LIVE] = n_live
    if n_live == 0:  # NoiseSynth.silence(): the carried tails, then nothing
        keep = nfft - bs
        for i in range(bs):
            mono[i] = np.float32(carry[i])
        for i in range(keep - bs):
            carry[i] = carry[i + bs]
        for i in range(keep - bs, keep):
            carry[i] = 0.0
    else:
        _voices(a, lay, prm, flat, flat_vel, flat_decay, hold, times, n_live, cap, bs, nfft,
                maxp, wmax, hmax, nch, k, n_env, n_noise)
    # master volume (ramped), limiter, channels
    vol0 = prm[P_VOL0]
    dv = np.float32(prm[P_VOL1] - vol0)
    v0 = np.float32(vol0)
    finite = True
    for i in range(bs):
        mono[i] *= v0 + dv * ramp[i]
        if not math.isfinite(mono[i]):
            finite = False
    if not finite:  # never to the DAC or the limiter: count, drop, silence every voice
        prm[P_NONFINITE] += 1.0
        for i in range(bs):
            mono[i] = 0.0
        for s in range(cap):
            stage[s] = IDLE
        for i in range(nfft):  # the noise's overlap-add tail carries the bad values on
            carry[i] = 0.0
    _limit(mono, ramp, bs, prm)
    out = _f32(a, lay, F_OUT, bs * n_out)
    for i in range(bs):
        for c in range(n_out):
            out[i * n_out + c] = mono[i]


#: seconds this module took to import: numba, and compiling the kernels or loading them from
#: numba's cache
LOAD_S = time.perf_counter() - _T0
