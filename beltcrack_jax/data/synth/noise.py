"""Hash-based value noise evaluated at absolute integer-lattice coordinates.

Because every lattice value is a pure function of (seed, lattice index), a texture computed for any window of rows
is seamless with the texture computed for the neighbouring window: belt textures can be built chunk by chunk while
the belt moves, without storing the whole belt.
"""

from __future__ import annotations

import numpy as np

_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xC2B2AE3D27D4EB4F)
_M3 = np.uint64(0x165667B19E3779F9)
_MASK24 = np.uint64(0xFFFFFF)


def hash01(iy: np.ndarray, ix: np.ndarray, seed: int) -> np.ndarray:
    """Deterministic pseudo-random floats in [0, 1) for integer lattice points (broadcasting, any sign)."""
    y = np.asarray(iy, dtype=np.int64).astype(np.uint64)
    x = np.asarray(ix, dtype=np.int64).astype(np.uint64)
    h = (y * _M1) ^ (x * _M2) ^ np.uint64(((seed & 0xFFFFFFFF) * int(_M3)) & 0xFFFFFFFFFFFFFFFF)
    h ^= h >> np.uint64(29)
    h *= _M2
    h ^= h >> np.uint64(32)
    h *= _M1
    h ^= h >> np.uint64(29)
    return ((h >> np.uint64(20)) & _MASK24).astype(np.float32) / np.float32(1 << 24)


def _axis(coords: np.ndarray, cell: float) -> tuple[np.ndarray, np.ndarray]:
    f = coords / cell
    i = np.floor(f).astype(np.int64)
    t = (f - i).astype(np.float32)
    return i, t * t * (3.0 - 2.0 * t)  # smoothstep weights


def value_noise(rows: np.ndarray, cols: np.ndarray, cell_y: float, cell_x: float, seed: int) -> np.ndarray:
    """Smooth value noise in [-1, 1] on the grid rows x cols (absolute coordinates, shape (len(rows), len(cols))).

    Lattice values are hashed on the small coarse lattice only, then interpolated separably (cheap).
    """
    cell_y, cell_x = max(float(cell_y), 1.0), max(float(cell_x), 1.0)
    iy, wy = _axis(np.asarray(rows, np.float64), cell_y)
    ix, wx = _axis(np.asarray(cols, np.float64), cell_x)
    y0, x0 = iy.min(), ix.min()
    ly = np.arange(y0, iy.max() + 2)
    lx = np.arange(x0, ix.max() + 2)
    lat = hash01(ly[:, None], lx[None, :], seed) * 2.0 - 1.0
    jx = ix - x0
    a = lat[:, jx] * (1.0 - wx) + lat[:, jx + 1] * wx  # (Ly, W)
    jy = iy - y0
    return (a[jy] * (1.0 - wy)[:, None] + a[jy + 1] * wy[:, None]).astype(np.float32)


def fbm(rows: np.ndarray, cols: np.ndarray, cells: list[tuple[float, float]], gains: list[float],
        seed: int) -> np.ndarray:
    """Sum of value-noise octaves with the given (cell_y, cell_x) sizes and amplitudes; ~[-sum(gains), sum(gains)]."""
    out = np.zeros((len(rows), len(cols)), np.float32)
    for k, ((cy, cx), g) in enumerate(zip(cells, gains)):
        out += np.float32(g) * value_noise(rows, cols, cy, cx, seed * 7919 + 104729 * (k + 1))
    return out
