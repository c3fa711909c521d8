"""Decoupled YOLOX head on one level (stride 8), as the reference's `YOLOXHead(num_classes, width=1.0, [128])`.

Submodule names mirror the PyTorch ModuleLists (`stems.0`, `cls_convs.0.0/1`, `reg_convs.0.0/1`, `cls_preds.0`,
`reg_preds.0`, `obj_preds.0`). The output is raw (no activation, no decoding): channels
`[tx, ty, tw, th, obj, cls_0 .. cls_{K-1}]`. Loss and decoding live elsewhere.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn

from beltcrack_jax.models.layers import BaseConv, ConvSequence, conv2d, scaled


class _StemList(nn.Module):
    """ModuleList with one 1x1 BaseConv, child "0"."""

    features: int
    fast_ops: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        return BaseConv(self.features, 1, fast_ops=self.fast_ops, name="0")(x, train)


class _ConvsList(nn.Module):
    """ModuleList with one nn.Sequential of two 3x3 BaseConvs, child "0" (grandchildren "0", "1")."""

    features: int
    fast_ops: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        return ConvSequence((self.features, self.features), fast_ops=self.fast_ops, name="0")(x, train)


class _PredList(nn.Module):
    """ModuleList with one 1x1 Conv2d (with bias), child "0"."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return conv2d(self.features, 1, name="0")(x)


class YOLOXHead(nn.Module):
    """(B,h,w,Cin) -> (B,h,w,5+num_classes) raw predictions; hidden channels 256·width."""

    num_classes: int = 1
    width: float = 1.0
    fast_ops: bool = False   # convs with the fast gradient (`layers.conv2d(fast_grad=True)`)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(f"YOLOXHead expects (B,h,w,C) features, got shape {x.shape}")
        hidden = scaled(256, self.width)
        x = _StemList(hidden, self.fast_ops, name="stems")(x, train)
        cls_feat = _ConvsList(hidden, self.fast_ops, name="cls_convs")(x, train)
        reg_feat = _ConvsList(hidden, self.fast_ops, name="reg_convs")(x, train)
        cls = _PredList(self.num_classes, name="cls_preds")(cls_feat)
        reg = _PredList(4, name="reg_preds")(reg_feat)
        obj = _PredList(1, name="obj_preds")(reg_feat)
        return jnp.concatenate([reg, obj, cls], -1)
