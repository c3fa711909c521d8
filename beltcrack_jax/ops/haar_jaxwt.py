"""The one-level Haar analysis / synthesis of `ops.haar`, computed by jaxwt (`model.wavelet='jaxwt'`).

Same signatures, layout and odd-size rule as `haar_analysis` / `haar_synthesis`: jaxwt's `mode='zero'` pads odd
sizes at the bottom/right exactly as they do, and its (cA, (cH, cV, cD)) are (LL, B1, B2, B3) with the same signs
and normalisation (tests/test_haar.py). Why keep it: jaxwt is the maintained JAX wavelet library the project
brief names, so a user can swap in another wavelet family or check the hand-written transform against it; the
hand-written one stays the default because it is a few adds (no convolutions) and is what the goldens pin.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import jaxwt


# jaxwt is called on (B, C, H, W), its default axes: with `axes=(1, 2)` jaxwt 0.1.1 builds the inverse transpose
# from a traced argsort and fails under jit.
def _to_chw(x: jax.Array) -> jax.Array:
    return jnp.moveaxis(x, 3, 1)


def _to_hwc(x: jax.Array) -> jax.Array:
    return jnp.moveaxis(x, 1, 3)


def haar_analysis_jaxwt(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x (B, H, W, C) -> (ll (B, h, w, C), bands (B, h, w, C, 3)), as `ops.haar.haar_analysis`."""
    ll, (ch, cv, cd) = jaxwt.wavedec2(_to_chw(x), "haar", mode="zero", level=1)
    bands = jnp.stack([_to_hwc(ch), _to_hwc(cv), _to_hwc(cd)], axis=-1)
    return _to_hwc(ll).astype(x.dtype), bands.astype(x.dtype)


def haar_synthesis_jaxwt(ll: jax.Array, bands: jax.Array, out_hw: Sequence[int] | None = None) -> jax.Array:
    """Inverse of `haar_analysis_jaxwt`, cropped to `out_hw`, as `ops.haar.haar_synthesis`."""
    details = tuple(_to_chw(bands[..., k]) for k in range(3))
    y = _to_hwc(jaxwt.waverec2([_to_chw(ll), details], "haar")).astype(ll.dtype)
    if out_hw is not None:
        y = y[:, : int(out_hw[0]), : int(out_hw[1])]
    return y
