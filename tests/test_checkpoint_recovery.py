"""Checkpoint recovery: kills at three points (one inside an async save) resume to exactly the uninterrupted run;
an unreadable newest checkpoint falls back to the previous good one with a warning; a resume on other data
(dataset fingerprint) is refused unless allowed; run-control fields may change; non-finite steps can be skipped.

The mechanics run on the stand-in model of test_train_loop (seconds); `test_real_tiny_model_killed_three_times`
(slow) repeats the kill test with the real tiny BeltCrackDet, the real loss and the real grain pipeline.
Helpers at module level are also used by the child processes that get killed.
"""

from __future__ import annotations

import itertools
import os
import pathlib
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

import test_train_loop as tl

TESTS = pathlib.Path(__file__).resolve().parent
ROOT = TESTS.parent
TMP_SUFFIX = ".orbax-checkpoint-tmp"


# ------------------------------------------------------------------------------------------------ kill machinery
def kill_here(marker: str) -> None:
    pathlib.Path(marker).write_text("reached")
    os.kill(os.getpid(), signal.SIGKILL)


def arm_kill(kind: str, at: int, marker: str) -> None:
    """Patch this process so it SIGKILLs itself at one point of the train loop."""
    from beltcrack_jax.train import loop
    from beltcrack_jax.train.metric_writer import MetricWriter

    if kind == "batch":  # while the loop takes a batch, between two steps (call 1 is the init sample)
        calls, take = itertools.count(1), loop._host_batch

        def host_batch(batch):
            if next(calls) == at:
                kill_here(marker)
            return take(batch)

        loop._host_batch = host_batch
    elif kind == "async_save":  # in the background commit of step `at`: files written, not yet renamed into place
        import orbax.checkpoint._src.checkpointers.async_checkpointer as ac
        commit = ac._on_commit_callback

        def on_commit(tmpdir, *args, **kwargs):
            if os.path.basename(os.fspath(tmpdir.get_final())) == str(at):
                kill_here(marker)
            return commit(tmpdir, *args, **kwargs)

        ac._on_commit_callback = on_commit
    elif kind == "log":  # after step `at` ran, before its metrics are written (and before its checkpoint)
        write = MetricWriter.write_scalars

        def write_scalars(self, step, scalars, prefix=""):
            if step == at and prefix == "train/":
                kill_here(marker)
            return write(self, step, scalars, prefix=prefix)

        MetricWriter.write_scalars = write_scalars
    else:
        raise ValueError(kind)


def kill_config(real: bool, data_dir: str | None):
    """Async saves every 2 steps; the real variant: tiny BeltCrackDet, 64 px, batch 4, T = 5, real pipeline."""
    cfg = tl.small_config(steps=6 if real else 10)
    cfg.train.async_checkpoints = True
    if real:
        cfg.model.width = 0.125
        for k, v in dict(name="beltcrack/beltcrack14ks", data_dir=data_dir, image_size=64, max_boxes=4,
                         num_workers=0, num_threads=1, prefetch=1).items():
            cfg.data[k] = v
    return cfg


def train(cfg, workdir, real: bool, train_data=None):
    kw = dict(model=None, loss_fn=None) if real else {}
    if train_data is None and not real:
        train_data = tl.standin_data(cfg.train.batch_size)
    return tl.run(cfg, workdir, devices=jax.devices()[:1], train_data=train_data, **kw)


def child_main(kind: str, at: int, workdir: str, marker: str, real: bool, data_dir: str | None) -> None:
    arm_kill(kind, at, marker)
    train(kill_config(real, data_dir), workdir, real)
    raise SystemExit("the kill point was never reached")


CHILD = r"""
import os, sys
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
sys.path.insert(0, {tests!r})
import jax
jax.config.update("jax_default_matmul_precision", "highest")
if {cache!r}:
    jax.config.update("jax_compilation_cache_dir", {cache!r})
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
import test_checkpoint_recovery as r
r.child_main({kind!r}, {at!r}, {workdir!r}, {marker!r}, {real!r}, {data_dir!r})
"""


def run_until_killed(kind, at, workdir, real, data_dir=None, cache=None, timeout=900):
    marker = str(pathlib.Path(workdir).parent / f"killed_{kind}_{at}")
    code = CHILD.format(tests=str(TESTS), kind=kind, at=at, workdir=str(workdir), marker=marker, real=real,
                        data_dir=data_dir, cache=cache)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == -signal.SIGKILL and os.path.exists(marker), (out.returncode, out.stderr[-3000:])


def tmp_folders(workdir):
    return sorted(p.name for p in (pathlib.Path(workdir) / "checkpoints").iterdir() if TMP_SUFFIX in p.name)


def losses_by_step(workdir):
    """Last logged loss of every step (a resumed run logs the steps after its checkpoint again)."""
    return {r["step"]: r["train/loss"] for r in tl.read_jsonl(workdir) if "train/loss" in r}


