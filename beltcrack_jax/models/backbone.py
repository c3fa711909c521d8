"""Per-frame backbone: CSPDarknet-S + the top-down half of YOLOX's PAFPN, returning P3 (stride 8) only.

Mirrors the reference `YOLOPAFPN(depth=0.33, width=0.50)` (spec §1.2); every submodule carries the PyTorch
attribute name, so the state-dict keys `backbone.backbone.stem.conv.conv.weight`, `backbone.backbone.dark2.1.m.0...`,
`backbone.lateral_conv0...`, `backbone.C3_p4...` map mechanically (see `beltcrack_jax.convert`).

Every module takes `frame_groups`, handed to each BatchNorm: when the leading axis holds B clips x G frames
(b-major), train-mode statistics are computed per frame and the running statistics are updated G times, as the
reference's G separate backbone calls do (see `layers.BatchNorm`). Channel counts are the YOLOX-S ones multiplied
by `width` (`layers.scaled`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn

from beltcrack_jax.models.inference import remat_module
from beltcrack_jax.models.layers import BaseConv, scaled


class Bottleneck(nn.Module):
    """YOLOX Bottleneck (expansion 1.0): 1x1 BaseConv -> 3x3 BaseConv (+ input if `shortcut`). (N,H,W,C)->(N,H,W,F)."""

    features: int
    shortcut: bool = True
    frame_groups: int = 1
    fast_ops: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        y = BaseConv(self.features, 1, frame_groups=self.frame_groups, fast_ops=self.fast_ops, name="conv1")(x, train)
        y = BaseConv(self.features, 3, frame_groups=self.frame_groups, fast_ops=self.fast_ops, name="conv2")(y, train)
        if self.shortcut and x.shape[-1] == self.features:
            y = y + x
        return y


class BottleneckStack(nn.Module):
    """The CSPLayer's `m` (an nn.Sequential of `n` Bottlenecks, children "0", "1", ...)."""

    features: int
    n: int
    shortcut: bool = True
    frame_groups: int = 1
    fast_ops: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        for i in range(self.n):
            x = Bottleneck(self.features, self.shortcut, self.frame_groups, self.fast_ops, name=str(i))(x, train)
        return x


class CSPLayer(nn.Module):
    """YOLOX CSPLayer: hidden h = features/2; concat[m(conv1(x)), conv2(x)] -> 1x1 conv3. (N,H,W,Cin)->(N,H,W,F)."""

    features: int
    n: int = 1
    shortcut: bool = True
    frame_groups: int = 1
    fast_ops: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        hidden = max(1, int(self.features * 0.5))
        g = self.frame_groups
        a = BaseConv(hidden, 1, frame_groups=g, fast_ops=self.fast_ops, name="conv1")(x, train)
        b = BaseConv(hidden, 1, frame_groups=g, fast_ops=self.fast_ops, name="conv2")(x, train)
        a = BottleneckStack(hidden, self.n, self.shortcut, g, self.fast_ops, name="m")(a, train)
        return BaseConv(self.features, 1, frame_groups=g, fast_ops=self.fast_ops, name="conv3")(
            jnp.concatenate([a, b], -1), train)


def _max_shift(x: jax.Array, k: int, axis: int) -> jax.Array:
    """Stride-1 max over a window of k (odd) along `axis` with -inf padding k//2, as k shifted maxima."""
    r = k // 2
    pad = [(0, 0)] * x.ndim
    pad[axis] = (r, r)
    xp = jnp.pad(x, pad, constant_values=-jnp.inf)
    n = x.shape[axis]
    out = None
    for i in range(k):
        sl = jax.lax.slice_in_dim(xp, i, i + n, axis=axis)
        out = sl if out is None else jnp.maximum(out, sl)
    return out


def max_pool_same(x: jax.Array, k: int) -> jax.Array:
    """k x k max-pool, stride 1, -inf padding k//2 of (N,H,W,C) as separable shifted maxima (exact: max is
    associative). XLA:CPU's reduce-window with a 13x13 window is ~10x slower."""
    return _max_shift(_max_shift(x, k, 1), k, 2)


