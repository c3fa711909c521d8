"""`train_and_evaluate(config, workdir)`: the sharded, multi-host, resumable train loop.

One `jax.jit` train step over a 1-D ('data',) mesh of every device of every process: state replicated and donated,
batch sharded on its leading axis (each process loads its own `batch_size / process_count` rows and they are
assembled with `jax.make_array_from_process_local_data`). Starting in a workdir that has checkpoints resumes from
the latest one (state, EMA counter, optimiser, data-iterator position); a workdir of another config is refused.
Per `log_every_steps`: loss + components, lr, clips/s, frames/s, data-wait share, step time, MFU (compile time is
logged once, separately) to stdout, `metrics.jsonl` and TensorBoard event files; a progress bar with ETA.
A non-finite loss stops training with `NonFiniteLossError`; the state is not updated on that step and the last
checkpoint (written only after its step was checked finite) is left as it was. With `train.max_nonfinite_skips`
= N > 0, up to N non-finite steps over the whole run are skipped instead: no update (optimiser, EMA and BN untouched),
the step counter and the data position move on, each skip is logged and counted (`train/nonfinite_skipped`); every
step is then checked before the next is started. The dataset fingerprint is saved with every checkpoint; resuming
on other data is refused unless `train.allow_data_change`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any, Callable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from beltcrack_jax.train import optim, sharding
from beltcrack_jax.train import curves
from beltcrack_jax.train.checkpoint import BestCheckpointer, Checkpointer
from beltcrack_jax.train.metric_writer import MetricWriter, ProgressBar
from beltcrack_jax.train.state import TrainState, create_train_state, init_variables, load_pretrained
from beltcrack_jax.train.steps import BATCH_KEYS, make_train_step

# Dense peak FLOP/s per device: {device-kind substring: {precision: peak}} (NVIDIA datasheets; first match wins).
GPU_PEAK_FLOPS = {
    "H100 PCIe": {"bfloat16": 756e12, "tf32": 378e12, "float32": 51.2e12},
    "H100": {"bfloat16": 989.4e12, "tf32": 494.7e12, "float32": 66.9e12},
    "H200": {"bfloat16": 989.4e12, "tf32": 494.7e12, "float32": 66.9e12},
    "A100": {"bfloat16": 312e12, "tf32": 156e12, "float32": 19.5e12},
    "RTX 4090": {"bfloat16": 165.2e12, "tf32": 82.6e12, "float32": 82.6e12},
    "L4": {"bfloat16": 121e12, "tf32": 60e12, "float32": 30.3e12},
    "V100": {"bfloat16": 125e12, "tf32": 15.7e12, "float32": 15.7e12},
}


class NonFiniteLossError(FloatingPointError):
    """Training produced a non-finite loss or gradient."""


@dataclasses.dataclass
class TrainData:
    """What the loop needs from the data pipeline.

    iterator: yields this process's host batches forever (dicts with at least uint8 'clips' (b, T, H, W, 3),
      float 'boxes' (b, M, 4) cxcywh px, int 'classes' (b, M), bool 'mask' (b, M); b = batch_size/process_count);
      a grain DatasetIterator (get_state/set_state) so its position is checkpointed.
    steps_per_epoch: optimiser steps per epoch (train examples // global batch, drop_last as the reference).
    sample: one host batch (any content, right shapes/dtypes) used to initialise the model.
    """

    iterator: Iterator[Mapping[str, np.ndarray]]
    steps_per_epoch: int
    sample: Mapping[str, np.ndarray]
    dataset: Mapping[str, Any] | None = None   # {name, split, fingerprint}: saved with checkpoints, checked on resume


def maybe_initialize_distributed(coordinator_address: str = "", num_processes: int = 0, process_id: int = -1,
                                 local_device_ids: str = "") -> None:
    """`jax.distributed.initialize` from explicit flags, or from the environment (JAX_COORDINATOR_ADDRESS /
    JAX_NUM_PROCESSES / JAX_PROCESS_ID, or a cluster JAX auto-detects such as SLURM). Call before any JAX use."""
    coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
    num_processes = num_processes or int(os.environ.get("JAX_NUM_PROCESSES", "0") or 0)
    if process_id < 0 and os.environ.get("JAX_PROCESS_ID"):
        process_id = int(os.environ["JAX_PROCESS_ID"])
    kw: dict[str, Any] = {}
    if coordinator_address:
        kw.update(coordinator_address=coordinator_address, num_processes=num_processes or None,
                  process_id=None if process_id < 0 else process_id)
        if local_device_ids:
            kw["local_device_ids"] = [int(i) for i in local_device_ids.split(",")]
        jax.distributed.initialize(**kw)
    elif num_processes != 1 and max(int(os.environ.get(k, "1") or 1)
                                    for k in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")) > 1:
        jax.distributed.initialize()  # cluster auto-detection (SLURM / Open MPI), one process per task


def peak_flops_per_device(config, device: jax.Device | None = None) -> tuple[float, str]:
    """(peak FLOP/s, description) for MFU: `train.peak_flops` if > 0, else the GPU table by device kind and
    compute precision, else `train.cpu_peak_flops` on CPU."""
    device = device or jax.devices()[0]
    if config.train.peak_flops > 0:
        return float(config.train.peak_flops), "train.peak_flops"
    if device.platform == "cpu":
        return float(config.train.cpu_peak_flops), "train.cpu_peak_flops (CPU)"
    if config.train.compute_dtype == "bfloat16":
        prec = "bfloat16"
    else:
        matmul = str(jax.config.jax_default_matmul_precision or "default").lower()
        prec = "float32" if matmul in ("highest", "float32") else "tf32"
    for kind, peaks in GPU_PEAK_FLOPS.items():
        if kind.lower() in device.device_kind.lower():
            return peaks[prec], f"{kind} dense {prec}"
    return 0.0, f"unknown device kind {device.device_kind!r} (set train.peak_flops)"


def default_loss_fn(config) -> Callable:
    from beltcrack_jax.losses.yolox_loss import detection_loss

    kw = dict(config.loss.to_dict()) if "loss" in config else {}
    if "strides" in kw:
        kw["strides"] = tuple(kw["strides"])
    return functools.partial(detection_loss, num_classes=config.model.num_classes, **kw)


def default_normalize() -> Callable:
    try:
        from beltcrack_jax.data.transforms import normalize
        return normalize
    except ImportError:  # pragma: no cover
        from beltcrack_jax.train.steps import normalize_clips
        return normalize_clips


def build_train_data(config, process_index: int, process_count: int) -> TrainData:
    """The real input pipeline (`beltcrack_jax.data.pipeline.make_train_iterator`): this process's share of each
    global batch, checkpointable grain iterator, steps/epoch = key frames // global batch (drop-last)."""
    from beltcrack_jax.data import pipeline

    host_bs = config.train.batch_size // process_count
    it = pipeline.make_train_iterator(config, process_index=process_index, process_count=process_count,
                                      batch_size_per_process=host_bs)
    spec = it.info["spec"]
    h, w = spec.image_hw
    m = spec.max_boxes
    sample = {"clips": np.zeros((host_bs, spec.num_frames, h, w, 3), np.uint8),
              "boxes": np.zeros((host_bs, m, 4), np.float32), "classes": np.zeros((host_bs, m), np.int32),
              "mask": np.zeros((host_bs, m), bool)}
    print(f"train data: {it.info['name']}/{it.info['split']}, {it.info['num_key_frames']} key frames, "
          f"{it.info['steps_per_epoch']} steps/epoch (process {process_index} of {process_count})", flush=True)
    dataset = {k: it.info[k] for k in ("name", "split", "fingerprint")}
    return TrainData(iterator=it, steps_per_epoch=int(it.info["steps_per_epoch"]), sample=sample, dataset=dataset)


def build_optimizer(tc, schedule, labels, params) -> optax.GradientTransformation:
    """The optimiser of `config.train` (`tc`): the reference SGD or AdamW over the parameter groups `labels`,
    with the updates of the TARFusion parameters scaled by `tc.lr_scale_tar` (1 = the reference: unchanged)."""
    if tc.optimizer == "sgd":
        tx = optim.sgd_reference(schedule, labels, momentum=tc.momentum, nesterov=tc.nesterov,
                                 weight_decay=tc.weight_decay)
    elif tc.optimizer == "adamw":
        tx = optim.adamw_grouped(schedule, labels, b1=tc.adam_b1, b2=tc.adam_b2, weight_decay=tc.weight_decay)
    else:
        raise ValueError(f"train.optimizer must be 'sgd' (reference) or 'adamw', got {tc.optimizer!r}")
    scale = float(tc.lr_scale_tar)
    if not scale > 0:
        raise ValueError(f"train.lr_scale_tar must be > 0, got {tc.lr_scale_tar!r}")
    if scale != 1.0:
        tx = optax.chain(tx, optim.scale_updates_by(optim.lr_scale_tree(params, {optim.TAR_PREFIX: scale})))
    return tx


def build_eval_hook(config, model, mesh) -> Callable | None:
    """The evaluation part's periodic hook, if it provides one (`beltcrack_jax.eval.make_eval_hook`)."""
    try:
        from beltcrack_jax import eval as eval_pkg
    except ImportError:
        return None
    factory = getattr(eval_pkg, "make_eval_hook", None)
    return factory(config, model, mesh) if factory is not None else None


def _host_batch(batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
    if "mask" not in batch and "box_mask" in batch:  # the data pipeline's name for the GT-slot mask
        batch = {**batch, "mask": batch["box_mask"]}
    missing = [k for k in BATCH_KEYS if k not in batch]
    if missing:
        raise ValueError(f"train batch lacks {missing}; expected keys {BATCH_KEYS}, got {sorted(batch)}")
    return {k: np.asarray(batch[k]) for k in BATCH_KEYS}


def train_and_evaluate(config, workdir: str, *, model=None, loss_fn: Callable | None = None,
                       train_data: TrainData | Callable[[int, int], TrainData] | None = None,
                       eval_hook: Callable[[TrainState, int], Mapping[str, Any]] | None = None,
                       normalize: Callable | None = None, devices=None) -> TrainState:
    """Trains `config` in `workdir` (resuming from its latest checkpoint); returns the final state.

    model / loss_fn / train_data / eval_hook / normalize default to the project's real parts; tests pass small
    stand-ins. `train_data` may be a callable (process_index, process_count) -> TrainData.
    """
    tc = config.train
    is_main = jax.process_index() == 0
    # Claims the workdir (or refuses one of another config) before anything is written there.
    ckpt = Checkpointer(workdir, config, max_to_keep=tc.max_to_keep, async_save=tc.async_checkpoints)
    writer = MetricWriter(workdir, enabled=is_main)
    log = writer.log
    mesh = sharding.make_mesh(devices)
    per_device = sharding.check_batch_size(tc.batch_size, mesh, tc.grad_accum)
    host_bs = sharding.process_batch_size(tc.batch_size)
    repl, data_sh = sharding.replicated(mesh), sharding.data_sharding(mesh)

    if train_data is None:
        train_data = build_train_data(config, jax.process_index(), jax.process_count())
    elif callable(train_data) and not isinstance(train_data, TrainData):
        train_data = train_data(jax.process_index(), jax.process_count())
    if train_data.steps_per_epoch <= 0:
        raise ValueError(f"the training set yields no full global batch of {tc.batch_size} clips "
                         f"(steps_per_epoch={train_data.steps_per_epoch}): empty or too small dataset")
    spe = train_data.steps_per_epoch
    total_steps = tc.num_train_steps if tc.num_train_steps > 0 else tc.epochs * spe
    sample = _host_batch(train_data.sample)
    if sample["clips"].shape[0] != host_bs:
        raise ValueError(f"the pipeline yields {sample['clips'].shape[0]} clips per process batch, expected "
                         f"batch_size/process_count = {host_bs}")
    num_frames = sample["clips"].shape[1]

    model = model if model is not None else _build_model(config)
    loss_fn = loss_fn or default_loss_fn(config)
    normalize = normalize or default_normalize()

    log(f"devices: {jax.device_count()} ({jax.devices()[0].device_kind}) over {jax.process_count()} process(es); "
        f"global batch {tc.batch_size} = {per_device}/device x {mesh.devices.size} devices x {tc.grad_accum} "
        f"accumulation; {host_bs} clips loaded per process; BatchNorm statistics over the global (micro-)batch "
        f"of {tc.batch_size // tc.grad_accum} clips (reference: per GPU, 2 clips)")
    log(f"{spe} steps/epoch, {tc.epochs} epochs, training {total_steps} steps; compute dtype {tc.compute_dtype}")

    # ---- initial state (replicated) ---------------------------------------------------------------------------
    # Parameter init runs on one local device with the 'rbg' PRNG (XLA RngBitGenerator): the same values in
    # every process and for every mesh; threefry initialisers take minutes to compile on CPU for the full model.
    rng = jax.random.key(config.seed, impl="rbg")
    init_fn = jax.jit(lambda k, clips: init_variables(model, k, normalize(clips), config.model.init,
                                                      config.model.prior_prob))
    variables = jax.device_get(init_fn(rng, sample["clips"][:1]))
    if tc.init_from:
        variables = load_pretrained(variables, tc.init_from, log)
    variables = sharding.replicate(variables, mesh)
    labels = optim.param_labels(variables["params"], variables["batch_stats"], train_frozen=tc.train_frozen)
    groups = optim.group_summary(labels, variables["params"])
    log("param groups (tensors, values): " + ", ".join(f"{g} {n}" for g, n in groups.items())
        + f"; weight decay {tc.weight_decay} on pg1; "
        + (f"SGD momentum {tc.momentum} nesterov {tc.nesterov}" if tc.optimizer == "sgd"
           else f"AdamW b1 {tc.adam_b1} b2 {tc.adam_b2}"))
    schedule = optim.make_schedule(tc.lr, tc.batch_size, spe, tc.epochs, log=log)
    tx = build_optimizer(tc, schedule, labels, variables["params"])
    if tc.lr_scale_tar != 1.0:
        log(f"lr x {tc.lr_scale_tar} on the TARFusion parameters (neck.tar.*)")
    state = jax.jit(lambda v: create_train_state(v, tx), out_shardings=repl)(variables)
    del variables

    latest = ckpt.latest_step()
    if latest is not None:
        abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=repl), state)
        state, latest = ckpt.restore_latest(abstract, train_data.iterator, dataset=train_data.dataset,
                                            allow_data_change=bool(tc.get("allow_data_change", False)), warn=log)
        log(f"resumed from checkpoint step {latest} in {ckpt.workdir} (EMA updates {int(state.ema_updates)})")
    start = int(state.step)
    # EMA counts real updates only, so step - ema_updates = non-finite steps skipped so far in this run.
    nonfinite = _NonFinite(int(tc.get("max_nonfinite_skips", 0)), start - int(state.ema_updates))
    bump_step = jax.jit(lambda s: s + 1, out_shardings=repl)

    # ---- compiled step ----------------------------------------------------------------------------------------
    step_fn = make_train_step(model, tx, loss_fn, seed=config.seed, grad_accum=tc.grad_accum,
                              compute_dtype=jnp.dtype(tc.compute_dtype), ema_decay=tc.ema.decay,
                              ema_tau=tc.ema.tau, normalize=normalize, lr_schedule=schedule,
                              frozen=optim.frozen_mask(labels))
    jitted = jax.jit(step_fn, in_shardings=(repl, data_sh), out_shardings=(repl, repl), donate_argnums=0)
    abstract_batch = {k: jax.ShapeDtypeStruct((tc.batch_size,) + v.shape[1:], v.dtype, sharding=data_sh)
                      for k, v in sample.items()}
    t0 = time.perf_counter()
    compiled = jitted.lower(state, abstract_batch).compile()
    compile_s = time.perf_counter() - t0
    flops = _flops(compiled)
    peak, peak_src = peak_flops_per_device(config)
    log(f"train step compiled in {compile_s:.1f} s; {flops / 1e9:.3g} GFLOP per device per step "
        f"(XLA cost analysis); MFU peak {peak / 1e12:.4g} TFLOP/s per device ({peak_src})")
    writer.write_scalars(start, {"compile_time_s": compile_s, "flops_per_device_step": flops})

    ckpt_every = tc.checkpoint_every_steps if tc.checkpoint_every_steps > 0 else tc.checkpoint_every_epochs * spe
    eval_every = tc.eval_every_steps if tc.eval_every_steps > 0 else tc.eval_every_epochs * spe
    if eval_hook is None and eval_every > 0:
        eval_hook = build_eval_hook(config, model, mesh)
    # Model selection on the validation split: the best val mAP50 is kept next to the latest checkpoints.
    best_ckpt = None
    if eval_hook is not None and eval_every > 0:
        best_ckpt = BestCheckpointer(workdir, "map50", split=config.data.val_split)
        kept = best_ckpt.best()
        log(f"periodic evaluation every {eval_every} steps on split {config.data.val_split!r}; best checkpoint: "
            + (f"step {kept['step']} (val mAP50 {kept['value']:.4f})" if kept else "none yet"))

    # ---- loop -------------------------------------------------------------------------------------------------
    bar = ProgressBar(total_steps, start, enabled=is_main and tc.progress_bar)
    it = train_data.iterator
    interval = _Interval(time.perf_counter(), start)
    prev: tuple[int, dict] | None = None
    last_saved = latest
    step = start
    try:
        while step < total_steps:
            td = time.perf_counter()
            try:
                host = _host_batch(next(it))
            except StopIteration:
                raise ValueError(f"the training iterator ended at step {step} of {total_steps}; it must yield "
                                 "batches for the whole run (repeat over epochs)") from None
            batch = sharding.global_batch(host, mesh)
            interval.data_s += time.perf_counter() - td
            state, metrics = compiled(state, batch)
            step += 1
            if nonfinite.max_skips > 0:  # decide before the next step starts, so the skipped step is exactly a no-op
                if nonfinite.check(step, metrics, last_saved, ckpt, log):
                    state = state.replace(step=bump_step(state.step))
            elif prev is not None:  # check the previous step while this one runs
                nonfinite.check(*prev, last_saved, ckpt, log)
            prev = (step, metrics)

            is_last = step == total_steps
            if step % tc.log_every_steps == 0 or is_last:
                nonfinite.check(step, metrics, last_saved, ckpt, log)
                m = {k: float(v) for k, v in jax.device_get(metrics).items()}
                if nonfinite.max_skips > 0:
                    m["nonfinite_skipped"] = nonfinite.skipped
                now = time.perf_counter()
                n, wall = step - interval.step0, now - interval.t0
                step_s = wall / max(n, 1)
                m.update({"epoch": step / spe, "step_time_s": step_s,
                          "clips_per_s": n * tc.batch_size / wall, "frames_per_s": n * tc.batch_size * num_frames / wall,
                          "data_wait_share": interval.data_s / wall})
                if peak > 0:
                    m["mfu"] = flops / (step_s * peak)
                m.pop("finite", None)
                writer.write_scalars(step, m, prefix="train/")
                bar.update(step, force=True)
                interval = _Interval(time.perf_counter(), step)
            else:
                bar.update(step)
            if step % ckpt_every == 0 or is_last:
                nonfinite.check(step, metrics, last_saved, ckpt, log)
                ckpt.save(step, state, it, dataset=train_data.dataset)
                last_saved = step
            if eval_hook is not None and eval_every > 0 and (step % eval_every == 0 or is_last):
                te = time.perf_counter()
                res = dict(eval_hook(state, step) or {})
                # figures (PR curve, detection grid) come back as uint8 HWC arrays under "images/..."
                images = {k[len("images/"):]: res.pop(k) for k in [k for k in res if k.startswith("images/")]}
                if best_ckpt is not None and "map50" in res and best_ckpt.update(step, res["map50"], state):
                    log(f"step {step}: best val mAP50 so far ({res['map50']:.4f}), saved to {best_ckpt.dir}")
                res["time_s"] = time.perf_counter() - te
                writer.write_scalars(step, res, prefix="val/")
                for name, image in images.items():
                    writer.write_image(step, f"val/{name}", image)
                if is_main:
                    curves.plot_learning_curves(workdir)
                interval.t0 += time.perf_counter() - te  # evaluation time is not training time
    finally:
        ckpt.close()
        if best_ckpt is not None:
            best_ckpt.close()
        writer.close()
        if is_main:
            curves.plot_learning_curves(workdir)
    return state


