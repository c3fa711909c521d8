"""`model.wavelet`: the jaxwt Haar backend equals the hand-written one (ops/haar.py) to float rounding, forward
and gradient, through WTConv; the config field reaches the module; an unknown backend is refused."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from beltcrack_jax.configs import load_config
from beltcrack_jax.models import build_model
from beltcrack_jax.models.wfm import WTConv
from beltcrack_jax.ops.haar import haar_pair


@pytest.mark.parametrize("shape", [(2, 16, 24, 3), (1, 13, 22, 2), (1, 1, 3, 1)])
def test_one_level_matches(shape):
    x = jax.random.normal(jax.random.key(0), shape)
    (a_jnp, s_jnp), (a_wt, s_wt) = haar_pair("jnp"), haar_pair("jaxwt")
    for u, v in zip(a_jnp(x), a_wt(x)):
        np.testing.assert_allclose(u, v, atol=1e-6)
    ll, bands = a_jnp(x)
    np.testing.assert_allclose(s_jnp(ll, bands, shape[1:3]), s_wt(ll, bands, shape[1:3]), atol=1e-6)


def test_wtconv_forward_and_gradient_match():
    x = jax.random.normal(jax.random.key(1), (2, 20, 13, 4))   # odd sizes: the padding / cropping path too
    ref, alt = WTConv(4, wavelet="jnp"), WTConv(4, wavelet="jaxwt")
    params = jax.jit(ref.init)(jax.random.key(2), x)
    # Non-trivial wavelet scales (init 0.1) so the sub-band path carries weight in the comparison.
    params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(jax.random.key(3), p.shape), params)

    def value_and_grad(module):
        # jit: un-jitted, the many small ops of a 3-level WTConv take ~10x longer to dispatch than to compile.
        return jax.jit(jax.value_and_grad(lambda p, x: jnp.sum(jnp.sin(module.apply(p, x))), argnums=(0, 1)))

    np.testing.assert_allclose(jax.jit(ref.apply)(params, x), jax.jit(alt.apply)(params, x), atol=1e-5)
    (v_ref, g_ref), (v_alt, g_alt) = value_and_grad(ref)(params, x), value_and_grad(alt)(params, x)
    np.testing.assert_allclose(v_ref, v_alt, rtol=1e-5)
    for u, v in zip(jax.tree.leaves(g_ref), jax.tree.leaves(g_alt)):
        np.testing.assert_allclose(u, v, atol=1e-4, rtol=1e-5)


def test_config_field_reaches_the_model():
    cfg = load_config("tiny")
    assert cfg.model.wavelet == "jnp"
    cfg.model.wavelet = "jaxwt"
    assert build_model(cfg).wavelet == "jaxwt"


def test_unknown_backend():
    with pytest.raises(ValueError, match="model.wavelet"):
        WTConv(4, wavelet="pywt").init(jax.random.key(0), jnp.zeros((1, 8, 8, 4)))
