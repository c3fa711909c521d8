"""ATM, the temporal branch of the BeltCrackDet neck (reference spec §1.3 (b), steps 6-7), NHWC.

    feats (B, T, H, W, C), key frame last  --tar (TARFusion)-->  (B, H, W, C)  --gal (GAL)-->  F_T (B, H, W, C)

Submodule names equal the reference's attribute names (`Sequential` indices become "0", "1", ...), so weights
convert mechanically (`beltcrack_jax.convert`). Hidden sizes are derived from the channel count (C, 2C, 4C in the
hourglass, C/2 in GAL), so a width multiplier applies by passing a smaller `num_feat` / `channels`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn

from beltcrack_jax.models.layers import BatchNorm, conv2d, conv_init

# GAL's Linear layers use Kaiming-normal weights in the reference (fan_in, gain sqrt(2)).
_kaiming_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


class ConvTranspose2x2(nn.Module):
    """PyTorch ConvTranspose2d(cin, features, kernel 2, stride 2, padding 0) on NHWC: (B,H,W,Cin) -> (B,2H,2W,features).

    Non-overlapping, so it is an einsum followed by depth-to-space: y[2i+p, 2j+q, o] = b[o] + sum_c x[i,j,c] W[c,o,p,q].
    The kernel is kept in the PyTorch layout (in, out, kh, kw) under the leaf name `weight`.
    """

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        weight = self.param("weight", conv_init, (x.shape[-1], self.features, 2, 2))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        b, h, w, _ = x.shape
        y = jnp.einsum("bhwc,copq->bhpwqo", x, weight).reshape(b, 2 * h, 2 * w, self.features)
        return y + bias


class _Conv0(nn.Module):
    """A one-layer PyTorch `nn.Sequential(Conv2d(...))`: the conv is the child "0"."""

    features: int
    kernel_size: int
    stride: int = 1
    padding: int | None = None
    fast_ops: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return conv2d(self.features, self.kernel_size, self.stride, self.padding, name="0",
                      fast_grad=self.fast_ops)(x)


class DownSample(nn.Module):
    """4x4 conv, stride 2, padding 1, with bias (child `conv` -> `0`): (B,H,W,Cin) -> (B,H/2,W/2,features)."""

    features: int
    fast_ops: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return _Conv0(self.features, 4, 2, 1, self.fast_ops, name="conv")(x)


class _DeConv0(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return ConvTranspose2x2(self.features, name="0")(x)


class UpSample(nn.Module):
    """ConvTranspose 2x2 stride 2 with bias (child `deconv` -> `0`): (B,H,W,Cin) -> (B,2H,2W,features)."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return _DeConv0(self.features, name="deconv")(x)


class _Body(nn.Module):
    features: int
    fast_ops: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = conv2d(self.features, 3, name="0", fast_grad=self.fast_ops)(x)
        return conv2d(self.features, 3, name="2", fast_grad=self.fast_ops)(nn.relu(x))   # index 1 is the (parameter-free) ReLU


class ResBlock(nn.Module):
    """x + conv3x3(ReLU(conv3x3(x))) (both with bias, child `body` -> `0`, `2`); no activation after the add."""

    fast_ops: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return x + _Body(x.shape[-1], self.fast_ops, name="body")(x)


class ResBlocks(nn.Module):
    """`num` ResBlocks in sequence, children "0", "1", ... (shape-preserving)."""

    num: int = 2
    fast_ops: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.num):
            x = ResBlock(self.fast_ops, name=str(i))(x)
        return x


class TARFusion(nn.Module):
    """Temporal attention fusion + residual conv hourglass: feats (B, T, H, W, C) -> (B, H, W, C), C = num_feat.

    Key frame = index T-1. ref = temporal_attn1(F_key); emb_t = temporal_attn2(F_t) for every t;
    corr_t = sum_c emb_t * ref; p_t = sigmoid(|corr_t - corr_key|) for the references t = 0..T-2;
    feat = LeakyReLU_0.1(feat_fusion(concat[F_key, F_0 p_0, ..., F_{T-2} p_{T-2}]));
    out = fusion_tail(hourglass(feat)) + feat with the hourglass C -> 2C (H/2) -> 4C (H/4) -> back.
    H and W must be divisible by 4.
    `fast_ops=True` computes corr_t as a batched dot product (einsum) instead of multiply + channel sum: the same
    sum, which XLA:CPU runs ~10x faster; and the convs use the fast gradient (`layers.conv2d(fast_grad=True)`).
    """

    num_feat: int = 128
    fast_ops: bool = False

    @nn.compact
    def __call__(self, feats: jax.Array) -> jax.Array:
        c = self.num_feat
        if feats.ndim != 5 or feats.shape[1] < 2 or feats.shape[-1] != c:
            raise ValueError(f"TARFusion: expected feats of shape (B, T>=2, H, W, {c}), got {tuple(feats.shape)}")
        b, t, h, w, _ = feats.shape
        if h % 4 or w % 4:
            raise ValueError(f"TARFusion: H and W must be divisible by 4 (two stride-2 levels), got H={h}, W={w}")

        key = feats[:, -1]
        fast = self.fast_ops
        ref = conv2d(c, 3, name="temporal_attn1", fast_grad=fast)(key)                   # (B,H,W,C)
        emb = conv2d(c, 3, name="temporal_attn2", fast_grad=fast)(feats.reshape(b * t, h, w, c))   # every frame
        if self.fast_ops:
            corr = jnp.einsum("bthwc,bhwc->bthw", emb.reshape(b, t, h, w, c), ref)             # (B,T,H,W)
        else:
            corr = jnp.sum(emb.reshape(b, t, h, w, c) * ref[:, None], axis=-1)

        prob = jax.nn.sigmoid(jnp.abs(corr[:, :-1] - corr[:, -1:]))                      # (B,T-1,H,W)
        weighted = feats[:, :-1] * prob[..., None]                                       # (B,T-1,H,W,C)
        guided = jnp.concatenate([key, jnp.moveaxis(weighted, 1, 3).reshape(b, h, w, (t - 1) * c)], -1)
        feat = nn.leaky_relu(conv2d(c, 1, name="feat_fusion", fast_grad=fast)(guided), 0.1)

        r1 = ResBlocks(fast_ops=fast, name="res_block1")(feat)
        r2 = ResBlocks(fast_ops=fast, name="res_block2")(DownSample(2 * c, fast, name="downsample1")(r1))
        f3 = ResBlocks(fast_ops=fast, name="res_block3")(DownSample(4 * c, fast, name="downsample2")(r2))
        u3 = UpSample(2 * c, name="upsample1")(f3)
        r4 = ResBlocks(fast_ops=fast, name="res_block4")(jnp.concatenate([u3, r2], -1))
        u4 = UpSample(c, name="upsample2")(r4)
        r5 = ResBlocks(fast_ops=fast, name="res_block5")(jnp.concatenate([u4, r1], -1))
        return _Conv0(c, 3, fast_ops=fast, name="fusion_tail")(r5) + feat


