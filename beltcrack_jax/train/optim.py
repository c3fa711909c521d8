"""Optimiser of the reference (`train_BeltCrackDet.py`): parameter groups, SGD-Nesterov, lr rule and schedules.

PyTorch's SGD (dampening 0, nesterov) per parameter: d = g + wd·p; buf = d on the first step, else
m·buf + d; d <- d + m·buf; p <- p - lr·d. `optax.trace(m, nesterov=True)` is exactly this (its buffer starts at
zero, so the first step gives buf = 0·m + d = d), `optax.add_decayed_weights` is `g + wd·p`, and
`scale_by_learning_rate` multiplies by -lr: the chain below is the reference's update term by term (checked
against `optim_io.npz` in tests/test_optim.py).

Groups (decided from the PyTorch name of every Flax leaf, `beltcrack_jax.models.naming.torch_key`):

* pg0 — `weight` of a BatchNorm2d or of any module whose name contains "bn": no weight decay;
* pg1 — every other `weight` (convs, Linear, LayerNorm, GAL's BatchNorm1d, WTConv scales): weight decay;
* pg2 — every `bias`: no weight decay;
* frozen — any other leaf (`neck.nolocal.gamma`, the Swin `relative_position_bias_table`s): the reference puts
  them in no group, so they never change. `train_frozen=True` trains them without weight decay.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.traverse_util import flatten_dict as flatten, unflatten_dict as unflatten

from beltcrack_jax.models.naming import torch_key

# BatchNorm modules that are BatchNorm1d in the reference (weight decayed, unlike BatchNorm2d): GAL's
# `<x>_func = Sequential(Linear, BatchNorm1d, ...)`.
BN1D_PATTERNS = (r"(^|\.)gal\.[^.]+_func\.1$",)

GROUPS = ("pg0", "pg1", "pg2", "frozen")


def param_labels(params: Mapping[str, Any], batch_stats: Mapping[str, Any] | None = None, *,
                 train_frozen: bool = False, bn1d_patterns: Iterable[str] = BN1D_PATTERNS,
                 prefix: tuple[str, ...] = ()) -> dict[str, Any]:
    """Tree like `params` with the group label of every leaf ('pg0' | 'pg1' | 'pg2' | 'frozen').

    A module is a BatchNorm2d when it owns running statistics in `batch_stats` and its reference name matches
    none of `bn1d_patterns`. `prefix` is prepended to every path (for a submodule's variables).
    """
    bn_modules = set()
    for path in flatten(batch_stats or {}):
        bn_modules.add(torch_key("batch_stats", prefix + tuple(path)).rsplit(".", 1)[0])
    bn1d = [re.compile(p) for p in bn1d_patterns]

    labels = {}
    for path in flatten(params):
        name = torch_key("params", prefix + tuple(path))
        module, _, leaf = name.rpartition(".")
        if leaf == "bias":
            label = "pg2"
        elif leaf == "weight":
            is_bn2d = module in bn_modules and not any(p.search(module) for p in bn1d)
            label = "pg0" if (is_bn2d or "bn" in module) else "pg1"
        else:
            label = "pg2" if train_frozen else "frozen"
        labels[tuple(path)] = label
    return unflatten(labels)


def frozen_mask(labels: Mapping[str, Any]) -> dict[str, Any]:
    """Tree of bools, True where the label is 'frozen' (for `steps.make_train_step(frozen=...)`)."""
    return jax.tree.map(lambda label: label == "frozen", labels)


def stop_frozen_gradients(params: Mapping[str, Any], frozen: Mapping[str, Any]) -> dict[str, Any]:
    """`params` with `lax.stop_gradient` on the leaves `frozen` (a `frozen_mask`) marks: no gradient is computed
    for them."""
    return jax.tree.map(lambda a, f: jax.lax.stop_gradient(a) if f else a, params, frozen)


def group_summary(labels: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """{group: (number of tensors, number of values)}."""
    out = {g: [0, 0] for g in GROUPS}
    flat_p = flatten(params)
    for path, g in flatten(labels).items():
        out[g][0] += 1
        out[g][1] += int(np.prod(np.shape(flat_p[path])))
    return {g: tuple(v) for g, v in out.items()}


# ------------------------------------------------------------------------------------------------------
# Learning-rate rule and schedules
# ------------------------------------------------------------------------------------------------------

def lr_bounds(global_batch: int, *, base: float = 1e-2, minimum: float = 1e-4, nominal_batch: int = 64,
              clamp: bool = True, clamp_max: tuple[float, float] = (5e-4, 5e-2),
              clamp_min: tuple[float, float] = (5e-6, 5e-4), scaling: str = "linear") -> tuple[float, float]:
    """(lr_max, lr_min) for a global batch: base·(batch/nominal) (float64, the reference's operation order),
    optionally clamped like the reference (`min(max(x, lo), hi)`). `scaling='sqrt'` uses sqrt(batch/nominal)."""
    if global_batch <= 0:
        raise ValueError(f"global batch must be positive, got {global_batch}")
    if scaling == "linear":
        ratio = global_batch / nominal_batch
    elif scaling == "sqrt":
        ratio = math.sqrt(global_batch / nominal_batch)
    else:
        raise ValueError(f"lr scaling must be 'linear' or 'sqrt', got {scaling!r}")
    lr_max, lr_min = ratio * base, ratio * minimum
    if clamp:
        lr_max = min(max(lr_max, clamp_max[0]), clamp_max[1])
        lr_min = min(max(lr_min, clamp_min[0]), clamp_min[1])
    return lr_max, lr_min


def warm_cos_lr(t, *, lr_max: float, lr_min: float, total: float, warmup: float, no_aug: float,
                warmup_lr_ratio: float = 0.1, xp=np):
    """The reference's `yolox_warm_cos_lr` at time t (epochs or steps; numpy float64 or jnp).

    t <= warmup: quadratic from lr0 = max(ratio·lr_max, 1e-6); t >= total - no_aug: lr_min; otherwise
    lr_min + ½(lr_max - lr_min)(1 + cos(π (t - warmup) / (total - warmup - no_aug))).
    """
    lr0 = max(warmup_lr_ratio * lr_max, 1e-6)
    t = xp.asarray(t, dtype=xp.float64 if xp is np else None)
    if xp is not np:
        t = t.astype(jnp.result_type(float))
    warm = (lr_max - lr0) * (t / float(warmup) if warmup > 0 else xp.ones_like(t)) ** 2 + lr0
    span = max(total - warmup - no_aug, 1e-12)
    cos = lr_min + 0.5 * (lr_max - lr_min) * (1.0 + xp.cos(math.pi * (t - warmup) / span))
    return xp.where(t <= warmup, warm, xp.where(t >= total - no_aug, lr_min, cos))


def make_schedule(lr_cfg, global_batch: int, steps_per_epoch: int, epochs: int,
                  log: Callable[[str], None] | None = None) -> Callable[[jax.Array], jax.Array]:
    """optax schedule step -> lr from the `train.lr` config section.

    unit 'epoch': the reference — lr fixed within an epoch at its value for epoch = step // steps_per_epoch;
    unit 'step': the same curve evaluated per step (warm-up and tail in steps = epochs · steps_per_epoch).
    """
    if steps_per_epoch <= 0:
        raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}")
    lr_max, lr_min = lr_bounds(global_batch, base=lr_cfg.base, minimum=lr_cfg.min,
                               nominal_batch=lr_cfg.nominal_batch, clamp=lr_cfg.clamp,
                               clamp_max=tuple(lr_cfg.clamp_max), clamp_min=tuple(lr_cfg.clamp_min),
                               scaling=lr_cfg.scaling)
    kw = dict(lr_max=lr_max, lr_min=lr_min, warmup_lr_ratio=lr_cfg.warmup_lr_ratio)
    if lr_cfg.unit == "epoch":
        kw.update(total=epochs, warmup=lr_cfg.warmup_epochs, no_aug=lr_cfg.no_aug_epochs)
        to_t = lambda step: step // steps_per_epoch  # noqa: E731
    elif lr_cfg.unit == "step":
        kw.update(total=epochs * steps_per_epoch, warmup=lr_cfg.warmup_epochs * steps_per_epoch,
                  no_aug=lr_cfg.no_aug_epochs * steps_per_epoch)
        to_t = lambda step: step  # noqa: E731
    else:
        raise ValueError(f"train.lr.unit must be 'epoch' or 'step', got {lr_cfg.unit!r}")
    if log is not None:
        rule = "sqrt" if lr_cfg.scaling == "sqrt" else "linear"
        log(f"lr rule: {rule} scaling base {lr_cfg.base:g} x (global batch {global_batch} / {lr_cfg.nominal_batch})"
            f"{' clamped to ' + str(tuple(lr_cfg.clamp_max)) if lr_cfg.clamp else ' (no clamp)'} -> lr_max {lr_max:.6g};"
            f" min {lr_cfg.min:g} -> lr_min {lr_min:.6g}; warm-up {lr_cfg.warmup_epochs} epochs from "
            f"{max(lr_cfg.warmup_lr_ratio * lr_max, 1e-6):.6g} (quadratic), cosine, flat tail {lr_cfg.no_aug_epochs}"
            f" epochs; unit '{lr_cfg.unit}', {steps_per_epoch} steps/epoch, {epochs} epochs")

    def schedule(step):
        return warm_cos_lr(to_t(jnp.asarray(step)), xp=jnp, **kw)

    schedule.lr_max, schedule.lr_min = lr_max, lr_min  # type: ignore[attr-defined]
    return schedule


# ------------------------------------------------------------------------------------------------------
# The optimiser
# ------------------------------------------------------------------------------------------------------

def sgd_reference(learning_rate, labels: Mapping[str, Any], *, momentum: float = 0.937, nesterov: bool = True,
                  weight_decay: float = 5e-4) -> optax.GradientTransformation:
    """The reference SGD over parameter groups (labels from `param_labels`)."""
    trace = optax.trace(decay=momentum, nesterov=nesterov)
    tx = optax.multi_transform(
        {"pg0": trace,
         "pg1": optax.chain(optax.add_decayed_weights(weight_decay), optax.trace(momentum, nesterov=nesterov)),
         "pg2": optax.trace(decay=momentum, nesterov=nesterov),
         "frozen": optax.set_to_zero()},
        labels)
    return optax.chain(tx, optax.scale_by_learning_rate(learning_rate))


def adamw_grouped(learning_rate, labels: Mapping[str, Any], *, b1: float = 0.9, b2: float = 0.999,
                  weight_decay: float = 0.05) -> optax.GradientTransformation:
    """AdamW over the same parameter groups (a departure from the reference, `train.optimizer='adamw'`):
    decoupled weight decay on pg1 only, none on BatchNorm weights (pg0) and biases (pg2), frozen leaves fixed.
    Adam's per-leaf normalisation makes the step size independent of the gradient scale, which differs by
    orders of magnitude between the backbone and the neck branches of a from-scratch model (EXPERIMENTS.md)."""
    adam = optax.scale_by_adam(b1=b1, b2=b2)
    tx = optax.multi_transform(
        {"pg0": adam, "pg1": optax.chain(adam, optax.add_decayed_weights(weight_decay)), "pg2": adam,
         "frozen": optax.set_to_zero()},
        labels)
    return optax.chain(tx, optax.scale_by_learning_rate(learning_rate))


# TARFusion (ATM's normalisation-free conv hourglass), by its reference state-dict prefix.
TAR_PREFIX = "neck.tar."


def lr_scale_tree(params: Mapping[str, Any], prefix_scales: Mapping[str, float]) -> dict[str, Any]:
    """Tree like `params` of per-leaf update multipliers: `prefix_scales[p]` for the leaves whose reference name
    (`torch_key`) starts with the prefix p (the first matching prefix), 1.0 for every other leaf."""
    out = {}
    for path in flatten(params):
        name = torch_key("params", tuple(path))
        out[tuple(path)] = next((float(v) for p, v in prefix_scales.items() if name.startswith(p)), 1.0)
    return unflatten(out)


def scale_updates_by(scales: Mapping[str, Any]) -> optax.GradientTransformation:
    """Multiplies each update leaf by the matching leaf of `scales` (a tree of floats like the params): a
    per-parameter learning-rate multiplier, with the decoupled weight decay scaled alike."""
    def update_fn(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, s: u * jnp.asarray(s, u.dtype), updates, scales), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def momentum_buffers(opt_state) -> dict[str, Any]:
    """{group: momentum-buffer tree} of an `sgd_reference` state (for tests and inspection)."""
    inner = opt_state[0].inner_states
    out = {}
    for g in ("pg0", "pg1", "pg2"):
        st = inner[g].inner_state
        if isinstance(st, tuple) and not hasattr(st, "trace"):
            st = st[-1]
        out[g] = st.trace
    return out
