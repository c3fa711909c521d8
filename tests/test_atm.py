"""ATM (temporal branch): TARFusion, GAL (eval and train-mode BN) and ATM against the PyTorch goldens."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from beltcrack_jax.models.atm import ATM, GAL, ConvTranspose2x2, TARFusion
from golden_utils import FULL_TOL, MODULE_TOL, assert_close, case_params, load, random_variables


def btchw_to_bthwc(a):
    return jnp.asarray(a).transpose(0, 1, 3, 4, 2)


def test_tar_rect_golden(golden):
    m = golden("modules_io")
    x = btchw_to_bthwc(m["tar_rect/in/x_BTCHW"])          # (1, 5, 16, 24, 128): non-square
    tar = TARFusion(128)
    variables = load(tar, golden("reference_state_dict"), "neck.tar.", x)
    assert variables["params"]["upsample1"]["deconv"]["0"]["weight"].shape == (512, 256, 2, 2)  # torch layout
    assert_close(tar.apply(variables, x), m["tar_rect/out/y"], MODULE_TOL, "tar_rect")


def test_gal_eval_golden(golden):
    m = golden("modules_io")
    x = jnp.asarray(m["gal_eval/in/x"]).transpose(0, 2, 3, 1)
    gal = GAL(128)
    variables = load(gal, case_params(golden, "gal_eval"), "neck.gal.", x)
    assert_close(gal.apply(variables, x), m["gal_eval/out/y"], MODULE_TOL, "gal_eval")


def test_gal_train_golden_output_and_running_stats(golden):
    """One train-mode step: batch statistics (BN1d over all rows) and the PyTorch running-stat update."""
    m = golden("modules_io")
    x = jnp.asarray(m["gal_train/in/x"]).transpose(0, 2, 3, 1)
    gal = GAL(128)
    variables = load(gal, case_params(golden, "gal_train"), "neck.gal.", x)
    y, new_state = gal.apply(variables, x, train=True, mutable=["batch_stats"])
    assert_close(y, m["gal_train/out/y"], MODULE_TOL, "gal_train")
    stats = new_state["batch_stats"]
    prefix = "gal_train/out/state_after/neck.gal."
    checked = 0
    for key in m.files:
        if not key.startswith(prefix) or "running" not in key:
            continue
        module, idx, leaf = key[len(prefix):].split(".")
        ours = np.asarray(stats[module][idx][{"running_mean": "mean", "running_var": "var"}[leaf]])
        before = np.asarray(variables["batch_stats"][module][idx][leaf.replace("running_", "")])
        ref = m[key]
        assert not np.allclose(before, ref), f"{key}: the golden step does not move this statistic"
        np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5, err_msg=key)
        checked += 1
    assert checked == 10


def test_atm_full_forward_stages(golden):
    m = golden("modules_io")
    feats = btchw_to_bthwc(m["full_intermediates/backbone_feats_BTCHW"])
    atm = ATM(128)
    variables = load(atm, golden("reference_state_dict"), "neck.", feats)
    out, state = atm.apply(variables, feats, mutable=["intermediates"])
    assert_close(state["intermediates"]["neck.tar"][0], m["full_intermediates/neck.tar"], FULL_TOL, "tar")
    assert_close(out, m["full_intermediates/neck.gal"], FULL_TOL, "gal (F_T)")


def test_conv_transpose_matches_lax():
    """The einsum + depth-to-space ConvTranspose equals a stride-2 transposed conv (PyTorch semantics)."""
    x = jax.random.normal(jax.random.key(0), (2, 3, 5, 6))
    mod = ConvTranspose2x2(4)
    w = jax.random.normal(jax.random.key(1), (6, 4, 2, 2))   # (in, out, kh, kw), PyTorch layout
    b = jax.random.normal(jax.random.key(2), (4,))
    y = mod.apply({"params": {"weight": w, "bias": b}}, x)
    # PyTorch ConvTranspose == lhs-dilated correlation with the spatially flipped kernel, padding k-1.
    kernel = jnp.flip(w, (2, 3)).transpose(2, 3, 0, 1)    # HWIO
    ref = jax.lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)), lhs_dilation=(2, 2),
                                       dimension_numbers=("NHWC", "HWIO", "NHWC")) + b
    assert y.shape == (2, 6, 10, 4)
    np.testing.assert_allclose(np.asarray(y), np.asarray(ref), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def small_atm():
    """ATM at width 16 with T = 3 (the key frame is the last one for any T)."""
    feats = jax.random.normal(jax.random.key(3), (2, 3, 8, 12, 16))
    atm = ATM(16)
    return atm, random_variables(atm, feats), feats


def test_atm_width_scaled_any_T(small_atm):
    """channels=16, T=3: hidden sizes follow the width; eval and train mode run with the expected shapes."""
    atm, variables, feats = small_atm
    p = variables["params"]
    assert p["tar"]["feat_fusion"]["kernel"].shape == (1, 1, 48, 16)
    assert p["tar"]["res_block3"]["0"]["body"]["0"]["kernel"].shape == (3, 3, 64, 64)
    assert p["tar"]["upsample2"]["deconv"]["0"]["weight"].shape == (64, 16, 2, 2)
    assert p["gal"]["vertex_update_func"]["0"]["kernel"].shape == (32, 8)
    assert p["gal"]["final_aggregation_layer"]["0"]["kernel"].shape == (1, 1, 24, 16)
    y, new = jax.jit(lambda v, x: atm.apply(v, x, train=True, mutable=["batch_stats"]))(variables, feats)
    assert y.shape == (2, 8, 12, 16)
    assert set(new["batch_stats"]["gal"]) == {"edge_aggregation_func", "vertex_update_func", "edge_update_func",
                                             "update_edge_reduce_func", "final_aggregation_layer"}
    moved = new["batch_stats"]["gal"]["final_aggregation_layer"]["1"]["mean"]
    assert float(jnp.abs(moved).max()) > 0      # started at 0, updated from the batch


def test_tar_uses_every_frame_for_any_T(small_atm):
    """At T = 3 every frame (the key, index 2, and both references) influences the output."""
    _, variables, feats = small_atm
    apply = jax.jit(TARFusion(16).apply)
    tar_vars = {"params": variables["params"]["tar"]}
    y = apply(tar_vars, feats)
    assert y.shape == (2, 8, 12, 16)
    for t in range(3):
        changed = feats.at[:, t].set(0.0)
        assert float(jnp.abs(apply(tar_vars, changed) - y).max()) > 1e-5, f"frame {t} has no influence"


@pytest.mark.parametrize("shape, match", [
    ((1, 3, 10, 8, 16), "divisible by 4"),
    ((1, 3, 8, 6, 16), "divisible by 4"),
    ((1, 8, 8, 16), r"expected feats of shape \(B, T>=2"),
    ((1, 1, 8, 8, 16), r"expected feats of shape \(B, T>=2"),
    ((1, 3, 8, 8, 12), r"expected feats of shape \(B, T>=2"),
])
def test_tar_bad_input(shape, match):
    with pytest.raises(ValueError, match=match):
        TARFusion(16).init(jax.random.key(0), jnp.zeros(shape))


def test_gal_bad_input():
    with pytest.raises(ValueError, match="GAL: expected x of shape"):
        GAL(16).init(jax.random.key(0), jnp.zeros((1, 8, 8, 8)))
