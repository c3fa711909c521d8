"""HSM (spatial branch): NonLocal, MEU and the whole HSM against the PyTorch goldens, plus shape/error checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from beltcrack_jax.models.hsm import HSM, KeyValue, MemoryReader, NonLocalBlock
from golden_utils import FULL_TOL, MODULE_TOL, assert_close, case_params, load, nchw_to_nhwc, random_variables


@pytest.mark.parametrize("fast_ops", [False, True])
def test_nonlocal_golden(golden, fast_ops):
    m = golden("modules_io")
    x = nchw_to_nhwc(m["nonlocal/in/x"])
    block = NonLocalBlock(128, fast_ops)
    variables = load(block, case_params(golden, "nonlocal"), "neck.nolocal.", x)
    assert float(variables["params"]["gamma"][0]) == 0.5   # the golden case sets gamma != 0, so attention counts
    assert_close(block.apply(variables, x), m["nonlocal/out/y"], MODULE_TOL, "nonlocal")


@pytest.mark.parametrize("gamma", [0.0, 0.3])
@pytest.mark.parametrize("gamma_frozen", [True, False])
def test_nonlocal_fast_skip_has_the_same_output_and_gradients(gamma, gamma_frozen):
    """fast_ops skips the attention when gamma == 0 (every reference-trained checkpoint). Output and gradients
    equal the plain block's: bit for bit at gamma == 0 (q, k, v get exact zeros), including d/dgamma when
    gamma is differentiated (no skip then) or its zero when it is frozen; to rounding with gamma != 0."""
    x = jax.random.normal(jax.random.key(1), (2, 4, 6, 16))
    plain, fast = NonLocalBlock(16), NonLocalBlock(16, fast_ops=True)
    params = {**plain.init(jax.random.key(0), x)["params"], "gamma": jnp.array([gamma], jnp.float32)}

    def loss(block, params, x):
        if gamma_frozen:
            params = {**params, "gamma": jax.lax.stop_gradient(params["gamma"])}
        return jnp.sum(jnp.sin(block.apply({"params": params}, x)))

    ys = [np.asarray(b.apply({"params": params}, x)) for b in (plain, fast)]
    gs = [jax.tree.leaves(jax.jit(jax.grad(loss, argnums=(1, 2)), static_argnums=0)(b, params, x))
          for b in (plain, fast)]
    if gamma == 0.0:
        np.testing.assert_array_equal(ys[1], np.asarray(x))
        np.testing.assert_array_equal(ys[0], ys[1])
        for a, b in zip(*gs):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    else:
        assert np.abs(ys[1] - np.asarray(x)).max() > 1e-3
        np.testing.assert_allclose(ys[0], ys[1], rtol=0, atol=1e-6)
        for a, b in zip(*gs):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    g_gamma = np.asarray(jax.grad(loss, argnums=1)(fast, params, x)["gamma"])
    assert (g_gamma[0] == 0) == gamma_frozen   # a trainable gamma gets its gradient, also at 0


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
