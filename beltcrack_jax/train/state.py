"""The train state: a pytree of arrays only (no functions), so orbax can save/restore it onto any mesh."""

from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from beltcrack_jax.convert import flatten, torch_key, torch_to_flax_array, unflatten


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


def init_variables(model, rng: jax.Array, sample_clips: jax.Array) -> dict[str, Any]:
    variables = dict(model.init(rng, sample_clips, train=False))
    variables.setdefault("batch_stats", {})
    return {"params": variables["params"], "batch_stats": variables["batch_stats"]}


def create_train_state(variables: dict[str, Any], tx: optax.GradientTransformation) -> TrainState:
    """Fresh state: EMA = a copy of the initial model (as `ModelEMA(model)` deep-copies it), counters 0."""
    params, stats = variables["params"], variables["batch_stats"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=stats,
                      opt_state=tx.init(params), ema_params=jax.tree.map(jnp.array, params),
                      ema_batch_stats=jax.tree.map(jnp.array, stats), ema_updates=jnp.zeros((), jnp.int32))


def load_pretrained(variables: dict[str, Any], path: str, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Overwrites every leaf whose reference name AND shape match an entry of the npz state dict at `path`
    (PyTorch names, e.g. converted YOLOX-S weights), as the reference's partial `load_state_dict` does.
    Other leaves keep their initial values. Raises ValueError if nothing matches."""
    sd = np.load(path)
    out, loaded, skipped = {}, 0, 0
    for (collection, *p), v in flatten(variables).items():
        key = torch_key(collection, tuple(p))
        new = v
        if key in sd.files:
            try:
                new = jnp.asarray(torch_to_flax_array(collection, p[-1], sd[key], np.shape(v)), dtype=v.dtype)
                loaded += 1
            except ValueError:
                skipped += 1
        out[(collection, *p)] = new
    if loaded == 0:
        raise ValueError(f"init_from={path!r}: no entry matches a model variable by name and shape")
    log(f"init_from {path}: loaded {loaded} tensors, {skipped} name matches with other shapes skipped, "
        f"{len(out) - loaded - skipped} variables keep their initial values")
    return unflatten(out)
