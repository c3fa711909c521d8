"""BeltCrackDet network in Flax (NHWC). `build_model(config)` is the only constructor the rest of the code uses."""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax

from beltcrack_jax.models.detector import BeltCrackDet

MODEL_FIELDS = ("num_frames", "num_classes", "depth", "backbone_width", "width", "hsm", "atm", "wfm", "rcu",
                "per_frame_bn_stats", "fast_ops", "fold_bn", "compute_dtype", "remat", "swin_window_chunk",
                "backbone_per_frame", "swin_heads")


_MISSING = object()


def _field(cfg: Any, name: str) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(name, _MISSING)
    return getattr(cfg, name, _MISSING)


def build_model(config: Any) -> nn.Module:
    """BeltCrackDet from a config: either the full `get_config()` ConfigDict (its `.model` field is used) or
    that `.model` field itself (a ConfigDict, dict or any object with the fields of `configs/default.py`'s `model`
    section; a field left out takes BeltCrackDet's default, which equals the reference)."""
    model_cfg = config
    if _field(config, "num_frames") is _MISSING and _field(config, "model") is not _MISSING:
        model_cfg = _field(config, "model")
    kwargs = {name: _field(model_cfg, name) for name in MODEL_FIELDS}
    kwargs = {k: v for k, v in kwargs.items() if v is not _MISSING}
    if "rcu" in kwargs:
        kwargs["rcu"] = int(kwargs["rcu"])
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


__all__ = ["BeltCrackDet", "build_model", "resolve_backbone_per_frame", "resolve_swin_window_chunk", "MODEL_FIELDS"]
