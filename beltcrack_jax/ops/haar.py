"""2-D Haar wavelet transform in pure `jax.numpy`, channels-last (NHWC).

This is the transform inside the reference's WTConv (`wt_type='db1'`): stride-2 analysis of 2x2 blocks

    a = x[2i, 2j]   b = x[2i, 2j+1]
    c = x[2i+1, 2j] d = x[2i+1, 2j+1]

    LL = (a + b + c + d) / 2        B1 = (a + b - c - d) / 2   (high-pass along H, rows)
    B2 = (a - b + c - d) / 2        B3 = (a - b - c + d) / 2   (high-pass along both)

(exactly the reference's `wt_filter` rows 0..3 applied as a stride-2 cross-correlation). The synthesis is the exact
inverse (the transform is orthonormal): out(0,0) = (L+B1+B2+B3)/2, out(0,1) = (L+B1-B2-B3)/2,
out(1,0) = (L-B1+B2-B3)/2, out(1,1) = (L-B1-B2+B3)/2.

Odd H or W: one zero row/column is appended at the bottom/right before the analysis; the synthesis crops back.

Relation to PyWavelets / jaxwt naming: `pywt.dwt2(x, 'haar')` returns `(cA, (cH, cV, cD))` with
cA = LL, cH = B1, cV = B2, cD = B3 -- same signs and the same normalisation (1/sqrt(2) per axis, i.e. 1/2 in 2-D);
pywt's `mode='zero'` gives exactly the bottom/right zero padding used here for odd sizes. `pywt.wavedec2` /
`jaxwt.wavedec2` list the coefficients coarsest first, `[cA_n, (cH_n, cV_n, cD_n), ..., (cH_1, cV_1, cD_1)]`;
`haar_wavedec` uses the same order with `bands` = stack([cH, cV, cD], axis=-1) in NHWC.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import jax
import jax.numpy as jnp

__all__ = ["haar_analysis", "haar_synthesis", "haar_wavedec", "haar_waverec", "haar_filter_bank",
           "wavedec_sizes", "haar_pair", "WAVELET_BACKENDS"]


def haar_filter_bank() -> np.ndarray:
    """The four 2x2 analysis filters [LL, B1, B2, B3] as a (4, 2, 2) float32 array (cross-correlation form,
    index [k, row, col]). The synthesis (transposed-convolution) filters are the same array."""
    h = 0.5
    return np.array([[[h, h], [h, h]],
                     [[h, h], [-h, -h]],
                     [[h, -h], [h, -h]],
                     [[h, -h], [-h, h]]], dtype=np.float32)


def _check_nhwc(x: jax.Array, what: str) -> None:
    if getattr(x, "ndim", None) != 4:
        raise ValueError(f"{what}: expected a 4-D (B, H, W, C) array, got shape {getattr(x, 'shape', None)}")
    if x.shape[1] < 1 or x.shape[2] < 1:
        raise ValueError(f"{what}: expected H, W >= 1, got shape {x.shape}")


def haar_analysis(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One Haar level. x (B, H, W, C) -> (ll (B, h, w, C), bands (B, h, w, C, 3)) with h = ceil(H/2),
    w = ceil(W/2); bands[..., k] = B(k+1) (pywt cH, cV, cD). Odd H/W are zero-padded at the bottom/right."""
    _check_nhwc(x, "haar_analysis")
    b, hh, ww, c = x.shape
    ph, pw = hh % 2, ww % 2
    if ph or pw:
        x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)))
    h, w = (hh + ph) // 2, (ww + pw) // 2
    x = x.reshape(b, h, 2, w, 2, c)
    xa, xb = x[:, :, 0, :, 0], x[:, :, 0, :, 1]
    xc, xd = x[:, :, 1, :, 0], x[:, :, 1, :, 1]
    top_s, bot_s = xa + xb, xc + xd        # row sums
    top_d, bot_d = xa - xb, xc - xd        # row differences
    ll = 0.5 * (top_s + bot_s)
    b1 = 0.5 * (top_s - bot_s)
    b2 = 0.5 * (top_d + bot_d)
    b3 = 0.5 * (top_d - bot_d)
    return ll, jnp.stack([b1, b2, b3], axis=-1)


