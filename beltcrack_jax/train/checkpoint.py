"""Checkpoints with orbax: train state + data-iterator state + config JSON, restorable onto any mesh.

Layout of a workdir:
  <workdir>/config.json              the run's config (written once, before the first step): a later start with a
                                     different config (outside `RUN_CONTROL_KEYS`) is refused, nothing is touched
  <workdir>/checkpoints/<step>/      orbax step folders: state (StandardSave), data_iter (grain per-process JSON),
                                     config (JsonSave), dataset (JsonSave: name, split, fingerprint of the records)
  <workdir>/checkpoints_unreadable/  step folders that could not be restored, moved aside (kept for inspection)
Restore takes an abstract state carrying the CURRENT mesh's shardings, so a checkpoint written on 4 devices
restores onto 1 (or 2 processes × 2 devices) and vice versa. `restore_latest` falls back from an unreadable newest
step to the previous good one (with a warning naming it), checks the restored step and refuses a checkpoint of
another dataset (fingerprint) unless told otherwise. Temp folders of saves killed half-way are removed on start.

Reading weights for inference (evaluate.py, predict, export): `load_variables(config, workdir=... |
checkpoint=...)` finds the step (`resolve_checkpoint`: latest, a number or 'best'), restores the state read-only
(no optimiser needed) and returns the EMA (default) or raw weights, checked against the model's shapes; a
checkpoint of another model config is refused with the differing fields named. This module is the only reader
of the layout it writes.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Callable

import grain
import jax
import jax.experimental.multihost_utils
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

# Config fields that may change between a run and its resumption (they do not change what is trained).
RUN_CONTROL_KEYS = ("train.log_every_steps", "train.progress_bar", "train.checkpoint_every_steps",
                    "train.checkpoint_every_epochs", "train.eval_every_steps", "train.eval_every_epochs",
                    "train.max_to_keep", "train.num_train_steps", "train.cpu_peak_flops", "train.peak_flops",
                    "train.async_checkpoints", "train.allow_data_change", "train.max_nonfinite_skips",
                    "data.num_workers", "data.num_threads", "data.prefetch", "data.frame_cache_mb", "data.data_dir",
                    "eval.")


class IncompatibleWorkdirError(ValueError):
    """The workdir holds a run with another config, or a checkpoint that does not fit the model."""


def config_to_json(config) -> dict[str, Any]:
    """JSON-safe dict of a ConfigDict (tuples become lists)."""
    return json.loads(json.dumps(config.to_dict() if hasattr(config, "to_dict") else dict(config), default=str))


def config_differences(stored: dict, current: dict, ignore: tuple[str, ...] = RUN_CONTROL_KEYS,
                       defaults: dict | None = None) -> list[str]:
    """The fields (dotted) where a stored run's config and the current one differ. A field the stored run lacks
    was added to the config after it was written, so that run had the field's default behaviour (`defaults`,
    configs/default.py when None): it differs only if the current value is not that default."""
    if defaults is None:
        from beltcrack_jax.configs import load_config
        defaults = config_to_json(load_config("default"))
    a, b = traverse_util.flatten_dict(stored, sep="."), traverse_util.flatten_dict(current, sep=".")
    d = traverse_util.flatten_dict(defaults, sep=".")
    diffs = []
    for k in sorted(set(a) | set(b)):
        if any(k == i or (i.endswith(".") and k.startswith(i)) for i in ignore):
            continue
        if k not in a and k in b and k in d and b[k] == d[k]:
            continue
        if a.get(k, "<absent>") != b.get(k, "<absent>"):
            diffs.append(f"{k}: stored {a.get(k, '<absent>')!r} vs now {b.get(k, '<absent>')!r}")
    return diffs


def check_variables(variables: dict, expected: dict, what: str) -> None:
    """ValueError naming missing / unexpected / mis-shaped leaves of `variables` vs the model's `expected`."""
    got, want = ({k: tuple(np.shape(v)) for k, v in traverse_util.flatten_dict(t).items()}
                 for t in (variables, expected))
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    shape = sorted(k for k in set(got) & set(want) if got[k] != want[k])
    if missing or extra or shape:
        parts = []
        if shape:
            parts.append("shape mismatch: " + "; ".join(f"{'/'.join(k)} {got[k]} vs model {want[k]}"
                                                          for k in shape[:5]))
        if missing:
            parts.append(f"{len(missing)} model variable(s) missing, e.g. {'/'.join(missing[0])}")
        if extra:
            parts.append(f"{len(extra)} unexpected variable(s), e.g. {'/'.join(extra[0])}")
        raise ValueError(f"{what} does not fit the model built from this config: " + "; ".join(parts)
                         + " (was it trained with another config.model?)")


