"""One measurement in a fresh process (so peak RSS, compile caches and allocator state belong to it alone).

    python -m bench.worker TASK [--size 256] [--batch 1] [--set k=v ...] [--repeats 5] [--json out.json]

TASK: ceiling | forward | train | stream | modules | trace | compile. `python -m bench` runs these and writes the
report; run a worker directly to measure one thing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402


# ------------------------------------------------------------------------------------------------ helpers


def _timed(call, warmup: int, repeats: int, min_time: float = 0.0) -> dict[str, Any]:
    """Wall and process-CPU statistics of call() (blocked)."""
    for _ in range(warmup):
        common.block(call())
    wall, cpu = [], []
    start = time.perf_counter()
    while len(wall) < repeats or time.perf_counter() - start < min_time:
        t0, c0 = time.perf_counter(), time.process_time()
        common.block(call())
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"wall": common.stats(wall), "cpu": common.stats(cpu)}


def _compile(fn, *args, jit_kwargs=None):
    import jax

    t0 = time.perf_counter()
    lowered = jax.jit(fn, **(jit_kwargs or {})).lower(*args)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    return compiled, {"trace_lower_s": t1 - t0, "compile_s": t2 - t1}


def _counted_flops(config: str, overrides: dict, size: int, batch: int, mode: str) -> float:
    """Conv + matmul FLOPs of the plain-op model (fast paths replace some convs by element-wise taps, which the
    jaxpr counter would not see; the FLOPs of the network are those of the plain formulation)."""
    import jax

    ov = dict(overrides)
    ov.update(fast_ops=False, fold_bn=False, compute_dtype="float32", remat="none")
    cfg = common.load_config(config, {k: v for k, v in ov.items() if k in _model_fields(config)})
    from beltcrack_jax.models import build_model

    model = build_model(cfg)
    from beltcrack_jax.convert import abstract_variables

    abstract = abstract_variables(model, model.num_frames, 64)
    if mode == "forward":
        clips = jax.ShapeDtypeStruct((batch, model.num_frames, size, size, 3), "float32")
        return common.matmul_flops(common.forward_fn(model), abstract, clips)
    step, state, _ = common.train_step_parts(model, common.bench_variables(model, 64), cfg)
    b = common.sample_batch(batch, model.num_frames, size)
    return common.matmul_flops(step, state, b)


def _model_fields(config: str) -> set[str]:
    return set(common.load_config(config).model.keys())


def _memory(compiled) -> dict[str, Any]:
    return {"xla": common.xla_memory(compiled), "peak_rss_mib": common.peak_rss_mib(),
            "device": common.device_memory_stats()}


# ------------------------------------------------------------------------------------------------ tasks


def task_ceiling(args) -> dict[str, Any]:
    """Dense 3x3 convolutions (stride 1, SAME, NHWC/HWIO, f32) of the sizes the network itself runs; the best
    median GFLOP/s is the practical ceiling."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    shapes = [(1, 64, 64, 768, 1024), (1, 128, 128, 256, 256), (5, 64, 64, 128, 128)]
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    out = []
    rng = np.random.default_rng(0)
    for n, h, w, ci, co in shapes:
        x = jnp.asarray(rng.standard_normal((n, h, w, ci)), dtype)
        k = jnp.asarray(0.02 * rng.standard_normal((3, 3, ci, co)), dtype)
        f = jax.jit(lambda a, b: jax.lax.conv_general_dilated(a, b, (1, 1), "SAME",
                                                              dimension_numbers=("NHWC", "HWIO", "NHWC")))
        t = _timed(lambda: f(x, k), 1, args.repeats)
        flops = 2.0 * n * h * w * co * 9 * ci
        out.append({"shape": f"{n}x{h}x{w}x{ci} -> {co}", "gflop": flops / 1e9, **t,
                    "gflops_wall": flops / t["wall"]["median"] / 1e9,
                    "gflops_cpu": flops / t["cpu"]["median"] / 1e9})
    best = max(out, key=lambda r: r["gflops_wall"])
    return {"convs": out, "ceiling_gflops": best["gflops_wall"], "ceiling_shape": best["shape"],
            "ceiling_gflops_per_cpu_s": max(r["gflops_cpu"] for r in out), "dtype": args.dtype}