def spp_pools(x: jax.Array, kernel_sizes: tuple[int, ...]) -> list[jax.Array]:
    """The SPP max-pools of x, computed in a cascade when the sizes allow it (YOLOv5's SPPF identity: a
    (k1 + k2 - 1)-window max-pool = a k2-pool of a k1-pool with -inf padding; exact). (5, 9, 13) -> three 5x5
    pools in sequence."""
    out, prev, prev_k = [], x, 1
    for k in kernel_sizes:
        step = k - prev_k + 1
        if step >= 1 and step % 2 == 1:
            prev = max_pool_same(prev, step)
        else:
            prev = max_pool_same(x, k)
        out.append(prev)
        prev_k = k
    return out


class SPPBottleneck(nn.Module):
    """SPP: 1x1 BaseConv to features/2, max-pools 5/9/13 (stride 1, -inf padding), concat [x, p5, p9, p13], 1x1 BaseConv.
    `fast_ops=True`: the pools as a cascade of separable shifted maxima (`spp_pools`; identical values)."""

    features: int
    kernel_sizes: tuple[int, ...] = (5, 9, 13)
    frame_groups: int = 1
    fast_ops: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        g = self.frame_groups
        x = BaseConv(max(1, x.shape[-1] // 2), 1, frame_groups=g, fast_ops=self.fast_ops, name="conv1")(x, train)
        # flax's max_pool pads with the reduction's identity (-inf), exactly like PyTorch's MaxPool2d.
        if self.fast_ops:
            pools = spp_pools(x, tuple(self.kernel_sizes))
        else:
            pools = [nn.max_pool(x, (k, k), strides=(1, 1), padding=((k // 2, k // 2),) * 2)
                     for k in self.kernel_sizes]
        x = jnp.concatenate([x] + pools, -1)
        return BaseConv(self.features, 1, frame_groups=g, fast_ops=self.fast_ops, name="conv2")(x, train)


class Focus(nn.Module):
    """Stem: space-to-depth [x[::2,::2], x[1::2,::2], x[::2,1::2], x[1::2,1::2]] -> 3x3 BaseConv. (N,H,W,3)->(N,H/2,W/2,F)."""

    features: int
    frame_groups: int = 1
    fast_ops: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if x.shape[1] % 2 or x.shape[2] % 2:
            raise ValueError(f"Focus needs even H and W, got {x.shape[1]}x{x.shape[2]}")
        tl, bl = x[:, ::2, ::2], x[:, 1::2, ::2]
        tr, br = x[:, ::2, 1::2], x[:, 1::2, 1::2]
        x = jnp.concatenate([tl, bl, tr, br], -1)
        return BaseConv(self.features, 3, frame_groups=self.frame_groups, fast_ops=self.fast_ops, name="conv")(x, train)


class DarkStage(nn.Module):
    """One CSPDarknet stage `dark2..dark5` (an nn.Sequential): "0" = 3x3 s2 BaseConv, then CSPLayer ("1"),
    or for the last stage SPP ("1") + CSPLayer without shortcut ("2"). (N,H,W,Cin)->(N,ceil(H/2),ceil(W/2),F)."""

    features: int
    n: int
    last: bool = False
    frame_groups: int = 1
    fast_ops: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        g = self.frame_groups
        x = BaseConv(self.features, 3, stride=2, frame_groups=g, fast_ops=self.fast_ops, name="0")(x, train)
        if self.last:
            x = SPPBottleneck(self.features, frame_groups=g, fast_ops=self.fast_ops, name="1")(x, train)
            return CSPLayer(self.features, self.n, shortcut=False, frame_groups=g, fast_ops=self.fast_ops,
                            name="2")(x, train)
        return CSPLayer(self.features, self.n, shortcut=True, frame_groups=g, fast_ops=self.fast_ops,
                        name="1")(x, train)


class CSPDarknet(nn.Module):
    """CSPDarknet (YOLOX) returning (dark3, dark4, dark5) at strides 8, 16, 32.

    Channels for depth 0.33 / backbone_width 0.5 / width 1: 32 (stem) -> 64 -> 128 -> 256 -> 512.
    """

    depth: float = 0.33
    backbone_width: float = 0.5
    width: float = 1.0
    frame_groups: int = 1
    fast_ops: bool = False   # SPP pools as cascaded maxima (identical values); convs with the fast gradient
    remat: str = "none"      # jax.checkpoint around the stem and each stage (models/inference.py)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array, jax.Array]:
        base = int(self.backbone_width * 64)
        d = max(round(self.depth * 3), 1)
        g = self.frame_groups
        focus, stage = remat_module(Focus, self.remat), remat_module(DarkStage, self.remat)

        def ch(c: int) -> int:
            return scaled(c, self.width)

        x = focus(ch(base), frame_groups=g, fast_ops=self.fast_ops, name="stem")(x, train)
        x = stage(ch(base * 2), d, frame_groups=g, fast_ops=self.fast_ops, name="dark2")(x, train)
        c3 = stage(ch(base * 4), d * 3, frame_groups=g, fast_ops=self.fast_ops, name="dark3")(x, train)
        c4 = stage(ch(base * 8), d * 3, frame_groups=g, fast_ops=self.fast_ops, name="dark4")(c3, train)
        c5 = stage(ch(base * 16), d, last=True, frame_groups=g, fast_ops=self.fast_ops, name="dark5")(c4, train)
        return c3, c4, c5


def upsample2x(x: jax.Array) -> jax.Array:
    """Nearest-neighbour x2 upsampling of (N,H,W,C) (PyTorch `nn.Upsample(scale_factor=2, mode='nearest')`)."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class YOLOPAFPN(nn.Module):
    """CSPDarknet + top-down PAFPN path, P3 output only (the reference has no bottom-up path).

    (N,H,W,3) -> (N,H/8,W/8,P3) with P3 = 256·backbone_width·width (128 for the reference). H and W must be
    multiples of 32 (the stride-32 map is upsampled and concatenated with the stride-16 one).
    """

    depth: float = 0.33
    backbone_width: float = 0.5
    width: float = 1.0
    frame_groups: int = 1
    fast_ops: bool = True   # see CSPDarknet (same values; False: flax max_pool)
    remat: str = "none"     # jax.checkpoint around each CSPDarknet stage and FPN CSPLayer (models/inference.py)

    @property
    def out_channels(self) -> int:
        return scaled(int(256 * self.backbone_width), self.width)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"YOLOPAFPN expects (N,H,W,3) images, got shape {x.shape}")
        if x.shape[1] % 32 or x.shape[2] % 32:
            raise ValueError(f"YOLOPAFPN needs H and W divisible by 32, got {x.shape[1]}x{x.shape[2]}")
        g = self.frame_groups
        n = max(round(self.depth * 3), 1)

        def ch(c: float) -> int:
            return scaled(int(c * self.backbone_width), self.width)

        c3, c4, c5 = CSPDarknet(self.depth, self.backbone_width, self.width, g, self.fast_ops, self.remat,
                                name="backbone")(x, train)
        csp = remat_module(CSPLayer, self.remat)
        p5 = BaseConv(ch(512), 1, frame_groups=g, fast_ops=self.fast_ops, name="lateral_conv0")(c5, train)
        p4 = jnp.concatenate([upsample2x(p5), c4], -1)
        p4 = csp(ch(512), n, shortcut=False, frame_groups=g, fast_ops=self.fast_ops, name="C3_p4")(p4, train)
        p4 = BaseConv(ch(256), 1, frame_groups=g, fast_ops=self.fast_ops, name="reduce_conv1")(p4, train)
        p3 = jnp.concatenate([upsample2x(p4), c3], -1)
        return csp(ch(256), n, shortcut=False, frame_groups=g, fast_ops=self.fast_ops, name="C3_p3")(p3, train)
