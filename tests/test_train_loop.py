"""The train loop: device-count invariance, resume after SIGKILL, non-finite stop, bad input, logging.

The loop mechanics are tested on a small conv+BN stand-in model and a simple loss (a compile of the real model
takes minutes on a 2-core CPU); `test_real_tiny_model_one_vs_four_devices` (slow) runs the real tiny BeltCrackDet
and the real loss. Helpers at module level are also used by subprocesses (SIGKILL, multi-process tests).
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TESTS = pathlib.Path(__file__).resolve().parent
T, HW, M = 2, 32, 3


def load_config(name: str = "default"):
    spec = importlib.util.spec_from_file_location(f"_cfg_{name}", ROOT / "configs" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()


def small_config(steps: int = 3, batch: int = 4, **train):
    c = load_config()
    c.seed = 7
    c.train.batch_size = batch
    c.train.epochs = 4
    c.train.num_train_steps = steps
    c.train.log_every_steps = 1
    c.train.progress_bar = False
    c.train.checkpoint_every_steps = 2
    c.train.eval_every_steps = 0
    c.train.eval_every_epochs = 0
    c.train.async_checkpoints = False
    c.train.lr.base = 0.5          # visible parameter changes in a few steps
    c.train.lr.clamp = False
    c.train.lr.warmup_epochs = 1
    c.train.lr.no_aug_epochs = 1
    for k, v in train.items():
        c.train[k] = v
    return c


# ------------------------------------------------------------------------------------------------ stand-ins
class StandInModel(nn.Module):
    """(B, T, H, W, 3) -> (B, H/8, W/8, 6) with BaseConv (conv+BN) blocks, a per-frame BN and a frozen `gamma`."""

    width: int = 8

    @nn.compact
    def __call__(self, clips, train: bool = False):
        from beltcrack_jax.models.layers import BaseConv, BatchNorm
        b, t, h, w, c = clips.shape
        f = BaseConv(self.width, 3, 2, frame_groups=t, name="stem")(clips.reshape(b * t, h, w, c), train)
        f = f.reshape(b, t, h // 2, w // 2, -1)
        x = jnp.concatenate([f[:, i] for i in range(t)], axis=-1)
        x = BaseConv(self.width, 3, 2, name="down1")(x, train)
        x = BaseConv(self.width, 3, 2, name="down2")(x, train)
        x = BatchNorm(name="norm_out")(x, train)
        gamma = self.param("gamma", nn.initializers.zeros, (1,))
        return nn.Dense(6, name="pred")(x) + gamma


def standin_loss(raw, boxes, classes, mask):
    """A smooth loss on the raw map: objectness near box centres, box sizes regressed."""
    b, h, w, _ = raw.shape
    ys, xs = jnp.meshgrid(jnp.arange(h) * 8 + 4.0, jnp.arange(w) * 8 + 4.0, indexing="ij")
    d2 = (xs[None, :, :, None] - boxes[:, None, None, :, 0]) ** 2 + (ys[None, :, :, None] - boxes[:, None, None, :, 1]) ** 2
    heat = jnp.max(jnp.where(mask[:, None, None, :], jnp.exp(-d2 / 64.0), 0.0), axis=-1)
    obj = jnp.mean((jax.nn.sigmoid(raw[..., 4]) - heat) ** 2)
    size = jnp.log(jnp.maximum(boxes[..., 2:], 1.0) / 8.0).mean(1)                    # (B, 2)
    reg = jnp.mean((raw[..., 2:4].mean((1, 2)) - size) ** 2)
    total = obj + reg + 0.0 * classes.sum()
    return total, {"obj_loss": obj, "reg_loss": reg, "num_fg": mask.sum().astype(jnp.float32)}


def global_example_batch(step: int, global_bs: int, seed: int = 0, nan_at_step: int = -1, t: int = T, hw: int = HW):
    rs = np.random.RandomState(seed * 100003 + step)
    clips = rs.randint(0, 256, (global_bs, t, hw, hw, 3)).astype(np.uint8)
    boxes = np.concatenate([rs.uniform(4, hw - 4, (global_bs, M, 2)), rs.uniform(3, 12, (global_bs, M, 2))], -1)
    mask = rs.uniform(size=(global_bs, M)) < 0.7
    if step == nan_at_step:
        boxes[:] = np.nan
    return {"clips": clips, "boxes": boxes.astype(np.float32), "classes": np.zeros((global_bs, M), np.int32),
            "mask": mask, "image_id": np.arange(global_bs) + step * global_bs}


def standin_data(global_bs: int, process_index: int = 0, process_count: int = 1, *, steps_per_epoch: int = 5,
                 nan_at_step: int = -1, seed: int = 0, t: int = T, hw: int = HW):
    """TrainData whose step-s global batch is fixed; each process gets its consecutive rows (grain iterator)."""
    from beltcrack_jax.train.loop import TrainData
    hb = global_bs // process_count
    sl = slice(process_index * hb, (process_index + 1) * hb)

    def make(s):
        return {k: v[sl] for k, v in global_example_batch(int(s), global_bs, seed, nan_at_step, t, hw).items()}

    ds = grain.MapDataset.range(10_000).map(make)
    return TrainData(iterator=ds.to_iter_dataset().__iter__(), steps_per_epoch=steps_per_epoch, sample=make(0))


def run(config, workdir, devices=None, **kw):
    from beltcrack_jax.train.loop import train_and_evaluate
    kw.setdefault("model", StandInModel())
    kw.setdefault("loss_fn", standin_loss)
    kw.setdefault("train_data", lambda p, n: standin_data(config.train.batch_size, p, n))
    return train_and_evaluate(config, str(workdir), devices=devices, **kw)


def read_jsonl(workdir):
    return [json.loads(line) for line in open(pathlib.Path(workdir) / "metrics.jsonl")]


def assert_trees_close(a, b, atol, what=""):
    la, lb = jax.tree_util.tree_leaves_with_path(jax.device_get(a)), jax.tree.leaves(jax.device_get(b))
    assert len(la) == len(lb)
    for (path, x), y in zip(la, lb):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=atol,
                                   err_msg=f"{what} {jax.tree_util.keystr(path)}")


# ------------------------------------------------------------------------------------------------ tests
def test_one_vs_four_devices(tmp_path):
    cfg = small_config(steps=3)
    s1 = run(cfg, tmp_path / "d1", devices=jax.devices()[:1])
    s4 = run(cfg, tmp_path / "d4", devices=jax.devices()[:4])
    assert int(s1.step) == int(s4.step) == 3
    assert_trees_close(s1.params, s4.params, 2e-6, "params")
    assert_trees_close(s1.batch_stats, s4.batch_stats, 2e-6, "batch_stats")
    assert_trees_close(s1.ema_params, s4.ema_params, 2e-6, "ema")
    l1 = [r["train/loss"] for r in read_jsonl(tmp_path / "d1") if "train/loss" in r]
    l4 = [r["train/loss"] for r in read_jsonl(tmp_path / "d4") if "train/loss" in r]
    np.testing.assert_allclose(l1, l4, rtol=1e-6)
    # Something was trained (the comparison is not vacuous), the frozen leaf did not move, EMA counter = steps.
    p0 = StandInModel().init(jax.random.key(7), jnp.zeros((1, T, HW, HW, 3)))["params"]
    assert np.abs(np.asarray(s1.params["pred"]["kernel"]) - np.asarray(p0["pred"]["kernel"])).max() > 1e-3
    assert float(s1.params["gamma"][0]) == 0.0 and int(s1.ema_updates) == 3
    check_logs(tmp_path / "d4", steps=3)


def tensorboard_scalars(tb_dir) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} read back with the tensorboard package's own event reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def tensorboard_images(tb_dir) -> dict[str, list[tuple[int, tuple[int, int], np.ndarray]]]:
    """{tag: [(step, (height, width), decoded RGB)]} read back with tensorboard's event reader."""
    import io

    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(tb_dir), size_guidance={"images": 0})
    acc.Reload()
    return {tag: [(e.step, (e.height, e.width), np.asarray(Image.open(io.BytesIO(e.encoded_image_string))))
                  for e in acc.Images(tag)] for tag in acc.Tags()["images"]}


