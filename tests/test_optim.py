"""Optimiser: parameter groups, PyTorch SGD-Nesterov with weight decay, lr rule and schedules.

Goldens: `optim_io.npz` (3 SGD steps on a stand-in module with one member of every group kind) and
`modules_io.npz:schedule/*`.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from beltcrack_jax.convert import flatten, torch_key, unflatten
from beltcrack_jax.models.layers import BaseConv, BatchNorm
from beltcrack_jax.train import optim


class GalLike(nn.Module):
    @nn.compact
    def __call__(self, y, train=False):
        y = nn.Dense(16, name="0")(y)
        return BatchNorm(momentum=0.1, epsilon=1e-5, name="1")(y, train)


class StandIn(nn.Module):
    """Flax twin of the optim_io stand-in: y = mean_HW(conv(x)); z = LN(ReLU(BN1d(Linear(y))));
    out = fc(z) + gamma·Σz."""

    @nn.compact
    def __call__(self, x, train=False):
        y = BaseConv(16, 3, name="conv")(x, train).mean(axis=(1, 2))
        z = nn.LayerNorm(epsilon=1e-5, name="norm")(nn.relu(GalLike(name="gal_like")(y, train)))
        gamma = self.param("gamma", nn.initializers.zeros, (1,))
        return nn.Dense(4, name="fc")(z) + gamma * z.sum(-1, keepdims=True)


STANDIN_BN1D = (r"^gal_like\.1$",)


def to_flax(collection, tree_like, named: dict, dtype):
    """Tree shaped like `tree_like` filled from a {torch name: array} dict (OIHW -> HWIO, (out,in) -> (in,out))."""
    out = {}
    for path, leaf in flatten(tree_like).items():
        out[path] = _conv_like(path, named[torch_key(collection, path)], dtype).reshape(np.shape(leaf))
    return unflatten(out)


def init_variables(z, prec):
    dtype = np.float64 if prec == "f64" else np.float32
    init = named(z, f"{prec}/init/model/")
    abstract = jax.eval_shape(StandIn().init, jax.random.key(0), jnp.zeros((4, 6, 6, 8)))
    return {c: to_flax(c, abstract[c], init, dtype) for c in ("params", "batch_stats")}


def named(z, prefix):
    return {k[len(prefix):]: z[k] for k in z.files if k.startswith(prefix)}


def test_param_groups_match_reference(golden):
    z = golden("optim_io")
    variables = init_variables(z, "f32")
    labels = optim.param_labels(variables["params"], variables["batch_stats"], bn1d_patterns=STANDIN_BN1D)
    got = {torch_key("params", p): g for p, g in flatten(labels).items()}
    want = {n: ("frozen" if g == "none" else g) for n, g in zip(z["param_names"], z["param_groups"])}
    assert got == want
    # The reference's hyper-parameters per group.
    np.testing.assert_array_equal(z["group_hyper/weight_decay"], [0.0, 5e-4, 0.0])
    np.testing.assert_array_equal(z["group_hyper/momentum"], [0.937] * 3)
    # train_frozen: gamma becomes trainable (no decay).
    labels_t = optim.param_labels(variables["params"], variables["batch_stats"], bn1d_patterns=STANDIN_BN1D,
                                  train_frozen=True)
    assert labels_t["gamma"] == "pg2"


def test_groups_on_real_names():
    """Names of the real model: BN2d without 'bn' in its name -> pg0; GAL BN1d -> pg1; frozen leaves."""
    params = {"neck": {
        "resblock0": {"shortcut": {"1": {"scale": 0, "bias": 0}}, "bn1": {"scale": 0, "bias": 0},
                      "conv1": {"kernel": 0}},
        "atm": {"gal": {"final_aggregation_layer": {"1": {"scale": 0, "bias": 0}},
                        "q_func": {"0": {"kernel": 0, "bias": 0}, "1": {"scale": 0, "bias": 0}}}},
        "hsm": {"nolocal": {"gamma": 0}},
        "wfm": {"swin": {"attn": {"relative_position_bias_table": 0}, "norm1": {"scale": 0, "bias": 0}},
                "conv_dw": {"base_scale": {"weight": 0}}}}}
    stats = {"neck": {"resblock0": {"shortcut": {"1": {"mean": 0, "var": 0}}, "bn1": {"mean": 0, "var": 0}},
                      "atm": {"gal": {"final_aggregation_layer": {"1": {"mean": 0, "var": 0}},
                                      "q_func": {"1": {"mean": 0, "var": 0}}}}}}
    lab = {torch_key("params", p): g for p, g in flatten(optim.param_labels(params, stats)).items()}
    assert lab["neck.resblock0.shortcut.1.weight"] == "pg0"
    assert lab["neck.resblock0.bn1.weight"] == "pg0"
    assert lab["neck.resblock0.conv1.weight"] == "pg1"
    assert lab["neck.gal.final_aggregation_layer.1.weight"] == "pg0"
    assert lab["neck.gal.q_func.1.weight"] == "pg1"        # BatchNorm1d: decayed
    assert lab["neck.gal.q_func.1.bias"] == "pg2"
    assert lab["neck.nolocal.gamma"] == "frozen"
    assert lab["neck.swin.attn.relative_position_bias_table"] == "frozen"
    assert lab["neck.swin.norm1.weight"] == "pg1"          # LayerNorm
    assert lab["neck.conv_dw.base_scale.weight"] == "pg1"  # WTConv scale


def _flax_grads(z, prec, k, params):
    g = named(z, f"{prec}/step{k}/grad/")
    dtype = np.float64 if prec == "f64" else np.float32
    return to_flax("params", params, g, dtype)


@pytest.mark.parametrize("prec", ["f32", "f64"])
def test_sgd_matches_reference(golden, prec):
    z = golden("optim_io")
    ctx = jax.enable_x64(True) if prec == "f64" else _null()
    with ctx:
        dtype = np.float64 if prec == "f64" else np.float32
        init = named(z, f"{prec}/init/model/")
        v0 = init_variables(z, prec)
        params, stats = v0["params"], v0["batch_stats"]
        labels = optim.param_labels(params, stats, bn1d_patterns=STANDIN_BN1D)
        lr = float(z["group_hyper/lr"][0])
        tx = optim.sgd_reference(lr, labels, momentum=0.937, nesterov=True, weight_decay=5e-4)
        opt_state = tx.init(params)
        atol = 1e-12 if prec == "f64" else 1e-7
        for k in (1, 2, 3):
            grads = _flax_grads(z, prec, k, params)
            updates, opt_state = tx.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            want = to_flax("params", params, named(z, f"{prec}/step{k}/model/"), dtype)
            for path, v in flatten(params).items():
                np.testing.assert_allclose(np.asarray(v), flatten(want)[path], rtol=0, atol=atol,
                                           err_msg=f"{prec} step {k} {path}")
                assert np.asarray(v).dtype == dtype
            bufs = optim.momentum_buffers(opt_state)
            want_buf = named(z, f"{prec}/step{k}/momentum_buffer/")
            n_checked = 0
            for g, tree in bufs.items():
                for path, v in flatten(tree).items():
                    if isinstance(v, optax.MaskedNode):
                        continue
                    key = torch_key("params", path)
                    assert labels_at(labels, path) == g
                    w = _conv_like(path, want_buf[key], dtype)
                    np.testing.assert_allclose(np.asarray(v), w, rtol=0, atol=atol, err_msg=f"buf {key}")
                    n_checked += 1
            assert n_checked == 11
        # the frozen gamma never moved
        np.testing.assert_array_equal(np.asarray(params["gamma"]), init["gamma"].astype(dtype))


def test_weight_decay_is_visible_in_f64(golden):
    """Swapping pg0/pg1 (decay on the wrong group) must fail at the f64 tolerance: the test can fail."""
    z = golden("optim_io")
    with jax.enable_x64(True):
        params = init_variables(z, "f64")["params"]
        labels = jax.tree.map(lambda g: "pg0" if g == "pg1" else g,
                              optim.param_labels(params, None, bn1d_patterns=STANDIN_BN1D))
        tx = optim.sgd_reference(6.25e-4, labels)
        st = tx.init(params)
        u, st = tx.update(_flax_grads(z, "f64", 1, params), st, params)
        p1 = optax.apply_updates(params, u)
        want = to_flax("params", params, named(z, "f64/step1/model/"), np.float64)
        err = np.abs(np.asarray(p1["fc"]["kernel"]) - want["fc"]["kernel"]).max()
        assert err > 1e-9


def labels_at(labels, path):
    node = labels
    for p in path:
        node = node[p]
    return node


def _conv_like(path, v, dtype):
    v = np.asarray(v, np.float64)
    if path[-1] == "kernel":
        v = v.transpose(2, 3, 1, 0) if v.ndim == 4 else v.T
    return v.astype(dtype)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def test_forward_standin_matches_reference_loss(golden):
    """The stand-in twin reproduces the reference forward (loss, BN running stats) so the groups/EMA tests
    run on the same module the golden used."""
    z = golden("optim_io")
    variables = init_variables(z, "f32")
    x = z["f32/step1/input_x"].transpose(0, 2, 3, 1)
    t = z["f32/step1/target"]

    def loss_fn(p):
        out, new = StandIn().apply({"params": p, "batch_stats": variables["batch_stats"]}, x, train=True,
                                   mutable=["batch_stats"])
        return 0.02 * jnp.sum((out - t) ** 2), new

    (loss, new), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
    np.testing.assert_allclose(float(loss), float(z["f32/step1/loss"]), rtol=1e-5)
    want = to_flax("params", grads, named(z, "f32/step1/grad/"), np.float32)
    for path, v in flatten(grads).items():
        w = flatten(want)[path]
        np.testing.assert_allclose(np.asarray(v), w, atol=1e-5 * max(1.0, np.abs(w).max()), err_msg=str(path))
    stats_want = to_flax("batch_stats", new["batch_stats"], named(z, "f32/step1/model/"), np.float32)
    for path, v in flatten(new["batch_stats"]).items():
        np.testing.assert_allclose(np.asarray(v), flatten(stats_want)[path], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# schedules
# ---------------------------------------------------------------------------------------------------------

def lr_cfg(**kw):
    c = ml_collections.ConfigDict(dict(base=1e-2, min=1e-4, nominal_batch=64, clamp=True, clamp_max=(5e-4, 5e-2),
                                       clamp_min=(5e-6, 5e-4), scaling="linear", warmup_epochs=3,
                                       warmup_lr_ratio=0.1, no_aug_epochs=5, unit="epoch"))
    c.update(kw)
    return c


def test_schedule_table(golden):
    want = golden("modules_io")["schedule/lr_per_epoch_0_to_99"]
    lr_max, lr_min = optim.lr_bounds(4)
    assert (lr_max, lr_min) == (6.25e-4, 6.25e-6)
    got64 = optim.warm_cos_lr(np.arange(100), lr_max=lr_max, lr_min=lr_min, total=100, warmup=3, no_aug=5)
    np.testing.assert_allclose(got64, want, rtol=1e-15, atol=0)
    # The jitted per-epoch schedule (float32 on device) used by the train loop, 7 steps per epoch.
    logs = []
    sched = optim.make_schedule(lr_cfg(), 4, steps_per_epoch=7, epochs=100, log=logs.append)
    steps = np.arange(700)
    got = np.asarray(jax.jit(jax.vmap(sched))(steps))
    np.testing.assert_allclose(got, want[steps // 7], rtol=2e-6)
    assert "6.25e-04" in logs[0] or "0.000625" in logs[0]


def test_step_schedule_and_scaling_rule():
    sched = optim.make_schedule(lr_cfg(unit="step", clamp=False), 256, steps_per_epoch=10, epochs=20)
    assert sched.lr_max == pytest.approx(0.04) and sched.lr_min == pytest.approx(4e-4)
    lr = np.asarray(jax.vmap(sched)(np.arange(200)))
    assert lr[0] == pytest.approx(0.004, rel=1e-6)
    assert lr[15] == pytest.approx(0.004 + 0.036 * (15 / 30) ** 2, rel=1e-6)  # quadratic warm-up in steps
    assert lr[30] == pytest.approx(0.04, rel=1e-6)
    assert np.all(np.diff(lr[30:150]) <= 1e-9) and np.all(lr[150:] == pytest.approx(4e-4, rel=1e-6))
    # clamp on: batch 256 -> 4e-2 stays inside [5e-4, 5e-2]; batch 1024 -> clamped to 5e-2
    assert optim.lr_bounds(1024)[0] == 5e-2 and optim.lr_bounds(1024, clamp=False)[0] == pytest.approx(0.16)
    assert optim.lr_bounds(64, scaling="sqrt", clamp=False)[0] == pytest.approx(1e-2)
    with pytest.raises(ValueError, match="unit"):
        optim.make_schedule(lr_cfg(unit="iter"), 4, 10, 10)
    with pytest.raises(ValueError, match="scaling"):
        optim.lr_bounds(4, scaling="cubic")


class _ToyDetector(nn.Module):
    """A Dense layer and a never-optimised 'relative_position_bias_table', with a (B, 1, 1, 4) output."""

    @nn.compact
    def __call__(self, x, train=False):
        table = self.param("relative_position_bias_table", nn.initializers.normal(1.0), (3,))
        y = nn.Dense(4, name="fc")(x.reshape(x.shape[0], -1)[:, :12])
        return (y + jnp.sum(table ** 2))[:, None, None, :]


def _toy_setup():
    model = _ToyDetector()
    batch = {"clips": jnp.asarray(np.random.default_rng(0).integers(0, 255, (2, 1, 2, 2, 3)), jnp.uint8),
             "boxes": jnp.zeros((2, 1, 4)), "classes": jnp.zeros((2, 1), jnp.int32), "mask": jnp.ones((2, 1))}
    variables = {**model.init(jax.random.key(0), batch["clips"].astype(jnp.float32)), "batch_stats": {}}
    labels = optim.param_labels(variables["params"])
    tx = optim.sgd_reference(0.1, labels, momentum=0.9, nesterov=True, weight_decay=5e-4)
    return model, batch, variables, labels, tx


def _mean_square_loss(raw, boxes, classes, mask):
    return jnp.mean(raw ** 2) + 0.0 * jnp.sum(boxes), {}


def test_non_finite_step_returns_the_donated_state_unchanged():
    """A NaN in the batch gives finite = 0 and the input state back bit for bit (the step donates its state,
    so this is the only copy the loop still has); the next finite step then moves the parameters."""
    from beltcrack_jax.train.state import create_train_state
    from beltcrack_jax.train.steps import make_train_step

    model, batch, variables, labels, tx = _toy_setup()
    step = jax.jit(make_train_step(model, tx, _mean_square_loss), donate_argnums=0)
    state, m = step(create_train_state(variables, tx), batch)
    assert float(m["finite"]) == 1.0
    before = [np.array(a) for a in jax.tree.leaves(state)]
    kernel = np.array(state.params["fc"]["kernel"])
    bad = {**batch, "boxes": batch["boxes"].at[0, 0, 0].set(jnp.nan)}
    state, m = step(state, bad)
    assert float(m["finite"]) == 0.0 and not np.isfinite(float(m["loss"]))
    for a, b in zip(before, jax.tree.leaves(state)):
        np.testing.assert_array_equal(a, np.asarray(b))
    state, m = step(state, batch)
    assert float(m["finite"]) == 1.0 and int(state.step) == 2
    assert not np.array_equal(kernel, np.asarray(state.params["fc"]["kernel"]))


def test_frozen_leaves_get_no_gradient_and_the_same_step():
    """`make_train_step(frozen=optim.frozen_mask(labels))` skips the gradient of the never-optimised leaves (e.g.
    the Swin bias tables): the new state is identical, and the frozen leaves' gradient leaves the graph."""
    from beltcrack_jax.train.state import create_train_state
    from beltcrack_jax.train.steps import make_train_step

    model, batch, variables, labels, tx = _toy_setup()
    assert labels["relative_position_bias_table"] == "frozen" and labels["fc"]["kernel"] == "pg1"
    loss_fn = _mean_square_loss

    states, metrics = [], []
    for frozen in (None, optim.frozen_mask(labels)):
        step = jax.jit(make_train_step(model, tx, loss_fn, frozen=frozen))
        state, m = step(create_train_state(variables, tx), batch)
        states.append(state)
        metrics.append(m)
    for a, b in zip(jax.tree.leaves(states[0]), jax.tree.leaves(states[1])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    table = np.asarray(variables["params"]["relative_position_bias_table"])
    np.testing.assert_array_equal(np.asarray(states[1].params["relative_position_bias_table"]), table)
    # the full gradient norm includes d/dtable = 2 * table (non-zero); the frozen one does not
    assert float(metrics[1]["grad_norm"]) < float(metrics[0]["grad_norm"])


def _tar_toy_params():
    rng = np.random.default_rng(0)
    return {"neck": {"atm": {"tar": {"feat_fusion": {"kernel": rng.normal(size=(1, 1, 4, 4)).astype(np.float32),
                                                     "bias": rng.normal(size=(4,)).astype(np.float32)}},
                             "gal": {"q_func": {"0": {"kernel": rng.normal(size=(4, 2)).astype(np.float32)}}}},
                     "resblock0": {"conv1": {"kernel": rng.normal(size=(3, 3, 4, 4)).astype(np.float32)}}},
            "head": {"stem": {"conv": {"kernel": rng.normal(size=(1, 1, 4, 4)).astype(np.float32)}}}}


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_lr_scale_tar_scales_only_the_tarfusion_updates(optimizer):
    """`train.lr_scale_tar`: 1 gives the reference optimiser's updates bit for bit; 0.1 multiplies exactly the
    neck.tar.* updates (weight decay included) by 0.1 over several steps and leaves every other leaf's alone."""
    from beltcrack_jax.configs import default
    from beltcrack_jax.train.loop import build_optimizer

    params = jax.tree.map(jnp.asarray, _tar_toy_params())
    labels = optim.param_labels(params)
    tc = default.get_config().train
    tc.optimizer = optimizer
    grads = [jax.tree.map(lambda p, k=k: jnp.sin(p * (k + 1)), params) for k in range(3)]

    def updates(scale):
        tc.lr_scale_tar = scale
        tx = build_optimizer(tc, 0.01, labels, params)
        state, out = tx.init(params), []
        for g in grads:
            u, state = tx.update(g, state, params)
            out.append(flatten(u))
        return out

    plain = (optim.sgd_reference(0.01, labels, momentum=tc.momentum, weight_decay=tc.weight_decay)
             if optimizer == "sgd" else optim.adamw_grouped(0.01, labels, weight_decay=tc.weight_decay))
    state, ref = plain.init(params), []
    for g in grads:
        u, state = plain.update(g, state, params)
        ref.append(flatten(u))
    for got, want in zip(updates(1.0), ref):
        for k in want:
            np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]))
    for got, want in zip(updates(0.1), ref):
        for k in want:
            factor = 0.1 if torch_key("params", k).startswith("neck.tar.") else 1.0
            np.testing.assert_allclose(np.asarray(got[k]), factor * np.asarray(want[k]), rtol=1e-6)
            assert np.abs(np.asarray(want[k])).max() > 0
    tree = flatten(optim.lr_scale_tree(params, {optim.TAR_PREFIX: 0.1}))
    assert sorted(k for k, v in tree.items() if v == 0.1) == [("neck", "atm", "tar", "feat_fusion", "bias"),
                                                              ("neck", "atm", "tar", "feat_fusion", "kernel")]
    tc.lr_scale_tar = 0.0
    with pytest.raises(ValueError, match="lr_scale_tar"):
        build_optimizer(tc, 0.01, labels, params)
