"""Weight import: the reference state dict (strict), COCO YOLOX-S (by name and shape), orbax round trip, CLI."""

import pathlib

import jax
import numpy as np
import pytest

from beltcrack_jax import convert
from beltcrack_jax.convert import (flatten, load_config_file, load_reference_state_dict, load_variables,
                                   load_yolox_s, read_state_dict, unflatten, variables_to_state_dict)
from beltcrack_jax.models import build_model

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def fake_variables(abstract, seed=0):
    rng = np.random.default_rng(seed)
    return unflatten({p: rng.normal(size=s.shape).astype(np.float32) for p, s in flatten(abstract).items()})


@pytest.fixture(scope="module")
def golden_sd(golden):
    return dict(golden("reference_state_dict"))


@pytest.fixture(scope="module")
def tiny():
    """(config, fake variables, reference-format state dict) of the tiny model."""
    cfg = load_config_file(str(CONFIGS / "tiny.py"))
    model = build_model(cfg)
    variables = fake_variables(convert.abstract_variables(model, model.num_frames))
    return cfg, variables, variables_to_state_dict(variables)


# ----------------------------------------------------------------------------------------- reference dict

def test_golden_state_dict_loads(golden_sd):
    v = load_reference_state_dict(golden_sd)
    assert set(v) == {"params", "batch_stats"}
    assert sum(x.size for x in flatten(v["params"]).values()) == 54_614_899
    # layouts: OIHW -> HWIO, Linear (out, in) -> (in, out), BN running stats, grouping modules under the neck
    np.testing.assert_array_equal(v["params"]["backbone"]["backbone"]["stem"]["conv"]["conv"]["kernel"],
                                  golden_sd["backbone.backbone.stem.conv.conv.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(v["batch_stats"]["head"]["stems"]["0"]["bn"]["var"],
                                  golden_sd["head.stems.0.bn.running_var"])
    np.testing.assert_array_equal(v["params"]["neck"]["atm"]["tar"]["feat_fusion"]["kernel"][0, 0],
                                  golden_sd["neck.tar.feat_fusion.weight"][:, :, 0, 0].T)
    assert "conv_fre_mix" not in v["params"]["neck"] and "fuse" not in v["params"]["neck"]
    assert all(x.dtype == np.float32 for x in flatten(v).values())


def test_unknown_missing_and_mismatched_keys_are_all_listed(tiny):
    cfg, _, sd = tiny
    bad = dict(sd)
    del bad["head.cls_preds.0.bias"]
    del bad["neck.resblock2.bn1.running_var"]
    bad["neck.bogus_layer.weight"] = np.zeros(3, np.float32)
    bad["head.reg_preds.0.weight"] = np.zeros((4, 7, 1, 1), np.float32)
    with pytest.raises(ValueError) as info:
        load_reference_state_dict(bad, cfg)
    msg = str(info.value)
    for key in ("head.cls_preds.0.bias", "neck.resblock2.bn1.running_var", "neck.bogus_layer.weight",
                "head.reg_preds.0.weight"):
        assert key in msg, key
    assert "2 missing" in msg and "1 unknown" in msg and "1 shape mismatch" in msg


@pytest.mark.parametrize("case", ["missing", "unknown", "shape"])
def test_each_error_kind_alone(tiny, case):
    cfg, _, sd = tiny
    bad = dict(sd)
    key = "neck.conv_fin_mix.1.conv.weight"
    if case == "missing":
        del bad[key]
    elif case == "unknown":
        key = "neck.conv_fin_mix.7.conv.weight"
        bad[key] = np.zeros((1,), np.float32)
    else:
        bad[key] = bad[key][:, :-1]
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        load_reference_state_dict(bad, cfg)


def test_recognised_extra_keys_are_skipped_and_checked(tiny, golden_sd):
    cfg, variables, sd = tiny
    extra = {k: golden_sd[k] for k in golden_sd
             if k.endswith(("num_batches_tracked", "relative_position_index", "wt_filter", "iwt_filter"))
             or k.startswith(("neck.conv_fre_mix.", "neck.conv_fre.", "neck.fuse."))}
    assert len(extra) > 100
    loaded = load_reference_state_dict({**sd, **extra}, cfg)
    for path, value in flatten(loaded).items():
        np.testing.assert_array_equal(value, flatten(variables)[path])
    # the skipped buffers are verified, not ignored
    idx_key = "neck.swin.tr.1.attn.relative_position_index"
    wrong_idx = extra[idx_key].copy()
    wrong_idx[0, :2] = wrong_idx[0, 1::-1]
    with pytest.raises(ValueError, match=idx_key.replace(".", r"\.")):
        load_reference_state_dict({**sd, **extra, idx_key: wrong_idx}, cfg)
    with pytest.raises(ValueError, match=r"wt_filter.*Haar"):
        load_reference_state_dict({**sd, **extra, "neck.conv_dw.iwt_filter": -extra["neck.conv_dw.iwt_filter"]},
                                  cfg)


def yolox_s_like(golden_sd):
    """A COCO YOLOX-S checkpoint: the same CSPDarknet + top-down FPN, plus the bottom-up PAN path and a
    3-level width-0.5 head with 80 classes, nested under 'model' like YOLOX's own checkpoints."""
    sd = {k: v for k, v in golden_sd.items() if k.startswith("backbone.")}
    rng = np.random.default_rng(0)
    extra_shapes = {
        "backbone.bu_conv2.conv.weight": (128, 128, 3, 3), "backbone.bu_conv2.bn.running_mean": (128,),
        "backbone.C3_n3.conv1.conv.weight": (128, 256, 1, 1), "backbone.C3_n4.conv3.conv.weight": (512, 512, 1, 1),
        "backbone.bu_conv1.conv.weight": (256, 256, 3, 3), "head.stems.0.conv.weight": (128, 128, 1, 1),
        "head.stems.0.bn.weight": (128,), "head.stems.1.conv.weight": (128, 256, 1, 1),
        "head.cls_convs.0.0.conv.weight": (128, 128, 3, 3), "head.cls_preds.0.weight": (80, 128, 1, 1),
        "head.cls_preds.0.bias": (80,), "head.reg_preds.0.weight": (4, 128, 1, 1), "head.reg_preds.0.bias": (4,),
        "head.obj_preds.0.bias": (1,), "head.obj_preds.2.bias": (1,),
    }
    sd.update({k: rng.normal(size=s).astype(np.float16) for k, s in extra_shapes.items()})
    sd["head.stems.0.bn.num_batches_tracked"] = np.array(0)
    return {"model": sd, "optimizer": {}, "start_epoch": 300}


def test_yolox_s_import_and_report(golden_sd):
    ckpt = yolox_s_like(golden_sd)
    model = build_model(load_config_file(str(CONFIGS / "default.py")))
    abstract = convert.abstract_variables(model, model.num_frames)
    variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract)
    new, report = load_yolox_s(ckpt, variables)

    backbone_keys = {k for k in golden_sd if k.startswith("backbone.") and not k.endswith("num_batches_tracked")}
    assert set(report.loaded) == backbone_keys | {"head.reg_preds.0.bias", "head.obj_preds.0.bias"}
    assert {"backbone.C3_n3.conv1.conv.weight", "backbone.bu_conv2.conv.weight", "head.stems.1.conv.weight",
            "head.obj_preds.2.bias"} <= set(report.not_in_model)
    mismatched = {m.split(":")[0] for m in report.shape_mismatch}
    assert {"head.stems.0.conv.weight", "head.stems.0.bn.weight", "head.cls_convs.0.0.conv.weight",
            "head.cls_preds.0.weight", "head.cls_preds.0.bias", "head.reg_preds.0.weight"} == mismatched
    assert "neck.tar.feat_fusion.weight" in report.not_in_checkpoint
    assert "loaded 237 tensor(s)" in report.summary()
    # values: converted layout where loaded, untouched elsewhere
    np.testing.assert_array_equal(new["params"]["backbone"]["C3_p3"]["m"]["0"]["conv2"]["conv"]["kernel"],
                                  golden_sd["backbone.C3_p3.m.0.conv2.conv.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(new["batch_stats"]["backbone"]["lateral_conv0"]["bn"]["mean"],
                                  golden_sd["backbone.lateral_conv0.bn.running_mean"])
    np.testing.assert_array_equal(new["params"]["head"]["reg_preds"]["0"]["bias"],
                                  ckpt["model"]["head.reg_preds.0.bias"].astype(np.float32))
    assert not np.any(new["params"]["head"]["stems"]["0"]["conv"]["kernel"])
    assert not np.any(new["params"]["neck"]["atm"]["tar"]["feat_fusion"]["kernel"])


def test_another_models_dict_gives_a_clear_error(golden_sd):
    with pytest.raises(ValueError) as info:
        load_reference_state_dict(yolox_s_like(golden_sd))
    msg = str(info.value)
    assert "is this a BeltCrackDet state dict" in msg
    assert "backbone.C3_n3.conv1.conv.weight" in msg and "neck.tar.feat_fusion.weight" in msg
    assert "head.stems.0.conv.weight" in msg       # shape mismatch listed too


# ----------------------------------------------------------------------------------------- files and CLI

def test_read_state_dict_files(tmp_path):
    arrays = {"module.a.weight": np.ones((2, 3), np.float16), "module.b.running_mean": np.zeros(2)}
    np.savez(tmp_path / "sd.npz", **arrays)
    sd = read_state_dict(tmp_path / "sd.npz")
    assert set(sd) == {"a.weight", "b.running_mean"}                   # DataParallel prefix stripped
    with pytest.raises(ValueError, match="expected .npz or .pth"):
        read_state_dict(tmp_path / "sd.h5")
    try:
        import torch  # noqa: F401
    except ImportError:
        (tmp_path / "w.pth").write_bytes(b"not really")
        with pytest.raises(ImportError, match="needs torch"):
            read_state_dict(tmp_path / "w.pth")


def test_cli_writes_an_orbax_checkpoint_that_restores(tiny, tmp_path, capsys):
    cfg, variables, sd = tiny
    np.savez(tmp_path / "tiny.npz", **sd)
    out = tmp_path / "ckpt"
    assert convert.main(["--input", str(tmp_path / "tiny.npz"), "--output", str(out),
                         "--config", str(CONFIGS / "tiny.py")]) == 0
    assert "parameters" in capsys.readouterr().out
    restored = load_variables(str(out))
    assert set(restored) == {"params", "batch_stats"}
    want, got = flatten(variables), flatten(restored)
    assert want.keys() == got.keys()
    for k in want:
        np.testing.assert_array_equal(np.asarray(got[k]), want[k])
    # the default config rejects the tiny weights (shapes), with the offending keys named
    with pytest.raises(ValueError, match="shape mismatch"):
        convert.main(["--input", str(tmp_path / "tiny.npz"), "--output", str(tmp_path / "other")])


def tiny_yolox_s_like(tiny_sd):
    """A YOLOX-S-shaped checkpoint for the tiny config's widths: the same CSPDarknet + top-down FPN (other
    values), the PAN layers and a 3-level 80-class head YOLOX has and BeltCrackDet does not, and a head stem
    whose width differs (YOLOX-S head: 256 x 0.5, BeltCrackDet: 256 x 1.0), nested under 'model'."""
    rng = np.random.default_rng(5)
    sd = {k: rng.normal(size=np.shape(v)).astype(np.float32) for k, v in tiny_sd.items() if k.startswith("backbone.")}
    extra = {"backbone.bu_conv2.conv.weight": (16, 16, 3, 3), "backbone.C3_n3.conv1.conv.weight": (16, 32, 1, 1),
             "head.stems.0.conv.weight": (16, 16, 1, 1), "head.stems.1.conv.weight": (16, 32, 1, 1),
             "head.cls_preds.0.weight": (80, 16, 1, 1), "head.obj_preds.0.bias": (1,)}
    sd.update({k: rng.normal(size=s).astype(np.float32) for k, s in extra.items()})
    sd["backbone.backbone.stem.conv.bn.num_batches_tracked"] = np.array(0)
    return {"model": sd, "optimizer": {}}


def test_yolox_s_convert_then_init_from(tiny, tmp_path, capsys):
    """The paper's initialisation route end to end: convert --yolox-s -> a folder train.init_from takes ->
    every matched leaf equals the source, every other leaf keeps the run's own init; the report names both."""
    from beltcrack_jax.train.state import load_pretrained

    cfg, variables, sd = tiny
    ckpt = tiny_yolox_s_like(sd)
    np.savez(tmp_path / "yolox_s.npz", **ckpt["model"])
    out = tmp_path / "yolox_init"
    assert convert.main(["--input", str(tmp_path / "yolox_s.npz"), "--output", str(out), "--yolox-s",
                         "--config", str(CONFIGS / "tiny.py")]) == 0
    printed = capsys.readouterr().out
    assert "train.init_from=" in printed and "loaded" in printed
    written = flatten(load_variables(str(out)))
    assert written and all(p[1] == "backbone" or p[1:3] == ("head", "obj_preds") for p in written)  # imported only

    run_init = fake_variables(convert.abstract_variables(build_model(cfg), 5), seed=9)   # the run's own init
    log = []
    new = flatten(load_pretrained(run_init, str(out), log.append))
    init = flatten(run_init)
    source = {k: v for k, v in ckpt["model"].items()}
    n_loaded = 0
    for path, value in new.items():
        key = convert.torch_key(path[0], tuple(path[1:]))
        try:
            want = convert.torch_to_flax_array(path[0], path[-1], source[key], value.shape) if key in source else None
        except ValueError:   # shape differs: not imported
            want = None
        if want is not None:
            np.testing.assert_array_equal(np.asarray(value), want, err_msg=key)
            n_loaded += 1
        else:
            np.testing.assert_array_equal(np.asarray(value), init[path], err_msg=key)
    backbone_leaves = sum(1 for p in init if p[1] == "backbone")
    assert n_loaded == backbone_leaves + 1                        # + head.obj_preds.0.bias (shape (1,) matches)
    report = log[0]
    assert f"loaded {n_loaded} tensor(s)" in report and "neck.tar.feat_fusion.weight" in report
    # the same route from the state-dict file directly: same values, the mismatched head stem reported
    log2 = []
    direct = flatten(load_pretrained(run_init, str(tmp_path / "yolox_s.npz"), log2.append))
    for path in new:
        np.testing.assert_array_equal(np.asarray(direct[path]), np.asarray(new[path]))
    assert "head.stems.0.conv.weight" in log2[0] and "backbone.C3_n3.conv1.conv.weight" in log2[0]
    with pytest.raises(ValueError, match="no entry matches"):
        load_pretrained(run_init, str(_npz(tmp_path, {"foo.weight": np.ones(3)})), print)
    with pytest.raises(FileNotFoundError, match="init_from"):
        load_pretrained(run_init, str(tmp_path / "missing"), print)


def _npz(tmp_path, arrays):
    path = tmp_path / "other.npz"
    np.savez(path, **arrays)
    return path
