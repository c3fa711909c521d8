"""RCU, the residual compensation unit of the BeltCrackDet neck (reference spec §1.3 (d), step 14), NHWC.

One RCU = one `Res_CBAM_block` of the reference (conv-BN-ReLU-conv-BN, channel attention, spatial attention,
1x1 conv + BN shortcut, final ReLU). Submodule names equal the reference's attribute names.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn

from beltcrack_jax.models.layers import BatchNorm, conv2d


class ChannelAttention(nn.Module):
    """CBAM channel attention: (B,H,W,C) -> weights (B,1,1,C) = sigmoid(fc2(ReLU(fc1(avg))) + fc2(ReLU(fc1(max)))),
    fc1 / fc2 1x1 convs without bias, C -> max(1, C // ratio) -> C."""

    ratio: int = 16

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        fc1 = conv2d(max(1, c // self.ratio), 1, use_bias=False, name="fc1")
        fc2 = conv2d(c, 1, use_bias=False, name="fc2")
        avg = jnp.mean(x, axis=(1, 2), keepdims=True)
        mx = jnp.max(x, axis=(1, 2), keepdims=True)
        return jax.nn.sigmoid(fc2(nn.relu(fc1(avg))) + fc2(nn.relu(fc1(mx))))


class SpatialAttention(nn.Module):
    """CBAM spatial attention: (B,H,W,C) -> weights (B,H,W,1) = sigmoid(conv7x7([mean_c x, max_c x])), no bias."""

    kernel_size: int = 7

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        pooled = jnp.concatenate([jnp.mean(x, -1, keepdims=True), jnp.max(x, -1, keepdims=True)], -1)
        return jax.nn.sigmoid(conv2d(1, self.kernel_size, use_bias=False, name="conv1")(pooled))


class _Shortcut(nn.Module):
    """`nn.Sequential(Conv2d 1x1 with bias, BatchNorm2d)` (children "0", "1")."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = conv2d(self.features, 1, name="0")(x)
        return BatchNorm(momentum=0.1, epsilon=1e-5, name="1")(x, train)


class ResCBAM(nn.Module):
    """Res_CBAM block: x (B, H, W, Cin) -> (B, H, W, features).

    y = BN(conv3x3(ReLU(BN(conv3x3(x)))))  (convs with bias); y = CA(y) * y; y = SA(y) * y;
    out = ReLU(y + shortcut(x)), shortcut = BN(1x1 conv with bias) when Cin != features, else the identity
    (as in the reference, which builds the shortcut only then). All BN eps 1e-5, momentum 0.1.
    """

    features: int = 128
    fast_ops: bool = False   # the 3x3 convs with the fast gradient (`layers.conv2d(fast_grad=True)`)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(f"ResCBAM: expected x of shape (B, H, W, C), got {tuple(x.shape)}")
        f = self.features
        residual = _Shortcut(f, name="shortcut")(x, train) if x.shape[-1] != f else x
        y = conv2d(f, 3, name="conv1", fast_grad=self.fast_ops)(x)
        y = nn.relu(BatchNorm(momentum=0.1, epsilon=1e-5, name="bn1")(y, train))
        y = conv2d(f, 3, name="conv2", fast_grad=self.fast_ops)(y)
        y = BatchNorm(momentum=0.1, epsilon=1e-5, name="bn2")(y, train)
        y = ChannelAttention(name="ca")(y) * y
        y = SpatialAttention(name="sa")(y) * y
        return nn.relu(y + residual)
