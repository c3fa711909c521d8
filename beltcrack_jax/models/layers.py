"""Building blocks shared by every part of the network (NHWC, PyTorch-equivalent numerics).

Naming rule used across the model: a Flax submodule is named exactly like the PyTorch attribute of the
reference (Sequential indices become the names "0", "1", ...), so `beltcrack_jax.convert` can map state-dict
keys mechanically. Leaf names: conv/dense `kernel` (HWIO / (in, out)), `bias`; norms `scale`, `bias`; BN
statistics `mean`, `var` in the `batch_stats` collection. Any other leaf carries the PyTorch leaf name.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import flax.linen as nn

from beltcrack_jax.ops import conv as conv_ops

# The reference's `weights_init`: every Conv/ConvTranspose weight ~ N(0, 0.02).
conv_init = nn.initializers.normal(stddev=0.02)

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "silu": nn.silu,
    "sigmoid": nn.sigmoid,
    "relu": nn.relu,
    "lrelu": lambda x: nn.leaky_relu(x, 0.1),
    "identity": lambda x: x,
}


def conv2d(features: int, kernel_size: int, stride: int = 1, padding: int | None = None,
           groups: int = 1, use_bias: bool = True, name: str | None = None, fast_grad: bool = False) -> nn.Conv:
    """A PyTorch-style Conv2d: symmetric explicit padding (k-1)//2 by default, NHWC, HWIO kernel.
    `fast_grad`: `ops.conv.conv_general_dilated` (kernel gradient as per-tap GEMMs: the same forward, gradients
    equal up to rounding, 2-5x faster on XLA:CPU for small-channel layers and large maps)."""
    pad = (kernel_size - 1) // 2 if padding is None else padding
    extra = {"conv_general_dilated": conv_ops.conv_general_dilated} if fast_grad else {}
    return nn.Conv(features, (kernel_size, kernel_size), strides=(stride, stride),
                   padding=((pad, pad), (pad, pad)), feature_group_count=groups,
                   use_bias=use_bias, kernel_init=conv_init, name=name, **extra)


def depthwise_taps(x: jax.Array, kernel: jax.Array, pad: int) -> jax.Array:
    """Depthwise k x k cross-correlation, stride 1, symmetric zero padding `pad`, as k*k shifted multiply-adds.

    x (N, H, W, C), kernel (k, k, 1, C) (Flax HWIO layout of a depthwise conv) -> (N, H+2p-k+1, W+2p-k+1, C).
    The same sum as `lax.conv_general_dilated(..., feature_group_count=C)` (taps added in row-major order), but
    one fused element-wise loop: XLA:CPU runs grouped convolutions ~20-30x slower than this (and their
    gradients likewise)."""
    k = kernel.shape[0]
    if kernel.shape[1] != k or kernel.shape[2] != 1 or kernel.shape[3] != x.shape[-1]:
        raise ValueError(f"depthwise_taps: expected a (k, k, 1, {x.shape[-1]}) kernel, got {kernel.shape}")
    n, h, w, c = x.shape
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0))) if pad else x
    ho, wo = h + 2 * pad - k + 1, w + 2 * pad - k + 1
    acc = None
    for i in range(k):          # static taps
        for j in range(k):
            term = xp[:, i:i + ho, j:j + wo] * kernel[i, j, 0]
            acc = term if acc is None else acc + term
    return acc


class DepthwiseConv2d(nn.Module):
    """PyTorch Conv2d(C, C, k, padding (k-1)//2, groups=C) on NHWC: leaves `kernel` (k, k, 1, C) and (if
    `use_bias`) `bias` (C,), exactly those of `conv2d(C, k, groups=C)`. `taps=True` computes it with
    `depthwise_taps` (fast on CPU), False with XLA's grouped convolution."""

    kernel_size: int = 5
    use_bias: bool = True
    taps: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c, k = x.shape[-1], self.kernel_size
        pad = (k - 1) // 2
        kernel = self.param("kernel", conv_init, (k, k, 1, c))
        if self.taps:
            y = depthwise_taps(x, kernel.astype(x.dtype), pad)
        else:
            y = jax.lax.conv_general_dilated(x, kernel.astype(x.dtype), (1, 1), ((pad, pad), (pad, pad)),
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (c,)).astype(y.dtype)
        return y