def assert_same_state(a, b):
    assert int(a.step) == int(b.step) and int(a.ema_updates) == int(b.ema_updates)
    for what in ("params", "batch_stats", "opt_state", "ema_params", "ema_batch_stats"):
        la = jax.tree_util.tree_leaves_with_path(jax.device_get(getattr(a, what)))
        lb = jax.tree.leaves(jax.device_get(getattr(b, what)))
        assert len(la) == len(lb)
        for (path, x), y in zip(la, lb):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=f"{what} {jax.tree_util.keystr(path)}")


def killed_three_times_equals_uninterrupted(tmp_path, real, data_dir=None):
    from beltcrack_jax.train.loop import build_train_data
    # The children share a persistent XLA cache (they compile one program); this process keeps its own settings.
    cache = str(tmp_path / "xla_cache")
    cfg = kill_config(real, data_dir)
    steps = cfg.train.num_train_steps
    work = tmp_path / "killed"
    run_until_killed("batch", 4, work, real, data_dir, cache)                # fetching the batch of step 3
    run_until_killed("async_save", steps - 2, work, real, data_dir, cache)   # committing checkpoint steps-2
    assert any(n.startswith(f"{steps - 2}{TMP_SUFFIX}") for n in tmp_folders(work)), tmp_folders(work)
    # resumes from steps-4 (the save above never finished), killed after the next step: no save in flight then
    run_until_killed("log", steps - 3, work, real, data_dir, cache)
    assert not tmp_folders(work)                                              # the killed save's leftovers are gone

    def data():
        return build_train_data(cfg, 0, 1) if real else tl.standin_data(cfg.train.batch_size)

    resumed_data, straight_data = data(), data()
    resumed = train(cfg, work, real, resumed_data)
    straight = train(cfg, tmp_path / "straight", real, straight_data)
    assert_same_state(resumed, straight)                                      # params, BN, optimiser, EMA
    assert resumed_data.iterator.get_state() == straight_data.iterator.get_state()   # data position
    assert losses_by_step(work) == losses_by_step(tmp_path / "straight")      # every step saw the same batch
    assert sorted(losses_by_step(work)) == list(range(1, steps + 1))


def test_killed_three_times_equals_uninterrupted(tmp_path):
    """Stand-in model: killed between steps, inside the async save of a checkpoint and after a step; resumed."""
    killed_three_times_equals_uninterrupted(tmp_path, real=False)


@pytest.mark.slow
def test_real_tiny_model_killed_three_times(tmp_path):
    """The same with the real tiny BeltCrackDet, the real loss and the real grain pipeline over built records
    (64 px, batch 4, T = 5)."""
    from beltcrack_jax.data import layout
    import tensorflow_datasets as tfds

    data_dir = str(tmp_path / "tfds")
    layout.write_example_layout(os.path.join(data_dir, "downloads", "manual", "BeltCrack14ks"),
                                {"train": {"a": 9, "b": 8, "c": 7}, "test": {"d": 5}})
    tfds.builder("beltcrack/beltcrack14ks", data_dir=data_dir).download_and_prepare()
    killed_three_times_equals_uninterrupted(tmp_path, real=True, data_dir=data_dir)


