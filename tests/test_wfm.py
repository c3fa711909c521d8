"""WTConv (`neck.conv_dw`) and the WFM group (conv_dw per frame, conv_fre_new, swin, conv_t) against the goldens."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from beltcrack_jax.convert import map_state_dict
from beltcrack_jax.models.wfm import WFM, WTConv, haar_filters_match
from golden_utils import case_params

REL_TOL = 2e-4  # max|delta| <= REL_TOL * max|ref|
WFM_PARTS = ("neck.conv_dw.", "neck.conv_fre_new.", "neck.swin.", "neck.conv_t.")


def _nhwc(a):
    return np.ascontiguousarray(np.asarray(a, np.float32).transpose(0, 2, 3, 1))


def _check(out, ref):
    out, ref = np.asarray(out), np.asarray(ref)
    assert out.shape == ref.shape, (out.shape, ref.shape)
    err = np.abs(out - ref).max()
    assert err <= REL_TOL * np.abs(ref).max(), (err, np.abs(ref).max())


def test_wtconv_odd_golden(golden):
    """(1, 128, 28, 44): level 3 runs on 7x11, padded to 8x12 and cropped back."""
    mio = golden("modules_io")
    sd = case_params(golden, "wtconv_odd")
    x = _nhwc(mio["wtconv_odd/in/x"])
    module = WTConv()
    variables, consumed = map_state_dict(jax.eval_shape(module.init, jax.random.key(0), x), sd,
                                         prefix="neck.conv_dw.")
    assert set(sd) - consumed == {"neck.conv_dw.wt_filter", "neck.conv_dw.iwt_filter"}
    _check(jax.jit(module.apply)(variables, x), _nhwc(mio["wtconv_odd/out/y"]))


def test_haar_filters_match_the_stored_ones(golden):
    sd = case_params(golden, "wtconv_odd")
    wt, iwt = sd["neck.conv_dw.wt_filter"], sd["neck.conv_dw.iwt_filter"]
    assert haar_filters_match(wt, iwt)
    swapped = wt.reshape(128, 4, 1, 2, 2)[:, [0, 2, 1, 3]].reshape(wt.shape)      # B1 <-> B2
    assert not haar_filters_match(swapped, iwt)
    assert not haar_filters_match(wt, -iwt)
    assert not haar_filters_match(wt, iwt.transpose(0, 1, 3, 2))                # B1/B2 transposed
    assert not haar_filters_match(wt[:, :, :1], iwt)                            # wrong shape


def test_wtconv_params_layout_and_init():
    module = WTConv(channels=16)
    params = jax.jit(module.init)(jax.random.key(0), jnp.zeros((1, 9, 7, 16)))["params"]
    shapes = jax.tree_util.tree_map(jnp.shape, params)
    assert shapes == {
        "base_conv": {"kernel": (5, 5, 1, 16), "bias": (16,)},
        "base_scale": {"weight": (16,)},
        "wavelet_convs": {str(i): {"kernel": (5, 5, 1, 64)} for i in range(3)},
        "wavelet_scale": {str(i): {"weight": (64,)} for i in range(3)},
    }
    np.testing.assert_array_equal(params["base_scale"]["weight"], 1.0)
    np.testing.assert_allclose(params["wavelet_scale"]["1"]["weight"], 0.1)


def _wfm_inputs_and_variables(golden):
    mio, sd = golden("modules_io"), golden("reference_state_dict")
    fi = "full_intermediates/"
    feats = np.ascontiguousarray(mio[fi + "backbone_feats_BTCHW"].transpose(0, 1, 3, 4, 2))   # (1, 5, 32, 32, 128)
    f_t = _nhwc(mio[fi + "neck.gal"])
    module = WFM()
    state = {k: sd[k] for k in sd.files if k.startswith(WFM_PARTS)}
    variables, consumed = map_state_dict(jax.eval_shape(module.init, jax.random.key(0), feats, f_t), state,
                                         prefix="neck.")
    return module, feats, f_t, variables, state, consumed


def test_wfm_full_forward_goldens(golden):
    """Golden full run, 32x32: the 5 backbone features and F_T = neck.gal in; every WFM stage compared."""
    mio = golden("modules_io")
    fi = "full_intermediates/"
    module, feats, f_t, variables, state, consumed = _wfm_inputs_and_variables(golden)
    # every parameter / BN statistic of the four reference modules is used; only constants are skipped
    skipped = set(state) - consumed
    assert all(k.endswith(("wt_filter", "iwt_filter", "num_batches_tracked", "relative_position_index"))
               for k in skipped), skipped
    assert len(skipped) == 2 + 5 + 2

    run = jax.jit(lambda v, a, b: module.apply(v, a, b, mutable=["intermediates"]))
    (f_flt, f_fgt), state_out = run(variables, feats, f_t)
    inter = state_out["intermediates"]
    _check(inter["conv_dw_out"][0],
           mio[fi + "neck.conv_dw_per_frame_BTCHW"].transpose(0, 1, 3, 4, 2))
    _check(inter["swin_out"][0], _nhwc(mio[fi + "neck.swin"]))
    _check(f_flt, _nhwc(mio[fi + "neck.conv_fre_new"]))
    _check(f_fgt, _nhwc(mio[fi + "neck.conv_t"]))
    np.testing.assert_array_equal(inter["conv_fre_new_out"][0], f_flt)
    np.testing.assert_array_equal(inter["conv_t_out"][0], f_fgt)


@pytest.mark.parametrize("t", [2, 5])
def test_frames_are_folded_into_the_batch(t):
    """No per-frame Python loop: the traced program has the same 9 convolutions for every T (1 base + 3 wavelet
    levels of conv_dw, 3 conv_fre_new, 2 conv_t). (Frame order/folding correctness: the golden test above.)"""
    c, h, w = 16, 12, 10
    module = WFM(channels=c)
    feats = jax.ShapeDtypeStruct((2, t, h, w, c), jnp.float32)
    f_t = jax.ShapeDtypeStruct((2, h, w, c), jnp.float32)
    variables = jax.eval_shape(module.init, jax.random.key(1), feats, f_t)
    jaxpr = jax.make_jaxpr(lambda v, a, b: module.apply(v, a, b))(variables, feats, f_t)
    assert str(jaxpr).count("conv_general_dilated") == 9


def test_width_scaled_instance_train_step():
    c = 16
    module = WFM(channels=c)
    rng = np.random.default_rng(0)
    feats = jnp.asarray(rng.standard_normal((2, 5, 12, 20, c)), jnp.float32)
    f_t = jnp.asarray(rng.standard_normal((2, 12, 20, c)), jnp.float32)
    variables = jax.jit(module.init)(jax.random.key(0), feats, f_t)
    assert variables["params"]["swin"]["tr"]["1"]["attn"]["relative_position_bias_table"].shape == (2475, 4)
    assert variables["params"]["conv_t"]["0"]["conv"]["kernel"].shape == (3, 3, 6 * c, 8 * c)

    def loss(params):
        (a, b), new_state = module.apply({"params": params, "batch_stats": variables["batch_stats"]}, feats, f_t,
                                         train=True, mutable=["batch_stats"])
        return jnp.sum(a ** 2) + jnp.sum(b ** 2), (a, b, new_state)

    grads, (f_flt, f_fgt, new_state) = jax.jit(jax.grad(loss, has_aux=True))(variables["params"])
    assert f_flt.shape == f_fgt.shape == (2, 12, 20, c)
    assert bool(jnp.isfinite(f_flt).all() & jnp.isfinite(f_fgt).all())
    changed = jax.tree_util.tree_map(lambda a, b: bool((a != b).any()), variables["batch_stats"],
                                     new_state["batch_stats"])
    assert all(jax.tree_util.tree_leaves(changed))
    # gradients reach every wavelet level (through the Haar analysis/synthesis) and the Swin bias tables
    for i in "012":
        assert float(jnp.abs(grads["conv_dw"]["wavelet_convs"][i]["kernel"]).max()) > 0
        assert float(jnp.abs(grads["conv_dw"]["wavelet_scale"][i]["weight"]).max()) > 0
    assert float(jnp.abs(grads["swin"]["tr"]["1"]["attn"]["relative_position_bias_table"]).max()) > 0


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match=r"WTConv\(channels=16\): expected input \(N, H, W, 16\)"):
        WTConv(16).init(jax.random.key(0), jnp.zeros((1, 8, 8, 8)))
    module = WFM(channels=16)
    with pytest.raises(ValueError, match=r"expected feats \(B, T, H, W, 16\)"):
        module.init(jax.random.key(0), jnp.zeros((1, 8, 8, 16)), jnp.zeros((1, 8, 8, 16)))
    with pytest.raises(ValueError, match=r"expected f_t of shape \(1, 8, 8, 16\)"):
        module.init(jax.random.key(0), jnp.zeros((1, 5, 8, 8, 16)), jnp.zeros((1, 8, 6, 16)))
