"""`beltcrack-convert` (`python -m beltcrack_jax.convert`): a PyTorch state dict -> an orbax folder of Flax
variables that training starts from (`--config.train.init_from=OUTPUT`).

    beltcrack-convert --input X.npz|X.pth --output DIR [--config NAME|PATH[:arg]] [--yolox-s] [--force]

The work is done in `beltcrack_jax.weights` (state-dict I/O, the reference and YOLOX-S importers, orbax I/O) and
`beltcrack_jax.models.naming` (the key rule); the names below are re-exported because they are this module's
documented API (README, tests, bench scripts import them from here).
"""

from __future__ import annotations

import argparse

import numpy as np
from flax import traverse_util

from beltcrack_jax.configs import NAMES, load_config
from beltcrack_jax.models.naming import NECK_GROUPS, torch_key, torch_shape, torch_to_flax_array  # noqa: F401
from beltcrack_jax.models.shapes import abstract_variables  # noqa: F401
from beltcrack_jax.weights.orbax_io import load_variables, save_variables
from beltcrack_jax.weights.reference import UNUSED_PREFIXES, load_reference_state_dict  # noqa: F401
from beltcrack_jax.weights.state_dict import map_state_dict, read_state_dict, variables_to_state_dict  # noqa: F401
from beltcrack_jax.weights.yolox import ImportReport, imported_only, load_yolox_s  # noqa: F401

flatten = traverse_util.flatten_dict
unflatten = traverse_util.unflatten_dict
load_config_file = load_config


def _yolox_variables(config, path: str) -> dict:
    """A fresh init (seed config.seed) with the YOLOX-S tensors imported; only those are kept (printed report)."""
    import jax
    import jax.numpy as jnp

    from beltcrack_jax.models import build_model

    model = build_model(config)
    seed = int(getattr(config, "seed", 0)) if hasattr(config, "seed") else 0
    clips = jnp.zeros((1, model.num_frames, 64, 64, 3), jnp.float32)
    variables, report = load_yolox_s(path, jax.jit(model.init)(jax.random.key(seed), clips))
    print(report.summary())
    return imported_only(variables, report)


def main(argv: list[str] | None = None) -> int:
    from beltcrack_jax.cli.logs import quiet_absl_logging

    parser = argparse.ArgumentParser(
        prog="beltcrack-convert",
        description="PyTorch BeltCrackDet state dict (or a COCO YOLOX-S checkpoint) -> orbax checkpoint of "
                    "{'params', 'batch_stats'} that training starts from (--config.train.init_from=OUTPUT) and "
                    "evaluation restores (convert.load_variables). With --yolox-s only the imported tensors are "
                    "written.")
    parser.add_argument("--input", required=True, help="state dict: .npz (name -> array) or .pth (needs torch)")
    parser.add_argument("--output", required=True, help="checkpoint directory to write")
    parser.add_argument("--config", default="default",
                        help=f"config: a packaged name ({', '.join(NAMES)}) or a file; [:arg] (default: default)")
    parser.add_argument("--yolox-s", action="store_true",
                        help="input is a COCO YOLOX-S checkpoint: initialise the model (seed config.seed) and "
                             "import the matching backbone/FPN tensors, printing a report")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output directory")
    args = parser.parse_args(argv)
    quiet_absl_logging()

    config = load_config(args.config)
    if args.yolox_s:
        variables = _yolox_variables(config, args.input)
    else:
        variables = load_reference_state_dict(args.input, config)
    path = save_variables(args.output, variables, force=args.force)
    n = sum(int(np.size(v)) for v in flatten(dict(variables["params"])).values())
    print(f"wrote {path} ({n:,} parameters); train from it with --config.train.init_from={path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
