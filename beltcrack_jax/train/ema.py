"""The reference's `ModelEMA` (yolox-pytorch `utils/utils.py`), as pure functions.

After every optimiser step: updates += 1; d = decay·(1 - exp(-updates/tau)); every floating variable
(parameters AND BatchNorm running statistics) <- d·ema + (1 - d)·model. Integer leaves are not averaged (the
reference skips `num_batches_tracked`). The counter lives in the train state, so it is restored on resume
(the reference sets `ema.updates = epoch_step · Init_Epoch` when resuming).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def ema_decay(updates, decay: float = 0.9999, tau: float = 2000.0):
    """d(n) = decay·(1 - exp(-n/tau)) in the default float dtype (float64 under x64).

    Written with expm1 so that float32 keeps full relative precision at small n (1 - exp(-1/2000) cancels).
    """
    n = jnp.asarray(updates).astype(jnp.result_type(float))
    return decay * -jnp.expm1(-n / tau)


def ema_one_minus_decay(updates, decay: float = 0.9999, tau: float = 2000.0):
    """1 - d(n) = (1 - decay) + decay·exp(-n/tau), accurate in float32 as d -> 1 (PyTorch forms 1 - d in
    float64 on the host)."""
    n = jnp.asarray(updates).astype(jnp.result_type(float))
    return (1.0 - decay) + decay * jnp.exp(-n / tau)


def ema_update(ema: Any, model: Any, updates, decay: float = 0.9999, tau: float = 2000.0) -> Any:
    """New EMA tree given the model tree and the counter value AFTER this update (1 for the first update).

    Per leaf: v·d + (1-d)·m with d and 1-d rounded to the leaf's dtype (as PyTorch's `v *= d; v += (1-d)·m`).
    """
    d = ema_decay(updates, decay, tau)
    one_minus_d = ema_one_minus_decay(updates, decay, tau)

    def upd(e, m):
        if not jnp.issubdtype(jnp.asarray(e).dtype, jnp.floating):
            return e
        return e * d.astype(e.dtype) + one_minus_d.astype(e.dtype) * m.astype(e.dtype)

    return jax.tree.map(upd, ema, model)
