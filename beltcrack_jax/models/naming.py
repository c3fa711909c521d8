"""The naming rule between a Flax leaf and its PyTorch (reference BeltCrackDet / YOLOX) state-dict entry.

The Flax modules mirror the reference's attribute names (see `layers.py`), so a leaf path maps to a key by a
fixed rule:

* path segments are joined with "."; the paper-level grouping modules directly under the neck
  (`neck.hsm`, `neck.atm`, `neck.wfm`), which the reference does not have, are dropped;
* `params/.../kernel` <- `weight` (4-D OIHW -> HWIO, 2-D (out, in) -> (in, out));
* `params/.../scale` <- `weight`; `batch_stats/.../mean|var` <- `running_mean|running_var`;
* any other leaf <- the key of the same name, reshaped to the Flax shape (e.g. (1, C, 1, 1) -> (C,)).

Pure numpy: the optimiser's parameter groups (train/optim.py) and every importer (beltcrack_jax/weights) use it.
"""

from __future__ import annotations

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


def flax_to_torch_array(collection: str, leaf: str, value) -> np.ndarray:
    """The inverse layout change: kernels back to OIHW / (out, in); other leaves keep the Flax shape."""
    arr = np.asarray(value, dtype=np.float32)
    if collection == "params" and leaf == "kernel":
        arr = arr.transpose(3, 2, 0, 1) if arr.ndim == 4 else arr.T if arr.ndim == 2 else arr
    return arr
