"""Speed options of the network that change its numerics or its memory/compute trade (config.model switches).

* BatchNorm folding (inference): `fold_batchnorm(variables)` folds every eval-mode BatchNorm into the conv /
  Dense that feeds it (kernel * s per output channel, s = scale / sqrt(var + eps), the shift into a bias) and
  returns variables WITHOUT BN statistics; a model built with `fold_bn=True` (or any module applied inside
  `folded_batchnorm()`) then skips the BN arithmetic. Same function up to float rounding
  (tests/test_fast_paths.py). Eval only.
* bf16 compute (`compute_dtype='bfloat16'`, eval): the input, parameters and BN statistics are cast to bfloat16
  for the forward (`cast_floating`); convolutions and matmuls accumulate in float32 inside XLA:CPU / cuDNN /
  cuBLAS (their bf16 kernels do), element-wise ops run in bf16, the head output is returned as float32.
  Accuracy vs float32: tests/test_fast_paths.py. (Training in bf16 is `config.train.compute_dtype`.)
* Rematerialisation (`remat`): 'none' | 'modules' (jax.checkpoint around the backbone's stem, each CSPDarknet
  stage and FPN CSPLayer, each neck branch -- HSM, ATM, WFM, conv_fin_mix, each RCU -- and the head: only their
  inputs are kept for the backward pass, everything inside is recomputed) | 'dots' (same units, but convolution /
  matmul outputs are kept and only element-wise work is recomputed: `jax.checkpoint_policies.dots_saveable`).
  Same gradients. Memory: on XLA:CPU the saving is small (its scheduler recomputes early; BENCHMARKS.md), the
  option is meant for accelerators.
"""

from __future__ import annotations

import contextlib
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import flax.linen as nn

from beltcrack_jax.models.layers import BatchNorm

__all__ = ["fold_batchnorm", "folded_batchnorm", "is_folded", "cast_floating", "remat_module", "REMAT_POLICIES",
           "COMPUTE_DTYPES"]

# (producer, BatchNorm) child-name pairs of the network, with the BN epsilon: BaseConv (conv, bn) uses YOLOX's
# 1e-3, every other BN (MemoryReduce, Res-CBAM, shortcut, GAL's BatchNorm1d / BatchNorm2d) PyTorch's 1e-5.
FOLD_PAIRS: tuple[tuple[str, str, float], ...] = (
    ("conv", "bn", 1e-3),
    ("con1x1", "bn", 1e-5),
    ("conv1", "bn1", 1e-5),
    ("conv2", "bn2", 1e-5),
    ("0", "1", 1e-5),
)

REMAT_POLICIES = ("none", "modules", "dots")
COMPUTE_DTYPES = ("float32", "bfloat16")


def _is_bn(params: Mapping, stats: Mapping, name: str) -> bool:
    p, s = params.get(name), stats.get(name)
    return (isinstance(p, Mapping) and isinstance(s, Mapping) and set(p) == {"scale", "bias"}
            and set(s) == {"mean", "var"})


def fold_batchnorm(variables: Mapping[str, Any]) -> dict[str, Any]:
    """{'params', 'batch_stats'} of the unfolded network -> {'params'} with every BatchNorm folded into the
    conv / Dense before it (see the module docstring). Works on any sub-tree (a submodule's variables).

    Producer with a bias: bias' = (bias - mean) * s + beta, the BN disappears. Without one (BaseConv,
    MemoryReduce, GAL's 1x1): the BN keeps only `bias` = beta - mean * s (added by `folded_batchnorm`).
    Raises ValueError if a BatchNorm is left that no producer feeds (nothing can be folded silently wrong)."""
    if "params" not in variables:
        raise ValueError(f"fold_batchnorm expects Flax variables with 'params' (and 'batch_stats'), got keys "
                         f"{sorted(variables)}")
    stats_in = variables.get("batch_stats", {})
    folded_count = [0]

    def walk(params: Mapping, stats: Mapping, path: str) -> tuple[dict, dict]:
        params, stats = dict(params), dict(stats)
        for prod, bn, eps in FOLD_PAIRS:
            if prod in params and isinstance(params[prod], Mapping) and "kernel" in params[prod] \
                    and _is_bn(params, stats, bn):
                p, s = params[bn], stats[bn]
                mul = p["scale"] * jax.lax.rsqrt(jnp.asarray(s["var"], jnp.float32) + eps)
                conv = dict(params[prod])
                conv["kernel"] = conv["kernel"] * mul.astype(conv["kernel"].dtype)
                shift = p["bias"] - s["mean"] * mul
                if "bias" in conv:
                    conv["bias"] = conv["bias"] * mul + shift
                    del params[bn]
                else:
                    params[bn] = {"bias": shift}
                params[prod] = conv
                del stats[bn]
                folded_count[0] += 1
        for k, v in list(params.items()):
            if isinstance(v, Mapping) and k in stats and isinstance(stats[k], Mapping):
                params[k], sub = walk(v, stats[k], f"{path}/{k}")
                if sub:
                    stats[k] = sub
                else:
                    del stats[k]
        return params, stats

    params, left = walk(variables["params"], stats_in, "")
    if left:
        leaves = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(left)]
        raise ValueError(f"fold_batchnorm: BatchNorm statistics without a conv/Dense producer to fold into: "
                         f"{leaves[:8]}")
    out = {k: v for k, v in variables.items() if k not in ("params", "batch_stats")}
    out["params"] = params
    return out


def is_folded(variables: Mapping[str, Any]) -> bool:
    """True iff `variables` hold no BatchNorm statistics (the output of `fold_batchnorm`)."""
    return not jax.tree.leaves(variables.get("batch_stats", {}))


def _folded_bn_interceptor(next_fun, args, kwargs, context):
    if not (isinstance(context.module, BatchNorm) and context.method_name == "__call__"):
        return next_fun(*args, **kwargs)
    x = args[0]
    train = kwargs.get("train", args[1] if len(args) > 1 else False)
    if train:
        raise ValueError("BatchNorm folding is for inference: call with train=False (build the model with "
                         "fold_bn=False to train)")
    module = context.module
    if module.has_variable("params", "bias"):
        return x + module.get_variable("params", "bias").astype(x.dtype)
    return x


@contextlib.contextmanager
def folded_batchnorm():
    """Inside this context every BatchNorm call returns x + its folded `bias` (or x): apply any module of the
    network to `fold_batchnorm(variables)` (e.g. the streaming pieces of predict.py)."""
    with nn.intercept_methods(_folded_bn_interceptor):
        yield


def cast_floating(tree: Any, dtype) -> Any:
    """Every floating leaf of `tree` cast to `dtype` (integer / bool leaves unchanged)."""
    dtype = jnp.dtype(dtype)
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating) else a,
                        tree)


def remat_module(cls, remat: str, train_argnum: int = 2):
    """`cls` wrapped in jax.checkpoint (nn.remat) for remat 'modules' / 'dots'; unchanged for 'none'.
    `train_argnum`: position of the static `train` argument of `__call__`, counting `self` as 0."""
    if remat not in REMAT_POLICIES:
        raise ValueError(f"remat must be one of {REMAT_POLICIES}, got {remat!r}")
    if remat == "none":
        return cls
    policy = jax.checkpoint_policies.dots_saveable if remat == "dots" else None
    return nn.remat(cls, policy=policy, static_argnums=(train_argnum,))