def check_logs(work, steps):
    """stdout/JSONL/TensorBoard logging of a run with log_every_steps=1."""
    rows = read_jsonl(work)
    train_rows = [r for r in rows if "train/loss" in r]
    assert [r["step"] for r in train_rows] == list(range(1, steps + 1))
    for key in ("train/lr", "train/clips_per_s", "train/frames_per_s", "train/data_wait_share", "train/step_time_s",
                "train/mfu", "train/loss/obj_loss", "train/loss/reg_loss", "train/grad_norm", "train/epoch"):
        assert key in train_rows[-1], key
    assert any("compile_time_s" in r for r in rows)
    # lr of step 1 = the schedule's value at epoch 0 (warm-up start 0.1 x lr_max, lr_max = 0.5 x 4/64)
    assert train_rows[0]["train/lr"] == pytest.approx(0.1 * 0.5 * 4 / 64, rel=1e-6)
    tb = tensorboard_scalars(work / "tb")
    assert [s for s, _ in tb["train/loss"]] == [r["step"] for r in train_rows]
    np.testing.assert_allclose([v for _, v in tb["train/loss"]], [r["train/loss"] for r in train_rows], rtol=1e-6)
    assert json.load(open(work / "config.json"))["train"]["batch_size"] == 4


CHILD = r"""
import os, sys, json
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
sys.path.insert(0, {tests!r})
import jax
jax.config.update("jax_default_matmul_precision", "highest")
import time, test_train_loop as t
cfg = t.small_config(steps={steps})
cfg.train.checkpoint_every_steps = 2
def slow_hook(state, step):
    time.sleep({sleep})
    return {{"dummy": float(step)}}
cfg.train.eval_every_steps = 1
t.run(cfg, {workdir!r}, eval_hook=slow_hook)
"""


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    steps = 8
    work = tmp_path / "killed"
    code = CHILD.format(tests=str(TESTS), steps=steps, sleep=0.6, workdir=str(work))
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if (work / "checkpoints" / "4").is_dir():
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    done = sorted(int(p.name) for p in (work / "checkpoints").iterdir() if p.name.isdigit())
    assert done and max(done) < steps, done

    def hook(state, step):
        return {"dummy": float(step)}

    cfg = small_config(steps=steps)
    cfg.train.checkpoint_every_steps = 2
    cfg.train.eval_every_steps = 1
    resumed = run(cfg, work, eval_hook=hook)
    reference = run(cfg, tmp_path / "straight", eval_hook=hook)
    assert int(resumed.step) == steps and int(resumed.ema_updates) == steps
    assert_trees_close(resumed.params, reference.params, 1e-6, "params")
    assert_trees_close(resumed.batch_stats, reference.batch_stats, 1e-6, "batch_stats")
    assert_trees_close(resumed.ema_params, reference.ema_params, 1e-6, "ema")
    assert_trees_close(resumed.opt_state, reference.opt_state, 1e-6, "opt_state")
    resumed_log = [r for r in read_jsonl(work) if "train/loss" in r]
    assert resumed_log[-1]["step"] == steps


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    from beltcrack_jax.train.loop import NonFiniteLossError
    cfg = small_config(steps=6)
    work = tmp_path / "nan"
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss .* at step 4 .*Last good checkpoint: step 2"):
        run(cfg, work, train_data=lambda p, n: standin_data(4, p, n, nan_at_step=3))
    assert sorted(p.name for p in (work / "checkpoints").iterdir() if p.name.isdigit()) == ["2"]
    # The next start resumes from step 2 with finite parameters (and fails again at the same bad batch).
    from beltcrack_jax.train.checkpoint import Checkpointer
    ck = Checkpointer(str(work), cfg)
    assert ck.latest_step() == 2
    ck.close()


