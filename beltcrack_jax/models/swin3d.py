"""The neck's 3-D (Video-)Swin block, `neck.swin` = `SwinTransformerBlock3D(128, num_frames=T+1)` of the reference.

The input (B, H, W, S*dim) holds S "slices" on the channel axis (slice t = channels dim*t .. dim*t+dim-1: the T
frequency maps and F_T); they become the depth axis D of a (B, D, H, W, dim) volume, two Swin layers run on it
(layer 0: window attention; layer 1: shifted windows, shift (0, 4, 4)), and the volume is folded back.

Reference layout vs this one: each reference layer permutes its (B, D, C, H, W) input to (B, D, W, H, C) -- the
spatial axes are transposed for the whole layer. This module works in the natural (B, D, H, W, C) order, which is
exactly equivalent because padding, shift, roll and mask are symmetric in H/W; only the relative-position index
has to be transposed: the W offset goes to the middle digit and the H offset to the last one,
idx = (dd + Wd-1)(2Ww-1)(2Wh-1) + (dw + Ww-1)(2Wh-1) + (dh + Wh-1). `relative_position_index` computes it from
the reference's own buffer (`reference_relative_position_index`), token-permuted from the reference's (d, w, h)
order to this module's (d, h, w) order, including the reference's `[:N, :N]` slice when a window shrinks.
"""

from __future__ import annotations

from functools import reduce
from operator import mul
from typing import Sequence

import numpy as np
import jax
import jax.numpy as jnp
import flax.linen as nn

__all__ = ["SwinBlock3D", "SwinLayer3D", "WindowAttention3D", "Mlp", "reference_relative_position_index",
           "relative_position_index", "window_and_shift", "shifted_window_mask"]

# PyTorch nn.Linear default init (kaiming_uniform with a = sqrt(5)) == U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
_linear_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
_table_init = nn.initializers.truncated_normal(stddev=0.02)


def reference_relative_position_index(window: Sequence[int]) -> np.ndarray:
    """Video-Swin's `relative_position_index` buffer for a window (A0, A1, A2), tokens flattened (a0, a1, a2)
    row-major: idx = (d0 + A0-1)(2A1-1)(2A2-1) + (d1 + A1-1)(2A2-1) + (d2 + A2-1), d = coords_i - coords_j.
    The reference's window axes are (D, W, H) of the natural layout, i.e. pass (Wd, Ww, Wh)."""
    a0, a1, a2 = (int(s) for s in window)
    coords = np.stack(np.meshgrid(np.arange(a0), np.arange(a1), np.arange(a2), indexing="ij")).reshape(3, -1)
    rel = coords[:, :, None] - coords[:, None, :]
    return ((rel[0] + a0 - 1) * (2 * a1 - 1) * (2 * a2 - 1)
            + (rel[1] + a1 - 1) * (2 * a2 - 1) + (rel[2] + a2 - 1)).astype(np.int64)


def relative_position_index(window: Sequence[int], used_window: Sequence[int] | None = None) -> np.ndarray:
    """The bias-table index this module uses, (N, N) with N = prod(used_window), tokens in natural (d, h, w)
    row-major order inside a window of size `used_window` = (Wd', Wh', Ww') (the window after the shrink rule;
    default `window` = (Wd, Wh, Ww), the configured one that sizes the table).

    Equals the reference exactly: the reference indexes its table with `relative_position_index[:N, :N]` of the
    full-window buffer (window (Wd, Ww, Wh), tokens in (d, w, h) order within its shrunk window); this returns
    that slice with rows and columns permuted to the natural token order. For the full window it is
    (dd + Wd-1)(2Ww-1)(2Wh-1) + (dw + Ww-1)(2Wh-1) + (dh + Wh-1)."""
    wd, wh, ww = (int(s) for s in window)
    ud, uh, uw = (int(s) for s in (used_window if used_window is not None else window))
    n = ud * uh * uw
    ref = reference_relative_position_index((wd, ww, wh))[:n, :n]
    d, h, w = np.meshgrid(np.arange(ud), np.arange(uh), np.arange(uw), indexing="ij")
    ref_token = (d * uw * uh + w * uh + h).reshape(-1)   # reference ordinal of natural token (d, h, w)
    return ref[ref_token][:, ref_token]