# ------------------------------------------------------------------------------------------------ unreadable steps
def damage(step_dir: pathlib.Path) -> None:
    """Cuts every file of the saved train state to half, as a copy that stopped part-way leaves it."""
    for p in (step_dir / "state").rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            p.write_bytes(data[: len(data) // 2])


def test_unreadable_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
    work = tmp_path / "w"
    tl.run(tl.small_config(steps=4), work)
    damage(work / "checkpoints" / "4")
    state = tl.run(tl.small_config(steps=6), work)
    out = capsys.readouterr().out
    assert "checkpoint step(s) 4" in out and "resuming from step 2" in out and "checkpoints_unreadable" in out
    assert "resumed from checkpoint step 2" in out
    assert int(state.step) == 6 and int(state.ema_updates) == 6
    assert (work / "checkpoints_unreadable" / "4" / "state").is_dir()           # kept for inspection
    assert sorted(int(p.name) for p in (work / "checkpoints").iterdir()) == [2, 4, 6]   # step 4 saved again


def test_no_restorable_checkpoint_names_every_step(tmp_path):
    from beltcrack_jax.train.checkpoint import IncompatibleWorkdirError
    work = tmp_path / "w"
    tl.run(tl.small_config(steps=4), work)
    damage(work / "checkpoints" / "2")
    os.rename(work / "checkpoints" / "4", work / "checkpoints" / "8")          # a folder holding another step
    with pytest.raises(IncompatibleWorkdirError, match=r"(?s)no checkpoint .* step 8: .*holds the state of step 4"
                                                       r".* step 2: .*does not fit .*or is damaged"):
        tl.run(tl.small_config(steps=10), work)
    assert not (work / "checkpoints_unreadable").exists()                      # nothing moved when nothing restores


# ------------------------------------------------------------------------------------------------ data identity
def with_fingerprint(fingerprint: str):
    def make(p, n):
        d = tl.standin_data(4, p, n)
        d.dataset = {"name": "standin", "split": "train", "fingerprint": fingerprint}
        return d
    return make


def test_resume_on_other_data_is_refused_unless_allowed(tmp_path, capsys):
    from beltcrack_jax.train.checkpoint import IncompatibleWorkdirError
    work = tmp_path / "w"
    tl.run(tl.small_config(steps=2), work, train_data=with_fingerprint("aaaa"))

    def snapshot():  # everything but TensorBoard's event files (a start opens a new one)
        return {str(p): p.stat().st_mtime_ns for p in work.rglob("*") if "tb" not in p.relative_to(work).parts}

    before = snapshot()
    with pytest.raises(IncompatibleWorkdirError, match=r"checkpoint 2 .*fingerprint aaaa.* has bbbb.*"
                                                       r"allow_data_change=True"):
        tl.run(tl.small_config(steps=3), work, train_data=with_fingerprint("bbbb"))
    assert snapshot() == before, "the refused resume changed the workdir"
    cfg = tl.small_config(steps=3)
    cfg.train.allow_data_change = True
    assert int(tl.run(cfg, work, train_data=with_fingerprint("bbbb")).step) == 3
    assert "resuming anyway (train.allow_data_change=True)" in capsys.readouterr().out


def test_run_control_fields_may_change_on_resume():
    """Fields that do not change what is trained (test_train_loop resumes across one in a real run)."""
    from beltcrack_jax.train.checkpoint import config_differences, config_to_json
    stored = tl.small_config(steps=2)
    now = tl.small_config(steps=3)
    now.data.num_workers, now.data.num_threads, now.data.prefetch = 0, 1, 7
    now.data.data_dir = "/elsewhere/tfds"
    now.train.max_nonfinite_skips, now.train.allow_data_change = 2, True
    assert config_differences(config_to_json(stored), config_to_json(now)) == []
    now.data.image_size = 256
    assert config_differences(config_to_json(stored), config_to_json(now)) == [
        "data.image_size: stored 512 vs now 256"]


def test_field_added_after_the_run_was_written_blocks_resume_only_off_its_default():
    """A workdir written before `model.wavelet` existed resumes with the default ('jnp', what it ran), not with
    another value."""
    from beltcrack_jax.train.checkpoint import config_differences, config_to_json
    stored = config_to_json(tl.small_config(steps=2))
    del stored["model"]["wavelet"]
    now = tl.small_config(steps=2)
    assert now.model.wavelet == "jnp"
    assert config_differences(stored, config_to_json(now)) == []
    now.model.wavelet = "jaxwt"
    assert config_differences(stored, config_to_json(now)) == ["model.wavelet: stored '<absent>' vs now 'jaxwt'"]


# ------------------------------------------------------------------------------------------------ non-finite steps
def nan_data(nan_steps: set[int]):
    """Stand-in data whose batches at the given 1-based steps have NaN boxes."""
    from beltcrack_jax.train.loop import TrainData
    import grain

    def make(s):
        s = int(s)
        return tl.global_example_batch(s, 4, nan_at_step=s if s + 1 in nan_steps else -1)

    ds = grain.MapDataset.range(10_000).map(make)
    return lambda p, n: TrainData(iterator=iter(ds.to_iter_dataset()), steps_per_epoch=5, sample=make(0))


def test_non_finite_step_skipped_when_allowed_and_counted(tmp_path, capsys):
    from beltcrack_jax.train.checkpoint import Checkpointer
    from beltcrack_jax.train.loop import NonFiniteLossError
    cfg = tl.small_config(steps=3, max_nonfinite_skips=1)
    work = tmp_path / "skip"
    skipped = tl.run(cfg, work, train_data=nan_data({3}))
    out = capsys.readouterr().out
    assert "non-finite loss or gradient at step 3" in out and "update skipped, 1 of train.max_nonfinite_skips" in out
    # the skipped step changed nothing but the step counter (and the data position): compare with checkpoint 2
    ck = Checkpointer(str(work), cfg)
    before = ck.restore(jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
                                     skipped), step=2)
    ck.close()
    assert int(skipped.step) == 3 and int(skipped.ema_updates) == 2 == int(before.ema_updates)
    for what in ("params", "batch_stats", "opt_state", "ema_params", "ema_batch_stats"):
        tl.assert_trees_close(getattr(skipped, what), getattr(before, what), 0, what)
    rows = [r for r in tl.read_jsonl(work) if "train/loss" in r]
    assert [r["train/nonfinite_skipped"] for r in rows] == [0, 0, 1]
    with pytest.raises(NonFiniteLossError, match=r"at step 3 .*max_nonfinite_skips = 1 skips are used up"):
        tl.run(tl.small_config(steps=3, max_nonfinite_skips=1), tmp_path / "twice", train_data=nan_data({2, 3}))


def test_non_finite_stop_says_how_to_skip():
    import types
    from beltcrack_jax.train.loop import NonFiniteLossError, _NonFinite
    metrics = {"finite": np.float32(0), "loss": np.float32("nan"), "grad_norm": np.float32("nan")}
    ckpt = types.SimpleNamespace(wait=lambda: None, workdir="W")
    with pytest.raises(NonFiniteLossError, match=r"at step 4 .*Last good checkpoint: step 2 .*max_nonfinite_skips=N"):
        _NonFinite(max_skips=0, skipped=0).check(4, metrics, 2, ckpt, print)
