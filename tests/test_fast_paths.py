"""Speed paths against the parity path (tiny config, 64 px): fast_ops, BatchNorm folding, bf16, remat.

Stated tolerances (max|delta| / max|reference|): fast_ops 1e-5 (float rounding only), folded BN 1e-5,
remat gradients 2e-5 per leaf, bf16 forward 5e-2 of the float32 output (3.7e-2 measured here).
"""

import numpy as np
import pytest

import jax
import jax.numpy as jnp
import flax.linen as nn

from beltcrack_jax.convert import load_config_file
from beltcrack_jax.models import build_model
from beltcrack_jax.models.backbone import max_pool_same, spp_pools
from beltcrack_jax.models.inference import fold_batchnorm, folded_batchnorm, is_folded
from beltcrack_jax.models.layers import depthwise_taps
from beltcrack_jax.models.swin3d import gelu_erf
from beltcrack_jax.models.wfm import WFM

SIZE = 64


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


@pytest.fixture(scope="module")
def tiny():
    """Tiny model, variables that are not degenerate (variance-preserving kernels, non-trivial BN statistics and
    shifts, non-zero NAB gamma), a 2-clip input."""
    cfg = load_config_file("configs/tiny.py")
    model = build_model(cfg)
    x = jax.ShapeDtypeStruct((2, model.num_frames, SIZE, SIZE, 3), jnp.float32)
    abstract = jax.eval_shape(model.init, jax.random.key(0), x)
    rng = np.random.default_rng(0)

    def fill(path, leaf):
        name = str(getattr(path[-1], "key", path[-1]))
        shape = leaf.shape
        if name == "kernel":
            v = rng.standard_normal(shape) / np.sqrt(max(1, int(np.prod(shape[:-1]))))
        elif name in ("scale", "var"):
            v = rng.uniform(0.5, 1.5, shape)
        elif name == "bias":
            v = rng.uniform(0.0, 0.2, shape)
        elif name == "mean":
            v = rng.normal(0.0, 0.1, shape)
        elif name == "gamma":
            v = np.full(shape, 0.5)
        else:
            v = 0.02 * rng.standard_normal(shape)
        return jnp.asarray(v, leaf.dtype)

    variables = jax.tree_util.tree_map_with_path(fill, dict(abstract))
    clips = jnp.asarray(np.random.default_rng(1).standard_normal(x.shape), jnp.float32)
    return model, variables, clips


@pytest.fixture(scope="module")
def tiny_ref(tiny):
    model, variables, clips = tiny
    return jax.jit(lambda v, c: model.clone(fast_ops=False).apply(v, c))(variables, clips)


# ------------------------------------------------------------------------------------------------ exact rewrites


