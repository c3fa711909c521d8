"""WFM, the neck's frequency branch (spec §1.3 (c), steps 9-13): WTConv per frame, `conv_fre_new`, 3-D Swin,
`conv_t`.

    F_F,t = conv_dw(F_t)                 for every frame t (same weights; T folded into the batch)
    ft    = concat[F_F,0 .. F_F,T-1, F_T]  ((T+1)*C channels, frame-major, F_T last)
    F_flt = conv_fre_new(ft)             BaseConv (T+1)C -> 4C -> 2C -> C
    F_fgt = conv_t(swin(ft))             SwinBlock3D(num_slices = T+1), then BaseConv (T+1)C -> 8C -> C

WTConv (Finder et al., ECCV 2024, as inlined in the reference, Haar, 3 levels, 5x5 depthwise): per level the
un-filtered LL goes on to the next level while [LL, B1, B2, B3] (channel layout c*4+k) pass through a depthwise
5x5 conv and a per-channel scale; the reconstruction runs from the deepest level, adding the filtered LL to the
upsampled coarser reconstruction, and is summed with base_scale * depthwise5x5(x) (with bias).
"""

from __future__ import annotations

import numpy as np
import jax
import jax.numpy as jnp
import flax.linen as nn

from beltcrack_jax.models.layers import ConvSequence, DepthwiseConv2d
from beltcrack_jax.models.swin3d import SwinBlock3D
from beltcrack_jax.ops.haar import haar_filter_bank, haar_pair

__all__ = ["WTConv", "WFM", "haar_filters_match"]


def haar_filters_match(wt_filter: np.ndarray, iwt_filter: np.ndarray, atol: float = 1e-3) -> bool:
    """True iff the reference's stored `wt_filter` and `iwt_filter` ((4C, 1, 2, 2), channel c*4+k) are the Haar
    filters this port hard-codes (`haar_filter_bank()`, analysis as stride-2 cross-correlation, synthesis as
    stride-2 transposed convolution). The converter skips both entries; call this instead of skipping blindly.
    (The stored values are fp16: +-0.5 is exact, so `atol` only has to absorb rounding of 1/sqrt(2)^2.)"""
    bank = haar_filter_bank()
    for f in (wt_filter, iwt_filter):
        f = np.asarray(f, dtype=np.float64)
        if f.ndim != 4 or f.shape[1:] != (1, 2, 2) or f.shape[0] % 4:
            return False
        if not np.allclose(f.reshape(-1, 4, 2, 2), bank[None], rtol=0, atol=atol):
            return False
    return True


class _Scale(nn.Module):
    """The reference's `_ScaleModule`: y = weight * x, weight (C,) (torch (1, C, 1, 1))."""

    init_scale: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        w = self.param("weight", nn.initializers.constant(self.init_scale), (x.shape[-1],))
        return x * w


class _ScaleList(nn.Module):
    """nn.ModuleList of `_Scale` (children "0", "1", ...); `__call__(x, i)` applies child i."""

    init_scale: float = 0.1

    @nn.compact
    def __call__(self, x: jax.Array, i: int) -> jax.Array:
        return _Scale(self.init_scale, name=str(i))(x)


class _DepthwiseList(nn.Module):
    """nn.ModuleList of depthwise k x k convs without bias (children "0", "1", ...); `__call__(x, i)`."""

    kernel_size: int = 5
    taps: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, i: int) -> jax.Array:
        return DepthwiseConv2d(self.kernel_size, use_bias=False, taps=self.taps, name=str(i))(x)


