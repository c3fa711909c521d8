"""PyTorch state dict (reference BeltCrackDet) -> Flax variables.

The Flax modules mirror the reference's attribute names (see `models/layers.py`), so a Flax leaf path maps to a
state-dict key by a fixed rule:

* path segments are joined with "."; the paper-level grouping modules directly under the neck
  (`neck.hsm`, `neck.atm`, `neck.wfm`), which the reference does not have, are dropped;
* `params/.../kernel` <- `weight` (4-D OIHW -> HWIO, 2-D (out, in) -> (in, out));
* `params/.../scale` <- `weight`; `batch_stats/.../mean|var` <- `running_mean|running_var`;
* any other leaf <- the key of the same name, reshaped to the Flax shape (e.g. (1, C, 1, 1) -> (C,)).

Whole-model entry points: `load_reference_state_dict` (strict: a reference state dict -> {'params',
'batch_stats'}), `load_yolox_s` (COCO YOLOX-S backbone/FPN import by name and shape, with a report),
`save_variables` / `load_variables` (orbax checkpoints), and the CLI
`python -m beltcrack_jax.convert --input X.npz|X.pth --output DIR [--config configs/default.py] [--yolox-s]`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

import numpy as np

# Flax grouping modules (paper components) that have no counterpart in the reference's module tree.
NECK_GROUPS = ("hsm", "atm", "wfm")


def torch_key(collection: str, path: tuple[str, ...]) -> str:
    """State-dict key of the Flax leaf `collection/path` (path relative to the model root or a submodule)."""
    segs = list(path)
    if len(segs) > 2 and segs[0] == "neck" and segs[1] in NECK_GROUPS:
        del segs[1]
    leaf = segs[-1]
    if collection == "batch_stats":
        leaf = {"mean": "running_mean", "var": "running_var"}[leaf]
    elif leaf in ("kernel", "scale"):
        leaf = "weight"
    return ".".join(segs[:-1] + [leaf])


def torch_shape(collection: str, leaf: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The PyTorch shape of a Flax leaf (kernels back to OIHW / (out, in)); other leaves as they are."""
    shape = tuple(shape)
    if collection == "params" and leaf == "kernel":
        if len(shape) == 4:
            return (shape[3], shape[2], shape[0], shape[1])
        if len(shape) == 2:
            return shape[::-1]
    return shape