def haar_synthesis(ll: jax.Array, bands: jax.Array, out_hw: Sequence[int] | None = None) -> jax.Array:
    """Inverse of `haar_analysis`: ll (B, h, w, C), bands (B, h, w, C, 3) -> (B, 2h, 2w, C), cropped to
    `out_hw = (H, W)` when given (H in {2h-1, 2h}, W in {2w-1, 2w})."""
    _check_nhwc(ll, "haar_synthesis(ll)")
    if getattr(bands, "ndim", None) != 5 or bands.shape != ll.shape + (3,):
        raise ValueError(f"haar_synthesis: expected bands of shape {ll.shape + (3,)} (ll.shape + (3,)), "
                         f"got {getattr(bands, 'shape', None)}")
    b, h, w, c = ll.shape
    b1, b2, b3 = bands[..., 0], bands[..., 1], bands[..., 2]
    u, v = ll + b1, ll - b1                # top / bottom row sums (x2)
    p, q = b2 + b3, b2 - b3                # top / bottom row differences (x2)
    top = jnp.stack([0.5 * (u + p), 0.5 * (u - p)], axis=3)       # (B, h, w, 2, C): cols 0, 1
    bot = jnp.stack([0.5 * (v + q), 0.5 * (v - q)], axis=3)
    y = jnp.stack([top, bot], axis=2).reshape(b, 2 * h, 2 * w, c)  # (B, h, 2, w, 2, C) -> (B, 2h, 2w, C)
    if out_hw is not None:
        oh, ow = (int(s) for s in out_hw)
        if not (2 * h - 1 <= oh <= 2 * h and 2 * w - 1 <= ow <= 2 * w):
            raise ValueError(f"haar_synthesis: out_hw {tuple(out_hw)} does not fit sub-bands of size {(h, w)}; "
                             f"expected H in [{2 * h - 1}, {2 * h}], W in [{2 * w - 1}, {2 * w}]")
        y = y[:, :oh, :ow]
    return y


def wavedec_sizes(hw: Sequence[int], levels: int) -> list[tuple[int, int]]:
    """Spatial size of the input of every level: [(H, W), (ceil(H/2), ceil(W/2)), ...] (levels + 1 entries)."""
    sizes = [tuple(int(s) for s in hw)]
    for _ in range(levels):
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2))
    return sizes


def haar_wavedec(x: jax.Array, levels: int) -> list:
    """Multi-level analysis, x (B, H, W, C) -> [ll_L, bands_L, ..., bands_1] (pywt order, coarsest first);
    every level pads odd sizes at the bottom/right. Level l operates on the un-modified LL of level l-1."""
    _check_nhwc(x, "haar_wavedec")
    if int(levels) != levels or levels < 1:
        raise ValueError(f"haar_wavedec: levels must be an integer >= 1, got {levels!r}")
    details = []
    ll = x
    for _ in range(int(levels)):
        ll, bands = haar_analysis(ll)
        details.append(bands)
    return [ll] + details[::-1]


def haar_waverec(coeffs: Sequence[jax.Array], out_hw: Sequence[int] | None = None) -> jax.Array:
    """Multi-level synthesis, inverse of `haar_wavedec`. coeffs = [ll_L, bands_L, ..., bands_1].

    Each intermediate reconstruction is cropped to the spatial size of the next finer level's bands (this
    undoes the bottom/right padding of odd intermediate sizes); the final output (B, 2h_1, 2w_1, C) is cropped
    to `out_hw` (the original (H, W)) when given."""
    if len(coeffs) < 2:
        raise ValueError(f"haar_waverec: expected [ll, bands_L, ..., bands_1] with >= 2 entries, got {len(coeffs)}")
    ll = coeffs[0]
    _check_nhwc(ll, "haar_waverec(ll)")
    for bands in coeffs[1:]:
        if getattr(bands, "ndim", None) != 5:
            raise ValueError(f"haar_waverec: expected bands of shape (B, h, w, C, 3), got "
                             f"{getattr(bands, 'shape', None)}")
        h, w = bands.shape[1], bands.shape[2]
        if not (h <= ll.shape[1] <= h + 1 and w <= ll.shape[2] <= w + 1):
            raise ValueError(f"haar_waverec: LL of size {ll.shape[1:3]} does not fit bands of size {(h, w)}")
        ll = haar_synthesis(ll[:, :h, :w], bands)
    if out_hw is not None:
        ll = _crop_to(ll, out_hw)
    return ll


def _crop_to(y: jax.Array, out_hw: Sequence[int]) -> jax.Array:
    """Crops a synthesis output (B, 2h, 2w, C) to out_hw, checking that only a padding row/col is removed."""
    oh, ow = (int(s) for s in out_hw)
    if not (y.shape[1] - 1 <= oh <= y.shape[1] and y.shape[2] - 1 <= ow <= y.shape[2]):
        raise ValueError(f"haar_waverec: out_hw {tuple(out_hw)} does not fit a reconstruction of size "
                         f"{y.shape[1:3]}")
    return y[:, :oh, :ow]


WAVELET_BACKENDS = ("jnp", "jaxwt")


def haar_pair(backend: str = "jnp"):
    """(analysis, synthesis) of one Haar level for `model.wavelet`: 'jnp' (this module, the default) or 'jaxwt'
    (`ops.haar_jaxwt`, equal to float rounding)."""
    if backend == "jnp":
        return haar_analysis, haar_synthesis
    if backend == "jaxwt":
        from beltcrack_jax.ops.haar_jaxwt import haar_analysis_jaxwt, haar_synthesis_jaxwt

        return haar_analysis_jaxwt, haar_synthesis_jaxwt
    raise ValueError(f"model.wavelet must be one of {WAVELET_BACKENDS}, got {backend!r}")
