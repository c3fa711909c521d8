"""A model's variable shapes without computing anything (importers and the size/cost report start from them)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def abstract_variables(model, num_frames: int, size: int = 64) -> dict[str, Any]:
    """Shapes/dtypes of `model`'s variables: jax.eval_shape of init on a (1, T, size, size, 3) clip."""
    clips = jax.ShapeDtypeStruct((1, num_frames, size, size, 3), jnp.float32)
    return jax.eval_shape(lambda c: model.init(jax.random.key(0), c), clips)
