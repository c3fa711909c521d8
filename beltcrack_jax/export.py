"""A deployable model: the inference function as a `jax.export` artefact plus its variables.

    python -m beltcrack_jax.export --config configs/default.py --workdir workdirs/r14ks --output exported/

writes into `--output`:

* `model.jaxexport` -- the serialized `jax.export.Exported` of
  `serve(variables, clips, resize, orig_hw, conf_thres, nms_thres) -> detections`, for a symbolic batch size and
  the platforms given (default cpu and cuda). It is `eval.predict_step.predict_step` (normalise -> model ->
  decode -> class-aware NMS -> boxes in original-image pixels), so served detections are the evaluator's.
* `variables.npz` -- the weights, one entry per leaf named `params/...` / `batch_stats/...` (the `variables`
  argument is exactly `dict(np.load("variables.npz"))`).
* `signature.json` -- input and output layout, the profile's thresholds and resize mode, where the weights came
  from. README.md "Serving the exported model" shows how to call it from plain JAX.

Accelerator-safe graph: the exporting process traces once, so every choice the code makes from
`jax.default_backend()` would freeze the exporting host's (CPU) choice into the artefact. The export therefore
pins them to their accelerator values, which are also correct on CPU: NMS `method='fixpoint'` (a few
data-parallel N x N steps instead of N dependent loop steps; the same detections, see eval/postprocess.py),
Swin attention over all windows in one call (`swin_window_chunk=0`: the CPU setting loops over window chunks
with `lax.map`, which serialises an accelerator and needs a static window count) and one backbone call over B*T
frames (`backbone_per_frame=0`). None of them changes the weights or the function.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax import export as jax_export

from beltcrack_jax.data.transforms import as_hw
from beltcrack_jax.eval.evaluator import profile_from_config
from beltcrack_jax.eval.predict_step import predict_step
from beltcrack_jax.models import build_model

ARTEFACT = "model.jaxexport"
VARIABLES = "variables.npz"
SIGNATURE = "signature.json"
DEFAULT_PLATFORMS = ("cpu", "cuda")
KNOWN_PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
NMS_METHOD = "fixpoint"                                   # see the module docstring
ACCELERATOR_WORK_SPLITS = {"swin_window_chunk": 0, "backbone_per_frame": 0}
OUTPUT_FIELDS = {
    "boxes": "(B, K, 4) float32 [x1, y1, x2, y2] in original-image pixels",
    "scores": "(B, K) float32 obj * class_conf (what conf_thres and NMS use)",
    "obj": "(B, K) float32 objectness",
    "class_conf": "(B, K) float32 best class probability",
    "classes": "(B, K) int32 class index (0 = crack)",
    "anchor_index": "(B, K) int32 row-major anchor of the detection",
    "valid": "(B, K) bool: the first valid slots are the detections in descending score order, the rest padding",
}


def serving_config(config):
    """`config` with the work splits pinned to their accelerator values (module docstring)."""
    config = copy.deepcopy(config)
    with config.unlocked():
        for field, value in ACCELERATOR_WORK_SPLITS.items():
            config.model[field] = value
    return config


def serving_function(config, max_detections: int | None) -> Callable:
    """jit(serve): flat variables {'params/...': array}, uint8 clips (B, T, H, W, 3), resize (B, 5) int32
    `[nw, nh, dx, dy, flip]`, orig_hw (B, 2) int32, conf_thres, nms_thres -> dict of `OUTPUT_FIELDS`."""
    model = build_model(serving_config(config))

    def serve(flat_variables, clips, resize, orig_hw, conf_thres, nms_thres):
        variables = traverse_util.unflatten_dict(flat_variables, sep="/")
        dets, _, _ = predict_step(variables, clips, resize, orig_hw, conf_thres, nms_thres, model=model,
                                  max_detections=max_detections, method=NMS_METHOD)
        return dets._asdict()

    return jax.jit(serve)


def flatten_variables(variables: dict) -> dict[str, np.ndarray]:
    """{'params': {...}, 'batch_stats': {...}} -> {'params/a/b': numpy array} (what variables.npz holds)."""
    flat = traverse_util.flatten_dict({k: v for k, v in variables.items() if v}, sep="/")
    return {k: np.asarray(v) for k, v in flat.items()}


def export_model(config, variables: dict, *, profile: str | None = None,
                 platforms: Sequence[str] = DEFAULT_PLATFORMS) -> tuple[jax_export.Exported, dict, dict]:
    """-> (Exported, flat variables, signature) of the serving function for `config`'s model and `variables`."""
    prof = profile_from_config(config, profile)
    flat = flatten_variables(variables)
    t, (h, w) = int(config.model.num_frames), as_hw(config.data.image_size)
    (b,) = jax_export.symbolic_shape("b")
    args = ({k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in flat.items()},
            jax.ShapeDtypeStruct((b, t, h, w, 3), jnp.uint8), jax.ShapeDtypeStruct((b, 5), jnp.int32),
            jax.ShapeDtypeStruct((b, 2), jnp.int32), jax.ShapeDtypeStruct((), jnp.float32),
            jax.ShapeDtypeStruct((), jnp.float32))
    exported = jax_export.export(serving_function(config, prof.max_detections), platforms=tuple(platforms))(*args)
    signature = {
        "call": "serve(variables, clips, resize, orig_hw, conf_thres, nms_thres)",
        "platforms": list(exported.platforms),
        "num_frames": t, "input_hw": [h, w],
        "inputs": {
            "variables": f"dict(np.load('{VARIABLES}'))",
            "clips": f"(B, {t}, {h}, {w}, 3) uint8 RGB, oldest frame first, key frame last, already resized to "
                     f"the input size",
            "resize": "(B, 5) int32 [nw, nh, dx, dy, flip]: the frame was resized to nw x nh and pasted at "
                      f"(dx, dy); a plain stretch is [{w}, {h}, 0, 0, 0]; flip is ignored",
            "orig_hw": "(B, 2) int32 original (H, W) of the key frame",
            "conf_thres": "() float32, e.g. the profile's", "nms_thres": "() float32, e.g. the profile's",
        },
        "outputs": OUTPUT_FIELDS,
        "max_detections": prof.max_detections,
        "profile": {"name": prof.name, "conf_thres": prof.conf_thres, "nms_thres": prof.nms_thres,
                    "resize": "letterbox" if prof.letterbox else "stretch"},
        "nms_method": NMS_METHOD,
        "jax_version": jax.__version__,
    }
    return exported, flat, signature


