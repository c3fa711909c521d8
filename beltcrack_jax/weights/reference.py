"""The strict import of the reference BeltCrackDet state dict: every model leaf must be found, every key used or
known to be skippable, every shape right — or one ValueError lists all the problems."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from flax import traverse_util

from beltcrack_jax.models import build_model, swin3d, wfm
from beltcrack_jax.models.naming import torch_key
from beltcrack_jax.models.shapes import abstract_variables
from beltcrack_jax.weights.state_dict import map_state_dict, read_state_dict

# Modules the reference constructs but never calls (their keys are in every reference state dict).
UNUSED_PREFIXES = ("neck.conv_fre_mix.", "neck.conv_fre.", "neck.fuse.")


def _check_position_index(key: str, value: np.ndarray, num_frames: int) -> list[str]:
    """The Swin relative_position_index must equal the one the port computes (reference window (T+1, 8, 8))."""
    try:
        expected = np.asarray(swin3d.reference_relative_position_index((num_frames + 1, 8, 8)))
    except Exception as e:  # noqa: BLE001 - report, do not crash
        return [f"{key}: cannot compute the expected index for shape {value.shape} ({e})"]
    if expected.shape != value.shape or not np.array_equal(expected, value):
        return [f"{key}: differs from the relative position index the port computes"]
    return []


def _check_haar_pair(key: str, state_dict: Mapping[str, np.ndarray]) -> list[str]:
    """WTConv's wt_filter / iwt_filter come in pairs and must be the Haar filters the port hard-codes."""
    if key.endswith(".iwt_filter"):
        partner = key[: -len("iwt_filter")] + "wt_filter"
        return [] if partner in state_dict else [f"{key}: its partner wt_filter is missing"]
    partner = key[: -len("wt_filter")] + "iwt_filter"
    if partner not in state_dict:
        return [f"{key}: its partner {partner} is missing"]
    if not wfm.haar_filters_match(np.asarray(state_dict[key], np.float32),
                                  np.asarray(state_dict[partner], np.float32)):
        return [f"{key} / {partner}: not the Haar (db1) filters the port hard-codes"]
    return []


def _check_special_buffers(keys: list[str], state_dict: Mapping[str, np.ndarray], num_frames: int) -> list[str]:
    """Verifies the skipped non-parameter buffers. Returns a list of problems."""
    problems = []
    for key in keys:
        if key.endswith("relative_position_index"):
            problems += _check_position_index(key, np.asarray(state_dict[key]), num_frames)
        elif key.endswith((".wt_filter", ".iwt_filter")):
            problems += _check_haar_pair(key, state_dict)
    return problems


def _is_skippable(key: str) -> bool:
    return (key.endswith("num_batches_tracked") or key.startswith(UNUSED_PREFIXES)
            or key.endswith((".relative_position_index", ".wt_filter", ".iwt_filter")))


def _default_config():
    from beltcrack_jax.configs import default

    return default.get_config()


def load_reference_state_dict(path_or_mapping: Any, config: Any = None) -> dict[str, Any]:
    """The reference BeltCrackDet state dict as Flax variables {'params', 'batch_stats'} (numpy float32).

    `path_or_mapping`: a mapping name -> array, an `.npz` (e.g. ../shared/golden/reference_state_dict.npz) or a
    `.pth` (needs torch). `config`: full config or its `.model` (default: the packaged `default` config).
    Recognised and skipped: `num_batches_tracked`, the never-called `neck.conv_fre_mix/conv_fre/fuse`, the Swin
    `relative_position_index` (checked equal to the computed one) and the WTConv Haar `wt_filter`/`iwt_filter`
    (checked to be Haar). Any missing key, unknown key or shape mismatch raises one ValueError listing all of them.
    """
    sd = read_state_dict(path_or_mapping)
    model = build_model(_default_config() if config is None else config)
    abstract = abstract_variables(model, model.num_frames)
    expected = {torch_key(collection, tuple(path)) for collection, *path in traverse_util.flatten_dict(abstract)}

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
