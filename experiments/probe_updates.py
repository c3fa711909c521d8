"""Probe: relative parameter change per optimiser step, per module, over the first steps of training.

    python experiments/probe_updates.py --config configs/demo.py --steps 40 [--config.train.lr.base=0.4 ...]

Trains with the real train step on the first batches of the train split and prints, every few steps, for each
top-level module |p_t - p_{t-1}| / |p_{t-1}| (the size of one update relative to the weights) and the loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", lock_config=True)
_STEPS = flags.DEFINE_integer("steps", 40, "steps")


def module_key(path):
    if path[0] == "neck":
        return ".".join(path[1:3]) if path[1] in ("atm", "wfm", "hsm") else path[1]
    return path[0]


def main(argv):
    from flax import traverse_util

    from beltcrack_jax.data.transforms import normalize
    from beltcrack_jax.models import build_model
    from beltcrack_jax.train import optim
    from beltcrack_jax.train.loop import build_optimizer, default_loss_fn
    from beltcrack_jax.train.overfit import load_clips
    from beltcrack_jax.train.state import create_train_state, init_variables
    from beltcrack_jax.train.steps import make_train_step

    config = _CONFIG.value
    tc = config.train
    batches, _ = load_clips(config, 4 * tc.batch_size)
    model = build_model(config)
    v = jax.jit(lambda k, c: init_variables(model, k, normalize(c), config.model.init, config.model.prior_prob))(
        jax.random.key(config.seed, impl="rbg"), batches[0]["clips"][:1])
    labels = optim.param_labels(v["params"], v["batch_stats"])
    spe = 4
    sched = optim.make_schedule(tc.lr, tc.batch_size, spe, max(1, _STEPS.value // spe))
    tx = build_optimizer(tc, sched, labels, v["params"])
    state = create_train_state(v, tx)
    step = jax.jit(make_train_step(model, tx, default_loss_fn(config), normalize=normalize,
                                   frozen=optim.frozen_mask(labels), lr_schedule=sched))
    keys = ("clips", "boxes", "classes", "box_mask")

    def by_module(params):
        out = {}
        for path, a in traverse_util.flatten_dict(jax.device_get(params)).items():
            out.setdefault(module_key(path), []).append(np.asarray(a, np.float64).ravel())
        return {k: np.concatenate(x) for k, x in out.items()}

    prev = by_module(state.params)
    for i in range(_STEPS.value):
        b = batches[i % len(batches)]
        state, m = step(state, {"clips": b["clips"], "boxes": b["boxes"], "classes": b["classes"],
                                "mask": b["box_mask"]})
        cur = by_module(state.params)
        rel = {k: np.linalg.norm(cur[k] - prev[k]) / max(np.linalg.norm(prev[k]), 1e-12) for k in cur}
        prev = cur
        if i < 5 or (i + 1) % 5 == 0:
            print(f"step {i + 1:3d} loss {float(m['loss']):7.3f} lr {float(m['lr']):.4g} | "
                  + " ".join(f"{k} {r:.3g}" for k, r in sorted(rel.items())), flush=True)


if __name__ == "__main__":
    app.run(main)
