"""Band-limited harmonic wavetable oscillator, vectorised over voices, to 20 kHz at any pitch.

A voice's timbre for one block is the amplitude of each of its partials 1..M, every partial
below the band limit (20 kHz, and 0.45 of the sample rate): several hundred for a low note.
It is rendered into a single-cycle table by an inverse FFT (so the table holds exactly the
partials asked for) and read with linear interpolation from a uint32 fixed-point phase
accumulator.

Table sizes follow the pitch: a voice's table has ``N`` points, the smallest power of two
from ``TABLE_MIN`` (256) to ``TABLE_MAX`` (2048) with every partial below ``HEADROOM * N``
(:func:`table_sizes`), so a high note costs a 256-point inverse FFT and only the lowest notes
a 2048-point one. Keeping partials under ``0.3 N`` keeps the images of linear interpolation
(partial ``k`` has one at ``(N - k) f0``, ``40 log10((k/N) / (1 - k/N))`` dB down: -15 dB at
the very top, -40 dB at ``0.1 N``) far under the partial, which at the top of the band is
itself far under the note; their droop, ``sinc^2(k / N)``, is pre-compensated
(:func:`partial_gains`).

Partials that would land above the band limit at the played f0 are removed before the FFT,
with a linear fade from ``BAND_LO_HZ`` (19 kHz; ``BANDLIMIT_LO`` of the sample rate if lower)
to ``BAND_HI_HZ`` (20 kHz; ``BANDLIMIT_HI``), so a pitch bend never switches a partial on or
off abruptly: nothing is ever synthesised above Nyquist.

Partials start at Schroeder phases (M. R. Schroeder, "Synthesis of low-peak-factor signals",
IEEE Trans. Inf. Theory, 1970) so a bright table has a low crest factor; all tables share them,
so crossfading two tables never cancels partials.
"""

from __future__ import annotations

import numpy as np

TABLE_MIN = 256
TABLE_MAX = 2048
HEADROOM = 0.3  # partials stay below this fraction of the table size
MAX_PARTIALS = int(HEADROOM * TABLE_MAX)  # 614: every partial of MIDI 24 up to 20 kHz
BAND_LO_HZ, BAND_HI_HZ = 19000.0, 20000.0  # the band-limit fade
BANDLIMIT_LO = 0.40  # of the sample rate, when lower than BAND_LO_HZ
BANDLIMIT_HI = 0.45  # of the sample rate, when lower than BAND_HI_HZ (Nyquist is 0.5)
PHASE_BITS = 32  # phase accumulators are uint32: 2**32 is one cycle


def schroeder_phases(n_harmonics: int) -> np.ndarray:
    """``(n_harmonics,)`` float64 start phases in radians, ``pi k^2 / K`` for k = 1..K."""
    k = np.arange(1, n_harmonics + 1, dtype=np.float64)
    return np.pi * k * k / n_harmonics


def band_edges_hz(sample_rate: float) -> tuple[float, float]:
    """The band-limit fade ``(lo, hi)`` in Hz at ``sample_rate``."""
    return (min(BAND_LO_HZ, BANDLIMIT_LO * sample_rate),
            min(BAND_HI_HZ, BANDLIMIT_HI * sample_rate))


def bandlimit_gains(f0_hz: np.ndarray, n_harmonics: int, sample_rate: float) -> np.ndarray:
    """Gain of each partial so nothing passes the band limit: ``(voices, n_harmonics)``
    float32, 0..1 (1 below the fade, 0 above it). ``f0_hz``: ``(voices,)`` played
    fundamental, Hz."""
    lo, hi = band_edges_hz(sample_rate)
    k = np.arange(1, n_harmonics + 1, dtype=np.float32)
    f = np.asarray(f0_hz, dtype=np.float32)[:, None] * k[None, :]
    return np.clip((np.float32(hi) - f) / np.float32(hi - lo), 0.0, 1.0)


def table_sizes(f0_hz: np.ndarray, sample_rate: float) -> np.ndarray:
    """Table size of each voice at ``f0_hz`` ``(voices,)``: ``(voices,)`` int64, a power of
    two in ``TABLE_MIN .. TABLE_MAX`` holding every partial below the band limit under
    ``HEADROOM`` of its size (capped: a note below MIDI 24 loses its top partials)."""
    _, hi = band_edges_hz(sample_rate)
    kmax = np.floor(hi / np.maximum(np.asarray(f0_hz, np.float64), 1e-3))
    need = np.ceil(np.log2(np.maximum(kmax / HEADROOM, 1.0)))
    return np.clip(2 ** need, TABLE_MIN, TABLE_MAX).astype(np.int64)


def partial_gains(f0_hz: np.ndarray, sizes: np.ndarray, n_partials: int,
                  sample_rate: float) -> np.ndarray:
    """``(voices, n_partials)`` float32 gain of partials 1..n of each voice: the band-limit
    fade (:func:`bandlimit_gains`), 0 at and above ``HEADROOM`` of the voice's table size,
    and ``1 / sinc^2(k / N)`` (undoing the droop of linear interpolation)."""
    g = bandlimit_gains(f0_hz, n_partials, sample_rate)
    k = np.arange(1, n_partials + 1, dtype=np.float64)[None, :]
    rel = k / np.asarray(sizes, np.float64)[:, None]
    g *= np.where(rel < HEADROOM, 1.0 / np.sinc(np.minimum(rel, 0.5)) ** 2, 0.0).astype(
        np.float32)
    return g