def test_batch_not_divisible_by_devices(tmp_path):
    with pytest.raises(ValueError, match=r"batch_size=6 .*divisible by the number of devices \(4"):
        run(small_config(batch=6), tmp_path / "w")
    with pytest.raises(ValueError, match=r"grad_accum"):
        run(small_config(batch=4, grad_accum=3), tmp_path / "w2")


def test_empty_dataset(tmp_path):
    def empty(p, n):
        d = standin_data(4, p, n)
        d.steps_per_epoch = 0
        return d

    with pytest.raises(ValueError, match="empty or too small dataset"):
        run(small_config(), tmp_path / "w", train_data=empty)


def test_workdir_of_another_config_and_incompatible_checkpoint(tmp_path):
    from beltcrack_jax.train.checkpoint import IncompatibleWorkdirError
    work = tmp_path / "w"
    run(small_config(steps=2), work)
    before = {str(p): p.stat().st_mtime_ns for p in work.rglob("*")}
    other = small_config(steps=2)
    other.train.lr.base = 0.1
    with pytest.raises(IncompatibleWorkdirError, match=r"different config .*train.lr.base"):
        run(other, work)
    assert {str(p): p.stat().st_mtime_ns for p in work.rglob("*")} == before, "refused workdir was modified"
    # same config, but a checkpoint that does not fit the model (e.g. code changed the architecture)
    with pytest.raises(IncompatibleWorkdirError, match="does not fit"):
        run(small_config(steps=3), work, model=StandInModel(width=16))
    # run-control fields may change: more steps resumes from step 2 and continues
    assert int(run(small_config(steps=3), work).step) == 3


