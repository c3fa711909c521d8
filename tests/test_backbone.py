"""Per-frame backbone (CSPDarknet-S + top-down PAFPN, P3) and its BatchNorm semantics."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from beltcrack_jax.convert import flatten, map_state_dict, unflatten
from beltcrack_jax.models.backbone import YOLOPAFPN, upsample2x
from beltcrack_jax.models.layers import BaseConv

TOL = 2e-4


def fake_variables(abstract, seed=0):
    """Deterministic, well-scaled variables for a tree of ShapeDtypeStructs (no jit-compiled random init)."""
    rng = np.random.default_rng(seed)
    out = {}
    for path, s in flatten(abstract).items():
        leaf = path[-1]
        if leaf == "kernel":
            v = rng.normal(size=s.shape) / math.sqrt(max(1, math.prod(s.shape[:-1])))
        elif leaf == "scale":
            v = 1 + 0.1 * rng.normal(size=s.shape)
        elif leaf == "var":
            v = rng.uniform(0.5, 1.5, size=s.shape)
        else:
            v = 0.1 * rng.normal(size=s.shape)
        out[path] = v.astype(np.float32)
    return unflatten(out)


def rel_err(a, ref):
    return float(np.abs(np.asarray(a) - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def state_dict(golden):
    f = golden("reference_state_dict")
    return {k: f[k] for k in f.files if k.startswith(("backbone.", "neck.conv_cur."))}


def golden_backbone(state_dict, x):
    model = YOLOPAFPN()
    variables, consumed = map_state_dict(jax.eval_shape(model.init, jax.random.key(0), x), state_dict,
                                         prefix="backbone.")
    return model, variables, consumed


def test_backbone_rect_golden(golden, state_dict):
    """A 64x96 frame (non-square) through the backbone with the golden weights."""
    x = golden("modules_io")["backbone_rect/in/x"].transpose(0, 2, 3, 1)
    ref = golden("modules_io")["backbone_rect/out/y"].transpose(0, 2, 3, 1)
    model, variables, consumed = golden_backbone(state_dict, x)
    # every backbone parameter and running statistic of the reference is used, nothing else
    expected = {k for k in state_dict if k.startswith("backbone.") and not k.endswith("num_batches_tracked")}
    assert consumed == expected
    y = jax.jit(model.apply)(variables, x)
    assert y.shape == (1, 8, 12, 128)
    assert rel_err(y, ref) <= TOL


def test_backbone_stage_of_full_golden(golden, state_dict):
    """The 5 golden frames (256x256) folded into the batch give the captured per-frame backbone features."""
    clip = golden("reference_io")["input_BCTHW"].transpose(0, 2, 3, 4, 1)[0]          # (T, H, W, 3)
    ref = golden("modules_io")["full_intermediates/backbone_feats_BTCHW"][0].transpose(0, 2, 3, 1)
    model, variables, _ = golden_backbone(state_dict, clip)
    y = jax.jit(model.apply)(variables, clip)
    assert rel_err(y, ref) <= TOL


def test_baseconv_train_golden(golden, state_dict):
    """Train-mode BaseConv (`neck.conv_cur` copy, batch 2): biased-variance normalisation, momentum 0.03 update of
    the running mean and unbiased running variance."""
    case = golden("modules_io")
    x = case["baseconv_train/in/x"].transpose(0, 2, 3, 1)
    module = BaseConv(128, 3)
    variables, _ = map_state_dict(jax.eval_shape(module.init, jax.random.key(0), x), state_dict,
                                  prefix="neck.conv_cur.")
    y, updated = module.apply(variables, x, train=True, mutable=["batch_stats"])
    assert rel_err(y, case["baseconv_train/out/y"].transpose(0, 2, 3, 1)) <= TOL
    after = "baseconv_train/out/state_after/neck.conv_cur.bn."
    for leaf, name in (("mean", "running_mean"), ("var", "running_var")):
        ref = case[after + name]
        assert not np.allclose(variables["batch_stats"]["bn"][leaf], ref, atol=1e-4)   # the step moved it
        np.testing.assert_allclose(updated["batch_stats"]["bn"][leaf], ref, rtol=1e-5, atol=1e-6)


def _train_apply(model, variables, frames):
    return jax.jit(lambda v, f: model.apply(v, f, train=True, mutable=["batch_stats"]))(variables, frames)


def test_per_frame_bn_stats_equal_separate_calls():
    """frame_groups=T on the b-major (B*T) batch == T sequential single-frame backbone calls (per-frame statistics
    in every BatchNorm, T running-stat updates in frame order), as the reference's per-frame calls do."""
    b, t, size = 2, 3, 64
    x = np.random.default_rng(1).normal(size=(b, t, size, size, 3)).astype(np.float32)
    x[:, 1] = 2.0 * x[:, 1] + 0.5           # frames with clearly different statistics
    grouped, single = YOLOPAFPN(width=0.125, frame_groups=t), YOLOPAFPN(width=0.125)
    variables = fake_variables(jax.eval_shape(single.init, jax.random.key(0), x[:, 0]))

    y_g, upd_g = _train_apply(grouped, variables, x.reshape(b * t, size, size, 3))
    v, ys = variables, []
    for i in range(t):
        y_i, upd = _train_apply(single, v, x[:, i])
        ys.append(y_i)
        v = {"params": variables["params"], "batch_stats": upd["batch_stats"]}
    y_seq = np.stack(ys, 1).reshape(y_g.shape)

    np.testing.assert_allclose(y_g, y_seq, atol=2e-4 * np.abs(y_seq).max())
    stats_g, stats_seq, stats_0 = (flatten(s) for s in (upd_g["batch_stats"], v["batch_stats"],
                                                         variables["batch_stats"]))
    assert len(stats_g) == 2 * 47       # mean and var of all 47 backbone BatchNorms
    for k in stats_seq:
        assert np.abs(stats_seq[k] - stats_0[k]).max() > 0, k
        np.testing.assert_allclose(stats_g[k], stats_seq[k], rtol=1e-4, atol=1e-5, err_msg=str(k))