def task_forward(args) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp

    ov = common.parse_overrides(args.set)
    model, variables = common.model_and_variables(args.config, ov, args.size)
    clips = common.sample_clips(args.batch, model.num_frames, args.size)
    variables = jax.device_put(variables)
    clips = jax.device_put(jnp.asarray(clips))
    compiled, ctime = _compile(common.forward_fn(model), variables, clips)
    t = _timed(lambda: compiled(variables, clips), args.warmup, args.repeats, args.min_time)
    flops = _counted_flops(args.config, ov, args.size, args.batch, "forward")
    med = t["wall"]["median"]
    return {"size": args.size, "batch": args.batch, "overrides": ov, **ctime, **t,
            "clips_per_s": args.batch / med, "s_per_clip": med / args.batch,
            "counted_gflop": flops / 1e9, "xla_cost": common.xla_cost(compiled),
            "gflops": flops / med / 1e9, "gflops_per_cpu_s": flops / t["cpu"]["median"] / 1e9,
            "memory": _memory(compiled)}


def task_train(args) -> dict[str, Any]:
    import jax

    ov = common.parse_overrides(args.set)
    cfg = common.load_config(args.config, ov)
    model, variables = common.model_and_variables(args.config, ov, args.size)
    step, state, source = common.train_step_parts(model, variables, cfg)
    batch = jax.device_put(common.sample_batch(args.batch, model.num_frames, args.size))
    state = jax.device_put(state)
    compiled, ctime = _compile(step, state, batch, jit_kwargs={"donate_argnums": 0})
    holder = {"state": state}

    def call():
        holder["state"], metrics = compiled(holder["state"], batch)
        return metrics

    t = _timed(call, args.warmup, args.repeats, args.min_time)
    flops = _counted_flops(args.config, ov, args.size, args.batch, "train")
    med = t["wall"]["median"]
    return {"size": args.size, "batch": args.batch, "overrides": ov, "step": source, **ctime, **t,
            "clips_per_s": args.batch / med, "s_per_step": med,
            "counted_gflop": flops / 1e9, "xla_cost": common.xla_cost(compiled),
            "gflops": flops / med / 1e9, "gflops_per_cpu_s": flops / t["cpu"]["median"] / 1e9,
            "memory": _memory(compiled)}


def _reference_fwdbwd(model):
    """(variables, clips) -> parameter gradients of mean(out²) with train-mode BN: the reference's timing."""
    import jax
    import jax.numpy as jnp

    def fwdbwd(v, x):
        def loss(p):
            out, new = model.apply({"params": p, "batch_stats": v["batch_stats"]}, x, train=True,
                                   mutable=["batch_stats"])
            return jnp.mean(out ** 2), new["batch_stats"]
        return jax.grad(loss, has_aux=True)(v["params"])

    return fwdbwd


def task_fwdbwd(args) -> dict[str, Any]:
    """The reference's "forward+backward" figure (spec §9): train-mode BN, loss = mean of the squared raw
    outputs, gradients of all parameters; no detection loss, no optimiser."""
    import jax
    import jax.numpy as jnp

    ov = common.parse_overrides(args.set)
    model, variables = common.model_and_variables(args.config, ov, args.size)
    clips = jax.device_put(jnp.asarray(common.sample_clips(args.batch, model.num_frames, args.size)))
    variables = jax.device_put(variables)

    compiled, ctime = _compile(_reference_fwdbwd(model), variables, clips)
    t = _timed(lambda: compiled(variables, clips), args.warmup, args.repeats, args.min_time)
    plain = common.load_config(args.config, {k: v for k, v in {**ov, "fast_ops": False, "remat": "none"}.items()
                                             if k in _model_fields(args.config)})
    from beltcrack_jax.models import build_model

    flops = common.matmul_flops(_reference_fwdbwd(build_model(plain)), variables, clips)
    med = t["wall"]["median"]
    return {"size": args.size, "batch": args.batch, "overrides": ov, "step": "fwd+bwd, loss = mean(out^2)",
            **ctime, **t, "clips_per_s": args.batch / med, "counted_gflop": flops / 1e9,
            "xla_cost": common.xla_cost(compiled), "gflops": flops / med / 1e9,
            "gflops_per_cpu_s": flops / t["cpu"]["median"] / 1e9, "memory": _memory(compiled)}