def write_artefact(out_dir: str, exported: jax_export.Exported, flat_variables: dict, signature: dict) -> dict:
    """Writes model.jaxexport, variables.npz, signature.json into `out_dir` -> their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {name: os.path.join(out_dir, name) for name in (ARTEFACT, VARIABLES, SIGNATURE)}
    with open(paths[ARTEFACT], "wb") as f:
        f.write(exported.serialize())
    np.savez(paths[VARIABLES], **flat_variables)
    with open(paths[SIGNATURE], "w") as f:
        json.dump(signature, f, indent=1)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m beltcrack_jax.export",
        description="Export the inference function (uint8 clips -> detections in original pixels, any batch "
                    "size) as a jax.export artefact with its variables, from a training checkpoint.")
    parser.add_argument("--config", required=True, help="config file the checkpoint was trained with; path[:arg]")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--workdir", help="training workdir (its latest checkpoint, or --step)")
    src.add_argument("--checkpoint", help="a checkpoint folder (workdir, checkpoints/<step> or its state/)")
    parser.add_argument("--step", default=None, help="checkpoint step: a number, 'latest' or 'best'")
    parser.add_argument("--raw-weights", action="store_true", help="export the raw instead of the EMA weights")
    parser.add_argument("--profile", default=None, help="threshold profile whose detection cap is exported and "
                                                         "whose thresholds signature.json suggests "
                                                         "(default config.eval.profile)")
    parser.add_argument("--platforms", default=",".join(DEFAULT_PLATFORMS),
                        help="comma-separated jax.export platforms (cpu, cuda, rocm, tpu)")
    parser.add_argument("--output", required=True, help="folder to write model.jaxexport, variables.npz, "
                                                        "signature.json into")
    args = parser.parse_args(argv)
    platforms = tuple(p.strip() for p in args.platforms.split(",") if p.strip())
    unknown = sorted(set(platforms) - set(KNOWN_PLATFORMS))
    if unknown or not platforms:
        parser.error(f"--platforms {args.platforms!r}: unknown {unknown} (choose from {', '.join(KNOWN_PLATFORMS)})")

    from beltcrack_jax.cli.logs import quiet_absl_logging
    from beltcrack_jax.configs import load_config
    from beltcrack_jax.train.checkpoint import load_variables

    quiet_absl_logging()
    config = load_config(args.config)
    variables, info = load_variables(config, workdir=args.workdir, checkpoint=args.checkpoint, step=args.step,
                                     use_ema=not args.raw_weights)
    exported, flat, signature = export_model(config, variables, profile=args.profile, platforms=platforms)
    signature["weights"] = info
    paths = write_artefact(args.output, exported, flat, signature)
    print(f"exported for {', '.join(exported.platforms)} (batch size symbolic): {', '.join(paths.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
