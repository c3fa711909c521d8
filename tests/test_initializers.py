"""Initialisation schemes (`models.initializers.apply_init`): the reference run's init, YOLOX's, the prior bias."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from beltcrack_jax.models.atm import ATM
from beltcrack_jax.models.head import YOLOXHead
from beltcrack_jax.models.initializers import apply_init, is_batchnorm1d, torch_fan_in
from beltcrack_jax.models.layers import BaseConv
from beltcrack_jax.models.swin3d import SwinBlock3D

C = 16


class Net(nn.Module):
    """One of each leaf kind, under the model's own names: BaseConv (conv + BN2d), the ATM branch (convs with
    bias, 4x4 stride-2 convs, ConvTranspose, GAL's Linear + BN1d), a Swin block (Dense, LayerNorm) and the head."""

    @nn.compact
    def __call__(self, clips, train=False):
        b, t, h, w, _ = clips.shape
        f = BaseConv(C, 3, 2, name="stem")(clips.reshape(b * t, h, w, 3), train).reshape(b, t, h // 2, w // 2, C)
        x = ATM(C, name="atm")(f, train)
        x = x + SwinBlock3D(C, num_slices=2, name="swin")(jnp.concatenate([x, f[:, -1]], -1))[..., :C]
        return YOLOXHead(1, width=0.125, name="head")(x, train)


@pytest.fixture(scope="module")
def variables():
    v = jax.jit(lambda k: Net().init(k, jnp.zeros((2, 5, 32, 32, 3))))(jax.random.key(0))
    return {"params": v["params"], "batch_stats": v["batch_stats"]}


def leaves(tree):
    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(dict(tree)).items()}


def test_fan_in_as_torch_computes_it():
    assert torch_fan_in("kernel", (3, 3, 16, 32)) == 144          # Conv2d (out, in, kh, kw) -> in*kh*kw
    assert torch_fan_in("kernel", (5, 5, 1, 64)) == 25            # depthwise: in/groups = 1
    assert torch_fan_in("weight", (64, 32, 2, 2)) == 128          # ConvTranspose2d (in, out, kh, kw) -> out*kh*kw
    assert torch_fan_in("kernel", (32, 8)) == 32                  # Linear (in, out) in Flax layout
    assert torch_fan_in("bias", (8,)) is None and torch_fan_in("scale", (8,)) is None
    assert is_batchnorm1d(("neck", "atm", "gal", "vertex_update_func", "1"))
    assert not is_batchnorm1d(("neck", "atm", "gal", "final_aggregation_layer", "1"))


def test_reference_scheme(variables):
    out = apply_init(variables, "reference", jax.random.key(1))
    before, after = leaves(variables["params"]), leaves(out["params"])
    assert before.keys() == after.keys()
    stats_before, stats_after = leaves(variables["batch_stats"]), leaves(out["batch_stats"])
    for k in stats_before:                                       # running statistics untouched
        np.testing.assert_array_equal(stats_before[k], stats_after[k])
    checked = set()
    for k, v in after.items():
        module, leaf = k.rsplit("/", 1)
        if leaf in ("kernel", "weight") and v.ndim == 4:         # conv / ConvTranspose weights kept: N(0, 0.02)
            np.testing.assert_array_equal(v, before[k])
            checked.add("conv weight")
        elif leaf == "bias" and (module + "/kernel" in after or module + "/weight" in after):
            w = after.get(module + "/kernel", after.get(module + "/weight"))
            name = "kernel" if module + "/kernel" in after else "weight"
            bound = 1 / math.sqrt(torch_fan_in(name, w.shape))
            assert np.all(np.abs(v) <= bound) and np.abs(v).max() > 0.5 * bound, k   # PyTorch default U(+-bound)
            checked.add("dense bias" if w.ndim == 2 else "conv bias")
        elif leaf == "scale" and module + "/bias" in after and module in {m.rsplit("/", 1)[0] for m in stats_after}:
            if "gal" in module and module.rsplit("/", 1)[0].endswith("_func"):
                np.testing.assert_array_equal(v, 1.0)            # BatchNorm1d: 1 / 0
                checked.add("bn1d")
            else:                                                # BatchNorm2d: N(1, 0.02)
                assert 0 < np.abs(v - 1).max() < 0.1 and after[module + "/bias"].max() == 0, k
                checked.add("bn2d")
        elif leaf == "scale":                                    # LayerNorm
            np.testing.assert_array_equal(v, 1.0)
            checked.add("layernorm")
    assert checked == {"conv weight", "conv bias", "dense bias", "bn1d", "bn2d", "layernorm"}
    # deterministic in the key, different for another key
    again = leaves(apply_init(variables, "reference", jax.random.key(1))["params"])
    other = leaves(apply_init(variables, "reference", jax.random.key(2))["params"])
    key = "atm/tar/feat_fusion/bias"
    np.testing.assert_array_equal(again[key], after[key])
    assert not np.array_equal(other[key], after[key])


def test_yolox_scheme_and_prior(variables):
    out = leaves(apply_init(variables, "yolox", jax.random.key(1), prior_prob=0.01)["params"])
    ref = leaves(apply_init(variables, "reference", jax.random.key(1))["params"])
    for k, v in out.items():
        module, leaf = k.rsplit("/", 1)
        if leaf in ("kernel", "weight") and v.ndim == 4:         # U(+-1/sqrt(fan_in)): std = bound / sqrt(3)
            bound = 1 / math.sqrt(torch_fan_in(leaf, v.shape))
            assert np.abs(v).max() <= bound
            if v.size >= 500:
                assert v.std() == pytest.approx(bound / math.sqrt(3), rel=0.15), k
        elif leaf == "kernel" and v.ndim == 2:                   # Linear weights: the modules' own init, as reference
            np.testing.assert_array_equal(v, ref[k])
        elif leaf == "scale":
            np.testing.assert_array_equal(v, 1.0)
    prior = -math.log(0.99 / 0.01)
    np.testing.assert_allclose(out["head/obj_preds/0/bias"], prior, rtol=1e-6)
    np.testing.assert_allclose(out["head/cls_preds/0/bias"], prior, rtol=1e-6)
    assert np.abs(out["head/reg_preds/0/bias"]).max() < 1                      # not a prior
    # the TARFusion hourglass keeps its scale with the fan-in init (it vanishes with N(0, 0.02) at width 1/8)
    x = jax.random.normal(jax.random.key(3), (2, 5, 16, 16, C))
    tar = lambda p: ATM(C).apply({"params": p["params"]["atm"], "batch_stats": p["batch_stats"]["atm"]}, x,  # noqa
                                 train=True, mutable=["batch_stats", "intermediates"])[1]["intermediates"]
    std = {s: float(jnp.std(tar(apply_init(variables, s, jax.random.key(1)))["neck.tar"][0])) for s in ("reference",
                                                                                                  "yolox")}
    assert std["reference"] < 0.2 < std["yolox"], std


def test_bad_scheme_is_refused(variables):
    with pytest.raises(ValueError, match="model.init must be one of"):
        apply_init(variables, "xavier", jax.random.key(0))
    with pytest.raises(ValueError, match="prior_prob"):
        apply_init(variables, "yolox", jax.random.key(0), prior_prob=1.5)