def task_stream(args) -> dict[str, Any]:
    """Per-new-frame latency with cached backbone features: `beltcrack_jax.predict.stream_step` (backbone of the
    new frame + neck + head + decode + NMS, ring of T feature maps on the device)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    ov = common.parse_overrides(args.set)
    model, variables = common.model_and_variables(args.config, ov, args.size)
    variables = jax.device_put(variables)
    rng = np.random.default_rng(0)
    frames = [jnp.asarray(rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)) for _ in range(4)]
    from beltcrack_jax import predict
    from beltcrack_jax.data.transforms import normalize

    static = dict(model=model, input_hw=(args.size, args.size), max_detections=100, method="auto",
                  normalize=normalize)
    undo = jnp.asarray([[1.0, 1.0, 0.0, 0.0]], jnp.float32)
    conf, nms = jnp.float32(0.05), jnp.float32(0.5)
    t0 = time.perf_counter()
    ring, out = predict.stream_first(variables, frames[0], undo, conf, nms, **static)
    common.block(out)
    first_s = time.perf_counter() - t0

    def step(ring, f):
        return predict.stream_step(variables, ring, f, undo, conf, nms, **static)
    source = "beltcrack_jax.predict.stream_step (backbone 1 frame + neck + head + decode + NMS)"

    holder = {"ring": ring, "i": 0}

    def call():
        holder["i"] += 1
        holder["ring"], o = step(holder["ring"], frames[holder["i"] % len(frames)])
        return o

    t = _timed(call, args.warmup, args.frames)
    return {"size": args.size, "overrides": ov, "source": source, "first_frame_s": first_s, **t,
            "frames_per_s": 1.0 / t["wall"]["median"]}


def _module_grad_fn(module, variables, inputs, input_grad: bool = True):
    """f(v, *xs) -> gradients of sum(out * ct) of a train-mode apply (BN on batch statistics), w.r.t. the params
    the optimiser trains (frozen leaves behind stop_gradient, as in the train step) and the inputs: the
    module's share of a train step's forward + backward."""
    import inspect

    import jax
    import jax.numpy as jnp

    from beltcrack_jax.train import optim

    frozen = optim.frozen_mask(optim.param_labels(variables["params"], variables.get("batch_stats", {})))
    kw = {"train": True} if "train" in inspect.signature(module.__call__).parameters else {}
    mutable = ["batch_stats"] if "batch_stats" in variables else False

    def loss(params, v, xs):
        params = optim.stop_frozen_gradients(params, frozen)
        out = module.apply({**v, "params": params}, *xs, mutable=mutable, **kw)
        out = out[0] if mutable else out
        return sum(jnp.sum(o * jnp.cos(o)) for o in jax.tree.leaves(out))   # a non-trivial cotangent

    def f(v, *xs):
        if input_grad:
            return jax.grad(loss, argnums=(0, 2))(v["params"], v, xs)
        return jax.grad(loss)(v["params"], v, jax.lax.stop_gradient(xs))

    return f


def task_modules(args) -> dict[str, Any]:
    """Standalone jitted applies of each neck piece (and backbone / head) on inputs of the shapes they get
    inside the network (batch B, T frames, size/8 feature maps, C = 128 channels), timed separately.
    `--grad`: forward + backward in train mode instead (GFLOP then counts both passes)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from beltcrack_jax.models import resolve_swin_window_chunk
    from beltcrack_jax.models.atm import GAL, TARFusion
    from beltcrack_jax.models.backbone import YOLOPAFPN
    from beltcrack_jax.models.head import YOLOXHead
    from beltcrack_jax.models.hsm import KeyValue, MemoryReader, NonLocalBlock
    from beltcrack_jax.models.layers import ConvSequence
    from beltcrack_jax.models.rcu import ResCBAM
    from beltcrack_jax.models.swin3d import SwinBlock3D
    from beltcrack_jax.models.wfm import WTConv

    ov = common.parse_overrides(args.set)
    cfg = common.load_config(args.config, ov)
    m = cfg.model
    fast = bool(m.get("fast_ops", True))
    chunk = resolve_swin_window_chunk(m.get("swin_window_chunk", -1))
    b, t, c = args.batch, m.num_frames, int(round(128 * m.width))
    h = args.size // 8
    rng = np.random.default_rng(0)

    def rnd(*shape):
        return jnp.asarray(rng.standard_normal(shape), jnp.float32)

    cases = [
        ("backbone (T frames)", YOLOPAFPN(m.depth, m.backbone_width, m.width, fast_ops=fast),
         (rnd(b * t, args.size, args.size, 3),)),
        ("HSM conv_ref (gate)", ConvSequence((2 * c, c), acts=("silu", "sigmoid")), (rnd(b, h, h, (t - 1) * c),)),
        ("HSM conv_cr_mix", ConvSequence((2 * c, c)), (rnd(b, h, h, 2 * c),)),
        ("HSM non-local (NAB)", NonLocalBlock(c, fast), (rnd(b, h, h, c),)),
        ("HSM key/value (x2)", KeyValue(c // 2, c), (rnd(b, h, h, c),)),
        ("HSM memory reader", MemoryReader(c, fast), (rnd(b, h, h, c // 2), rnd(b, h, h, c), rnd(b, h, h, c // 2),
                                                     rnd(b, h, h, c))),
        ("ATM TAR (attention + hourglass)", TARFusion(c, fast), (rnd(b, t, h, h, c),)),
        ("ATM GAL", GAL(c), (rnd(b, h, h, c),)),
        ("conv_fin_mix", ConvSequence((2 * c, c)), (rnd(b, h, h, 2 * c),)),
        ("WFM WTConv (T frames)", WTConv(c, fast_ops=fast), (rnd(b * t, h, h, c),)),
        ("WFM conv_fre_new", ConvSequence((4 * c, 2 * c, c)), (rnd(b, h, h, (t + 1) * c),)),
        ("WFM Swin", SwinBlock3D(c, t + 1, 4, (t + 1, 8, 8), fast_ops=fast, window_chunk=chunk), (rnd(b, h, h, (t + 1) * c),)),
        ("WFM conv_t", ConvSequence((8 * c, c)), (rnd(b, h, h, (t + 1) * c),)),
        ("RCU (one of 3)", ResCBAM(c), (rnd(b, h, h, 2 * c),)),
        ("head", YOLOXHead(m.num_classes, m.width), (rnd(b, h, h, c),)),
    ]
    counts = {"HSM key/value (x2)": 2, "RCU (one of 3)": 3}
    rows = []
    for name, module, inputs in cases:
        variables = jax.jit(module.init)(jax.random.key(0, impl="rbg"), *inputs)

        def f(v, *xs, module=module):
            return module.apply(v, *xs)

        if args.grad:
            f = _module_grad_fn(module, variables, inputs, input_grad=not name.startswith("backbone"))

        compiled = jax.jit(f).lower(variables, *inputs).compile()
        tm = _timed(lambda: compiled(variables, *inputs), 1, args.repeats)
        flops = common.matmul_flops(f, variables, *inputs)
        k = counts.get(name, 1)
        rows.append({"module": name, "times_in_model": k, "wall_ms": 1e3 * k * tm["wall"]["median"],
                     "cpu_ms": 1e3 * k * tm["cpu"]["median"], "gflop": k * flops / 1e9,
                     "gflops_per_cpu_s": flops / tm["cpu"]["median"] / 1e9 if flops else None})
    total = sum(r["cpu_ms"] for r in rows)
    for r in rows:
        r["share_cpu"] = r["cpu_ms"] / total
    return {"size": args.size, "batch": args.batch, "overrides": ov, "rows": rows, "total_cpu_ms": total,
            "total_wall_ms": sum(r["wall_ms"] for r in rows)}


def task_trace(args) -> dict[str, Any]:
    """XLA's per-op trace of the whole compiled forward, grouped by module (bench.profile)."""
    import jax

    from bench.profile import profile_compiled

    ov = common.parse_overrides(args.set)
    model, variables = common.model_and_variables(args.config, ov, args.size)
    clips = common.sample_clips(args.batch, model.num_frames, args.size)
    compiled = jax.jit(common.forward_fn(model)).lower(variables, clips).compile()
    common.block(compiled(variables, clips))
    prof = profile_compiled(compiled, (variables, clips), runs=max(2, args.repeats // 2))
    prof["size"], prof["batch"], prof["overrides"] = args.size, args.batch, ov
    return prof


def task_compile(args) -> dict[str, Any]:
    """Compile time of the forward in this process (run twice with the same --cache-dir: cold, then warm from
    JAX's persistent compilation cache)."""
    ov = common.parse_overrides(args.set)
    model, variables = common.model_and_variables(args.config, ov, args.size)
    clips = common.sample_clips(args.batch, model.num_frames, args.size)
    f = common.forward_fn(model)
    _, ctime = _compile(f, variables, clips)
    return {"size": args.size, "batch": args.batch, "cache_dir": args.cache_dir, **ctime}


TASKS = {"ceiling": task_ceiling, "forward": task_forward, "train": task_train, "fwdbwd": task_fwdbwd,
         "stream": task_stream,
         "modules": task_modules, "trace": task_trace, "compile": task_compile}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("task", choices=sorted(TASKS))
    ap.add_argument("--config", default="configs/default.py")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--set", nargs="*", default=[], help="config.model overrides key=value")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--min-time", type=float, default=0.0, help="keep timing at least this many seconds")
    ap.add_argument("--frames", type=int, default=30, help="stream: timed frames")
    ap.add_argument("--grad", action="store_true", help="modules: time forward + backward (train mode)")
    ap.add_argument("--dtype", default="float32", help="ceiling: float32 | bfloat16")
    ap.add_argument("--cache-dir", default=None, help="JAX persistent compilation cache directory")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    common.setup_jax(cache_dir=args.cache_dir)
    t0 = time.perf_counter()
    result = TASKS[args.task](args)
    result.update(task=args.task, seconds=time.perf_counter() - t0, load_avg_end=common.load_average())
    text = json.dumps(result, indent=1, default=str)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
