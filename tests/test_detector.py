"""The assembled BeltCrackDet: golden forward, parameter count, ablations (Table 5), input checks, size CLI."""

import math
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from beltcrack_jax.convert import flatten, load_config_file, load_reference_state_dict, unflatten
from beltcrack_jax.models import BeltCrackDet, build_model
from beltcrack_jax.models.__main__ import count_params, main as models_main, matmul_flops_of_jaxpr

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
TINY = 64


def tiny_config(**model_overrides):
    cfg = load_config_file(str(CONFIGS / "tiny.py"))
    cfg.model.update(model_overrides)
    return cfg


def fake_variables(abstract, seed=0):
    """Deterministic, well-scaled variables for a tree of ShapeDtypeStructs (no jit-compiled random init)."""
    rng = np.random.default_rng(seed)
    out = {}
    for path, s in flatten(abstract).items():
        leaf = path[-1]
        if leaf == "kernel":
            v = 1.4 * rng.normal(size=s.shape) / math.sqrt(max(1, math.prod(s.shape[:-1])))   # SiLU gain
        elif leaf == "scale":
            v = 1 + 0.1 * rng.normal(size=s.shape)
        elif leaf == "var":
            v = rng.uniform(0.5, 1.5, size=s.shape)
        else:
            v = 0.1 * rng.normal(size=s.shape)
        out[path] = v.astype(np.float32)
    return unflatten(out)


def tiny_clips(b=2, t=5, seed=0):
    return np.random.default_rng(seed).normal(size=(b, t, TINY, TINY, 3)).astype(np.float32)


# ------------------------------------------------------------------------------------------------- golden

def test_full_forward_golden(golden):
    """The whole network with the golden weights on the golden clip equals the reference's float64 output
    (and the captured stage outputs, so a failure is localised)."""
    variables = load_reference_state_dict(golden("reference_state_dict"))
    model = build_model(load_config_file(str(CONFIGS / "default.py")))
    io = golden("reference_io")
    clips = io["input_BCTHW"].transpose(0, 2, 3, 4, 1)                     # NCTHW -> NTHWC
    out, inter = jax.jit(lambda v, x: model.apply(v, x, mutable=["intermediates"]))(variables, clips)
    inter = {k[-1]: np.asarray(v[0]) for k, v in flatten(inter["intermediates"]).items()}

    stages = golden("modules_io")
    checks = {"backbone_feats": "backbone_feats_BTCHW", "neck.memory": "neck.memory", "neck.tar": "neck.tar",
              "neck.conv_fin_mix": "neck.conv_fin_mix", "neck.resblock0": "neck.resblock0",
              "neck.resblock1": "neck.resblock1", "neck.resblock2": "neck.resblock2"}
    for ours, theirs in checks.items():
        ref = stages["full_intermediates/" + theirs]
        ref = ref.transpose(0, 1, 3, 4, 2) if ref.ndim == 5 else ref.transpose(0, 2, 3, 1)
        err = np.abs(inter[ours] - ref).max() / np.abs(ref).max()
        assert err <= 2e-4, f"{ours}: max|d|/max|ref| = {err:.2e}"

    ref64 = io["raw_output_fp64"].transpose(0, 2, 3, 1)
    assert out.shape == (1, 32, 32, 6)
    assert np.abs(np.asarray(out, np.float64) - ref64).max() <= 2e-4 * np.abs(ref64).max()


# ---------------------------------------------------------------------------------------------- size, config

def test_parameter_count_default_equals_reference_live_modules():
    """54,614,899 = the reference's 57,434,868 trainable parameters minus the never-called conv_fre_mix
    (885,504), conv_fre (1,770,240) and fuse (164,225); BN statistics are not parameters."""
    model = build_model(load_config_file(str(CONFIGS / "default.py")))
    assert count_params(model) == 57_434_868 - 885_504 - 1_770_240 - 164_225 == 54_614_899
    abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 5, 64, 64, 3)))
    part = {k: sum(math.prod(x.shape) for x in jax.tree.leaves(v)) for k, v in abstract["params"].items()}
    assert part["backbone"] == 4_830_144 and part["head"] == 2_396_166        # spec §9