@pytest.mark.parametrize("k,c", [(5, 8), (3, 3)])
def test_depthwise_taps_equal_grouped_conv(k, c):
    rng = np.random.default_rng(k)
    x = jnp.asarray(rng.standard_normal((2, 9, 7, c)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((k, k, 1, c)), jnp.float32)
    p = (k - 1) // 2
    ref = jax.lax.conv_general_dilated(x, w, (1, 1), ((p, p), (p, p)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                       feature_group_count=c, precision="highest")
    out = depthwise_taps(x, w, p)
    assert out.shape == ref.shape
    assert _rel(out, ref) < 1e-6
    with pytest.raises(ValueError, match="kernel"):
        depthwise_taps(x, w[..., :1], p)


def test_spp_pools_equal_flax_max_pool():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 8, 6, 3)), jnp.float32)
    for ks in [(5, 9, 13), (3, 7), (5, 8)]:   # cascade, cascade, 8 not odd-stepped -> direct
        got = spp_pools(x, ks)
        for k, g in zip(ks, got):
            if k % 2 == 0:
                continue
            ref = nn.max_pool(x, (k, k), strides=(1, 1), padding=((k // 2, k // 2),) * 2)
            np.testing.assert_array_equal(np.asarray(g), np.asarray(ref))
    np.testing.assert_array_equal(max_pool_same(x, 1), x)


def test_gelu_erf_equals_exact_gelu():
    x = jnp.linspace(-8.0, 8.0, 4001, dtype=jnp.float32)
    np.testing.assert_allclose(gelu_erf(x), nn.gelu(x, approximate=False), rtol=0, atol=2e-6)


def test_fast_wfm_keeps_frames_folded():
    """fast_ops WFM: the depthwise convs become taps; still no per-frame loop (same program for every T)."""
    counts = []
    for t in (2, 5):
        module = WFM(channels=16, fast_ops=True)
        feats = jax.ShapeDtypeStruct((2, t, 12, 10, 16), jnp.float32)
        f_t = jax.ShapeDtypeStruct((2, 12, 10, 16), jnp.float32)
        v = jax.eval_shape(module.init, jax.random.key(1), feats, f_t)
        jaxpr = str(jax.make_jaxpr(lambda v, a, b: module.apply(v, a, b))(v, feats, f_t))
        counts.append((jaxpr.count("conv_general_dilated"), jaxpr.count(" pad[")))
    assert counts[0] == counts[1]
    assert counts[0][0] == 5          # 3 conv_fre_new + 2 conv_t; WTConv has no convolution left


def test_fast_ops_forward_matches_plain(tiny, tiny_ref):
    model, variables, clips = tiny
    assert model.fast_ops  # the config default
    out, state = jax.jit(lambda v, c: model.apply(v, c, mutable=["intermediates"]))(variables, clips)
    assert float(jnp.abs(tiny_ref).max()) > 1e-2 and float(jnp.std(tiny_ref)) > 1e-3   # not a degenerate net
    assert _rel(out, tiny_ref) < 1e-5
    _, plain_state = jax.jit(lambda v, c: model.clone(fast_ops=False).apply(v, c, mutable=["intermediates"]))(
        variables, clips)
    for (path, a), (_, b) in zip(jax.tree_util.tree_leaves_with_path(state),
                                 jax.tree_util.tree_leaves_with_path(plain_state)):
        assert _rel(a, b) < 1e-5, jax.tree_util.keystr(path)


def _per_frame_pair(tiny):
    """The ATM-only ablation (cheap to compile; it still feeds all T frames through the backbone) with and
    without backbone_per_frame, and random variables for it."""
    model, _, clips = tiny
    small = model.clone(hsm=False, wfm=False, rcu=1)
    rng = np.random.default_rng(3)
    variables = jax.tree.map(lambda a: jnp.asarray(rng.uniform(0.5, 1.0, a.shape) if a.ndim == 1 else
                                                   rng.standard_normal(a.shape) / np.sqrt(np.prod(a.shape[:-1])),
                                                   a.dtype), jax.eval_shape(small.init, jax.random.key(0), clips))
    return small.clone(backbone_per_frame=True), small.clone(backbone_per_frame=False), variables, clips


def test_backbone_per_frame_equals_one_call(tiny):
    """backbone_per_frame (auto on CPU): T backbone calls give the one-call eval output, and in training the
    same output and running statistics (updated once per frame, in frame order), to float rounding (train-mode
    BN over 2 clips at 64 px amplifies the different reduction order to ~2e-5 of the output)."""
    split, joint, variables, clips = _per_frame_pair(tiny)
    ev = [jax.jit(m.apply)(variables, clips) for m in (split, joint)]
    assert _rel(ev[0], ev[1]) < 1e-6
    tr = [jax.jit(lambda v, c, m=m: m.apply(v, c, train=True, mutable=["batch_stats"]))(variables, clips)
          for m in (split, joint)]
    (o0, s0), (o1, s1) = tr
    assert _rel(o0, o1) < 1e-4
    for a, b, before in zip(jax.tree.leaves(s0), jax.tree.leaves(s1), jax.tree.leaves(variables["batch_stats"])):
        assert _rel(a, b) < 1e-4 and not np.allclose(a, before)


@pytest.mark.slow
def test_backbone_per_frame_gradients_equal_one_call(tiny):
    split, joint, variables, clips = _per_frame_pair(tiny)

    def train_loss(m, params):
        out, _ = m.apply({**variables, "params": params}, clips, train=True, mutable=["batch_stats"])
        return jnp.sum(out * jnp.cos(out))

    g0, g1 = (jax.jit(jax.grad(train_loss, argnums=1), static_argnums=0)(m, variables["params"])
              for m in (split, joint))
    # relative to each leaf's scale, floored at 1e-4 of the largest gradient: biases in front of a train-mode
    # BN have a zero gradient in exact arithmetic (rounding noise here)
    floor = 1e-4 * max(float(jnp.abs(b).max()) for b in jax.tree.leaves(g1))
    errs = {jax.tree_util.keystr(p): float(jnp.abs(a - b).max()) / max(float(jnp.abs(b).max()), floor)
            for (p, a), b in zip(jax.tree_util.tree_leaves_with_path(g0), jax.tree.leaves(g1))}
    assert max(errs.values()) < 1e-3, sorted(errs.items(), key=lambda kv: -kv[1])[:3]


def test_cpu_schedule_switches_resolve_by_backend():
    from beltcrack_jax.models import build_model, resolve_backbone_per_frame
    assert resolve_backbone_per_frame(-1, backend="cpu") and not resolve_backbone_per_frame(-1, backend="gpu")
    assert resolve_backbone_per_frame(1, backend="gpu") and not resolve_backbone_per_frame(0, backend="cpu")
    with pytest.raises(ValueError, match="backbone_per_frame"):
        resolve_backbone_per_frame(2)
    cfg = load_config_file("configs/tiny.py")
    assert build_model(cfg).backbone_per_frame   # this machine is a CPU


# ------------------------------------------------------------------------------------------------ BN folding


def test_fold_batchnorm_equals_unfolded(tiny, tiny_ref):
    model, variables, clips = tiny
    folded = fold_batchnorm(variables)
    assert is_folded(folded) and not is_folded(variables)
    assert "batch_stats" not in folded
    n_before = sum(x.size for x in jax.tree.leaves(variables))
    n_after = sum(x.size for x in jax.tree.leaves(folded))
    assert n_after < n_before
    out = jax.jit(lambda v, c: model.clone(fold_bn=True).apply(v, c))(folded, clips)
    assert _rel(out, tiny_ref) < 1e-5
    # a wrongly folded epsilon (1e-5 instead of 1e-3 for BaseConv) would be visible at this tolerance
    with folded_batchnorm():
        out2 = jax.jit(lambda v, c: model.apply(v, c))(folded, clips)
    assert _rel(out2, tiny_ref) < 1e-5


def test_fold_bn_model_refuses_training_and_init(tiny):
    model, variables, clips = tiny
    folded = fold_batchnorm(variables)
    with pytest.raises(ValueError, match="inference"):
        model.clone(fold_bn=True).apply(folded, clips, train=True, mutable=["batch_stats"])
    with pytest.raises(ValueError, match="fold_batchnorm"):
        model.clone(fold_bn=True).init(jax.random.key(0), clips)
    with pytest.raises(ValueError, match="params"):
        fold_batchnorm({"batch_stats": {}})


def test_fold_batchnorm_rejects_orphan_statistics():
    v = {"params": {"bn": {"scale": jnp.ones(3), "bias": jnp.zeros(3)}},
         "batch_stats": {"bn": {"mean": jnp.zeros(3), "var": jnp.ones(3)}}}
    with pytest.raises(ValueError, match="producer"):
        fold_batchnorm(v)


# ------------------------------------------------------------------------------------------------ bf16


def test_bfloat16_forward_within_tolerance(tiny, tiny_ref):
    model, variables, clips = tiny
    out = jax.jit(lambda v, c: model.clone(compute_dtype="bfloat16").apply(v, c))(variables, clips)
    assert out.dtype == jnp.float32
    err = _rel(out, tiny_ref)
    assert 0 < err < 5e-2, err   # bf16 has 8 mantissa bits: different, but close


def test_invalid_switch_values_raise(tiny):
    model, variables, clips = tiny
    with pytest.raises(ValueError, match="compute_dtype"):
        model.clone(compute_dtype="float16").apply(variables, clips)
    with pytest.raises(ValueError, match="remat"):
        model.clone(remat="all").apply(variables, clips)
    with pytest.raises(ValueError, match="inference"):
        model.clone(compute_dtype="bfloat16").apply(variables, clips, train=True, mutable=["batch_stats"])


# ------------------------------------------------------------------------------------------------ remat


def _check_remat(model, variables, clips, policies=("modules", "dots")):
    def grads(m):
        def loss(p):
            out, new = m.apply({"params": p, "batch_stats": variables["batch_stats"]}, clips, train=True,
                               mutable=["batch_stats"])
            return jnp.mean(out ** 2), new["batch_stats"]
        return jax.jit(jax.grad(loss, has_aux=True))(variables["params"])

    g0, s0 = grads(model)
    for policy in policies:
        g1, s1 = grads(model.clone(remat=policy))
        assert jax.tree.structure(g0) == jax.tree.structure(g1)
        for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g0), jax.tree.leaves(g1)):
            if float(jnp.abs(a).max()) > 0:
                assert _rel(b, a) < 2e-5, (policy, jax.tree_util.keystr(path))
        for a, b in zip(jax.tree.leaves(s0), jax.tree.leaves(s1)):
            assert _rel(b, a) < 1e-5


def test_remat_gradients_equal_plain_ablated(tiny):
    """Cheap version (backbone + ATM + one RCU + head): every remat wrapper path of detector and neck."""
    model, _, clips = tiny
    small = model.clone(hsm=False, wfm=False, rcu=1)
    abstract = jax.eval_shape(small.init, jax.random.key(0), clips)
    rng = np.random.default_rng(2)
    variables = jax.tree.map(lambda a: jnp.asarray(rng.uniform(0.5, 1.0, a.shape) if a.ndim == 1 else
                                                   rng.standard_normal(a.shape) / np.sqrt(np.prod(a.shape[:-1])),
                                                   a.dtype), abstract)
    _check_remat(small, variables, clips, policies=("dots",))


@pytest.mark.slow
def test_remat_gradients_equal_plain_full(tiny):
    _check_remat(*tiny)
