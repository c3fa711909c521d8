"""How robust is the learning regression test? Runs its exact setting (tests/test_learning.py) for several config
seeds (each seed picks other clips and another init) and prints one JSON row per run (EXPERIMENTS.md 1f).

    python experiments/learning_seeds.py --variant full --seeds 1 2 3 [--clips 16] [--steps 300]
        [--data-dir /tmp/learn_tfds] [--set model.key_skip=False --set train.lr_scale_tar=1.0]

`--set section.field=value` overrides the test's config (value parsed as a Python literal, else a string).
Simulates 4 CPU devices like tests/conftest.py, so the numbers are the test's.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _override(item: str) -> tuple[str, object]:
    """'section.field=value' -> ('section.field', value as a Python literal, else the string)."""
    key, _, raw = item.partition("=")
    try:
        return key, ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return key, raw


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", choices=("full", "single_frame"), default="full")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--clips", type=int, default=None, help="default: the test's")
    ap.add_argument("--steps", type=int, default=None, help="default: the test's")
    ap.add_argument("--data-dir", default="/tmp/learn_tfds", help="TFDS folder (generated on first use)")
    ap.add_argument("--set", action="append", default=[], help="section.field=value override")
    args = ap.parse_args(argv)

    os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
    import jax
    import numpy as np

    jax.config.update("jax_default_matmul_precision", "highest")   # as tests/conftest.py
    sys.path.insert(0, str(ROOT / "tests"))
    from test_learning import CLIPS, SINGLE_FRAME, STEPS, learning_config

    from beltcrack_jax.train.overfit import overfit

    for seed in args.seeds:
        cfg = learning_config(args.data_dir, **(SINGLE_FRAME if args.variant == "single_frame" else {}))
        cfg.seed = seed
        cfg.update_from_flattened_dict(dict(_override(item) for item in args.set))
        res = overfit(cfg, args.clips or CLIPS, args.steps or STEPS, log=lambda s: None)
        gate = res["state"].params.get("neck", {}).get("key_skip")
        row = {"variant": args.variant, "seed": seed, "set": args.set,
               "gate_abs_mean": None if gate is None else float(np.abs(np.asarray(gate["scale"])).mean()),
               **{k: round(float(v), 4) for k, v in res.items() if k != "state"}}
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