def resolve_checkpoint(workdir: str | None = None, checkpoint: str | None = None,
                       step: int | str | None = None) -> tuple[str, str | None]:
    """-> (state item folder, step folder or None). `checkpoint` may be a workdir, its `checkpoints/` folder,
    a step folder (`checkpoints/<step>`) or the `state` item folder itself. `step`: a number, 'latest' (None)
    or 'best' (the best-on-validation checkpoint the train loop keeps in `<workdir>/best`)."""
    if (workdir is None) == (checkpoint is None):
        raise ValueError("give exactly one of workdir / checkpoint")
    path = os.path.abspath(workdir or checkpoint)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint path {path} does not exist")
    if isinstance(step, str):
        if step == "best":
            info_path = os.path.join(path, "best", "best.json")
            if not os.path.isfile(info_path):
                raise FileNotFoundError(f"no best checkpoint in {path} ({info_path} is missing: the train loop "
                                        "keeps one only when its periodic evaluation runs, train.eval_every_*)")
            with open(info_path) as f:
                best = int(json.load(f)["step"])
            state = os.path.join(path, "best", str(best), "state")
            if not os.path.isdir(state):
                raise FileNotFoundError(f"{info_path} names step {best}, but {state} does not exist")
            return state, os.path.dirname(state)
        if step == "latest":
            step = None
        elif step.isdigit():
            step = int(step)
        else:
            raise ValueError(f"step must be a number, 'latest' or 'best', got {step!r}")
    if os.path.isfile(os.path.join(path, "_METADATA")) or os.path.isfile(os.path.join(path, "manifest.ocdbt")):
        parent = os.path.dirname(path)
        return path, parent if os.path.basename(path) == "state" else None
    if os.path.isdir(os.path.join(path, "state")):
        return os.path.join(path, "state"), path
    root = os.path.join(path, "checkpoints") if os.path.isdir(os.path.join(path, "checkpoints")) else path
    steps = sorted(int(d) for d in os.listdir(root) if d.isdigit() and os.path.isdir(os.path.join(root, d, "state")))
    if not steps:
        raise FileNotFoundError(f"no checkpoint (a <step>/state folder) under {root}")
    if step is None:
        step = steps[-1]
    if step not in steps:
        raise FileNotFoundError(f"no checkpoint for step {step} under {root} (available: {steps})")
    return os.path.join(root, str(step), "state"), os.path.join(root, str(step))


def _stored_config(step_dir: str | None) -> dict | None:
    if step_dir is None:
        return None
    candidates = [os.path.join(os.path.dirname(os.path.dirname(step_dir)), "config.json"),
                  os.path.join(step_dir, "config", "metadata")]
    for c in candidates:
        if os.path.isfile(c):
            try:
                with open(c) as f:
                    return json.load(f)
            except (OSError, ValueError):
                continue
    return None


def model_config_differences(stored: dict, config) -> list[str]:
    """Differences between a stored run's `model` section and this config's (field: stored vs now).

    Fields the stored run does not have (added to the config after it was written) are not compared; the
    parameter-shape check in `load_variables` still catches any architectural mismatch."""
    cur = config.model.to_dict() if hasattr(config.model, "to_dict") else dict(config.model)
    old = stored.get("model", {})
    out = []
    for k in sorted(set(old)):
        a, b = old.get(k, "<absent>"), cur.get(k, "<absent>")
        if isinstance(a, list):
            a = tuple(a)
        if isinstance(b, list):
            b = tuple(b)
        if a != b:
            out.append(f"model.{k}: checkpoint {a!r} vs config {b!r}")
    return out


