"""Shared pieces of the benchmark suite: JAX setup, timing statistics (medians / spread), bench variables,
forward and train-step functions, FLOP counts and memory figures."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import sys
from typing import Any, Callable, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)


# ------------------------------------------------------------------------------------------------ environment


def setup_jax(cache_dir: str | None = None, matmul_precision: str | None = None) -> None:
    """Optional persistent compilation cache (`jax_compilation_cache_dir`, every executable cached, however
    fast it compiled) and default matmul precision. Call before the first compilation."""
    import jax

    if cache_dir:
        os.makedirs(cache_dir, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    if matmul_precision:
        jax.config.update("jax_default_matmul_precision", matmul_precision)


def load_average() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:  # pragma: no cover
        return (float("nan"),) * 3


def machine_info() -> dict[str, Any]:
    import jax

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = float("nan")
    try:
        import psutil

        mem = psutil.virtual_memory().total / 2**30
    except ImportError:  # pragma: no cover
        pass
    dev = jax.devices()[0]
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem, 1), "platform": dev.platform,
            "device_kind": dev.device_kind, "device_count": jax.device_count(), "jax": jax.__version__,
            "python": platform.python_version(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "hostname": platform.node()}


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (MiB)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 if sys.platform != "darwin" else r / 2**20


def device_memory_stats() -> dict[str, float] | None:
    """Accelerator memory statistics (bytes in use / peak) or None on CPU."""
    import jax

    try:
        s = jax.devices()[0].memory_stats()
    except Exception:  # pragma: no cover
        return None
    if not s:
        return None
    keep = ("bytes_in_use", "peak_bytes_in_use", "bytes_limit")
    return {k: float(s[k]) for k in keep if k in s}


# ------------------------------------------------------------------------------------------------ timing


def block(x: Any) -> Any:
    import jax

    return jax.block_until_ready(x)


def stats(times: Sequence[float]) -> dict[str, Any]:
    ts = sorted(float(t) for t in times)
    n = len(ts)

    def q(p):
        if n == 1:
            return ts[0]
        k = p * (n - 1)
        lo = int(k)
        hi = min(lo + 1, n - 1)
        return ts[lo] + (ts[hi] - ts[lo]) * (k - lo)

    return {"median": statistics.median(ts), "min": ts[0], "max": ts[-1], "p10": q(0.1), "p90": q(0.9),
            "p50": q(0.5), "p99": q(0.99), "n": n, "runs": ts}


# ------------------------------------------------------------------------------------------------ model + data


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """['fold_bn=true', 'compute_dtype=bfloat16', 'rcu=2'] -> typed dict."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"model override must be key=value, got {item!r}")
        k, v = item.split("=", 1)
        low = v.lower()
        if low in ("true", "false"):
            out[k] = low == "true"
        else:
            try:
                out[k] = int(v)
            except ValueError:
                try:
                    out[k] = float(v)
                except ValueError:
                    out[k] = v
    return out


def load_config(path: str, overrides: dict[str, Any] | None = None):
    from beltcrack_jax.convert import load_config_file

    cfg = load_config_file(path if os.path.isabs(path) else os.path.join(REPO, path))
    for k, v in (overrides or {}).items():
        if k not in cfg.model:
            raise ValueError(f"unknown model field {k!r}; config.model has {sorted(cfg.model.keys())}")
        cfg.model[k] = v   # an existing field: allowed on a locked ConfigDict
    return cfg


def bench_variables(model, size: int = 64, seed: int = 0) -> dict[str, Any]:
    """Variables for timing without compiling the initialiser: shapes from `jax.eval_shape(model.init)`, values
    drawn on the host -- kernels N(0, 1/fan_in) (variance-preserving, so activations neither vanish into
    denormals nor blow up), BN scale 1 / bias 0 / mean 0 / var 1, the NAB's `gamma` 0 (its value at init and in
    every checkpoint the reference trains: it is never optimised), every other leaf N(0, 0.02)."""
    import jax
    import numpy as np

    from beltcrack_jax.convert import abstract_variables

    abstract = abstract_variables(model, model.num_frames, size)
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = str(getattr(path[-1], "key", path[-1]))
        shape, dtype = leaf.shape, leaf.dtype
        if name == "kernel":
            fan_in = int(np.prod(shape[:-1])) or 1
            v = rng.standard_normal(shape) / np.sqrt(fan_in)
        elif name in ("scale", "var"):
            v = np.ones(shape)
        elif name in ("bias", "mean", "gamma"):
            v = np.zeros(shape)
        else:
            v = 0.02 * rng.standard_normal(shape)
        return np.asarray(v, dtype=dtype)

    return jax.tree_util.tree_map_with_path(fill, jax.tree.map(lambda x: x, dict(abstract)))