def test_per_frame_bn_differs_from_folding():
    """Folding T into the batch with one set of statistics (frame_groups=1) is a different computation."""
    b, t = 2, 5
    x = np.random.default_rng(2).normal(size=(b, t, 6, 6, 8)).astype(np.float32)
    x *= np.linspace(0.5, 3.0, t)[None, :, None, None, None]      # per-frame scale
    folded, grouped = BaseConv(8, 3), BaseConv(8, 3, frame_groups=t)
    variables = fake_variables(jax.eval_shape(folded.init, jax.random.key(0), x[:, 0]))
    flat = x.reshape(b * t, 6, 6, 8)
    y_f, upd_f = folded.apply(variables, flat, train=True, mutable=["batch_stats"])
    y_g, upd_g = grouped.apply(variables, flat, train=True, mutable=["batch_stats"])
    v = variables
    for i in range(t):
        _, upd = folded.apply(v, x[:, i], train=True, mutable=["batch_stats"])
        v = {"params": variables["params"], "batch_stats": upd["batch_stats"]}
    for leaf in ("mean", "var"):
        seq, g, f = (s["batch_stats"]["bn"][leaf] for s in (v, upd_g, upd_f))
        np.testing.assert_allclose(g, seq, rtol=1e-5, atol=1e-6)
        assert np.abs(f - seq).max() > 1e-2
    assert np.abs(np.asarray(y_f) - np.asarray(y_g)).max() > 1e-2


def test_backbone_shapes_width_and_bad_input():
    model = YOLOPAFPN(width=0.25)
    out = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), jnp.zeros((2, 64, 96, 3)))[0])
    assert out.shape == (2, 8, 12, 32) and model.out_channels == 32
    for shape in [(2, 48, 64, 3), (2, 64, 64, 4), (64, 64, 3)]:
        with pytest.raises(ValueError, match="YOLOPAFPN"):
            jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape))


def test_upsample_nearest():
    x = jnp.arange(6.0).reshape(1, 2, 3, 1)
    np.testing.assert_array_equal(upsample2x(x)[0, :, :, 0],
                                  np.repeat(np.repeat(np.arange(6.0).reshape(2, 3), 2, 0), 2, 1))