def test_build_model_accepts_full_config_model_section_and_dict():
    cfg = tiny_config(rcu=2, hsm=False)
    for source in (cfg, cfg.model, dict(cfg.model.to_dict())):
        model = build_model(source)
        assert isinstance(model, BeltCrackDet)
        assert (model.width, model.rcu, model.hsm, model.num_frames) == (0.125, 2, False, 5)
    assert build_model({}) == BeltCrackDet()            # missing fields -> reference defaults


@pytest.mark.parametrize("shape, match", [
    ((2, 3, 64, 64, 3), "T=5"),
    ((2, 5, 64, 64), "rank 4"),
    ((2, 5, 64, 64, 1), "3 \\(RGB\\) channels"),
    ((2, 5, 3, 64, 64), "3 \\(RGB\\) channels"),      # NCTHW instead of NTHWC
    ((2, 5, 72, 64, 3), "multiples of 32"),
    ((2, 5, 64, 40, 3), "multiples of 32"),
])
def test_bad_input_shapes_raise(shape, match):
    model = build_model(tiny_config())
    with pytest.raises(ValueError, match=match) as info:
        jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct(shape, jnp.float32))
    assert str(shape) in str(info.value)           # names what was given


# ------------------------------------------------------------------------------------------------- ablations

ABLATIONS = {
    # name: (model overrides, top-level neck children expected; None = no neck at all)
    "wo_all": (dict(hsm=False, atm=False, wfm=False, rcu=0), None),
    "hsm": (dict(hsm=True, atm=False, wfm=False, rcu=0), {"hsm"}),
    "atm": (dict(hsm=False, atm=True, wfm=False, rcu=0), {"atm"}),
    "wfm_without_atm": (dict(hsm=False, atm=False, wfm=True, rcu=0), {"wfm"}),
    "hsm_atm": (dict(hsm=True, atm=True, wfm=False, rcu=0), {"hsm", "atm", "conv_fin_mix"}),
    "branches": (dict(rcu=0), {"hsm", "atm", "conv_fin_mix", "wfm"}),
    "rcu1": (dict(rcu=1), {"hsm", "atm", "conv_fin_mix", "wfm", "resblock0"}),
    "rcu2": (dict(rcu=2), {"hsm", "atm", "conv_fin_mix", "wfm", "resblock0", "resblock1"}),
    "full": (dict(), {"hsm", "atm", "conv_fin_mix", "wfm", "resblock0", "resblock1", "resblock2"}),
}


@pytest.mark.parametrize("name", list(ABLATIONS))
def test_ablation_builds_only_used_modules(name):
    overrides, children = ABLATIONS[name]
    model = build_model(tiny_config(**overrides))
    abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 5, TINY, TINY, 3)))
    params = abstract["params"]
    assert {"backbone", "head"} <= set(params)
    if children is None:
        assert "neck" not in params
    else:
        assert set(params["neck"]) == children


