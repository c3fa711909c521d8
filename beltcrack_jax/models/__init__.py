"""BeltCrackDet network in Flax (NHWC). `build_model(config)` is the only constructor the rest of the code uses."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax

from beltcrack_jax.models.detector import BeltCrackDet

# config.model fields that are BeltCrackDet's own (the module's dataclass fields are the list, so it cannot
# drift); the other config.model fields (init, prior_prob) belong to `initializers`.
_MODULE_FIELDS = tuple(f.name for f in dataclasses.fields(BeltCrackDet) if f.name not in ("parent", "name"))


def build_model(config: Any) -> nn.Module:
    """BeltCrackDet from a config: either the full `get_config()` ConfigDict (its `.model` field is used) or
    that `.model` section itself (a ConfigDict or dict with the fields of `configs/default.py`'s `model`
    section; a field left out takes BeltCrackDet's default, which equals the reference)."""
    section = config.model if "model" in config and "num_frames" not in config else config
    section = section.to_dict() if hasattr(section, "to_dict") else dict(section)
    kwargs = {k: section[k] for k in _MODULE_FIELDS if k in section}
    if "rcu" in kwargs:
        kwargs["rcu"] = int(kwargs["rcu"])
    if "swin_window" in kwargs:
        w = kwargs["swin_window"]
        if isinstance(w, bool) or not isinstance(w, int) or w < 1:
            raise ValueError(f"model.swin_window must be a positive int (the 3-D Swin window's height = width), "
                             f"got {w!r}")
    if "swin_window_chunk" in kwargs:
        kwargs["swin_window_chunk"] = resolve_swin_window_chunk(kwargs["swin_window_chunk"])
    if "backbone_per_frame" in kwargs:
        kwargs["backbone_per_frame"] = resolve_backbone_per_frame(kwargs["backbone_per_frame"])
    return BeltCrackDet(**kwargs)


def _on_cpu(backend: str | None) -> bool:
    return (backend or jax.default_backend()) == "cpu"


def resolve_backbone_per_frame(value: int, backend: str | None = None) -> bool:
    """config.model.backbone_per_frame -> the module field: -1 ('auto') is True on CPU (T independent backbone
    calls that XLA:CPU overlaps on its threads) and False on accelerators (one call over B*T images keeps the
    device busy); 0 / 1 are False / True."""
    value = int(value)
    if value not in (-1, 0, 1):
        raise ValueError(f"model.backbone_per_frame must be -1 (auto), 0 or 1, got {value}")
    return _on_cpu(backend) if value == -1 else bool(value)


def resolve_swin_window_chunk(value: int, backend: str | None = None) -> int:
    """config.model.swin_window_chunk -> the module field: -1 ('auto') is 2 windows per attention call on CPU
    (their scores stay in cache: ~2.5x faster there) and 0 (one batched call) on accelerators, where a loop of
    small calls would serialise the device; other values are kept."""
    value = int(value)
    if value < -1:
        raise ValueError(f"model.swin_window_chunk must be -1 (auto), 0 (all windows at once) or a positive "
                         f"number of windows, got {value}")
    if value == -1:
        return 2 if _on_cpu(backend) else 0
    return value


__all__ = ["BeltCrackDet", "build_model", "resolve_backbone_per_frame", "resolve_swin_window_chunk"]
