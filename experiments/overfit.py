"""Probe: can a model fit a handful of training clips? Trains on the first N key frames of the train split
(fixed batches, cycled) and reports mAP50 (paper profile) on exactly those clips.

    python experiments/overfit.py --config configs/demo.py --clips 32 --steps 300 [--config.model.atm=False ...]

Prints the loss every 25 steps and the final train-clip mAP50 / P / R (raw weights and EMA weights).
"""

from __future__ import annotations

import tempfile
import time

import grain
import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", lock_config=True)
_CLIPS = flags.DEFINE_integer("clips", 32, "training clips (multiple of the batch size)")
_STEPS = flags.DEFINE_integer("steps", 300, "optimiser steps")


def main(argv):
    from beltcrack_jax.data import pipeline
    from beltcrack_jax.eval.evaluator import Evaluator
    from beltcrack_jax.train.loop import TrainData, train_and_evaluate

    config = _CONFIG.value
    bs = config.train.batch_size
    with config.unlocked():
        config.train.num_train_steps = _STEPS.value
        config.train.log_every_steps = 25
        config.train.progress_bar = False
        config.train.checkpoint_every_steps = 10 ** 9
        config.train.eval_every_epochs = 0
        config.train.eval_every_steps = 0
        config.train.async_checkpoints = False
    it = pipeline.make_train_iterator(config, batch_size_per_process=bs)
    batches = [next(it) for _ in range(_CLIPS.value // bs)]
    with config.unlocked():  # the lr schedule spans the run: epochs of len(batches) steps
        config.train.epochs = max(1, _STEPS.value // len(batches))
    index = it.info["index"]
    # The N clips (epoch 0 of the shuffled sampler: spread over the split) re-batched in a new random order every
    # epoch, so batch statistics mix sequences as in real training.
    items = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    n = len(items["clips"])

    def batch_at(i):
        e, r = divmod(int(i), len(batches))
        order = np.random.default_rng([config.seed, e]).permutation(n)[r * bs:(r + 1) * bs]
        return {k: v[order] for k, v in items.items()}

    ds = grain.MapDataset.range(10 ** 7).map(batch_at)
    data = TrainData(iterator=iter(ds.to_iter_dataset()), steps_per_epoch=len(batches),
                     sample={k: v for k, v in batches[0].items()})
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        state = train_and_evaluate(config, work, train_data=data)
    train_s = time.perf_counter() - t0

    class _It:
        info = {"index": index}

        def __iter__(self):
            return iter(batches)

    from beltcrack_jax.data.transforms import normalize
    from beltcrack_jax.models import build_model
    from beltcrack_jax.train.loop import default_loss_fn
    model, loss_fn = build_model(config), default_loss_fn(config)

    @jax.jit
    def losses(variables, stats_mode_batch):
        clips = normalize(stats_mode_batch["clips"])
        args = (stats_mode_batch["boxes"], stats_mode_batch["classes"], stats_mode_batch["box_mask"])
        ev_loss = loss_fn(model.apply(variables, clips, train=False), *args)[0]
        tr_raw, _ = model.apply(variables, clips, train=True, mutable=["batch_stats"])
        return ev_loss, loss_fn(tr_raw, *args)[0]

    for name, ema in (("raw", False), ("ema", True)):
        pairs = [losses(state.variables(ema=ema), {k: b[k] for k in ("clips", "boxes", "classes", "box_mask")})
                 for b in batches]
        ev_l, tr_l = np.mean([float(p[0]) for p in pairs]), np.mean([float(p[1]) for p in pairs])
        print(f"LOSS {name}: eval-mode BN {ev_l:.3f}  train-mode BN {tr_l:.3f}", flush=True)
    # BN recalibration: running statistics re-estimated for the final weights (150 train-mode forwards)
    @jax.jit
    def recal(variables, clips):
        _, new = model.apply(variables, normalize(clips), train=True, mutable=["batch_stats"])
        return {**variables, "batch_stats": new["batch_stats"]}

    v = state.variables(ema=False)
    for i in range(150):
        v = recal(v, batches[i % len(batches)]["clips"])
    pairs = [losses(v, {k: b[k] for k in ("clips", "boxes", "classes", "box_mask")}) for b in batches]
    print(f"LOSS recalibrated raw: eval-mode BN {np.mean([float(p[0]) for p in pairs]):.3f}", flush=True)
    ev = Evaluator(config, split="train", data_fn=_It, log=lambda s: None)
    m = ev.run(v, collect_vis=False).metrics
    print(f"RESULT recalibrated raw: train-clip mAP50 {m['map50']:.3f}  P {m['precision']:.3f}  R {m['recall']:.3f}")
    for name, ema in (("raw", False), ("ema", True)):
        m = ev.run(state.variables(ema=ema), collect_vis=False).metrics
        print(f"RESULT {name}: train-clip mAP50 {m['map50']:.3f}  P {m['precision']:.3f}  R {m['recall']:.3f}  "
              f"({_CLIPS.value} clips, {_STEPS.value} steps, {train_s:.0f} s)", flush=True)


if __name__ == "__main__":
    app.run(main)
