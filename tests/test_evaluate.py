"""Evaluator / evaluate.py: a split end to end (synthetic_tiny, tiny config, random weights), outputs, the train
hook, checkpoints (EMA default, another config refused)."""

import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from beltcrack_jax.eval import evaluator as ev_lib
from beltcrack_jax.eval import postprocess as pp
from beltcrack_jax.eval import report
from beltcrack_jax.train.checkpoint import load_variables

ROOT = pathlib.Path(__file__).resolve().parents[1]
SIZE = 64


def tiny_config(data_dir):
    spec = importlib.util.spec_from_file_location("_tiny_cfg_eval", ROOT / "configs" / "tiny.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    c.data.name = "beltcrack/synthetic_tiny"
    c.data.data_dir = str(data_dir)
    c.data.image_size = SIZE
    c.data.num_workers = 0
    c.data.num_threads = 2
    c.eval.batch_size = 4
    c.eval.num_vis = 4
    return c


def random_variables(model, x, seed=0):
    """He-normal random weights from the model's shapes (no init compilation), BN stats mean 0 / var 1: raw
    outputs have std ~1, so scores are spread out (Flax's init gives ~0.25 everywhere -> NMS decided by noise)."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    rng = np.random.default_rng(seed)

    def fill(path, s):
        keys = [str(getattr(p, "key", p)) for p in path]
        if keys[0] == "batch_stats":
            return jnp.ones(s.shape, s.dtype) if keys[-1] == "var" else jnp.zeros(s.shape, s.dtype)
        if keys[-1] == "scale":
            return jnp.ones(s.shape, s.dtype)
        if keys[-1] == "kernel" and len(s.shape) >= 2:
            return jnp.asarray(rng.normal(0, np.sqrt(2.0 / np.prod(s.shape[:-1])), s.shape), s.dtype)
        return jnp.asarray(rng.normal(0, 0.02, s.shape), s.dtype)

    return {k: dict(t) for k, t in jax.tree_util.tree_map_with_path(fill, dict(shapes)).items()}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import tensorflow_datasets as tfds

    import beltcrack_jax.data  # noqa: F401
    from beltcrack_jax.models import build_model

    data_dir = tmp_path_factory.mktemp("tfds")
    tfds.builder("beltcrack/synthetic_tiny", data_dir=str(data_dir)).download_and_prepare()
    cfg = tiny_config(data_dir)
    model = build_model(cfg)
    v = random_variables(model, jnp.zeros((1, cfg.model.num_frames, SIZE, SIZE, 3)))
    return cfg, model, v


def test_split_end_to_end_boxes_in_original_pixels(setup):
    from beltcrack_jax.data import pipeline
    from beltcrack_jax.data.transforms import normalize, resize_params

    cfg, model, v = setup
    res = ev_lib.Evaluator(cfg, profile="paper", log=lambda s: None).run(v)
    m = res.metrics
    index = pipeline.load_split_index(cfg.data.name, "test", cfg.data.data_dir)
    annotated = {int(index.image_id[i]) for i in index.key_frames("annotated")}
    assert set(res.image_ids) == annotated and m["num_images"] == len(annotated)
    for k in ("map50", "map50_95", "precision", "recall", "f1"):
        assert np.isfinite(m[k]) and 0 <= m[k] <= 1
    assert m["num_detections"] > 0 and "conf=0.003" in m["profile_line"] and "resize=stretch" in m["profile_line"]
    # one clip by hand: model -> decode -> NMS -> the stretch inverse, from the frame size alone
    it = pipeline.make_eval_iterator(cfg, "test", batch_size_per_process=1)
    b = next(iter(it))
    raw = model.apply(v, normalize(jnp.asarray(b["clips"])), train=False)
    resize = resize_params("stretch", tuple(b["orig_hw"][0]), SIZE).as_array()[None]
    out, _ = pp.detect(raw, jnp.asarray(resize), jnp.asarray(b["orig_hw"]), 0.003, 0.2, input_hw=(SIZE, SIZE))
    rows, _ = pp.to_reference_rows(out)
    iid = int(b["image_id"][0])
    mine = sorted((d for d in res.detections if d["image_id"] == iid), key=lambda d: -d["score"])
    assert len(mine) == len(rows)
    xywh = np.array([d["bbox"] for d in mine])
    ref = np.stack([rows[:, 1], rows[:, 0], rows[:, 3] - rows[:, 1], rows[:, 2] - rows[:, 0]], 1)
    # The random N(0, 0.1) weights give boxes up to thousands of px (exp of raw tw / th ~8), where the eager forward
    # here and the evaluator's jitted one differ by up to ~1e-2 relative (7.6e-3 measured with jax 0.10.2; 1e-4
    # passed with an earlier XLA). A geometry error (the 1.5x stretch inverse missed, swapped axes, an offset) is
    # >= 10x larger than that.
    np.testing.assert_allclose(xywh, ref, rtol=2e-2, atol=1e-2)
    assert xywh[:, 0].max() + xywh[:, 2].max() > SIZE  # original frames are 192 px wide


def test_deployment_profile_and_conditions(setup):
    cfg, _, v = setup
    res = ev_lib.Evaluator(cfg, profile="deployment", log=lambda s: None).run(v, collect_vis=False)
    m = res.metrics
    dep = m["deployment"]
    assert dep["num_frames"] == m["num_images"] and dep["num_events"] > 0
    assert "score_thres=0.5" in m["profile_line"] and "frames=all" in m["profile_line"]
    assert set(m["by_condition"]) <= {"view", "light", "weather", "speed"} and m["by_condition"]
    table = report.format_table(m)
    assert "deployment @score 0.5" in table and "mAP50" in table


def test_run_evaluation_writes_outputs(setup, tmp_path):
    cfg, _, v = setup
    lines = []
    m = ev_lib.run_evaluation(cfg, variables=v, out_dir=str(tmp_path), log=lines.append)
    for name in ("metrics.json", "detections.json", "conditions.csv", "pr_curve.png", "detection_grid.png",
                 "heatmap_grid.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    stored = json.loads((tmp_path / "metrics.json").read_text())
    assert stored["map50"] == pytest.approx(m["map50"]) and stored["profile_settings"]["conf_thres"] == 0.003
    assert len(json.loads((tmp_path / "detections.json").read_text())) == m["num_detections"]
    assert any("profile=paper" in line for line in lines) and any("Average Precision" in line for line in lines)


def test_train_hook_and_checkpoints(setup, tmp_path):
    import optax

    from beltcrack_jax.eval import make_eval_hook
    from beltcrack_jax.train.checkpoint import Checkpointer
    from beltcrack_jax.train.state import create_train_state

    cfg, model, v = setup
    state = create_train_state(v, optax.sgd(0.1))
    # make EMA and raw weights differ so the loader's choice is visible
    state = state.replace(params=jax.tree.map(lambda a: a + 1.0, state.params))
    from beltcrack_jax.train import sharding

    mesh = sharding.make_mesh()  # the train loop's mesh: 4 simulated CPU devices, eval batch sharded over them
    hook = make_eval_hook(cfg, model, mesh)
    state = jax.device_put(state, sharding.replicated(mesh))
    out = hook(state, 7)
    images = {k: out.pop(k) for k in [k for k in out if k.startswith("images/")]}
    assert set(out) >= {"map50", "map50_95", "precision", "recall", "f1"}
    assert all(isinstance(x, float) for x in out.values())
    # the PR curve and the detection grid for TensorBoard (the train loop writes them with write_image)
    assert set(images) == {"images/pr_curve", "images/detection_grid"}
    assert all(a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3 for a in images.values())
    # same numbers as the unsharded evaluator on the EMA weights
    ref = ev_lib.Evaluator(cfg, model=model, log=lambda s: None).run(v, collect_vis=False).metrics
    assert out["map50"] == pytest.approx(ref["map50"], abs=1e-6) and out["f1"] == pytest.approx(ref["f1"], abs=1e-6)

    wd = tmp_path / "run"
    ck = Checkpointer(str(wd), cfg, async_save=False)
    ck.save(7, state)
    ck.close()
    ema, info = load_variables(cfg, workdir=str(wd), model=model, log=lambda s: None)
    assert info["step"] == 0 and info["ema"]
    k = ("params", "head", "obj_preds", "0", "kernel")
    leaf = lambda t: t[k[0]][k[1]][k[2]][k[3]][k[4]]  # noqa: E731
    np.testing.assert_array_equal(np.asarray(leaf(ema)), np.asarray(leaf(v)))
    raw, _ = load_variables(cfg, checkpoint=str(wd / "checkpoints" / "7"), use_ema=False, model=model,
                            log=lambda s: None)
    np.testing.assert_array_equal(np.asarray(leaf(raw)), np.asarray(leaf(v)) + 1.0)
    # a fold_bn model gets the folded EMA weights, ready to apply (no BN statistics left)
    from beltcrack_jax.models.inference import fold_batchnorm, is_folded

    folded_model = model.clone(fold_bn=True)
    folded, _ = load_variables(cfg, workdir=str(wd), model=folded_model, log=lambda s: None)
    assert is_folded(folded)
    want = fold_batchnorm(v)
    np.testing.assert_allclose(np.asarray(leaf(folded)), np.asarray(leaf(want)), rtol=1e-6)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, cfg.model.num_frames, SIZE, SIZE, 3)), jnp.float32)
    np.testing.assert_allclose(np.asarray(folded_model.apply(folded, x)), np.asarray(model.apply(v, x)),
                               rtol=1e-4, atol=1e-4)

    other = tiny_config(cfg.data.data_dir)
    other.model.width = 0.25
    with pytest.raises(ValueError, match=r"different model config: model\.width: checkpoint 0\.125 vs config 0\.25"):
        load_variables(other, workdir=str(wd), log=lambda s: None)
    # without the stored config the shapes still catch it
    os.remove(wd / "config.json")
    shutil.rmtree(wd / "checkpoints" / "7" / "config")
    with pytest.raises(ValueError, match="does not fit the model built from this config: shape mismatch"):
        load_variables(other, workdir=str(wd), log=lambda s: None)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_variables(cfg, workdir=str(tmp_path), log=lambda s: None)


def test_evaluate_cli(setup, tmp_path):
    """evaluate.py as a user runs it (a new process: compiles the tiny model again)."""
    import optax

    from beltcrack_jax.train.checkpoint import Checkpointer
    from beltcrack_jax.train.state import create_train_state

    cfg, _, v = setup
    wd = tmp_path / "run"
    ck = Checkpointer(str(wd), cfg, async_save=False)
    ck.save(3, create_train_state(v, optax.sgd(0.1)))
    ck.close()
    cmd = [sys.executable, str(ROOT / "evaluate.py"), f"--config={ROOT / 'configs' / 'tiny.py'}",
           f"--workdir={wd}", "--config.data.name=beltcrack/synthetic_tiny",
           f"--config.data.data_dir={cfg.data.data_dir}", f"--config.data.image_size={SIZE}",
           "--config.data.num_workers=0", "--config.eval.batch_size=4", "--config.eval.num_vis=2"]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(ROOT), timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    out = wd / "eval" / "paper_test_step0"
    assert (out / "metrics.json").exists() and (out / "detection_grid.png").exists()
    assert "mAP50" in p.stdout + p.stderr