def torch_to_flax_array(collection: str, leaf: str, value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Converts one state-dict array to the layout of the Flax leaf named `leaf` with `shape`."""
    value = np.asarray(value, dtype=np.float32)
    given = value.shape
    if collection == "params" and leaf == "kernel":
        if value.ndim == 4:
            value = value.transpose(2, 3, 1, 0)
        elif value.ndim == 2:
            value = value.T
    if value.shape != tuple(shape):
        if value.size != int(np.prod(shape)) or leaf == "kernel":
            raise ValueError(f"shape {given} given, {torch_shape(collection, leaf, shape)} expected "
                             f"(PyTorch layout)")
        value = value.reshape(shape)
    return value


def flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path, v in flat.items():
        node = out
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = v
    return out


def map_state_dict(abstract_variables: Mapping[str, Any], state_dict: Mapping[str, np.ndarray],
                   prefix: str = "") -> tuple[dict[str, Any], set[str]]:
    """Fills `abstract_variables` (a tree of arrays or ShapeDtypeStructs, e.g. from `jax.eval_shape(init)`)
    from `state_dict`, reading key `prefix + torch_key(...)` for every leaf.

    Returns (variables, consumed state-dict keys). Raises ValueError listing every missing key and every shape
    mismatch at once.
    """
    flat = flatten(abstract_variables)
    filled, consumed, missing, bad_shape = {}, set(), [], []
    for (collection, *path), abstract in flat.items():
        key = prefix + torch_key(collection, tuple(path))
        if key not in state_dict:
            missing.append(key)
            continue
        try:
            filled[(collection, *path)] = torch_to_flax_array(collection, path[-1], state_dict[key], abstract.shape)
        except ValueError as e:
            bad_shape.append(f"{key}: {e}")
        consumed.add(key)
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): " + ", ".join(sorted(missing)))
    if bad_shape:
        problems.append(f"{len(bad_shape)} shape mismatch(es): " + "; ".join(bad_shape))
    if problems:
        raise ValueError("state dict does not fit the model: " + " | ".join(problems))
    return unflatten(filled), consumed


# ------------------------------------------------------------------------------------------------------------
# Whole-model import: the reference's state dict, a COCO YOLOX-S checkpoint, and orbax checkpoints.
# ------------------------------------------------------------------------------------------------------------

# Modules the reference constructs but never calls (their keys are in every reference state dict).
UNUSED_PREFIXES = ("neck.conv_fre_mix.", "neck.conv_fre.", "neck.fuse.")
# Wrappers a saved state dict may be nested under (YOLOX checkpoints: {'model': ..., 'optimizer': ...}).
_NESTING_KEYS = ("model", "state_dict", "model_state_dict")


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # torch.Tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def read_state_dict(path_or_mapping: Any) -> dict[str, np.ndarray]:
    """A flat {name: numpy array} from a mapping, an `.npz` file, or a `.pth`/`.pt` file (needs torch).

    A state dict nested under 'model' / 'state_dict' is unwrapped, and a 'module.' prefix on every key
    (nn.DataParallel) is removed.
    """
    if isinstance(path_or_mapping, Mapping):
        raw = path_or_mapping
    else:
        path = os.fspath(path_or_mapping)
        if path.endswith(".npz"):
            with np.load(path) as f:
                raw = {k: f[k] for k in f.files}
        elif path.endswith((".pth", ".pt", ".ckpt", ".bin")):
            try:
                import torch
            except ImportError as e:
                raise ImportError(f"reading the PyTorch checkpoint {path!r} needs torch, which is not installed "
                                  "(`pip install torch`, CPU build is enough) — or convert it to an .npz of "
                                  "name -> array first") from e
            raw = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle code
        else:
            raise ValueError(f"unknown state-dict file type {path!r}: expected .npz or .pth/.pt")
    for nest in _NESTING_KEYS:
        if isinstance(raw, Mapping) and nest in raw and isinstance(raw[nest], Mapping):
            raw = raw[nest]
            break
    if not isinstance(raw, Mapping):
        raise ValueError(f"expected a state dict (name -> array), got {type(raw).__name__}")
    sd = {str(k): _to_numpy(v) for k, v in raw.items()}
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def abstract_variables(model, num_frames: int, size: int = 64) -> dict[str, Any]:
    """Shapes/dtypes of `model`'s variables (no computation): jax.eval_shape of init on a (1,T,size,size,3) clip."""
    import jax
    import jax.numpy as jnp

    clips = jax.ShapeDtypeStruct((1, num_frames, size, size, 3), jnp.float32)
    return jax.eval_shape(lambda c: model.init(jax.random.key(0), c), clips)


def _default_config():
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "configs" / "default.py"
    return load_config_file(str(path))


def load_config_file(path: str):
    """`get_config()` of a config file (e.g. configs/default.py); `path:arg` passes `arg` to get_config."""
    import importlib.util
    import inspect

    arg = None
    if ":" in os.path.basename(path):
        path, arg = path.rsplit(":", 1)
    spec = importlib.util.spec_from_file_location(f"_beltcrack_config_{abs(hash(path))}", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot load config file {path!r}")
    module = importlib.util.module_from_spec(spec)
    # Config files may import their siblings (tiny.py imports default): make that work from any CWD.
    import sys

    cfg_dir = os.path.dirname(os.path.abspath(path))
    added = cfg_dir not in sys.path
    if added:
        sys.path.insert(0, cfg_dir)
    try:
        spec.loader.exec_module(module)
    finally:
        if added:
            sys.path.remove(cfg_dir)
    fn = module.get_config
    return fn(arg) if arg is not None and inspect.signature(fn).parameters else fn()


def _check_special_buffers(keys: list[str], state_dict: Mapping[str, np.ndarray], num_frames: int) -> list[str]:
    """Verifies the skipped non-parameter buffers: Swin relative_position_index equals the one the port computes
    (reference window (T+1, 8, 8)), WTConv wt_filter/iwt_filter are the Haar filters. Returns a list of problems."""
    problems = []
    for key in keys:
        if key.endswith("relative_position_index"):
            from beltcrack_jax.models import swin3d

            value = np.asarray(state_dict[key])
            try:
                expected = np.asarray(swin3d.reference_relative_position_index((num_frames + 1, 8, 8)))
            except Exception as e:  # noqa: BLE001 - report, do not crash
                problems.append(f"{key}: cannot compute the expected index for shape {value.shape} ({e})")
                continue
            if expected.shape != value.shape or not np.array_equal(expected, value):
                problems.append(f"{key}: differs from the relative position index the port computes")
        elif key.endswith(".wt_filter"):
            from beltcrack_jax.models import wfm

            partner = key[: -len("wt_filter")] + "iwt_filter"
            if partner not in state_dict:
                problems.append(f"{key}: its partner {partner} is missing")
            elif not wfm.haar_filters_match(np.asarray(state_dict[key], np.float32),
                                            np.asarray(state_dict[partner], np.float32)):
                problems.append(f"{key} / {partner}: not the Haar (db1) filters the port hard-codes")
        elif key.endswith(".iwt_filter"):
            if key[: -len("iwt_filter")] + "wt_filter" not in state_dict:
                problems.append(f"{key}: its partner wt_filter is missing")
    return problems


def _is_skippable(key: str) -> bool:
    return (key.endswith("num_batches_tracked") or key.startswith(UNUSED_PREFIXES)
            or key.endswith((".relative_position_index", ".wt_filter", ".iwt_filter")))


def load_reference_state_dict(path_or_mapping: Any, config: Any = None) -> dict[str, Any]:
    """The reference BeltCrackDet state dict as Flax variables {'params', 'batch_stats'} (numpy float32).

    `path_or_mapping`: a mapping name -> array, an `.npz` (e.g. ../shared/golden/reference_state_dict.npz) or a
    `.pth` (needs torch). `config`: full config or its `.model` (default: configs/default.py).
    Recognised and skipped: `num_batches_tracked`, the never-called `neck.conv_fre_mix/conv_fre/fuse`, the Swin
    `relative_position_index` (checked equal to the computed one) and the WTConv Haar `wt_filter`/`iwt_filter`
    (checked to be Haar). Any missing key, unknown key or shape mismatch raises one ValueError listing all of them.
    """
    from beltcrack_jax.models import build_model

    sd = read_state_dict(path_or_mapping)
    config = _default_config() if config is None else config
    model = build_model(config)
    abstract = abstract_variables(model, model.num_frames)
    expected = {torch_key(collection, tuple(path)) for collection, *path in flatten(abstract)}

    problems = []
    variables = None
    try:
        variables, _ = map_state_dict(abstract, sd)
    except ValueError as e:
        problems.append(str(e).removeprefix("state dict does not fit the model: "))
    leftover = sorted(set(sd) - expected)
    unknown = [k for k in leftover if not _is_skippable(k)]
    if unknown:
        problems.append(f"{len(unknown)} unknown key(s): " + ", ".join(unknown))
    problems += _check_special_buffers([k for k in leftover if _is_skippable(k)], sd, model.num_frames)
    if problems:
        hint = ""
        if len(expected - set(sd)) > len(expected) // 2:
            hint = (f" (most of the {len(expected)} expected keys are absent: is this a BeltCrackDet state dict "
                    f"for this config?)")
        raise ValueError("state dict does not fit the BeltCrackDet model" + hint + ": " + " | ".join(problems))
    return {"params": variables.get("params", {}), "batch_stats": variables.get("batch_stats", {})}


@dataclasses.dataclass
class ImportReport:
    """What `load_yolox_s` did. Keys are PyTorch state-dict names."""

    loaded: list[str]
    shape_mismatch: list[str]        # in both, shapes differ ("key: ckpt shape vs model shape")
    not_in_model: list[str]          # checkpoint keys the model has no leaf for (YOLOX-only layers)
    not_in_checkpoint: list[str]     # model leaves the checkpoint does not provide (they keep their values)

    def summary(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensor(s), shape mismatch {len(self.shape_mismatch)}, "
                 f"checkpoint-only {len(self.not_in_model)}, model-only (kept) {len(self.not_in_checkpoint)}"]
        for title, keys in (("loaded", self.loaded), ("shape mismatch", self.shape_mismatch),
                            ("checkpoint-only", self.not_in_model), ("model-only", self.not_in_checkpoint)):
            if keys:
                lines.append(f"  {title}: " + ", ".join(keys))
        return "\n".join(lines)


def load_yolox_s(path_or_mapping: Any, variables: Mapping[str, Any]) -> tuple[dict[str, Any], ImportReport]:
    """Imports a COCO YOLOX-S checkpoint into `variables` the way the reference's training script does: every
    checkpoint entry whose name and (layout-converted) shape match a model leaf is copied (params and BN running
    statistics) — in practice the CSPDarknet + top-down PAFPN, plus the head's `reg_preds.0.bias` and
    `obj_preds.0.bias` whose shapes match by chance. Everything else keeps its value.

    Returns (new variables, ImportReport). Accepts a mapping, .npz or .pth (optionally nested under 'model').
    """
    sd = read_state_dict(path_or_mapping)
    flat = flatten(variables)
    out, loaded, mismatch, not_in_ckpt, model_keys = {}, [], [], [], set()
    for (collection, *path), value in flat.items():
        key = torch_key(collection, tuple(path))
        model_keys.add(key)
        out[(collection, *path)] = value
        if key not in sd:
            not_in_ckpt.append(key)
            continue
        try:
            out[(collection, *path)] = torch_to_flax_array(collection, path[-1], sd[key], np.shape(value))
            loaded.append(key)
        except ValueError:
            mismatch.append(f"{key}: {tuple(np.shape(sd[key]))} in the checkpoint, "
                            f"{torch_shape(collection, path[-1], np.shape(value))} in the model")
    not_in_model = sorted(k for k in sd if k not in model_keys and not k.endswith("num_batches_tracked"))
    report = ImportReport(sorted(loaded), sorted(mismatch), not_in_model, sorted(not_in_ckpt))
    return unflatten(out), report


def variables_to_state_dict(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The inverse mapping, Flax variables -> PyTorch-named state dict (kernels back to OIHW / (out, in); other
    leaves keep the Flax shape, which `load_reference_state_dict` accepts since it reshapes equal-size leaves).
    Handy to make reference-format state dicts of small configs (tests) or to export weights."""
    out = {}
    for (collection, *path), value in flatten(variables).items():
        arr = np.asarray(value, dtype=np.float32)
        if collection == "params" and path[-1] == "kernel":
            arr = arr.transpose(3, 2, 0, 1) if arr.ndim == 4 else arr.T if arr.ndim == 2 else arr
        out[torch_key(collection, tuple(path))] = arr
    return out


# ---------------------------------------------------------------- orbax checkpoints of {'params', 'batch_stats'}

def save_variables(directory: str, variables: Mapping[str, Any], force: bool = False) -> str:
    """Writes {'params', 'batch_stats'} as an orbax checkpoint at `directory` (absolute path used); returns it."""
    import orbax.checkpoint as ocp

    directory = os.path.abspath(directory)
    tree = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(directory, tree, force=force)
    ckptr.wait_until_finished()
    ckptr.close()
    return directory


def load_variables(directory: str) -> dict[str, Any]:
    """Reads an orbax checkpoint written by `save_variables` / the convert CLI -> {'params', 'batch_stats'}."""
    import orbax.checkpoint as ocp

    ckptr = ocp.StandardCheckpointer()
    try:
        tree = ckptr.restore(os.path.abspath(directory))
    finally:
        ckptr.close()
    return {"params": tree["params"], "batch_stats": tree.get("batch_stats", {})}


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m beltcrack_jax.convert",
        description="PyTorch BeltCrackDet state dict (or a COCO YOLOX-S checkpoint) -> orbax checkpoint of "
                    "{'params', 'batch_stats'} that training starts from (--config.train.init_from=OUTPUT) and "
                    "evaluation restores (convert.load_variables). With --yolox-s only the imported tensors are "
                    "written.")
    parser.add_argument("--input", required=True, help="state dict: .npz (name -> array) or .pth (needs torch)")
    parser.add_argument("--output", required=True, help="checkpoint directory to write")
    parser.add_argument("--config", default=None, help="config file (default configs/default.py); path[:arg]")
    parser.add_argument("--yolox-s", action="store_true",
                        help="input is a COCO YOLOX-S checkpoint: initialise the model (seed config.seed) and "
                             "import the matching backbone/FPN tensors, printing a report")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output directory")
    args = parser.parse_args(argv)

    config = load_config_file(args.config) if args.config else _default_config()
    if args.yolox_s:
        import jax
        import jax.numpy as jnp

        from beltcrack_jax.models import build_model

        model = build_model(config)
        seed = int(getattr(config, "seed", 0)) if hasattr(config, "seed") else 0
        clips = jnp.zeros((1, model.num_frames, 64, 64, 3), jnp.float32)
        variables = jax.jit(model.init)(jax.random.key(seed), clips)
        variables, report = load_yolox_s(args.input, variables)
        print(report.summary())
        # Only the imported tensors are written: `train.init_from` overlays them on the run's own init.
        imported = set(report.loaded)
        flat = {k: v for k, v in flatten(variables).items() if torch_key(k[0], tuple(k[1:])) in imported}
        variables = {"params": {}, "batch_stats": {}, **unflatten(flat)}
    else:
        variables = load_reference_state_dict(args.input, config)
    path = save_variables(args.output, variables, force=args.force)
    n = sum(int(np.size(v)) for v in flatten(dict(variables["params"])).values())
    print(f"wrote {path} ({n:,} parameters); train from it with --config.train.init_from={path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
