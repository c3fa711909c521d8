"""RCU (Res_CBAM block) against the PyTorch goldens: standalone case and the three RCUs of the full forward."""

import jax
import jax.numpy as jnp
import pytest

from beltcrack_jax.models.rcu import ResCBAM
from golden_utils import FULL_TOL, MODULE_TOL, assert_close, case_params, load, random_variables


def test_rcu_golden(golden):
    m = golden("modules_io")
    x = jnp.asarray(m["rcu/in/x"]).transpose(0, 2, 3, 1)      # (1, 20, 28, 256)
    params = case_params(golden, "rcu")
    block = ResCBAM(128)
    variables = load(block, params, "neck.resblock0.", x)
    assert variables["params"]["ca"]["fc1"]["kernel"].shape == (1, 1, 128, 8)
    assert_close(jax.jit(block.apply)(variables, x), m["rcu/out/y"], MODULE_TOL, "rcu")


@pytest.mark.parametrize("name, inputs", [
    ("resblock0", ("conv_fin_mix", "conv_fre_new")),   # RCU1 = [F_st, F_flt]
    ("resblock1", ("conv_fre_new", "conv_t")),         # RCU2 = [F_flt, F_fgt]
    ("resblock2", ("resblock0", "resblock1")),         # RCU3 = [RCU1, RCU2]
])
def test_rcu_full_forward(golden, name, inputs):
    m = golden("modules_io")
    x = jnp.concatenate([jnp.asarray(m[f"full_intermediates/neck.{i}"]) for i in inputs], 1).transpose(0, 2, 3, 1)
    block = ResCBAM(128)
    variables = load(block, golden("reference_state_dict"), f"neck.{name}.", x)
    assert_close(jax.jit(block.apply)(variables, x), m[f"full_intermediates/neck.{name}"], FULL_TOL, name)


def test_rcu_width_scaled_train():
    """features=16 from 32 input channels: ratio-16 CA hidden = 1; train mode updates the BN statistics."""
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 32))
    block = ResCBAM(16)
    variables = random_variables(block, x)
    assert variables["params"]["ca"]["fc1"]["kernel"].shape == (1, 1, 16, 1)
    assert variables["params"]["sa"]["conv1"]["kernel"].shape == (7, 7, 2, 1)
    assert variables["params"]["shortcut"]["0"]["kernel"].shape == (1, 1, 32, 16)
    y, new = jax.jit(lambda v, a: block.apply(v, a, train=True, mutable=["batch_stats"]))(variables, x)
    assert y.shape == (2, 8, 8, 16) and bool(jnp.all(y >= 0))
    for bn in ("bn1", "bn2"):
        assert float(jnp.abs(new["batch_stats"][bn]["mean"]).max()) > 0
    assert float(jnp.abs(new["batch_stats"]["shortcut"]["1"]["mean"]).max()) > 0


def test_rcu_identity_shortcut_when_channels_match():
    """As in the reference, the 1x1 conv + BN shortcut exists only when the channel count changes."""
    x = jnp.zeros((1, 4, 4, 16))
    abstract = jax.eval_shape(ResCBAM(16).init, jax.random.key(0), x)
    assert "shortcut" not in abstract["params"]


def test_rcu_bad_input():
    with pytest.raises(ValueError, match="ResCBAM: expected x of shape"):
        ResCBAM(16).init(jax.random.key(0), jnp.zeros((8, 8, 32)))