class BatchNorm(nn.Module):
    """BatchNorm over the last axis with PyTorch semantics.

    * `momentum` follows PyTorch: running <- (1 - m) * running + m * batch_stat.
    * Normalisation uses the biased batch variance, the running variance is updated with the unbiased one
      (Flax's nn.BatchNorm uses the biased one for both).
    * `frame_groups = G > 1`: the leading axis holds B*G rows laid out b-major (row = b*G + g), e.g. B clips
      of G frames pushed through the per-frame backbone at once. Each group g is normalised with its own
      statistics and the running statistics are updated G times in order g = 0..G-1, exactly as the
      reference's G separate backbone calls do.
    Under `jit` with a batch-sharded input the statistics are over the global batch (SyncBN).
    """

    momentum: float = 0.1
    epsilon: float = 1e-5
    frame_groups: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))

        if not train:
            mean, var = ra_mean.value, ra_var.value
            return (x - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias

        g = self.frame_groups
        xf = x.astype(jnp.float32)
        if g > 1:
            if x.shape[0] % g:
                raise ValueError(f"BatchNorm(frame_groups={g}): leading axis {x.shape[0]} is not a multiple of {g}")
            xg = xf.reshape((x.shape[0] // g, g) + x.shape[1:])
            axes = (0,) + tuple(range(2, xg.ndim - 1))
            mean = xg.mean(axes, keepdims=True)                     # (1, G, 1.., C)
            var = jnp.square(xg - mean).mean(axes, keepdims=True)    # biased, two-pass
            y = ((xg - mean) * jax.lax.rsqrt(var + self.epsilon)).reshape(x.shape)
            n = xg.size // (g * c)
            means, variances = mean.reshape(g, c), var.reshape(g, c)
        else:
            axes = tuple(range(x.ndim - 1))
            mean = xf.mean(axes)
            var = jnp.square(xf - mean).mean(axes)
            y = (xf - mean) * jax.lax.rsqrt(var + self.epsilon)
            n = xf.size // c
            means, variances = mean[None], var[None]
        y = (y * scale + bias).astype(x.dtype)

        if not self.is_initializing():
            unbiased = variances * (n / max(n - 1, 1))
            m_run, v_run = ra_mean.value, ra_var.value
            for k in range(means.shape[0]):  # G is a small static number (frames per clip)
                m_run = (1 - self.momentum) * m_run + self.momentum * means[k]
                v_run = (1 - self.momentum) * v_run + self.momentum * unbiased[k]
            ra_mean.value, ra_var.value = m_run, v_run
        return y


class BaseConv(nn.Module):
    """YOLOX BaseConv: Conv(k, stride, pad (k-1)//2, no bias) -> BN(eps 1e-3, momentum 0.03) -> activation."""

    features: int
    kernel_size: int = 3
    stride: int = 1
    act: str = "silu"
    frame_groups: int = 1
    fast_ops: bool = False   # conv with the fast gradient (`conv2d(fast_grad=True)`)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = conv2d(self.features, self.kernel_size, self.stride, use_bias=False, name="conv",
                   fast_grad=self.fast_ops)(x)
        x = BatchNorm(momentum=0.03, epsilon=1e-3, frame_groups=self.frame_groups, name="bn")(x, train)
        return ACTIVATIONS[self.act](x)


class ConvSequence(nn.Module):
    """A PyTorch `nn.Sequential` of BaseConvs (3x3, SiLU) with children named "0", "1", ..."""

    features: tuple[int, ...]
    kernel_size: int = 3
    acts: tuple[str, ...] | None = None
    fast_ops: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        acts = self.acts or ("silu",) * len(self.features)
        for i, (f, a) in enumerate(zip(self.features, acts)):
            x = BaseConv(f, self.kernel_size, act=a, fast_ops=self.fast_ops, name=str(i))(x, train)
        return x


def scaled(channels: int, width: float) -> int:
    """Channel count of a reference layer under the width multiplier (at least 1)."""
    return max(1, int(round(channels * width)))
