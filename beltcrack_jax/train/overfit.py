"""Can the model fit a handful of training clips? The standard first check of a detector and its training code.

    python -m beltcrack_jax.train.overfit --config demo --clips 32 --steps 300 [--config.model.atm=False]

Takes the first `clips` key frames of the (shuffled) train split, trains on exactly those (re-batched in a new
random order every epoch, so batch statistics mix sequences as in real training) with the real train loop, and
reports mAP50 (paper profile) on the same clips with the raw and EMA weights, plus the eval-mode loss. A model,
loss and optimiser that work reach a high mAP50 here; `tests/test_learning.py` holds the tiny models to >= 0.9.
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

import grain
import numpy as np


def load_clips(config, num_clips: int) -> tuple[list[dict[str, np.ndarray]], Any]:
    """(batches of config.train.batch_size clips covering the first `num_clips` key frames of the shuffled train
    split, SplitIndex of the split)."""
    from beltcrack_jax.data import pipeline

    bs = config.train.batch_size
    if num_clips % bs:
        raise ValueError(f"clips ({num_clips}) must be a multiple of train.batch_size ({bs})")
    it = pipeline.make_train_iterator(config, batch_size_per_process=bs)
    if it.info["num_key_frames"] < num_clips:
        raise ValueError(f"{it.info['name']}/{it.info['split']} has {it.info['num_key_frames']} key frames, "
                         f"fewer than clips={num_clips}")
    return [next(it) for _ in range(num_clips // bs)], it.info["index"]


def overfit(config, num_clips: int, steps: int, *, workdir: str | None = None, log=print) -> dict[str, Any]:
    """Trains `config` for `steps` steps on `num_clips` clips and evaluates on them. Returns
    {'map50', 'precision', 'recall', 'map50_ema', 'eval_loss', 'final_loss', 'seconds', 'state'}."""
    from beltcrack_jax.eval.evaluator import Evaluator
    from beltcrack_jax.train.loop import TrainData, train_and_evaluate

    batches, index = load_clips(config, num_clips)
    bs = config.train.batch_size
    with config.unlocked():
        config.train.num_train_steps = steps
        config.train.epochs = max(1, steps // len(batches))   # the lr schedule spans the run
        config.train.checkpoint_every_steps = 10 ** 9
        config.train.eval_every_epochs = 0
        config.train.eval_every_steps = 0
        config.train.async_checkpoints = False
    items = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    n = len(items["clips"])

    def batch_at(i):
        epoch, r = divmod(int(i), len(batches))
        order = np.random.default_rng([config.seed, epoch]).permutation(n)[r * bs:(r + 1) * bs]
        return {k: v[order] for k, v in items.items()}

    data = TrainData(iterator=iter(grain.MapDataset.range(10 ** 9).map(batch_at).to_iter_dataset()),
                     steps_per_epoch=len(batches), sample=batches[0])
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        state = train_and_evaluate(config, workdir or tmp, train_data=data)
    seconds = time.perf_counter() - t0

    class _Clips:
        info = {"index": index}

        def __iter__(self):
            return iter(batches)

    ev = Evaluator(config, split=index.split, data_fn=_Clips, log=lambda s: None)
    raw = ev.run(state.variables(ema=False), collect_vis=False).metrics
    ema = ev.run(state.variables(ema=True), collect_vis=False).metrics
    out = {"map50": raw["map50"], "precision": raw["precision"], "recall": raw["recall"], "map50_ema": ema["map50"],
           "eval_loss": _eval_loss(config, state, batches), "seconds": seconds, "state": state}
    log(f"overfit: {num_clips} clips, {steps} steps ({seconds:.0f} s): mAP50 {out['map50']:.3f} (EMA "
        f"{out['map50_ema']:.3f}), P {out['precision']:.3f}, R {out['recall']:.3f}, eval-mode loss "
        f"{out['eval_loss']:.3f}")
    return out


def _eval_loss(config, state, batches) -> float:
    import jax

    from beltcrack_jax.data.transforms import normalize
    from beltcrack_jax.models import build_model
    from beltcrack_jax.train.loop import default_loss_fn

    model, loss_fn = build_model(config), default_loss_fn(config)

    @jax.jit
    def loss(variables, b):
        raw = model.apply(variables, normalize(b["clips"]), train=False)
        return loss_fn(raw, b["boxes"], b["classes"], b["box_mask"])[0]

    keys = ("clips", "boxes", "classes", "box_mask")
    return float(np.mean([float(loss(state.variables(), {k: b[k] for k in keys})) for b in batches]))


def main(argv):
    from absl import flags

    cfg = flags.FLAGS["config"].value
    res = overfit(cfg, flags.FLAGS["clips"].value, flags.FLAGS["steps"].value)
    print(f"RESULT map50 {res['map50']:.4f} map50_ema {res['map50_ema']:.4f} precision {res['precision']:.4f} "
          f"recall {res['recall']:.4f} eval_loss {res['eval_loss']:.4f} seconds {res['seconds']:.1f}", flush=True)


if __name__ == "__main__":
    from absl import app, flags

    from beltcrack_jax.cli.config_flag import define_config_flag

    define_config_flag("config", "Config (e.g. demo)")
    flags.mark_flag_as_required("config")
    flags.DEFINE_integer("clips", 32, "training clips (a multiple of train.batch_size)")
    flags.DEFINE_integer("steps", 300, "optimiser steps")
    app.run(main)