class _LinearBN(nn.Module):
    """`nn.Sequential(Linear(in, features), BatchNorm1d(features), ReLU)` on the last axis (children "0", "1").
    BatchNorm1d statistics run over every leading position (all rows of the reference's 2-D view)."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = nn.Dense(self.features, kernel_init=_kaiming_normal, name="0")(x)
        return nn.relu(BatchNorm(momentum=0.1, epsilon=1e-5, name="1")(x, train))


class _ConvBN(nn.Module):
    """`nn.Sequential(Conv2d 1x1 no bias, BatchNorm2d, ReLU)` (children "0", "1")."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = conv2d(self.features, 1, use_bias=False, name="0")(x)
        return nn.relu(BatchNorm(momentum=0.1, epsilon=1e-5, name="1")(x, train))


class GAL(nn.Module):
    """Graph attention layer on the 4-neighbour pixel grid (circular): (B, H, W, C) -> (B, H, W, C), C = channels.

    edge_e = x * roll_e(x), e = (H+1, H-1, W+1, W-1) with jnp.roll semantics (e0[h] = x[h-1], wrap-around);
    agg    = ReLU(BN1d(Linear 4->1 over the 4 edges))                per (pixel, channel);
    vertex = ReLU(BN1d(Linear 2C->C/2 of concat[x, agg]))            per pixel;
    eu_e   = ReLU(BN1d(Linear 2C->C/2 of concat[x, edge_e]))          per (pixel, edge);
    red    = ReLU(BN1d(Linear 4->1 over the 4 edges of eu))           per (pixel, channel);
    out    = ReLU(BN2d(1x1 conv (no bias) of concat[x, vertex * red])).
    """

    channels: int = 128

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        c = self.channels
        if x.ndim != 4 or x.shape[-1] != c:
            raise ValueError(f"GAL: expected x of shape (B, H, W, {c}), got {tuple(x.shape)}")
        hidden = max(1, c // 2)
        neighbours = jnp.stack([jnp.roll(x, 1, axis=1), jnp.roll(x, -1, axis=1),
                                jnp.roll(x, 1, axis=2), jnp.roll(x, -1, axis=2)], axis=-1)   # (B,H,W,C,4)
        edge = neighbours * x[..., None]
        agg = _LinearBN(1, name="edge_aggregation_func")(edge, train)[..., 0]               # (B,H,W,C)
        vertex = _LinearBN(hidden, name="vertex_update_func")(jnp.concatenate([x, agg], -1), train)
        edge_feat = jnp.concatenate([jnp.broadcast_to(x[..., None, :], x.shape[:3] + (4, c)),
                                     jnp.moveaxis(edge, -1, -2)], -1)                         # (B,H,W,4,2C)
        eu = _LinearBN(hidden, name="edge_update_func")(edge_feat, train)                    # (B,H,W,4,C/2)
        red = _LinearBN(1, name="update_edge_reduce_func")(jnp.moveaxis(eu, -2, -1), train)[..., 0]
        return _ConvBN(c, name="final_aggregation_layer")(jnp.concatenate([x, vertex * red], -1), train)


class ATM(nn.Module):
    """Temporal branch: feats (B, T, H, W, C) -> F_T = gal(tar(feats)) (B, H, W, C). The TARFusion output is sown
    as `intermediates/neck.tar` (the reference's hook name). `fast_ops`: see TARFusion."""

    channels: int = 128
    fast_ops: bool = False

    @nn.compact
    def __call__(self, feats: jax.Array, train: bool = False) -> jax.Array:
        fused = TARFusion(self.channels, self.fast_ops, name="tar")(feats)
        self.sow("intermediates", "neck.tar", fused)
        return GAL(self.channels, name="gal")(fused, train)
