"""`ops.conv.conv_general_dilated` (fast convolution gradients) against `lax.conv_general_dilated`.

Forward: bit-identical (the same XLA convolution). Gradients: the same sums in another order, so equal to 1e-5 of the largest value. On the full tiny model, fast and plain float32
gradients are equally close to float64 gradients of the plain model.
"""

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from jax import lax

from beltcrack_jax.convert import load_config_file
from beltcrack_jax.models import build_model
from beltcrack_jax.models.layers import BaseConv
from beltcrack_jax.ops import conv as conv_ops


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def _pair(x, w, strides, padding, groups=1):
    dn = lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))

    def plain(x, w):
        return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=dn, feature_group_count=groups)

    def fast(x, w):
        return conv_ops.conv_general_dilated(x, w, strides, padding, dimension_numbers=dn,
                                             feature_group_count=groups)
    return plain, fast


def _check(x, w, strides, padding, groups=1):
    plain, fast = _pair(x, w, strides, padding, groups)
    y0, y1 = jax.jit(plain)(x, w), jax.jit(fast)(x, w)
    assert y0.shape == y1.shape
    np.testing.assert_array_equal(np.asarray(y1), np.asarray(y0))
    ct = jnp.cos(y0)   # a non-trivial cotangent
    g0 = jax.jit(lambda x, w: jax.vjp(plain, x, w)[1](ct))(x, w)
    g1 = jax.jit(lambda x, w: jax.vjp(fast, x, w)[1](ct))(x, w)
    for a, b, name in zip(g1, g0, ("dx", "dw")):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert _rel(a, b) < 1e-5, name


def _rand(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


@pytest.mark.parametrize("n,h,w,cin,cout,k,stride,pad", [
    (5, 32, 32, 12, 16, 3, 1, 1),     # tap-GEMM kernel gradient (N*Ho*Wo = 5120 >= 1024)
    (4, 32, 24, 8, 16, 3, 2, 1),      # strided, non-square, taps (4*16*12 = 768 < 1024: XLA's gradient)
    (8, 34, 34, 8, 16, 3, 2, 1),      # strided, taps (8*17*17 = 2312)
    (2, 32, 32, 8, 8, 4, 2, 1),       # TAR's 4x4 stride-2 downsample, taps (2*16*16 = 512: XLA)
    (4, 33, 31, 6, 10, 5, 1, 2),      # odd sizes, 5x5, taps
    (1, 16, 16, 32, 32, 3, 1, 1),     # small map: XLA's own kernel gradient
])
def test_fast_conv_matches_lax(n, h, w, cin, cout, k, stride, pad):
    x = _rand((n, h, w, cin), 0)
    kernel = _rand((k, k, cin, cout), 1) / np.sqrt(k * k * cin)
    _check(x, kernel, (stride, stride), ((pad, pad), (pad, pad)))


def test_fast_conv_1x1():
    x, w = _rand((3, 20, 20, 24), 2), _rand((1, 1, 24, 40), 3)
    _check(x, w, (1, 1), ((0, 0), (0, 0)))


def test_fast_conv_tap_path_is_used_and_small_maps_fall_back():
    def prims(shape):
        x, w = _rand(shape, 4), _rand((3, 3, shape[-1], 8), 5)
        _, fast = _pair(x, w, (1, 1), ((1, 1), (1, 1)))
        return str(jax.make_jaxpr(fast)(x, w))

    assert "custom_vjp_call" in prims((4, 32, 32, 8))       # 4096 output pixels
    assert "custom_vjp_call" not in prims((1, 16, 16, 8))   # 256 < TAP_GRAD_MIN_PIXELS


def test_fast_conv_other_cases_fall_through_to_lax():
    x = _rand((2, 12, 12, 8), 6)
    # grouped (depthwise) convolution and string padding: plain lax, identical values and gradients
    _check(x, _rand((3, 3, 1, 8), 7), (1, 1), ((1, 1), (1, 1)), groups=8)
    _check(x, _rand((3, 3, 8, 4), 8), (1, 1), "SAME")
    dn = lax.conv_dimension_numbers((2, 8, 12, 12), (4, 8, 3, 3), ("NCHW", "OIHW", "NCHW"))
    xc, wc = _rand((2, 8, 12, 12), 9), _rand((4, 8, 3, 3), 10)
    np.testing.assert_array_equal(
        np.asarray(conv_ops.conv_general_dilated(xc, wc, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dn)),
        np.asarray(lax.conv_general_dilated(xc, wc, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dn)))


def test_baseconv_fast_ops_same_params_and_train_gradients():
    x = _rand((10, 32, 32, 6), 11)
    plain, fast = BaseConv(16, 3, frame_groups=5), BaseConv(16, 3, frame_groups=5, fast_ops=True)
    variables = plain.init(jax.random.key(0), x)
    assert jax.tree.structure(variables) == jax.tree.structure(fast.init(jax.random.key(0), x))

    def grads(m):
        def loss(p, x):
            y, _ = m.apply({**variables, "params": p}, x, train=True, mutable=["batch_stats"])
            return jnp.sum(y * jnp.cos(y))
        return jax.jit(jax.grad(loss, argnums=(0, 1)))(variables["params"], x)

    for a, b in zip(jax.tree.leaves(grads(fast)), jax.tree.leaves(grads(plain))):
        assert _rel(a, b) < 1e-5


@pytest.mark.parametrize("ablated", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_tiny_model_gradients_fast_ops_as_accurate_as_plain(ablated):
    """Against float64 gradients of the plain model, the fast-gradient model's float32 error is no larger than the
    plain float32 model's own (both ~1e-5 of the gradient norm: rounding through 5 frames of train-mode BN).
    Cheap form: backbone + head ("w/o All"; at 64 px only the backbone's maps are large enough for the tap
    gradient); the full model behind the slow marker."""
    cfg = load_config_file("configs/tiny.py")
    model = build_model(cfg)
    assert model.fast_ops
    if ablated:
        model = model.clone(hsm=False, atm=False, wfm=False, rcu=0)
    clips = _rand((2, model.num_frames, 64, 64, 3), 12)
    variables = jax.jit(model.init)(jax.random.key(0), clips)

    def grads(m, v, x):
        def loss(p):
            out, _ = m.apply({"params": p, "batch_stats": v["batch_stats"]}, x, train=True, mutable=["batch_stats"])
            return jnp.mean(out ** 2)
        return jax.device_get(jax.jit(jax.grad(loss))(v["params"]))

    g_fast, g_plain = grads(model, variables, clips), grads(model.clone(fast_ops=False), variables, clips)
    with jax.enable_x64(True):
        to64 = lambda t: jax.tree.map(lambda a: jnp.asarray(np.asarray(a, np.float64)), t)   # noqa: E731
        g_ref = grads(model.clone(fast_ops=False), to64(variables), to64(clips))

    def err(g):
        d = [np.asarray(a, np.float64) - b for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref))]
        return np.sqrt(sum(np.sum(x * x) for x in d))

    scale = np.sqrt(sum(np.sum(np.square(b)) for b in jax.tree.leaves(g_ref)))
    e_fast, e_plain = err(g_fast) / scale, err(g_plain) / scale
    assert e_plain < 1e-4                       # float32 rounding, not a different function
    assert e_fast < 1.5 * e_plain + 1e-6, (e_fast, e_plain)
