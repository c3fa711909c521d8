"""Import of a COCO YOLOX-S checkpoint by name and shape (the reference's pre-training), with a report."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np
from flax import traverse_util

from beltcrack_jax.models.naming import torch_key, torch_shape, torch_to_flax_array
from beltcrack_jax.weights.state_dict import read_state_dict


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
    out, loaded, mismatch, not_in_ckpt, model_keys = {}, [], [], [], set()
    for (collection, *path), value in traverse_util.flatten_dict(variables).items():
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
    return traverse_util.unflatten_dict(out), report


def imported_only(variables: Mapping[str, Any], report: ImportReport) -> dict[str, Any]:
    """The leaves `report` says were loaded, as {'params', 'batch_stats'}: what `train.init_from` overlays on a
    run's own init (the model-only leaves must keep the run's values, not this init's)."""
    names = set(report.loaded)
    flat = {k: v for k, v in traverse_util.flatten_dict(variables).items() if torch_key(k[0], tuple(k[1:])) in names}
    return {"params": {}, "batch_stats": {}, **traverse_util.unflatten_dict(flat)}
