"""HSM (spatial branch): NonLocal, MEU and the whole HSM against the PyTorch goldens, plus shape/error checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from beltcrack_jax.models.hsm import HSM, KeyValue, MemoryReader, NonLocalBlock
from golden_utils import FULL_TOL, MODULE_TOL, assert_close, case_params, load, nchw_to_nhwc, random_variables


def test_nonlocal_golden(golden):
    m = golden("modules_io")
    x = nchw_to_nhwc(m["nonlocal/in/x"])
    block = NonLocalBlock(128)
    variables = load(block, case_params(golden, "nonlocal"), "neck.nolocal.", x)
    assert float(variables["params"]["gamma"][0]) == 0.5   # the golden case sets gamma != 0, so attention counts
    assert_close(block.apply(variables, x), m["nonlocal/out/y"], MODULE_TOL, "nonlocal")


def test_nonlocal_is_identity_at_init():
    x = jax.random.normal(jax.random.key(1), (2, 4, 6, 16))
    block = NonLocalBlock(16)
    variables = block.init(jax.random.key(0), x)
    assert variables["params"]["query_conv"]["kernel"].shape == (1, 1, 16, 2)
    np.testing.assert_array_equal(np.asarray(block.apply(variables, x)), np.asarray(x))


def test_meu_golden(golden):
    m = golden("modules_io")
    params = case_params(golden, "meu")
    key_frame = nchw_to_nhwc(m["meu/in/key_frame"])
    memory_feat = nchw_to_nhwc(m["meu/in/memory_feat"])
    kv = KeyValue(64, 128)
    k_q, v_q = kv.apply(load(kv, params, "neck.keyvalue_Q.", key_frame), key_frame)
    k_m, v_m = kv.apply(load(kv, params, "neck.keyvalue_M.", memory_feat), memory_feat)
    reader = MemoryReader(128)
    y = reader.apply(load(reader, params, "neck.memory.", k_m, v_m, k_q, v_q), k_m, v_m, k_q, v_q)
    assert_close(y, m["meu/out/y"], MODULE_TOL, "meu")


def test_hsm_full_forward_stages(golden):
    """HSM on the golden backbone features reproduces every stage hooked in the reference's full forward."""
    m = golden("modules_io")
    feats = jnp.asarray(m["full_intermediates/backbone_feats_BTCHW"]).transpose(0, 1, 3, 4, 2)
    hsm = HSM(128)
    variables = load(hsm, golden("reference_state_dict"), "neck.", feats)
    out, state = hsm.apply(variables, feats, mutable=["intermediates"])
    taps = state["intermediates"]
    expected = ["neck.conv_ref", "neck.conv_cur", "neck.conv_cr_mix", "neck.nolocal", "neck.keyvalue_Q.key",
                "neck.keyvalue_Q.value", "neck.keyvalue_M.key", "neck.keyvalue_M.value", "neck.memory"]
    assert sorted(taps) == sorted(expected)
    for name in expected:
        assert_close(taps[name][0], m[f"full_intermediates/{name}"], FULL_TOL, name)
    assert_close(out, m["full_intermediates/neck.memory"], FULL_TOL, "F_S")


def test_hsm_width_scaled_train_and_eval():
    """channels=16, T=3: shapes follow the width; train mode updates every BN's running statistics."""
    feats = jax.random.normal(jax.random.key(2), (2, 3, 8, 12, 16))
    hsm = HSM(16)
    variables = random_variables(hsm, feats)
    p = variables["params"]
    assert p["conv_ref"]["0"]["conv"]["kernel"].shape == (3, 3, 32, 32)
    assert p["keyvalue_Q"]["key_conv"]["kernel"].shape == (3, 3, 16, 8)
    assert p["memory"]["memory_reduce"]["con1x1"]["kernel"].shape == (1, 1, 32, 16)
    y = jax.jit(hsm.apply)(variables, feats)
    assert y.shape == (2, 8, 12, 16) and bool(jnp.all(y >= 0))   # ReLU output
    y_train, new = jax.jit(lambda v, x: hsm.apply(v, x, train=True, mutable=["batch_stats"]))(variables, feats)
    assert y_train.shape == (2, 8, 12, 16)
    old_mean = variables["batch_stats"]["memory"]["memory_reduce"]["bn"]["mean"]
    new_mean = new["batch_stats"]["memory"]["memory_reduce"]["bn"]["mean"]
    assert not np.allclose(np.asarray(old_mean), np.asarray(new_mean))


@pytest.mark.parametrize("shape", [(2, 8, 8, 16), (2, 1, 8, 8, 16), (2, 3, 8, 8, 8)])
def test_hsm_bad_input(shape):
    hsm = HSM(16)
    with pytest.raises(ValueError, match="HSM: expected feats of shape"):
        hsm.init(jax.random.key(0), jnp.zeros(shape))


def test_memory_reader_rejects_mismatched_keys():
    reader = MemoryReader(8)
    k_m, v_m = jnp.zeros((1, 4, 4, 4)), jnp.zeros((1, 4, 4, 8))
    k_q, v_q = jnp.zeros((1, 4, 4, 6)), jnp.zeros((1, 4, 4, 8))
    with pytest.raises(ValueError, match="key channels differ"):
        reader.init(jax.random.key(0), k_m, v_m, k_q, v_q)
