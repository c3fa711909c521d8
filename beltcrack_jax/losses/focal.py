"""Sigmoid focal loss (torchvision `sigmoid_focal_loss` formula, reduction "none") and PyTorch's BCE."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def bce_with_logits(x: jax.Array, t: jax.Array) -> jax.Array:
    """Element-wise `F.binary_cross_entropy_with_logits`: (1 - t) x - log sigmoid(x) (stable for any x)."""
    return (1.0 - t) * x - jax.nn.log_sigmoid(x)


def sigmoid_focal_loss(logits: jax.Array, targets: jax.Array, alpha: float = 0.25, gamma: float = 2.0) -> jax.Array:
    """Element-wise focal loss; targets may be soft (in [0, 1]).

    p = sigmoid(x); p_t = p t + (1 - p)(1 - t); loss = BCE(x, t) (1 - p_t)^gamma, times
    alpha_t = alpha t + (1 - alpha)(1 - t) when alpha >= 0 (torchvision's convention).
    """
    if logits.shape != targets.shape:
        raise ValueError(f"sigmoid_focal_loss: logits {logits.shape} and targets {targets.shape} differ in shape")
    p = jax.nn.sigmoid(logits)
    ce = bce_with_logits(logits, targets)
    p_t = p * targets + (1.0 - p) * (1.0 - targets)
    loss = ce * ((1.0 - p_t) ** gamma if gamma != 2.0 else jnp.square(1.0 - p_t))
    if alpha >= 0:
        loss = (alpha * targets + (1.0 - alpha) * (1.0 - targets)) * loss
    return loss


def clamped_logs(p: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(max(log p, -100), max(log(1 - p), -100)): the two logs of PyTorch's `binary_cross_entropy`."""
    return jnp.maximum(jnp.log(p), -100.0), jnp.maximum(jnp.log1p(-p), -100.0)


def binary_cross_entropy(p: jax.Array, t: jax.Array) -> jax.Array:
    """Element-wise `F.binary_cross_entropy` on probabilities, with PyTorch's clamp of each log at -100."""
    log_p, log_1mp = clamped_logs(p)
    return -(t * log_p + (1.0 - t) * log_1mp)