def load_variables(config, *, workdir: str | None = None, checkpoint: str | None = None, step: int | None = None,
                   use_ema: bool = True, model=None, log: Callable[[str], None] = print) -> tuple[dict, dict]:
    """Restores weights for `config`'s model (or `model`) from a train checkpoint -> (variables, info); for a
    `fold_bn` model the variables come folded (`inference.fold_batchnorm`), ready for it."""
    from beltcrack_jax.data.transforms import as_hw
    from beltcrack_jax.models import build_model
    from beltcrack_jax.models.inference import fold_batchnorm

    state_dir, step_dir = resolve_checkpoint(workdir, checkpoint, step)
    stored = _stored_config(step_dir)
    if stored is not None:
        diffs = model_config_differences(stored, config)
        if diffs:
            raise ValueError(f"checkpoint {state_dir} was trained with a different model config: "
                             + "; ".join(diffs))
    try:
        state = ocp.StandardCheckpointer().restore(state_dir)
    except Exception as e:  # orbax raises assorted types
        raise ValueError(f"cannot read checkpoint {state_dir}: {type(e).__name__}: {str(e)[:300]}") from e
    if not isinstance(state, dict) or "params" not in state:
        raise ValueError(f"checkpoint {state_dir} holds no train state with 'params' (keys: "
                         f"{sorted(state) if isinstance(state, dict) else type(state).__name__})")
    pk, bk = ("ema_params", "ema_batch_stats") if use_ema else ("params", "batch_stats")
    if use_ema and pk not in state:
        raise ValueError(f"checkpoint {state_dir} has no EMA weights ('ema_params'); use use_ema=False")
    variables = {"params": state[pk], "batch_stats": state.get(bk) or {}}
    model = model if model is not None else build_model(config)
    # the shapes of the unfolded network (a fold_bn model has no initialiser); checkpoints hold unfolded weights
    unfolded = model.clone(fold_bn=False)
    x = jnp.zeros((1, int(config.model.num_frames)) + as_hw(config.data.image_size) + (3,))
    expected = jax.eval_shape(lambda: unfolded.init(jax.random.key(0), x, train=False))
    expected = {"params": expected["params"], "batch_stats": expected.get("batch_stats", {})}
    check_variables(variables, expected, f"checkpoint {state_dir}")
    variables = jax.tree.map(jnp.asarray, variables)
    if model.fold_bn:
        variables = fold_batchnorm(variables)
    stp = int(np.asarray(state.get("step", -1)))
    log(f"loaded {'EMA' if use_ema else 'raw'} weights from {state_dir} (train step {stp})")
    return variables, {"path": state_dir, "step": stp, "ema": use_ema}



