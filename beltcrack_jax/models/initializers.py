"""Initialisation schemes, applied to the variables `model.init` returns (a pure function of the tree and a key).

The Flax modules carry simple initialisers (conv kernels N(0, 0.02), zero biases, unit norms). How the reference
run actually starts is more than that, and is set per leaf kind here, from the leaf's path and shape:

``reference`` (configs/default.py): `train_BeltCrackDet.py` = PyTorch module defaults, then `weights_init`
  * Conv2d / ConvTranspose2d weights ~ N(0, 0.02)                           (kept from `model.init`)
  * every conv and Linear bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))          (PyTorch default; fan_in as torch
    computes it from the weight: in/groups*kh*kw for a conv, out*kh*kw for a ConvTranspose, in for a Linear)
  * BatchNorm2d weight ~ N(1, 0.02), bias 0; BatchNorm1d (GAL) and LayerNorm 1 / 0
  * Linear weights, the Swin bias tables, the WTConv scales, NonLocal gamma: as `model.init` draws them.
``yolox``: the initialisation YOLOX itself trains from scratch with: PyTorch's default conv init
  (kaiming_uniform(a=sqrt(5)): weights ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))) instead of the fixed N(0, 0.02),
  PyTorch-default biases, BatchNorm 1 / 0. The fixed std 0.02 does not scale with the fan-in: for the
  reference's 128-channel 3x3 convs it is close to the PyTorch default (gain 0.02*sqrt(1152) = 0.68 vs 0.58),
  for a narrower model it is not (width 1/8: 0.24), and the normalisation-free TARFusion hourglass then
  shrinks its signal by ~4x per conv (EXPERIMENTS.md, probe 1).

`prior_prob` > 0 (either scheme) sets the objectness and class prediction biases to -log((1 - p) / p), the
focal-loss / YOLOX prior (RetinaNet): every anchor starts at probability p instead of 0.5. 0 = untouched.
"""

from __future__ import annotations

import math
import zlib
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import traverse_util

SCHEMES = ("reference", "yolox")

# The head's objectness / class prediction convs (YOLOX `initialize_biases`).
PRIOR_MODULES = (("head", "obj_preds", "0"), ("head", "cls_preds", "0"))


def is_batchnorm1d(module_path: tuple[str, ...]) -> bool:
    """GAL's `<x>_func = Sequential(Linear, BatchNorm1d, ReLU)`: the only BatchNorm1d modules of the network."""
    return (len(module_path) >= 3 and "gal" in module_path and module_path[-1] == "1"
            and module_path[-2].endswith("_func"))


def torch_fan_in(leaf: str, shape: tuple[int, ...]) -> int | None:
    """fan_in as `torch.nn.init._calculate_fan_in_and_fan_out` computes it for the weight stored in this leaf:
    conv `kernel` (HWIO) in/groups*kh*kw; ConvTranspose `weight` (in, out, kh, kw) out*kh*kw; Dense `kernel`
    (in, out) in. None for any other leaf."""
    if leaf == "kernel" and len(shape) == 4:
        return int(shape[0] * shape[1] * shape[2])
    if leaf == "kernel" and len(shape) == 2:
        return int(shape[0])
    if leaf == "weight" and len(shape) == 4:
        return int(shape[1] * shape[2] * shape[3])
    return None


def _key_for(key: jax.Array, path: tuple[str, ...]) -> jax.Array:
    return jax.random.fold_in(key, zlib.crc32("/".join(path).encode()) & 0x7FFFFFFF)


def _uniform(key, shape, bound, dtype):
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def apply_init(variables: Mapping[str, Any], scheme: str, key: jax.Array, *,
               prior_prob: float = 0.0) -> dict[str, Any]:
    """{'params', 'batch_stats'} from `model.init` -> the same tree initialised by `scheme` (see module doc).
    Deterministic in `key`: every leaf draws from fold_in(key, crc32 of its path)."""
    if scheme not in SCHEMES:
        raise ValueError(f"model.init must be one of {SCHEMES}, got {scheme!r}")
    if not 0.0 <= prior_prob < 1.0:
        raise ValueError(f"model.prior_prob must be in [0, 1), got {prior_prob!r}")
    params = traverse_util.flatten_dict(dict(variables["params"]))
    bn_modules = {p[:-1] for p in traverse_util.flatten_dict(dict(variables.get("batch_stats", {})))}
    weights = {p[:-1]: (p[-1], v.shape) for p, v in params.items()
               if torch_fan_in(p[-1], v.shape) is not None}

    out = {}
    for path, v in params.items():
        module, leaf = path[:-1], path[-1]
        k = _key_for(key, path)
        new = v
        if module in bn_modules:                      # BatchNorm: weight / bias
            if leaf == "scale":
                bn2d = not is_batchnorm1d(module)
                new = (1.0 + 0.02 * jax.random.normal(k, v.shape, v.dtype)) if (scheme == "reference" and bn2d) \
                    else jnp.ones_like(v)
            elif leaf == "bias":
                new = jnp.zeros_like(v)
        elif leaf == "bias" and module in weights:    # conv / ConvTranspose / Linear bias: PyTorch default
            fan_in = torch_fan_in(*weights[module])
            new = _uniform(k, v.shape, 1.0 / math.sqrt(fan_in), v.dtype)
        elif scheme == "yolox" and leaf in ("kernel", "weight") and len(v.shape) == 4:
            # conv / ConvTranspose weights: kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in))
            new = _uniform(k, v.shape, 1.0 / math.sqrt(torch_fan_in(leaf, v.shape)), v.dtype)
        out[path] = new
    if prior_prob > 0:
        value = -math.log((1.0 - prior_prob) / prior_prob)
        for module in PRIOR_MODULES:
            if module + ("bias",) in out:
                out[module + ("bias",)] = jnp.full_like(out[module + ("bias",)], value)
    return {**variables, "params": traverse_util.unflatten_dict(out)}