class WTConv(nn.Module):
    """`neck.conv_dw` = WTConv2d(C, C, kernel_size=5, wt_levels=3, 'db1'): (N, H, W, C) -> (N, H, W, C).

    Children: `base_conv` (depthwise k x k, bias), `base_scale` (`weight` (C,), init 1), `wavelet_convs` ->
    "0".."L-1" (depthwise k x k over 4C sub-band channels, no bias), `wavelet_scale` -> "0".."L-1" (`weight`
    (4C,), init 0.1). The Haar filters are constants (see `haar_filters_match`). Any H, W >= 1: odd sizes are
    zero-padded bottom/right before each analysis and the reconstruction is cropped back.
    `fast_ops=True`: the depthwise convs as fused shifted multiply-adds (`layers.depthwise_taps`, ~25x
    faster on CPU, same sums); False: XLA grouped convolutions."""

    channels: int = 128
    kernel_size: int = 5
    levels: int = 3
    fast_ops: bool = False
    wavelet: str = "jnp"     # Haar transform: 'jnp' (ops/haar.py, default) | 'jaxwt' (ops/haar_jaxwt.py), same values

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4 or x.shape[-1] != self.channels:
            raise ValueError(f"WTConv(channels={self.channels}): expected input (N, H, W, {self.channels}), "
                             f"got shape {x.shape}")
        c = self.channels
        haar_analysis, haar_synthesis = haar_pair(self.wavelet)
        wavelet_convs = _DepthwiseList(self.kernel_size, taps=self.fast_ops, name="wavelet_convs")
        wavelet_scale = _ScaleList(0.1, name="wavelet_scale")

        filtered, sizes = [], []
        cur = x
        for i in range(self.levels):                       # static: wavelet levels
            sizes.append(cur.shape[1:3])
            ll, bands = haar_analysis(cur)                  # (N, h, w, C), (N, h, w, C, 3)
            n, h, w, _ = ll.shape
            sub = jnp.concatenate([ll[..., None], bands], axis=-1).reshape(n, h, w, 4 * c)   # channel c*4+k
            sub = wavelet_scale(wavelet_convs(sub, i), i)
            filtered.append(sub.reshape(n, h, w, c, 4))
            cur = ll                                        # the un-filtered LL goes to the next level

        recon = None
        for i in reversed(range(self.levels)):
            sub = filtered[i]
            ll = sub[..., 0] if recon is None else sub[..., 0] + recon
            recon = haar_synthesis(ll, sub[..., 1:], out_hw=sizes[i])

        base = _Scale(1.0, name="base_scale")(
            DepthwiseConv2d(self.kernel_size, use_bias=True, taps=self.fast_ops, name="base_conv")(x))
        return base if recon is None else base + recon


class WFM(nn.Module):
    """Frequency branch. `__call__(feats (B, T, H, W, C), f_t (B, H, W, C), train) -> (F_flt, F_fgt)`, both
    (B, H, W, C). Children: `conv_dw` (WTConv), `conv_fre_new`, `swin` (SwinBlock3D, T+1 slices, window
    (T+1, 8, 8)), `conv_t`. Sows (collection 'intermediates', each a 1-tuple) `conv_dw_out` (B, T, H, W, C),
    `conv_fre_new_out` (= F_flt), `swin_out` (B, H, W, (T+1)C), `conv_t_out` (= F_fgt)."""

    channels: int = 128
    num_heads: int = 4
    window_hw: int = 8
    fast_ops: bool = False   # WTConv taps, Swin attention/GELU, fast conv gradients (same math; see WTConv, Swin)
    swin_window_chunk: int = 0   # fast_ops: Swin windows per attention call (0: all at once; SwinBlock3D)
    wavelet: str = "jnp"         # WTConv's Haar transform backend (see WTConv)

    @nn.compact
    def __call__(self, feats: jax.Array, f_t: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        c = self.channels
        if feats.ndim != 5 or feats.shape[-1] != c:
            raise ValueError(f"WFM(channels={c}): expected feats (B, T, H, W, {c}), got shape {feats.shape}")
        b, t, h, w, _ = feats.shape
        if f_t.shape != (b, h, w, c):
            raise ValueError(f"WFM(channels={c}): expected f_t of shape {(b, h, w, c)} (B, H, W, C of feats), "
                             f"got {f_t.shape}")
        wtconv = WTConv(c, fast_ops=self.fast_ops, wavelet=self.wavelet, name="conv_dw")
        f_f = wtconv(feats.reshape(b * t, h, w, c)).reshape(b, t, h, w, c)
        self.sow("intermediates", "conv_dw_out", f_f)
        ft = jnp.concatenate([f_f.transpose(0, 2, 3, 1, 4).reshape(b, h, w, t * c), f_t], axis=-1)

        f_flt = ConvSequence((4 * c, 2 * c, c), fast_ops=self.fast_ops, name="conv_fre_new")(ft, train)
        self.sow("intermediates", "conv_fre_new_out", f_flt)
        g = SwinBlock3D(dim=c, num_slices=t + 1, num_heads=self.num_heads,
                        window=(t + 1, self.window_hw, self.window_hw), fast_ops=self.fast_ops,
                        window_chunk=self.swin_window_chunk, name="swin")(ft)
        self.sow("intermediates", "swin_out", g)
        f_fgt = ConvSequence((8 * c, c), fast_ops=self.fast_ops, name="conv_t")(g, train)
        self.sow("intermediates", "conv_t_out", f_fgt)
        return f_flt, f_fgt