class Checkpointer:
    """Wraps `ocp.CheckpointManager`; every process must call `save`/`restore` (orbax coordinates them)."""

    def __init__(self, workdir: str, config, *, max_to_keep: int = 3, async_save: bool = True):
        self.workdir = os.path.abspath(workdir)
        self.config_json = config_to_json(config)
        self._claim_workdir()
        self.manager = ocp.CheckpointManager(
            os.path.join(self.workdir, "checkpoints"),
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                                 enable_async_checkpointing=async_save,
                                                 cleanup_tmp_directories=True),   # leftovers of killed saves
            item_names=("state", "data_iter", "config", "dataset"))

    def _claim_workdir(self) -> None:
        path = os.path.join(self.workdir, "config.json")
        if os.path.exists(path):
            with open(path) as f:
                stored = json.load(f)
            diffs = config_differences(stored, self.config_json)
            if diffs:
                raise IncompatibleWorkdirError(
                    f"workdir {self.workdir} holds a run with a different config ({len(diffs)} difference(s): "
                    + "; ".join(diffs[:10]) + ("; ..." if len(diffs) > 10 else "")
                    + "). Use a new --workdir, or the original config; nothing was changed.")
            return
        if os.path.isdir(os.path.join(self.workdir, "checkpoints")) and os.listdir(
                os.path.join(self.workdir, "checkpoints")):
            raise IncompatibleWorkdirError(
                f"workdir {self.workdir} has checkpoints but no config.json: not a run of this trainer; "
                "use a new --workdir")
        jax.experimental.multihost_utils.sync_global_devices("beltcrack_claim_workdir_start")
        if jax.process_index() == 0:
            os.makedirs(self.workdir, exist_ok=True)
            with open(path + ".tmp", "w") as f:
                json.dump(self.config_json, f, indent=2, sort_keys=True)
            os.replace(path + ".tmp", path)
        jax.experimental.multihost_utils.sync_global_devices("beltcrack_claim_workdir_done")

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, data_iter=None, force: bool = True, dataset: dict | None = None) -> bool:
        """`dataset`: {name, split, fingerprint} of the training records (checked on resume)."""
        items = {"state": ocp.args.StandardSave(state), "config": ocp.args.JsonSave(self.config_json)}
        if data_iter is not None:
            items["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
        if dataset is not None:
            items["dataset"] = ocp.args.JsonSave(dict(dataset))
        return self.manager.save(int(step), args=ocp.args.Composite(**items), force=force)

    def step_dir(self, step: int) -> str:
        return os.path.join(os.fspath(self.manager.directory), str(int(step)))

    def restore(self, abstract_state, data_iter=None, step: int | None = None):
        """State restored onto the shardings carried by `abstract_state` (jax.ShapeDtypeStruct leaves);
        `data_iter` (if given) is set to the saved position in place. The restored `state.step` must equal the
        step of the folder."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.workdir}")
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iter is not None:
            items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:  # orbax raises various types for structure / shape mismatches and damaged files
            raise IncompatibleWorkdirError(
                f"checkpoint {step} in {self.workdir} does not fit the current model/optimiser or is damaged "
                f"({type(e).__name__}: {str(e)[:600]})") from e
        held = int(jax.device_get(restored["state"].step))
        if held != int(step):
            raise IncompatibleWorkdirError(f"checkpoint folder {self.step_dir(step)} holds the state of step {held}, "
                                           f"not {step}: the folder was renamed or mixed with another run")
        return restored["state"]

    def saved_dataset(self, step: int) -> dict | None:
        """The {name, split, fingerprint} saved with `step`, or None for checkpoints written before it was saved."""
        if not os.path.isdir(os.path.join(self.step_dir(step), "dataset")):
            return None
        return dict(self.manager.restore(int(step), args=ocp.args.Composite(dataset=ocp.args.JsonRestore()))["dataset"])

    def restore_latest(self, abstract_state, data_iter=None, *, dataset: dict | None = None,
                       allow_data_change: bool = False, warn: Callable[[str], None] = print):
        """(state, step) of the newest checkpoint that restores. Unreadable newer steps are named in a warning and
        moved to <workdir>/checkpoints_unreadable/ (so the run can save those steps again). A checkpoint of another
        dataset (fingerprint) is refused unless `allow_data_change`."""
        failures: list[tuple[int, str]] = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                stored = self.saved_dataset(step)
            except Exception as e:  # noqa: BLE001 - unreadable: try the previous step
                failures.append((step, f"dataset record unreadable ({type(e).__name__}: {str(e)[:200]})"))
                continue
            self._check_dataset(step, stored, dataset, allow_data_change, warn)
            try:
                state = self.restore(abstract_state, data_iter, step)
            except IncompatibleWorkdirError as e:
                failures.append((step, str(e)))
                continue
            if failures:
                warn(f"WARNING: checkpoint step(s) {', '.join(str(s) for s, _ in failures)} in {self.workdir} could "
                     f"not be restored and were moved to {self._unreadable_dir()}; resuming from step {step}. "
                     + " | ".join(f"step {s}: {why}" for s, why in failures))
                self._move_aside([s for s, _ in failures])
            return state, step
        detail = " | ".join(f"step {s}: {why}" for s, why in failures)
        raise IncompatibleWorkdirError(
            f"no checkpoint in {self.workdir}/checkpoints can be restored; if the model or optimiser changed they "
            f"do not fit the current model/optimiser (use a new --workdir), otherwise their files are damaged. "
            f"{detail}")

    def _check_dataset(self, step, stored, current, allow_data_change, warn) -> None:
        if not stored or not current or stored.get("fingerprint") == current.get("fingerprint"):
            return
        what = (f"checkpoint {step} in {self.workdir} was trained on {stored.get('name')}/{stored.get('split')} "
                f"with fingerprint {str(stored.get('fingerprint'))[:16]}, the current data "
                f"{current.get('name')}/{current.get('split')} has {str(current.get('fingerprint'))[:16]} (rebuilt, "
                f"or the release changed)")
        if allow_data_change:
            warn(f"WARNING: {what}; resuming anyway (train.allow_data_change=True)")
            return
        raise IncompatibleWorkdirError(f"{what}. Resume on the new data with --config.train.allow_data_change=True, "
                                       f"or use a new --workdir; nothing was changed.")

    def _unreadable_dir(self) -> str:
        return os.path.join(self.workdir, "checkpoints_unreadable")

    def _move_aside(self, steps: list[int]) -> None:
        jax.experimental.multihost_utils.sync_global_devices("beltcrack_move_unreadable_start")
        if jax.process_index() == 0:
            os.makedirs(self._unreadable_dir(), exist_ok=True)
            for s in steps:
                dest = os.path.join(self._unreadable_dir(), str(s))
                k = 1
                while os.path.exists(dest):
                    dest, k = os.path.join(self._unreadable_dir(), f"{s}.{k}"), k + 1
                shutil.move(self.step_dir(s), dest)
        jax.experimental.multihost_utils.sync_global_devices("beltcrack_move_unreadable_done")
        self.manager.reload()

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


class BestCheckpointer:
    """The weights with the best validation metric so far, next to the latest checkpoints:
    `<workdir>/best/<step>/state` (step, params, batch_stats, EMA copies; no optimiser) and
    `<workdir>/best/best.json` ({step, metric, value, split}). Saved synchronously, then the JSON is replaced
    atomically, so the JSON always names a complete checkpoint. `evaluate.py --step best` reads it."""

    def __init__(self, workdir: str, metric: str = "map50", split: str = "val"):
        self.dir = os.path.join(os.path.abspath(workdir), "best")
        self.metric, self.split = metric, split
        self.manager = ocp.CheckpointManager(
            self.dir, options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True,
                                                           enable_async_checkpointing=False,
                                                           cleanup_tmp_directories=True),
            item_names=("state",))

    def best(self) -> dict | None:
        """{step, metric, value, split} of the kept checkpoint, or None."""
        path = os.path.join(self.dir, "best.json")
        if not os.path.exists(path):
            return None
        with open(path) as f:
            info = json.load(f)
        return info if info.get("step") in (self.manager.all_steps() or []) else None

    def update(self, step: int, value: float, state) -> bool:
        """Saves `state` as the best if `value` beats the kept one (ties keep the earlier); returns whether."""
        cur = self.best()
        if cur is not None and not value > cur["value"]:
            return False
        weights = {"step": state.step, "params": state.params, "batch_stats": state.batch_stats,
                   "ema_params": state.ema_params, "ema_batch_stats": state.ema_batch_stats}
        self.manager.save(int(step), args=ocp.args.Composite(state=ocp.args.StandardSave(weights)), force=True)
        self.manager.wait_until_finished()
        if jax.process_index() == 0:
            path = os.path.join(self.dir, "best.json")
            with open(path + ".tmp", "w") as f:
                json.dump({"step": int(step), "metric": self.metric, "value": float(value), "split": self.split}, f)
            os.replace(path + ".tmp", path)
        jax.experimental.multihost_utils.sync_global_devices("beltcrack_best_checkpoint")
        return True

    def close(self) -> None:
        self.manager.close()