def test_bf16_smoke(tmp_path):
    s = run(small_config(steps=1, compute_dtype="bfloat16"), tmp_path / "w")
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(s.params))
    rows = [r for r in read_jsonl(tmp_path / "w") if "train/loss" in r]
    assert all(np.isfinite(r["train/loss"]) for r in rows)


def test_grad_accum_device_invariant(tmp_path):
    cfg = small_config(steps=2, batch=8, grad_accum=2)
    s1 = run(cfg, tmp_path / "a", devices=jax.devices()[:1])
    s4 = run(cfg, tmp_path / "b", devices=jax.devices()[:4])
    assert_trees_close(s1.params, s4.params, 2e-6, "params")
    assert_trees_close(s1.batch_stats, s4.batch_stats, 2e-6, "batch_stats")


def test_train_py_lock_config_rejects_unknown_key(tmp_path):
    out = subprocess.run([sys.executable, "train.py", "--config", "configs/default.py", "--workdir",
                          str(tmp_path / "w"), "--config.train.no_such_key=1"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert out.returncode != 0
    assert "no_such_key" in out.stderr
    assert not (tmp_path / "w").exists()


def test_configs_scaling_and_demo():
    from beltcrack_jax.train import optim
    spec = importlib.util.spec_from_file_location("_scaling", ROOT / "configs" / "scaling.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config("256")
    assert c.train.batch_size == 256 and not c.train.lr.clamp and c.train.lr.unit == "step"
    sched = optim.make_schedule(c.train.lr, c.train.batch_size, steps_per_epoch=10, epochs=c.train.epochs)
    assert sched.lr_max == pytest.approx(0.04)          # 1e-2 x 256/64, no clamp
    c2 = mod.get_config("batch=512,accum=2,dtype=float32")
    assert (c2.train.batch_size, c2.train.grad_accum, c2.train.compute_dtype) == (512, 2, "float32")
    assert optim.make_schedule(c2.train.lr, 512, 10, 100).lr_max == pytest.approx(0.08)  # above the 5e-2 clamp
    with pytest.raises(ValueError, match="unknown argument"):
        mod.get_config("bs=3")
    d = load_config("demo")
    assert d.data.name == "beltcrack/synthetic_demo" and d.train.batch_size % 4 == 0
    ref = load_config()
    assert optim.lr_bounds(ref.train.batch_size) == (6.25e-4, 6.25e-6)   # the reference's values


@pytest.mark.slow
def test_real_tiny_model_one_vs_four_devices(tmp_path):
    """The real tiny BeltCrackDet + real loss: 2 steps on 1 device == 2 steps on 4 devices (several minutes)."""
    cfg = small_config(steps=2)
    cfg.model.width = 0.125

    def data(p, n):
        return standin_data(4, p, n, t=cfg.model.num_frames, hw=64)

    s1 = run(cfg, tmp_path / "a", devices=jax.devices()[:1], model=None, loss_fn=None, train_data=data)
    s4 = run(cfg, tmp_path / "b", devices=jax.devices()[:4], model=None, loss_fn=None, train_data=data)
    l1 = [r["train/loss"] for r in read_jsonl(tmp_path / "a") if "train/loss" in r]
    l4 = [r["train/loss"] for r in read_jsonl(tmp_path / "b") if "train/loss" in r]
    print("losses 1 device", l1, "4 devices", l4)
    np.testing.assert_allclose(l1, l4, rtol=5e-5)   # measured 1.7e-5 at step 2 (reduction order, see below)
    # Element-wise equality is too strict for the real network: global-batch BN statistics are reduced in another
    # order on 4 devices and a few channels with near-zero batch variance (random init, 64 px) amplify that to
    # ~1e-4 relative. Require the whole trees to agree to 1e-4 relative (measured: params 3.9e-5, BN stats 3.6e-7).
    for name, a, b in (("params", s1.params, s4.params), ("batch_stats", s1.batch_stats, s4.batch_stats)):
        fa = np.concatenate([np.ravel(x) for x in jax.tree.leaves(jax.device_get(a))])
        fb = np.concatenate([np.ravel(x) for x in jax.tree.leaves(jax.device_get(b))])
        rel = np.linalg.norm(fa - fb) / np.linalg.norm(fa)
        print(name, "relative difference 1 vs 4 devices", rel)
        assert rel < 1e-4, (name, rel)


def test_validation_selects_best_checkpoint_and_draws_curves(tmp_path):
    """Periodic evaluation runs on data.val_split, the best val mAP50 is kept in <workdir>/best next to the latest
    checkpoints (evaluate.py --step best), and the learning-curve PNG is rebuilt from metrics.jsonl, also after a
    resume."""
    from beltcrack_jax.train import curves
    from beltcrack_jax.train.checkpoint import resolve_checkpoint

    val_map = {2: 0.2, 4: 0.5, 6: 0.3, 8: 0.1}
    seen = []

    def hook(state, step):
        seen.append((step, int(state.step)))
        # the real hook's figures (eval.evaluator.make_eval_hook) come back the same way: uint8 HWC arrays
        return {"map50": val_map[step], "recall": 0.5, "images/pr_curve": np.full((6, 8, 3), step, np.uint8),
                "images/detection_grid": np.zeros((4, 12, 3), np.uint8)}

    work = tmp_path / "w"
    cfg = small_config(steps=6)
    cfg.train.eval_every_steps = 2
    run(cfg, work, eval_hook=hook)
    assert seen == [(2, 2), (4, 4), (6, 6)]
    images = tensorboard_images(work / "tb")
    assert [s for s, _, _ in images["val/pr_curve"]] == [2, 4, 6]
    assert all(hw == (6, 8) for _, hw, _ in images["val/pr_curve"])
    assert images["val/pr_curve"][1][2][0, 0].tolist() == [4, 4, 4]          # the pixels of step 4's image
    assert [hw for _, hw, _ in images["val/detection_grid"]] == [(4, 12)] * 3
    assert not any("images" in k for r in read_jsonl(work) for k in r)         # images are not scalars
    best = json.load(open(work / "best" / "best.json"))
    assert best == {"step": 4, "metric": "map50", "value": 0.5, "split": "val"}
    assert sorted(os.listdir(work / "best")) == ["4", "best.json"]          # only the best is kept there
    state_dir, _ = resolve_checkpoint(str(work), step="best")
    assert state_dir == str(work / "best" / "4" / "state")
    import orbax.checkpoint as ocp
    kept = ocp.StandardCheckpointer().restore(state_dir)        # what load_variables reads (no optimiser state)
    assert int(kept["step"]) == 4 and set(kept) == {"step", "params", "batch_stats", "ema_params", "ema_batch_stats"}
    latest, _ = resolve_checkpoint(str(work), step="latest")
    assert latest.endswith("checkpoints/6/state")
    with pytest.raises(ValueError, match="'latest' or 'best'"):
        resolve_checkpoint(str(work), step="newest")
    (tmp_path / "no_eval").mkdir()
    with pytest.raises(FileNotFoundError, match="no best checkpoint"):
        resolve_checkpoint(str(tmp_path / "no_eval"), step="best")

    rows = read_jsonl(work)
    assert [r["step"] for r in rows if "val/map50" in r] == [2, 4, 6]
    tb = tensorboard_scalars(work / "tb")
    assert [v for _, v in tb["val/map50"]] == pytest.approx([0.2, 0.5, 0.3])
    png = work / curves.CURVES_PNG
    assert png.stat().st_size > 5000
    mtime = png.stat().st_mtime

    cfg.train.num_train_steps = 8                     # resume (run control): two more steps, one more evaluation
    run(cfg, work, eval_hook=hook)
    assert json.load(open(work / "best" / "best.json"))["step"] == 4          # 0.1 at step 8 is no better
    assert png.stat().st_mtime > mtime
    hist = curves.read_metrics(str(work / "metrics.jsonl"))
    assert [s for s, _ in hist["val/map50"]] == [2, 4, 6, 8]                 # history before the resume kept
    assert [s for s, _ in hist["train/loss"]] == list(range(1, 9))


def test_learning_curves_dedupe_and_skip_torn_rows(tmp_path):
    from beltcrack_jax.train import curves
    lines = [{"step": 1, "train/loss": 3.0}, {"step": 2, "train/loss": 2.0}, {"step": 2, "train/loss": 1.5},
             {"step": 2, "val/map50": 0.4}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + '\n{"step": 3, "tra')
    m = curves.read_metrics(str(tmp_path / "metrics.jsonl"))
    assert m["train/loss"] == [(1, 3.0), (2, 1.5)] and m["val/map50"] == [(2, 0.4)]
    assert curves.plot_learning_curves(str(tmp_path)).endswith(curves.CURVES_PNG)
    assert curves.plot_learning_curves(str(tmp_path / "empty")) is None