def window_and_shift(size: Sequence[int], window: Sequence[int], shift: Sequence[int]
                     ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Video-Swin's `get_window_size`: per axis, if size <= window, the window shrinks to the size and the shift
    becomes 0."""
    ws, ss = list(window), list(shift)
    for i, s in enumerate(size):
        if s <= window[i]:
            ws[i], ss[i] = s, 0
    return tuple(ws), tuple(ss)


def _partition(x: jax.Array, ws: Sequence[int]) -> jax.Array:
    """(B, D, H, W, C) -> (B * nW, Wd*Wh*Ww, C); windows ordered (d-block, h-block, w-block), tokens (d, h, w).
    Uses only array methods, so it works on numpy arrays too (static masks)."""
    b, d, h, w, c = x.shape
    x = x.reshape(b, d // ws[0], ws[0], h // ws[1], ws[1], w // ws[2], ws[2], c)
    return x.transpose(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, reduce(mul, ws), c)


def _merge(windows: jax.Array, ws: Sequence[int], b: int, d: int, h: int, w: int) -> jax.Array:
    """Inverse of `_partition`."""
    x = windows.reshape(b, d // ws[0], h // ws[1], w // ws[2], ws[0], ws[1], ws[2], -1)
    return x.transpose(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, d, h, w, -1)


def shifted_window_mask(padded: Sequence[int], ws: Sequence[int], ss: Sequence[int]) -> np.ndarray:
    """Swin's attention mask (nW, N, N) for the cyclically shifted, padded volume `padded` = (Dp, Hp, Wp):
    0 between tokens of the same region, -100 otherwise. Along an axis with shift s > 0 the regions are
    [0, P-w), [P-w, P-s), [P-s, P); an axis with shift 0 is not split (as in the reference's `create_mask`)."""
    region = np.zeros(tuple(padded), np.int64)
    for axis, (p, w, s) in enumerate(zip(padded, ws, ss)):
        if s <= 0:
            continue
        pos = np.arange(p)
        r = np.where(pos < p - w, 0, np.where(pos < p - s, 1, 2))
        shape = [1, 1, 1]
        shape[axis] = p
        region = region * 3 + r.reshape(shape)
    ids = _partition(region[None, ..., None], ws)[..., 0]   # numpy in, numpy out: (nW, N)
    return np.where(ids[:, None, :] != ids[:, :, None], -100.0, 0.0).astype(np.float32)


def gelu_erf(x: jax.Array) -> jax.Array:
    """Exact GELU in PyTorch's own formula, 0.5 x (1 + erf(x / sqrt 2)). Same function as
    `nn.gelu(x, approximate=False)` (which XLA:CPU evaluates through erfc, ~4x slower)."""
    return 0.5 * x * (1.0 + jax.lax.erf(x * np.asarray(1.0 / np.sqrt(2.0), x.dtype)))


class Mlp(nn.Module):
    """fc1 (dim -> hidden) -> exact GELU -> fc2 (hidden -> dim)."""

    hidden: int
    dim: int
    fast_ops: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Dense(self.hidden, kernel_init=_linear_init, name="fc1")(x)
        x = gelu_erf(x) if self.fast_ops else nn.gelu(x, approximate=False)
        return nn.Dense(self.dim, kernel_init=_linear_init, name="fc2")(x)


def _scores_softmax_v(q, k, v, bias, mask):
    """q, k, v (w, heads, N, hd), bias (1, heads, N, N), mask (nW, N, N) or None, w a multiple of nW (window i
    uses mask[i % nW]) -> softmax(q k^T + bias + mask) v. softmax(a) v = (exp(a - max) v) / sum exp(a - max):
    the normalisation on the (N, hd) result instead of the (N, N) weights (one pass less over the largest
    array)."""
    attn = jnp.einsum("bhnd,bhmd->bhnm", q, k) + bias
    if mask is not None:
        w, nw = attn.shape[0], mask.shape[0]
        attn = (attn.reshape((w // nw, nw) + attn.shape[1:]) + mask[None, :, None]).reshape(attn.shape)
    e = jnp.exp(attn - jax.lax.stop_gradient(attn.max(-1, keepdims=True)))
    return jnp.einsum("bhnm,bhmd->bhnd", e, v) / e.sum(-1, keepdims=True)


def _windowed_attention(q, k, v, bias, mask: np.ndarray | None, chunk: int) -> jax.Array:
    """`_scores_softmax_v` over B*nW windows (window w uses mask[w % nW]), `chunk` windows per call (lax.map;
    0 = one call). A chunk that does not divide nW (or B*nW without mask) falls back to 1 window per call."""
    bw = q.shape[0]
    nw = mask.shape[0] if mask is not None else bw
    mask = None if mask is None else jnp.asarray(mask, q.dtype)
    if chunk <= 0 or chunk >= bw:
        return _scores_softmax_v(q, k, v, bias, mask)
    c = chunk if nw % chunk == 0 else 1
    split = lambda a: a.reshape((bw // c, c) + a.shape[1:])   # noqa: E731

    def one(xs):
        j, qc, kc, vc = xs
        mc = None if mask is None else jax.lax.dynamic_slice_in_dim(mask, (j * c) % nw, c)
        return _scores_softmax_v(qc, kc, vc, bias, mc)

    out = jax.lax.map(one, (jnp.arange(bw // c), split(q), split(k), split(v)))
    return out.reshape((bw,) + out.shape[2:])


class WindowAttention3D(nn.Module):
    """Multi-head self-attention inside windows with a relative-position bias.

    x (B*nW, N, dim); `index` (N, N) static bias-table index; `mask` (nW, N, N) static or None.
    Params: `qkv` (Dense, no bias), `proj` (Dense), `relative_position_bias_table`
    ((2Wd-1)(2Wh-1)(2Ww-1), heads) in the reference's layout."""

    dim: int
    num_heads: int
    window: tuple[int, int, int]
    fast_ops: bool = False   # head-major q/k/v, softmax normalised after attn @ v: same math, faster on CPU
    # fast_ops: windows per attention call, looped with lax.map (0: all windows in one batched call). The scores
    # of a few windows stay in cache, all of them do not (64 x 4 x 384² floats per clip at 512²): 2 is ~2.5x
    # faster on CPU, bit-identical. On accelerators one batched call is the fast one.
    window_chunk: int = 0

    @nn.compact
    def __call__(self, x: jax.Array, index: np.ndarray, mask: np.ndarray | None = None) -> jax.Array:
        bw, n, c = x.shape
        heads = self.num_heads
        hd = c // heads
        wd, wh, ww = self.window
        table = self.param("relative_position_bias_table", _table_init,
                           ((2 * wd - 1) * (2 * wh - 1) * (2 * ww - 1), heads))
        qkv = nn.Dense(3 * c, use_bias=False, kernel_init=_linear_init, name="qkv")(x)
        qkv = qkv.reshape(bw, n, 3, heads, hd)
        if self.fast_ops:
            qkv = qkv.transpose(2, 0, 3, 1, 4)                          # (3, B*nW, heads, N, hd)
            q, k, v = qkv[0], qkv[1], qkv[2]
            q = q * (hd ** -0.5)
        else:
            q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]           # (B*nW, N, heads, hd)
            q = q * (hd ** -0.5)
            attn = jnp.einsum("bnhd,bmhd->bhnm", q, k)
        bias = jnp.take(table, jnp.asarray(index.reshape(-1)), axis=0).reshape(n, n, heads)
        bias = bias.transpose(2, 0, 1)[None].astype(x.dtype)
        if self.fast_ops:
            out = _windowed_attention(q, k, v, bias, mask, self.window_chunk)
            out = out.transpose(0, 2, 1, 3).reshape(bw, n, c)
        else:
            attn = attn + bias
            if mask is not None:
                nw = mask.shape[0]
                attn = attn.reshape(bw // nw, nw, heads, n, n) + jnp.asarray(mask, attn.dtype)[None, :, None]
                attn = attn.reshape(bw, heads, n, n)
            attn = jax.nn.softmax(attn, axis=-1)
            out = jnp.einsum("bhnm,bmhd->bnhd", attn, v).reshape(bw, n, c)
        return nn.Dense(c, kernel_init=_linear_init, name="proj")(out)


class SwinLayer3D(nn.Module):
    """One Video-Swin layer on (B, D, H, W, dim): x + W-MSA(LN1(x)), then x + MLP(LN2(x)).

    LN eps 1e-5; zero padding at the end of D/H/W (after LN1) to window multiples, cropped after attention;
    cyclic shift by -shift with the -100 region mask when any shift > 0; window shrink rule per axis."""

    dim: int
    num_heads: int = 4
    window: tuple[int, int, int] = (6, 8, 8)
    shift: tuple[int, int, int] = (0, 0, 0)
    mlp_ratio: float = 4.0
    fast_ops: bool = False
    window_chunk: int = 0    # fast_ops: windows per attention call (WindowAttention3D)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, d, h, w, c = x.shape
        ws, ss = window_and_shift((d, h, w), self.window, self.shift)
        shortcut = x
        y = nn.LayerNorm(epsilon=1e-5, name="norm1")(x)
        pads = [(-s) % wn for s, wn in zip((d, h, w), ws)]
        if any(pads):
            y = jnp.pad(y, ((0, 0), (0, pads[0]), (0, pads[1]), (0, pads[2]), (0, 0)))
        dp, hp, wp = d + pads[0], h + pads[1], w + pads[2]
        shifted = any(s > 0 for s in ss)
        mask = None
        if shifted:
            y = jnp.roll(y, shift=tuple(-s for s in ss), axis=(1, 2, 3))
            mask = shifted_window_mask((dp, hp, wp), ws, ss)
        index = relative_position_index(self.window, ws)
        attn = WindowAttention3D(c, self.num_heads, tuple(self.window), self.fast_ops, self.window_chunk,
                                 name="attn")(_partition(y, ws), index, mask)
        y = _merge(attn, ws, b, dp, hp, wp)
        if shifted:
            y = jnp.roll(y, shift=tuple(ss), axis=(1, 2, 3))
        x = shortcut + y[:, :d, :h, :w]
        z = nn.LayerNorm(epsilon=1e-5, name="norm2")(x)
        return x + Mlp(int(c * self.mlp_ratio), c, self.fast_ops, name="mlp")(z)


class _Layers(nn.Module):
    """The reference's `tr` nn.Sequential: children "0", "1", ...; odd layers use the shifted windows."""

    dim: int
    num_layers: int
    num_heads: int
    window: tuple[int, int, int]
    shift: tuple[int, int, int]
    mlp_ratio: float
    fast_ops: bool = False
    window_chunk: int = 0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.num_layers):   # static, 2 layers
            shift = (0, 0, 0) if i % 2 == 0 else self.shift
            x = SwinLayer3D(self.dim, self.num_heads, self.window, shift, self.mlp_ratio, self.fast_ops,
                            self.window_chunk,
                            name=str(i))(x)
        return x


class SwinBlock3D(nn.Module):
    """`neck.swin`: (B, H, W, num_slices*dim) -> same shape; slice t = channels dim*t .. dim*t+dim-1.

    `window` = (Wd, Wh, Ww) in natural order (the reference builds (num_slices, 8, 8); WFM passes that);
    layer 1 shifts by (0, Wh//2, Ww//2). Children: `tr` -> "0", "1" (SwinLayer3D)."""

    dim: int = 128
    num_slices: int = 6
    num_heads: int = 4
    window: tuple[int, int, int] = (6, 8, 8)
    mlp_ratio: float = 4.0
    num_layers: int = 2
    fast_ops: bool = False   # head-major attention and erf GELU (same math, faster on CPU); False: plain einsums
    window_chunk: int = 0    # fast_ops: windows per attention call, lax.map-looped (0: one call; WindowAttention3D)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4 or x.shape[-1] != self.num_slices * self.dim:
            raise ValueError(f"SwinBlock3D(dim={self.dim}, num_slices={self.num_slices}): expected input "
                             f"(B, H, W, {self.num_slices * self.dim}), got shape {x.shape}")
        if self.dim % self.num_heads:
            raise ValueError(f"SwinBlock3D: dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if len(self.window) != 3:
            raise ValueError(f"SwinBlock3D: window must be (Wd, Wh, Ww), got {self.window}")
        b, h, w, _ = x.shape
        v = x.reshape(b, h, w, self.num_slices, self.dim).transpose(0, 3, 1, 2, 4)   # (B, D, H, W, dim)
        shift = (0, self.window[1] // 2, self.window[2] // 2)
        v = _Layers(self.dim, self.num_layers, self.num_heads, tuple(self.window), shift, self.mlp_ratio,
                    self.fast_ops, self.window_chunk, name="tr")(v)
        return v.transpose(0, 2, 3, 1, 4).reshape(b, h, w, self.num_slices * self.dim)