@pytest.mark.parametrize("name", ["wo_all", "wfm_without_atm", "rcu2"])   # "full": train-mode test + golden
def test_ablation_runs_at_tiny_size(name):
    overrides, _ = ABLATIONS[name]
    model = build_model(tiny_config(**overrides))
    clips = tiny_clips()
    variables = fake_variables(jax.eval_shape(model.init, jax.random.key(0), clips))
    fwd = jax.jit(lambda v, x: model.apply(v, x))
    out = np.asarray(fwd(variables, clips))
    assert out.shape == (2, TINY // 8, TINY // 8, 6) and np.isfinite(out).all()
    # perturb the oldest frame of clip 0: clip 1 is untouched (eval mode, clips independent), and clip 0 changes
    # exactly when some neck module looks at the reference frames ("w/o All" = single-frame detector)
    other = clips.copy()
    other[0, 0] += 1.0
    out2 = np.asarray(fwd(variables, other))
    np.testing.assert_allclose(out2[1], out[1], rtol=1e-5, atol=1e-5 * np.abs(out).max())
    changed = np.abs(out2[0] - out[0]).max()
    if name == "wo_all":
        assert changed == 0.0
    else:
        assert changed > 1e-4 * np.abs(out).max()


def test_tiny_train_mode_updates_all_batch_stats():
    model = build_model(tiny_config())
    clips = tiny_clips()
    variables = fake_variables(jax.eval_shape(model.init, jax.random.key(0), clips))
    out, upd = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(variables, clips)
    assert np.isfinite(np.asarray(out)).all()
    before, after = flatten(variables["batch_stats"]), flatten(upd["batch_stats"])
    assert before.keys() == after.keys()
    unchanged = [k for k in before if np.array_equal(before[k], after[k])]
    assert not unchanged, unchanged


# ------------------------------------------------------------------------------------------------- size CLI

def test_matmul_flop_counter():
    """2 FLOPs per multiply-add for convolutions (incl. grouped) and dot_generals, recursing into jits."""
    x = jnp.zeros((2, 10, 12, 8))
    conv = nn.Conv(16, (3, 3), padding=1, feature_group_count=2)
    dense = nn.Dense(5)
    v_c = conv.init(jax.random.key(0), x)
    v_d = dense.init(jax.random.key(0), x)

    def f(a):
        y = jax.jit(lambda a: conv.apply(v_c, a))(a)
        return dense.apply(v_d, y[..., :8]) @ jnp.ones((5, 7))

    jaxpr = jax.make_jaxpr(f)(x).jaxpr
    expected = 2 * (2 * 10 * 12 * 16 * (8 // 2) * 9) + 2 * (2 * 10 * 12 * 8 * 5) + 2 * (2 * 10 * 12 * 5 * 7)
    assert matmul_flops_of_jaxpr(jaxpr) == expected


def test_models_cli_prints_params_and_flops(capsys):
    assert models_main(["--config", str(CONFIGS / "tiny.py"), "--size", str(TINY)]) == 0
    text = capsys.readouterr().out
    n = count_params(build_model(tiny_config()))
    assert f"{n:,} parameters" in text
    assert "conv + matmul FLOPs" in text and "XLA cost analysis" in text


def test_key_skip_starts_as_the_single_frame_detector_and_opens_with_its_gate():
    """`model.key_skip`: at init (gate 0) the output equals the single-frame ("w/o All") detector with the same
    backbone and head; the gate gets a gradient; with the gate open the neck changes the output. Off = no leaf."""
    clips = tiny_clips()
    plain = build_model(tiny_config())
    assert "key_skip" not in jax.eval_shape(plain.init, jax.random.key(0), clips)["params"]["neck"]
    model = build_model(tiny_config(key_skip=True))
    variables = fake_variables(jax.eval_shape(model.init, jax.random.key(0), clips))
    gate = variables["params"]["neck"]["key_skip"]["scale"]
    assert gate.shape == (16,)
    variables["params"]["neck"]["key_skip"]["scale"] = np.zeros_like(gate)    # the module's init
    single = build_model(tiny_config(hsm=False, atm=False, wfm=False, rcu=0))
    sv = {"params": {k: variables["params"][k] for k in ("backbone", "head")},
          "batch_stats": {k: variables["batch_stats"][k] for k in ("backbone", "head")}}
    out = np.asarray(jax.jit(model.apply)(variables, clips))
    np.testing.assert_allclose(out, np.asarray(jax.jit(single.apply)(sv, clips)), rtol=1e-5, atol=1e-6)

    grads = jax.grad(lambda p: jnp.sum(model.apply({**variables, "params": p}, clips) ** 2))(variables["params"])
    assert np.abs(np.asarray(grads["neck"]["key_skip"]["scale"])).max() > 0
    variables["params"]["neck"]["key_skip"]["scale"] = np.ones_like(gate)
    opened = np.asarray(jax.jit(model.apply)(variables, clips))
    assert np.abs(opened - out).max() > 1e-3 * np.abs(out).max()
