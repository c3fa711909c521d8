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
           groups: int = 1, use_bias: bool = True, name: str | None = None) -> nn.Conv:
    """A PyTorch-style Conv2d: symmetric explicit padding (k-1)//2 by default, NHWC, HWIO kernel."""
    pad = (kernel_size - 1) // 2 if padding is None else padding
    return nn.Conv(features, (kernel_size, kernel_size), strides=(stride, stride),
                   padding=((pad, pad), (pad, pad)), feature_group_count=groups,
                   use_bias=use_bias, kernel_init=conv_init, name=name)


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

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = conv2d(self.features, self.kernel_size, self.stride, use_bias=False, name="conv")(x)
        x = BatchNorm(momentum=0.03, epsilon=1e-3, frame_groups=self.frame_groups, name="bn")(x, train)
        return ACTIVATIONS[self.act](x)


class ConvSequence(nn.Module):
    """A PyTorch `nn.Sequential` of BaseConvs (3x3, SiLU) with children named "0", "1", ..."""

    features: tuple[int, ...]
    kernel_size: int = 3
    acts: tuple[str, ...] | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        acts = self.acts or ("silu",) * len(self.features)
        for i, (f, a) in enumerate(zip(self.features, acts)):
            x = BaseConv(f, self.kernel_size, act=a, name=str(i))(x, train)
        return x


def scaled(channels: int, width: float) -> int:
    """Channel count of a reference layer under the width multiplier (at least 1)."""
    return max(1, int(round(channels * width)))
