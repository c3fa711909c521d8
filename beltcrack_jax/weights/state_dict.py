"""State-dict I/O: read one from a file or mapping, fill a variables tree from it, and the inverse."""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np
from flax import traverse_util

from beltcrack_jax.models.naming import flax_to_torch_array, torch_key, torch_to_flax_array

# Wrappers a saved state dict may be nested under (YOLOX checkpoints: {'model': ..., 'optimizer': ...}).
_NESTING_KEYS = ("model", "state_dict", "model_state_dict")


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # torch.Tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _read_file(path: str) -> Any:
    if path.endswith(".npz"):
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    if path.endswith((".pth", ".pt", ".ckpt", ".bin")):
        try:
            import torch
        except ImportError as e:
            raise ImportError(f"reading the PyTorch checkpoint {path!r} needs torch, which is not installed "
                              "(`pip install torch`, CPU build is enough) — or convert it to an .npz of "
                              "name -> array first") from e
        return torch.load(path, map_location="cpu", weights_only=True)  # never unpickle code
    raise ValueError(f"unknown state-dict file type {path!r}: expected .npz or .pth/.pt")


def read_state_dict(path_or_mapping: Any) -> dict[str, np.ndarray]:
    """A flat {name: numpy array} from a mapping, an `.npz` file, or a `.pth`/`.pt` file (needs torch).

    A state dict nested under 'model' / 'state_dict' is unwrapped, and a 'module.' prefix on every key
    (nn.DataParallel) is removed.
    """
    raw = path_or_mapping if isinstance(path_or_mapping, Mapping) else _read_file(os.fspath(path_or_mapping))
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


def map_state_dict(abstract_variables: Mapping[str, Any], state_dict: Mapping[str, np.ndarray],
                   prefix: str = "") -> tuple[dict[str, Any], set[str]]:
    """Fills `abstract_variables` (a tree of arrays or ShapeDtypeStructs, e.g. from `jax.eval_shape(init)`)
    from `state_dict`, reading key `prefix + torch_key(...)` for every leaf.

    Returns (variables, consumed state-dict keys). Raises ValueError listing every missing key and every shape
    mismatch at once.
    """
    filled, consumed, missing, bad_shape = {}, set(), [], []
    for (collection, *path), abstract in traverse_util.flatten_dict(abstract_variables).items():
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
    return traverse_util.unflatten_dict(filled), consumed


def variables_to_state_dict(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The inverse mapping, Flax variables -> PyTorch-named state dict (kernels back to OIHW / (out, in); other
    leaves keep the Flax shape, which `load_reference_state_dict` accepts since it reshapes equal-size leaves).
    Handy to make reference-format state dicts of small configs (tests) or to export weights."""
    return {torch_key(collection, tuple(path)): flax_to_torch_array(collection, path[-1], value)
            for (collection, *path), value in traverse_util.flatten_dict(variables).items()}
