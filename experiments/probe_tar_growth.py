"""Probe: how the scale of the TARFusion output (and of the neck stages) evolves over the first steps of training.

    python experiments/probe_tar_growth.py --config configs/demo.py --steps 300 --every 25 \
        [--config.data.name=beltcrack/synthetic_demo_seed11 --config.train.lr_scale_tar=0.1 ...] [--out F.json]

Trains with the real train step on the real training iterator (the batches, in the order, of `train.py` with the
same config) and every `--every` steps measures, on a fixed probe batch (the first one) in train mode, the RMS of
the backbone's P3 features, of the TARFusion output (`neck.tar`, normalisation-free) and of the neck stages, the
norm of the TARFusion weights, and the mean training loss of the interval. Prints one line per measurement and
writes them as JSON to --out.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import traverse_util
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", lock_config=True)
_STEPS = flags.DEFINE_integer("steps", 300, "training steps")
_EVERY = flags.DEFINE_integer("every", 25, "steps between measurements")
_OUT = flags.DEFINE_string("out", "", "JSON file for the measurements")

STAGES = ("backbone_feats", "neck.tar", "neck.conv_fin_mix", "neck.resblock2")


def _rms(a) -> float:
    a = np.asarray(a, np.float64)
    return float(np.sqrt(np.mean(a * a))) if np.isfinite(a).all() else float("inf")


def main(argv):
    from beltcrack_jax.train import loop, optim
    from beltcrack_jax.train.state import create_train_state, init_variables
    from beltcrack_jax.train.steps import make_train_step

    config = _CONFIG.value
    tc = config.train
    data = loop.build_train_data(config, 0, 1)
    model = loop._build_model(config)
    normalize = loop.default_normalize()
    v = jax.jit(lambda k, c: init_variables(model, k, normalize(c), config.model.init, config.model.prior_prob))(
        jax.random.key(config.seed, impl="rbg"), data.sample["clips"][:1])
    labels = optim.param_labels(v["params"], v["batch_stats"], train_frozen=tc.train_frozen)
    sched = optim.make_schedule(tc.lr, tc.batch_size, data.steps_per_epoch, tc.epochs, log=lambda *_: None)
    tx = loop.build_optimizer(tc, sched, labels, v["params"])
    state = create_train_state(v, tx)
    step = jax.jit(make_train_step(model, tx, loop.default_loss_fn(config), seed=config.seed, normalize=normalize,
                                   ema_decay=tc.ema.decay, ema_tau=tc.ema.tau, lr_schedule=sched,
                                   frozen=optim.frozen_mask(labels)), donate_argnums=0)

    @jax.jit
    def stages(params, batch_stats, clips):
        _, mut = model.apply({"params": params, "batch_stats": batch_stats}, normalize(clips), train=True,
                             mutable=["batch_stats", "intermediates"])
        flat = traverse_util.flatten_dict(mut["intermediates"])
        return {k[-1]: v[0] for k, v in flat.items() if k[-1] in STAGES}

    def tar_norm(params) -> float:
        tar = params["neck"]["atm"]["tar"]
        return float(np.sqrt(sum(float(jnp.sum(a * a)) for a in jax.tree.leaves(tar))))

    it = data.iterator
    probe = None
    rows, losses = [], []

    def measure(i):
        s = jax.device_get(stages(state.params, state.batch_stats, probe))
        row = {"step": i, "loss": float(np.mean(losses)) if losses else None, "tar_weight_norm": tar_norm(state.params),
               **{f"rms/{k}": _rms(s[k]) for k in STAGES if k in s}}
        rows.append(row)
        print(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)

    for i in range(_STEPS.value + 1):
        if i % _EVERY.value == 0 and probe is not None:
            measure(i)
            losses.clear()
        if i == _STEPS.value:
            break
        b = loop._host_batch(next(it))
        if probe is None:
            probe = jnp.asarray(b["clips"])
            measure(0)
        state, m = step(state, {k: jnp.asarray(b[k]) for k in ("clips", "boxes", "classes", "mask")})
        losses.append(float(m["loss"]))
        if not float(m["finite"]):
            print(f"step {i + 1}: non-finite loss; stopped", flush=True)
            rows.append({"step": i + 1, "loss": float("nan")})
            break
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            json.dump({"config": config.to_json_best_effort(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    app.run(main)
