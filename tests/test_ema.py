"""EMA exactly as the reference's ModelEMA: decay ramp, parameters AND BN running statistics, resumed counter."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from beltcrack_jax.convert import flatten
from beltcrack_jax.train import ema, optim
from test_optim import STANDIN_BN1D, StandIn, init_variables, named, to_flax


def test_decay_table(golden):
    m = golden("modules_io")
    got = np.asarray(ema.ema_decay(m["schedule/ema_updates"]))
    np.testing.assert_allclose(got, m["schedule/ema_decay"], rtol=1e-6)
    with jax.enable_x64(True):
        got64 = np.asarray(ema.ema_decay(jnp.asarray(m["schedule/ema_updates"])))
        assert got64.dtype == np.float64
        np.testing.assert_allclose(got64, m["schedule/ema_decay"], rtol=1e-12)


def _compare(tree, want, atol, what):
    fw = flatten(want)
    for path, v in flatten(tree).items():
        np.testing.assert_allclose(np.asarray(v), fw[path], rtol=0, atol=atol, err_msg=f"{what} {path}")


def test_ema_tracks_f64_exact(golden):
    """Replay both EMA tracks (fresh A, resumed B with updates preset to 2000) from the stored model states."""
    z = golden("optim_io")
    with jax.enable_x64(True):
        v0 = init_variables(z, "f64")
        tracks = {"emaA": (v0, 0), "emaB": (v0, 2000)}
        for k in (1, 2, 3):
            model = {c: to_flax(c, v0[c], named(z, f"f64/step{k}/model/"), np.float64) for c in v0}
            for name, (e, n) in list(tracks.items()):
                n += 1
                assert n == int(z[f"f64/step{k}/{name}_updates"])
                np.testing.assert_allclose(float(ema.ema_decay(n)), float(z[f"f64/step{k}/{name}_decay"]),
                                           rtol=1e-12)
                e = ema.ema_update(e, model, n)
                want = {c: to_flax(c, v0[c], named(z, f"f64/step{k}/{name}/"), np.float64) for c in v0}
                for c in v0:
                    _compare(e[c], want[c], 1e-12, f"{name} step {k} {c}")
                tracks[name] = (e, n)


def test_ema_tracks_f32_full_chain(golden):
    """f32: our forward (BN stats) + our SGD (stored grads) + our EMA reproduce the reference's emaA/emaB."""
    z = golden("optim_io")
    v0 = init_variables(z, "f32")
    params, stats = v0["params"], v0["batch_stats"]
    labels = optim.param_labels(params, stats, bn1d_patterns=STANDIN_BN1D)
    tx = optim.sgd_reference(6.25e-4, labels)
    opt_state = tx.init(params)
    ema_a, ema_b = v0, v0
    for k in (1, 2, 3):
        x = z[f"f32/step{k}/input_x"].transpose(0, 2, 3, 1)
        _, new = StandIn().apply({"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"])
        stats = new["batch_stats"]
        grads = to_flax("params", params, named(z, f"f32/step{k}/grad/"), np.float32)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        model = {"params": params, "batch_stats": stats}
        ema_a = ema.ema_update(ema_a, model, k)
        ema_b = ema.ema_update(ema_b, model, 2000 + k)
        for name, e in (("emaA", ema_a), ("emaB", ema_b)):
            for c in ("params", "batch_stats"):
                want = to_flax(c, v0[c], named(z, f"f32/step{k}/{name}/"), np.float32)
                fw = flatten(want)
                for path, v in flatten(e[c]).items():
                    tol = 2.4e-7 * max(1.0, np.abs(fw[path]).max()) * (4 if c == "batch_stats" else 1)  # 2 ulp
                    np.testing.assert_allclose(np.asarray(v), fw[path], rtol=0, atol=tol,
                                               err_msg=f"{name} step {k} {c} {path}")


def test_ema_skipping_bn_stats_would_fail(golden):
    """The emaB track distinguishes an EMA that does not average BN statistics (the test can fail)."""
    z = golden("optim_io")
    v0 = init_variables(z, "f32")
    model = {c: to_flax(c, v0[c], named(z, "f32/step1/model/"), np.float32) for c in v0}
    want = to_flax("batch_stats", v0["batch_stats"], named(z, "f32/step1/emaB/"), np.float32)
    wrong = v0["batch_stats"]  # stats left at their initial values
    diff = max(np.abs(np.asarray(a) - b).max() for a, b in zip(jax.tree.leaves(wrong), jax.tree.leaves(want)))
    assert diff > 1e-3
    right = ema.ema_update(v0, model, 2001)["batch_stats"]
    diff = max(np.abs(np.asarray(a) - b).max() for a, b in zip(jax.tree.leaves(right), jax.tree.leaves(want)))
    assert diff < 1e-6


def test_integer_leaves_not_averaged():
    e = {"w": jnp.ones(3), "n": jnp.array(0, jnp.int32)}
    m = {"w": jnp.zeros(3), "n": jnp.array(7, jnp.int32)}
    out = ema.ema_update(e, m, 2000)
    assert int(out["n"]) == 0
    np.testing.assert_allclose(np.asarray(out["w"]), 0.9999 * (1 - np.exp(-1.0)), rtol=1e-6)
    with pytest.raises(Exception):
        ema.ema_update(e, {"w": jnp.zeros(3)}, 1)
