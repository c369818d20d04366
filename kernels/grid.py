"""The morph grid: corner weights, grid construction and bilinear look-up.

Touch coordinates: ``x`` runs west (0) to east (1), ``y`` north (0) to south (1), as on the
touch surface seen from the player. Corners in the order ``CORNERS``: NW (0, 0), NE (1, 0),
SW (0, 1), SE (1, 1). A grid of size G has points at ``linspace(0, 1, G)`` on both axes and is
indexed ``[iy, ix]``.
"""

from __future__ import annotations

import numpy as np

CORNERS = ("NW", "NE", "SW", "SE")


def corner_weights(x, y) -> np.ndarray:
    """Bilinear corner weights ``(..., 4)`` float64 in ``CORNERS`` order; sum to 1.

    ``x``, ``y`` in 0..1 (clipped), any broadcastable shapes.
    """
    x = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0)
    y = np.clip(np.asarray(y, dtype=np.float64), 0.0, 1.0)
    return np.stack([(1 - x) * (1 - y), x * (1 - y), (1 - x) * y, x * y], axis=-1)


def spectral_grid(corner_values: np.ndarray, size: int) -> np.ndarray:
    """Interpolate the four corners' values over a ``size x size`` grid.

    ``corner_values``: ``(4, ...)`` in ``CORNERS`` order (here: dB frames, so the morph is a
    geometric interpolation of magnitudes, not a crossfade). Returns ``(size, size, ...)``
    float32. Raises ``ValueError`` for fewer than 2 points or not 4 corners.
    """
    if size < 2:
        raise ValueError(f"grid size must be >= 2, got {size}")
    corner_values = np.asarray(corner_values, dtype=np.float32)
    if corner_values.shape[0] != 4:
        raise ValueError(f"need 4 corners, got {corner_values.shape[0]}")
    axis = np.linspace(0.0, 1.0, size)
    w = corner_weights(axis[None, :], axis[:, None]).astype(np.float32)  # (size, size, 4)
    flat = corner_values.reshape(4, -1)
    return (w.reshape(-1, 4) @ flat).reshape((size, size) + corner_values.shape[1:])


def bilinear_weights(size: int) -> np.ndarray:
    """``(size * size, 4)`` float32 corner weights of every grid point, row-major ``[iy, ix]``."""
    axis = np.linspace(0.0, 1.0, size)
    return corner_weights(axis[None, :], axis[:, None]).astype(np.float32).reshape(-1, 4)


def power_gain(grid_db: np.ndarray, corner_db: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Gain (dB) that levels each grid point's frames to the corners' power mix.

    ``grid_db`` ``(G, G, A, F, C)`` dB, ``corner_db`` ``(4, A, F, C)`` dB in ``CORNERS`` order,
    ``weights`` ``(A, C)`` channel powers (:func:`morphbox.kernels.features.channel_weights`).
    Returns ``(G, G, A, F)`` float32: ``10 log10(sum_c w_c P_c / P)``, ``w_c`` the point's
    bilinear corner weights and ``P`` the power of a frame. Added to every channel, a morph
    keeps the loudness of what it mixes (a mix in dB alone loses up to ~7 dB between corners
    whose partials differ); at a corner it is 0.
    """
    from morphbox.kernels.features import frame_power
    g = grid_db.shape[0]
    w = bilinear_weights(g)
    target = (w @ frame_power(corner_db, weights).reshape(4, -1)).reshape(grid_db.shape[:4])
    have = frame_power(grid_db, weights)
    gain = np.float32(10.0) * np.log10(np.maximum(target, 1e-30) / np.maximum(have, 1e-30))
    return np.where((have > 1e-24) & (target > 1e-24), gain, 0.0).astype(np.float32)


def grid_cell(x: float, y: float, size: int) -> tuple[int, int, np.ndarray]:
    """Cell and weights for a bilinear look-up at ``(x, y)`` in a ``size``-point grid.

    Returns ``(iy0, ix0, w)`` with ``w`` ``(2, 2)`` float32 weights for the points
    ``[iy0 + dy, ix0 + dx]``; they sum to 1.
    """
    fx = min(max(float(x), 0.0), 1.0) * (size - 1)
    fy = min(max(float(y), 0.0), 1.0) * (size - 1)
    ix0 = min(int(fx), size - 2)
    iy0 = min(int(fy), size - 2)
    ax, ay = fx - ix0, fy - iy0
    w = np.array([(1 - ay) * (1 - ax), (1 - ay) * ax, ay * (1 - ax), ay * ax], np.float32)
    return iy0, ix0, w.reshape(2, 2)