def phase_increment(f0_hz: np.ndarray, sample_rate: float) -> np.ndarray:
    """Fixed-point phase step per sample for ``f0_hz`` ``(voices,)``, 0 <= f0 < sample_rate:
    uint32."""
    inc = np.asarray(f0_hz, dtype=np.float64) * (2.0**PHASE_BITS / sample_rate)
    return inc.astype(np.uint32)


def table_shifts(sizes: np.ndarray) -> np.ndarray:
    """``(voices,)`` uint32: phase bits below a table index (``32 - log2(N)``)."""
    return (PHASE_BITS - np.log2(np.asarray(sizes)).astype(np.int64)).astype(np.uint32)


class WavetableBank:
    """Builds single-cycle tables for many voices at once.

    Tables live in rows of a ``(voices, TABLE_MAX + 1)`` float32 array: a voice of size ``N``
    uses its first ``N + 1`` entries (the last repeats the first, so interpolation never
    wraps). Voices of one size share one batched inverse FFT.

    Args:
        max_partials: partials per voice at most (``MAX_PARTIALS``).
    """

    def __init__(self, max_partials: int = MAX_PARTIALS):
        self.max_partials = max_partials
        phases = schroeder_phases(max_partials)
        # a partial A sin(2 pi k n / N + phi): irfft of A e^{j(phi - pi/2)} N / 2 at bin k
        # (complex128: numpy's FFT computes in double, a complex64 input costs a conversion)
        self._factor = np.exp(1j * (phases - np.pi / 2))

    def build(self, amplitudes: np.ndarray, sizes: np.ndarray,
              out: np.ndarray | None = None) -> np.ndarray:
        """Tables ``(voices, TABLE_MAX + 1)`` float32 for ``amplitudes`` ``(voices, M)``
        linear (gains of :func:`partial_gains` already applied) and table ``sizes``
        ``(voices,)``: row v is ``sum_k A[v, k] sin(2 pi k n / N_v + phi_k)`` for n in
        0..N_v (entries past N_v are left as they were). ``out`` is filled if given."""
        amps = np.asarray(amplitudes, np.float32)
        n_voices, m = amps.shape
        if out is None:
            out = np.zeros((n_voices, TABLE_MAX + 1), np.float32)
        lo, hi = int(sizes.min()), int(sizes.max())
        size = lo
        while size <= hi:
            rows = np.flatnonzero(sizes == size) if lo != hi else slice(None)
            k = min(m, size // 2 - 1, self.max_partials)
            if lo == hi or len(rows):
                spec = np.zeros((n_voices if lo == hi else len(rows), size // 2 + 1),
                                np.complex128)
                np.multiply(amps[rows, :k], self._factor[:k] * (size / 2), out=spec[:, 1:k + 1])
                tab = np.fft.irfft(spec, size, axis=1)
                out[rows, :size] = tab
                out[rows, size] = tab[:, 0]
            size *= 2
        return out


_ROWS: dict = {}


def _row_offsets(n_voices: int, width: int) -> np.ndarray:
    """``(n_voices, 1)`` start of each row in a flattened ``(n_voices, width)`` array (cached)."""
    key = (n_voices, width)
    rows = _ROWS.get(key)
    if rows is None:
        rows = _ROWS[key] = (np.arange(n_voices, dtype=np.intp) * width)[:, None]
    return rows


def read_crossfade(previous: np.ndarray, current: np.ndarray, phase: np.ndarray,
                   increment: np.ndarray, n_samples: int, ramp: np.ndarray,
                   shifts: np.ndarray) -> np.ndarray:
    """Read ``n_samples`` from each voice's tables by linear interpolation, crossfading from
    the ``previous`` to the ``current`` table along ``ramp``.

    ``previous``, ``current``: ``(voices, W)`` table rows (:meth:`WavetableBank.build`);
    ``phase``: ``(voices,)`` uint32 start phase (2**32 per cycle); ``increment``:
    ``(voices,)`` uint32 from :func:`phase_increment`; ``ramp``: ``(n_samples,)`` crossfade
    position 0..1 (pass the same table twice for none); ``shifts``: ``(voices,)`` uint32 of
    :func:`table_shifts`. Returns ``(voices, n_samples)`` float32. The phase after the block
    is ``phase + n_samples * increment`` (mod 2**32).
    """
    n_voices, width = current.shape
    shift = np.asarray(shifts, np.uint32)[:, None]
    pos = np.multiply.outer(increment, np.arange(n_samples, dtype=np.uint32))
    pos += phase[:, None]
    idx = (pos >> shift).astype(np.intp)
    frac = (pos & ((np.uint32(1) << shift) - np.uint32(1))).astype(np.float32)
    frac *= (np.float32(1.0) / (np.uint32(1) << shift).astype(np.float32))
    idx += _row_offsets(n_voices, width)
    idx1 = idx + 1
    flat = previous.reshape(-1)
    a = flat.take(idx)
    a += (flat.take(idx1) - a) * frac
    if current is previous:
        return a
    flat = current.reshape(-1)
    b = flat.take(idx)
    b += (flat.take(idx1) - b) * frac
    b -= a
    b *= ramp
    a += b
    return a
