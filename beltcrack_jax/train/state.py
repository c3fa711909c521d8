"""The train state: a pytree of arrays only (no functions), so orbax can save/restore it onto any mesh."""

from __future__ import annotations

import os
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.traverse_util import flatten_dict as flatten, unflatten_dict as unflatten

from beltcrack_jax.models.initializers import apply_init
from beltcrack_jax.models.naming import torch_key, torch_to_flax_array
from beltcrack_jax.weights.orbax_io import load_variables
from beltcrack_jax.weights.state_dict import read_state_dict
from beltcrack_jax.weights.yolox import ImportReport


@flax.struct.dataclass
class TrainState:
    """step: optimiser steps done. ema_*: the reference's ModelEMA (params and BN stats), ema_updates its
    counter (= step for a run started from scratch)."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    ema_params: Any
    ema_batch_stats: Any
    ema_updates: jax.Array

    def variables(self, ema: bool = False) -> dict[str, Any]:
        """Flax variables for `model.apply` (EMA copies when ema=True, as the reference evaluates)."""
        if ema:
            return {"params": self.ema_params, "batch_stats": self.ema_batch_stats}
        return {"params": self.params, "batch_stats": self.batch_stats}


def init_variables(model, rng: jax.Array, sample_clips: jax.Array, scheme: str = "reference",
                   prior_prob: float = 0.0) -> dict[str, Any]:
    """`model.init` followed by the initialisation scheme (`models.initializers.apply_init`: 'reference' = how
    the reference run starts, 'yolox' = YOLOX's from-scratch init) and the optional head prior bias."""
    init_key, scheme_key = jax.random.split(rng)
    variables = dict(model.init(init_key, sample_clips, train=False))
    variables.setdefault("batch_stats", {})
    variables = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
    return apply_init(variables, scheme, scheme_key, prior_prob=prior_prob)


def create_train_state(variables: dict[str, Any], tx: optax.GradientTransformation) -> TrainState:
    """Fresh state: EMA = a copy of the initial model (as `ModelEMA(model)` deep-copies it), counters 0."""
    params, stats = variables["params"], variables["batch_stats"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=stats,
                      opt_state=tx.init(params), ema_params=jax.tree.map(jnp.array, params),
                      ema_batch_stats=jax.tree.map(jnp.array, stats), ema_updates=jnp.zeros((), jnp.int32))


def load_pretrained(variables: dict[str, Any], path: str, log: Callable[[str], None] = print) -> dict[str, Any]:
    """`train.init_from`: overwrites every leaf of `variables` whose name AND shape match the source, as the
    reference's partial `load_state_dict` of the YOLOX-S weights does; every other leaf keeps its initial value.

    `path` is either what `beltcrack-convert` writes (an orbax folder of Flax variables: the whole
    model from a reference state dict, or only the imported tensors with `--yolox-s`), or a state-dict file
    (.npz of PyTorch name -> array, or .pth with torch installed). Logs a report (loaded / shape mismatch /
    kept / source-only, with names); raises ValueError if nothing matches.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"train.init_from={path!r} does not exist (expected a folder written by "
                                f"`beltcrack-convert` or an .npz/.pth state dict)")
    if os.path.isdir(path):   # Flax variables (orbax), matched by Flax path
        source = {(c, *p): np.asarray(v) for (c, *p), v in flatten(load_variables(path)).items()}
        names = {torch_key(c, tuple(p)) for (c, *p) in source}

        def get(c, p, shape):
            return source.get((c, *p))
    else:                     # PyTorch-named state dict
        sd = read_state_dict(path)
        names = set(sd)

        def get(c, p, shape):
            key = torch_key(c, tuple(p))
            if key not in sd:
                return None
            try:
                return torch_to_flax_array(c, p[-1], sd[key], shape)
            except ValueError:
                return sd[key]   # wrong shape: reported below
    out, loaded, mismatch, kept, seen = {}, [], [], [], set()
    for (collection, *p), v in flatten(variables).items():
        key = torch_key(collection, tuple(p))
        src = get(collection, p, np.shape(v))
        out[(collection, *p)] = v
        if src is None:
            kept.append(key)
            continue
        seen.add(key)
        if tuple(np.shape(src)) != tuple(np.shape(v)):
            mismatch.append(f"{key}: {tuple(np.shape(src))} in the source vs {tuple(np.shape(v))} in the model")
            continue
        out[(collection, *p)] = jnp.asarray(src, dtype=v.dtype)
        loaded.append(key)
    source_only = sorted(k for k in names if k not in seen and not k.endswith("num_batches_tracked"))
    report = ImportReport(sorted(loaded), sorted(mismatch), source_only, sorted(kept))
    if not loaded:
        raise ValueError(f"train.init_from={path!r}: no entry matches a model variable by name and shape\n"
                         + report.summary())
    log(f"init_from {path}: " + report.summary())
    return unflatten(out)
