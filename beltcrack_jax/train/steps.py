"""The pure train step (no jit here; `loop.py` jits it with shardings and donation).

One call of the train step = one optimiser step of the reference's `fit_one_epoch` iteration:
forward (train-mode BN) -> loss -> grads -> SGD update -> EMA update. With `grad_accum = k` the global batch is
split into k micro-batches (scanned; BN running statistics updated once per micro-batch, gradients averaged).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from beltcrack_jax.train import ema as ema_lib
from beltcrack_jax.train import optim
from beltcrack_jax.train.state import TrainState

# ImageNet statistics, as the reference's `preprocess_input`.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

BATCH_KEYS = ("clips", "boxes", "classes", "mask")


def normalize_clips(clips: jax.Array) -> jax.Array:
    """uint8 (…, 3) -> float32 (x/255 - mean)/std (fallback when the data package offers none)."""
    x = clips.astype(jnp.float32) / 255.0
    return (x - jnp.asarray(MEAN, jnp.float32)) / jnp.asarray(STD, jnp.float32)


def _scalars(aux: Mapping[str, Any]) -> dict[str, jax.Array]:
    return {k: jnp.asarray(v, jnp.float32) for k, v in aux.items() if jnp.ndim(v) == 0}


def make_train_step(model, tx: optax.GradientTransformation, loss_fn: Callable, *, seed: int = 0,
                    grad_accum: int = 1, compute_dtype: Any = jnp.float32, ema_decay: float = 0.9999,
                    ema_tau: float = 2000.0, normalize: Callable = normalize_clips,
                    lr_schedule: Callable | None = None, frozen: Any = None) -> Callable:
    """train_step(state, batch) -> (state, metrics).

    batch: dict with 'clips' uint8 (B, T, H, W, 3), 'boxes' (B, M, 4) cxcywh px, 'classes' (B, M), 'mask' (B, M).
    loss_fn(raw, boxes, classes, mask) -> (total, aux). compute_dtype bfloat16: params and inputs are cast for the
    forward/backward, the master params, optimiser state, BN statistics and the loss stay float32.
    RNG: key = fold_in(key(seed), step) (passed as the 'dropout' stream; nothing is stored in the state).
    A non-finite loss or gradient leaves the state unchanged and reports metrics['finite'] = 0.
    frozen: optional tree like the params with True for leaves the optimiser never changes
    (`optim.frozen_mask(labels)`): no gradient is computed for them (their grads are zeros, the update is the
    same). Skipping them matters: the Swin bias tables' gradient alone is a reduction over every window of the
    (windows, heads, N, N) attention scores (BENCHMARKS.md, item 14).
    """
    compute_dtype = jnp.dtype(compute_dtype)

    def loss_and_stats(params, batch_stats, mb, rng):
        p = params
        if frozen is not None:
            p = optim.stop_frozen_gradients(p, frozen)
        x = normalize(mb["clips"])
        if compute_dtype != jnp.float32:
            p = jax.tree.map(lambda a: a.astype(compute_dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, p)
            x = x.astype(compute_dtype)
        raw, new = model.apply({"params": p, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"],
                               rngs={"dropout": rng})
        raw = jax.tree.map(lambda r: r.astype(jnp.float32), raw)
        total, aux = loss_fn(raw, mb["boxes"], mb["classes"], mb["mask"])
        new_stats = jax.tree.map(lambda n, o: n.astype(o.dtype), new.get("batch_stats", {}), batch_stats)
        return total, (new_stats, _scalars(aux))

    grad_fn = jax.value_and_grad(loss_and_stats, has_aux=True)

    def train_step(state: TrainState, batch: Mapping[str, jax.Array]):
        batch = {k: batch[k] for k in BATCH_KEYS}
        rng = jax.random.fold_in(jax.random.key(seed), state.step)
        if grad_accum == 1:
            (loss, (stats, aux)), grads = grad_fn(state.params, state.batch_stats, batch, rng)
        else:
            def split(a):  # micro-batch k = rows k, k+accum, ...: each device keeps its own rows
                a = a.reshape((a.shape[0] // grad_accum, grad_accum) + a.shape[1:])
                return jnp.swapaxes(a, 0, 1)

            micro = jax.tree.map(split, batch)

            def body(carry, xs):
                stats, gsum = carry
                k, mb = xs
                (l, (stats, aux)), g = grad_fn(state.params, stats, mb, jax.random.fold_in(rng, k))
                return (stats, jax.tree.map(jnp.add, gsum, g)), (l, aux)

            zeros = jax.tree.map(jnp.zeros_like, state.params)
            (stats, gsum), (losses, auxs) = jax.lax.scan(
                body, (state.batch_stats, zeros), (jnp.arange(grad_accum), micro))
            grads = jax.tree.map(lambda g: g / grad_accum, gsum)
            loss = losses.mean()
            aux = jax.tree.map(jnp.mean, auxs)

        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        def update(state, grads, stats):
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            ema_updates = state.ema_updates + 1
            new_ema = ema_lib.ema_update({"params": state.ema_params, "batch_stats": state.ema_batch_stats},
                                         {"params": params, "batch_stats": stats}, ema_updates, ema_decay, ema_tau)
            return TrainState(step=state.step + 1, params=params, batch_stats=stats, opt_state=opt_state,
                              ema_params=new_ema["params"], ema_batch_stats=new_ema["batch_stats"],
                              ema_updates=ema_updates)

        # Keep the last good state on a non-finite step (the loop stops and reports it). A branch rather than
        # a select of new vs old: the select keeps the old state alive to the end, so the donated buffers
        # cannot be updated in place (XLA copies every leaf first; BENCHMARKS.md, item 17).
        new = jax.lax.cond(finite, update, lambda state, grads, stats: state, state, grads, stats)
        metrics = {"loss": loss.astype(jnp.float32), "grad_norm": grad_norm, "finite": finite.astype(jnp.float32),
                   **{f"loss/{k}": v for k, v in aux.items()}}
        if lr_schedule is not None:
            metrics["lr"] = jnp.asarray(lr_schedule(state.step), jnp.float32)
        return new, metrics

    return train_step
