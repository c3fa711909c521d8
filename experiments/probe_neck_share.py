"""How much does the triple-domain neck contribute in a `model.key_skip` model? (EXPERIMENTS.md 2d)

    python experiments/probe_neck_share.py --config configs/demo.py --workdir W [--step best] [--split test]
        [--config.x=y ...]   (the flags the run was trained with)

With `key_skip` the head reads F_key + g * N(clips), g a per-channel gate that starts at zero: the network starts as
the single-frame detector, and whether the neck's output N ends up used is a measured question, not a given.
This scores the chosen checkpoint twice on the split with the same evaluator (paper profile): as trained, and with
the gate set to zero, which leaves exactly the single-frame path through the same backbone and head. It also
prints the gate's magnitudes and, on the split's first batch, the RMS of F_key and of g * N at the head input.
A large drop with the gate zeroed means the detector relies on the neck; no drop means it stayed single-frame.
"""

from __future__ import annotations

import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from beltcrack_jax.cli.config_flag import define_config_flag   # noqa: E402

define_config_flag("config", "Config the run was trained with (e.g. configs/demo.py)")
flags.DEFINE_string("workdir", None, "The run's workdir", required=True)
flags.DEFINE_string("step", "best", "'best', 'latest' or a step number")
flags.DEFINE_string("split", None, "Split to score (default: data.test_split)")
flags.DEFINE_string("out", None, "Optional JSON file for the numbers")


def _gate_zeroed(variables: dict) -> dict:
    """`variables` with the key-skip gate at zero (everything else shared, not copied)."""
    params, neck = variables["params"], variables["params"]["neck"]
    gate = {"scale": jnp.zeros_like(neck["key_skip"]["scale"])}
    return {**variables, "params": {**params, "neck": {**neck, "key_skip": gate}}}


def main(argv):
    del argv
    from beltcrack_jax.data.transforms import normalize
    from beltcrack_jax.eval.evaluator import Evaluator
    from beltcrack_jax.train.checkpoint import load_variables

    cfg = flags.FLAGS["config"].value
    if not cfg.model.key_skip:
        raise SystemExit("probe_neck_share: the config has model.key_skip=False; pass the run's flags "
                         "(--config.model.key_skip=True ...)")
    ev = Evaluator(cfg, split=flags.FLAGS.split, log=lambda s: None)
    variables, info = load_variables(cfg, workdir=flags.FLAGS.workdir, step=flags.FLAGS.step,
                                     use_ema=bool(cfg.eval.use_ema), model=ev.model, log=lambda s: None)
    gate = np.asarray(variables["params"]["neck"]["key_skip"]["scale"])

    batch = next(iter(ev._batches()))
    x = normalize(jnp.asarray(batch["clips"]))
    _, inter = ev.model.apply(variables, x, train=False, mutable=["intermediates"],
                              capture_intermediates=lambda m, _: m.name in ("key_skip",))
    cap = inter["intermediates"]
    fused_gated = np.asarray(jax.tree.leaves(cap["neck"]["key_skip"])[0])
    p3 = ev.model.apply(variables, x[:, -1], method=type(ev.model).backbone_features)

    full = ev.run(variables, collect_vis=False).metrics
    zero = ev.run(_gate_zeroed(variables), collect_vis=False).metrics
    out = {
        "checkpoint": info, "split": ev.split,
        "gate_abs_mean": float(np.abs(gate).mean()), "gate_abs_max": float(np.abs(gate).max()),
        "rms_f_key": float(np.sqrt(np.mean(np.asarray(p3) ** 2))),
        "rms_gated_neck": float(np.sqrt(np.mean(fused_gated ** 2))),
        "map50": float(full["map50"]), "map50_gate_zero": float(zero["map50"]),
        "recall": float(full["recall"]), "recall_gate_zero": float(zero["recall"]),
    }
    print(json.dumps(out, indent=1))
    if flags.FLAGS.out:
        pathlib.Path(flags.FLAGS.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    app.run(main)