def _build_model(config):
    from beltcrack_jax.models import build_model
    return build_model(config)


@dataclasses.dataclass
class _Interval:
    t0: float
    step0: int
    data_s: float = 0.0


@dataclasses.dataclass
class _NonFinite:
    """Non-finite steps: stop at the first (max_skips = 0), or skip up to max_skips of them over the run."""

    max_skips: int
    skipped: int            # so far in this run (restored runs included)
    checked: int = 0        # last step already handled (each step is checked at several points)

    def check(self, step: int, metrics: Mapping[str, jax.Array], last_saved, ckpt: Checkpointer, log) -> bool:
        """True if `step` was non-finite and is skipped (the caller advances state.step); raises if not allowed."""
        if step <= self.checked:
            return False
        self.checked = step
        if float(metrics["finite"]) > 0:
            return False
        vals = {k: float(v) for k, v in jax.device_get(metrics).items() if k != "finite"}
        what = (f"non-finite loss or gradient at step {step} (loss={vals.get('loss')}, "
                f"grad_norm={vals.get('grad_norm')}, components: "
                f"{', '.join(f'{k}={v:.4g}' for k, v in vals.items() if k.startswith('loss/'))})")
        if self.skipped < self.max_skips:
            self.skipped += 1
            log(f"WARNING: {what}: update skipped, {self.skipped} of train.max_nonfinite_skips = {self.max_skips} "
                f"used")
            return True
        ckpt.wait()
        limit = (f"train.max_nonfinite_skips = {self.max_skips} skips are used up" if self.max_skips else
                 "set --config.train.max_nonfinite_skips=N to skip up to N such steps (counted) instead")
        raise NonFiniteLossError(
            f"{what}. Training stopped; the state was not updated by that step. Last good checkpoint: "
            f"{'step ' + str(last_saved) if last_saved is not None else 'none'} in {ckpt.workdir}/checkpoints "
            f"(a restart resumes from it; {limit}).")


def _flops(compiled) -> float:
    try:
        ca = compiled.cost_analysis()
        if isinstance(ca, (list, tuple)):
            ca = ca[0]
        return float(ca.get("flops", 0.0))
    except Exception:  # noqa: BLE001  (some backends have no cost analysis)
        return 0.0