def model_and_variables(config_path: str, overrides: Sequence[str] | dict, size: int):
    """(model, variables) for a config + `model` overrides; variables are folded when `fold_bn` is on."""
    from beltcrack_jax.models import build_model

    ov = parse_overrides(overrides) if not isinstance(overrides, dict) else dict(overrides)
    cfg = load_config(config_path, ov)
    model = build_model(cfg)
    if getattr(model, "fold_bn", False):
        from beltcrack_jax.models.inference import fold_batchnorm

        plain = build_model(load_config(config_path, {**ov, "fold_bn": False}))
        variables = fold_batchnorm(bench_variables(plain, 64))
    else:
        variables = bench_variables(model, 64)
    return model, variables


def sample_clips(batch: int, t: int, size: int, seed: int = 0, uint8: bool = False):
    import numpy as np

    rng = np.random.default_rng(seed)
    if uint8:
        return rng.integers(0, 256, (batch, t, size, size, 3), dtype=np.uint8)
    return rng.standard_normal((batch, t, size, size, 3)).astype(np.float32)


def sample_batch(batch: int, t: int, size: int, max_boxes: int = 64, boxes_per_clip: int = 4, seed: int = 0):
    """A train batch like the pipeline's: uint8 clips, cxcywh boxes (px), classes, mask."""
    import numpy as np

    rng = np.random.default_rng(seed)
    boxes = np.zeros((batch, max_boxes, 4), np.float32)
    k = boxes_per_clip
    boxes[:, :k, :2] = rng.uniform(0.2 * size, 0.8 * size, (batch, k, 2))
    boxes[:, :k, 2:] = rng.uniform(0.05 * size, 0.3 * size, (batch, k, 2))
    mask = np.zeros((batch, max_boxes), bool)
    mask[:, :k] = True
    return {"clips": sample_clips(batch, t, size, seed, uint8=True), "boxes": boxes,
            "classes": np.zeros((batch, max_boxes), np.int32), "mask": mask}


# ------------------------------------------------------------------------------------------------ functions


def forward_fn(model) -> Callable:
    def forward(variables, clips):
        return model.apply(variables, clips, train=False)

    return forward


def train_step_parts(model, variables, cfg):
    """(step_fn(state, batch) -> (state, metrics), state, source): the project's train step
    (beltcrack_jax.train.steps.make_train_step + the reference SGD, frozen leaves without gradient)."""
    import functools

    import jax.numpy as jnp

    from beltcrack_jax.data.transforms import normalize
    from beltcrack_jax.losses import yolox_loss
    from beltcrack_jax.train import optim, steps
    from beltcrack_jax.train.state import create_train_state

    kw = dict(cfg.loss.to_dict()) if "loss" in cfg else {}
    if "strides" in kw:
        kw["strides"] = tuple(kw["strides"])
    loss_fn = functools.partial(yolox_loss.detection_loss, num_classes=cfg.model.num_classes, **kw)
    params, stats_ = variables["params"], variables.get("batch_stats", {})
    compute_dtype = jnp.dtype(cfg.train.compute_dtype) if "train" in cfg else jnp.float32
    labels = optim.param_labels(params, stats_)
    tx = optim.sgd_reference(1e-3, labels, momentum=cfg.train.momentum, nesterov=cfg.train.nesterov,
                             weight_decay=cfg.train.weight_decay)
    step = steps.make_train_step(model, tx, loss_fn, compute_dtype=compute_dtype, frozen=optim.frozen_mask(labels),
                                 normalize=normalize)
    state = create_train_state({"params": params, "batch_stats": stats_}, tx)
    return step, state, "beltcrack_jax.train.steps.make_train_step + optim.sgd_reference"


# ------------------------------------------------------------------------------------------------ costs


def matmul_flops(fn: Callable, *args) -> float:
    """Conv + matmul FLOPs (2 per MAC) of `fn(*args)`, counted on its jaxpr (as the reference's FlopCounterMode)."""
    import jax

    from beltcrack_jax.models.__main__ import matmul_flops_of_jaxpr

    return float(matmul_flops_of_jaxpr(jax.make_jaxpr(fn)(*args).jaxpr))


def xla_cost(compiled) -> dict[str, float]:
    try:
        a = compiled.cost_analysis()
    except Exception:  # pragma: no cover
        return {}
    if isinstance(a, (list, tuple)):
        a = a[0] if a else {}
    a = a or {}
    return {k: float(a[k]) for k in ("flops", "bytes accessed", "transcendentals") if k in a}


def xla_memory(compiled) -> dict[str, float]:
    """XLA's static buffer assignment (bytes): arguments, outputs, temporaries, and their sum less aliasing."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # pragma: no cover
        return {}
    if m is None:
        return {}
    out = {k: float(getattr(m, f"{k}_size_in_bytes", 0)) for k in ("argument", "output", "temp", "alias",
                                                                    "generated_code")}
    out["total"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
    return out
