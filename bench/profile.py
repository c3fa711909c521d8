"""Per-module share of time of a compiled function, from XLA's own per-op trace.

    python -m bench.profile [--size 256] [--batch 1] [--mode forward|train] [--config configs/default.py] [--top 25]

How: the function is compiled once, its optimised HLO gives, for every instruction of the entry computation, the
`op_name` metadata that Flax writes (`jit(f)/BeltCrackDet/neck/wfm/swin/...`, with `jvp(...)` / `transpose(...)`
wrappers for a backward pass); `jax.profiler.trace` records one event per executed thunk (XLA:CPU names each
thunk after its HLO instruction, `ynn_fusion.12`, `wrapped_reduce-window.2`, ...; on GPU the kernels carry the
fusion names too). Durations are summed per instruction and mapped to module groups (`GROUPS`). The two CPU
threads may run independent thunks concurrently, so the summed op time can exceed the wall time; shares are of
the summed op time.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import shutil
import sys
import tempfile
import time
from typing import Any, Callable

# (group, regex on the module path after the model's class name); first match wins.
GROUPS: tuple[tuple[str, str], ...] = (
    ("backbone", r"^backbone/"),
    ("HSM gate+mix (conv_ref, conv_cur, conv_cr_mix)", r"^neck/hsm/(conv_ref|conv_cur|conv_cr_mix)"),
    ("HSM non-local (NAB)", r"^neck/hsm/nolocal"),
    ("HSM key/value convs", r"^neck/hsm/keyvalue"),
    ("HSM memory reader", r"^neck/hsm/memory"),
    ("ATM TAR attention + fusion", r"^neck/atm/tar/(temporal_attn|feat_fusion)"),
    ("ATM TAR hourglass", r"^neck/atm/tar/"),
    ("ATM GAL", r"^neck/atm/gal"),
    ("conv_fin_mix", r"^neck/conv_fin_mix"),
    ("WFM WTConv (conv_dw)", r"^neck/wfm/conv_dw"),
    ("WFM conv_fre_new", r"^neck/wfm/conv_fre_new"),
    ("WFM Swin", r"^neck/wfm/swin"),
    ("WFM conv_t", r"^neck/wfm/conv_t"),
    ("RCUs (resblock0-2)", r"^neck/resblock"),
    ("neck other (concat, layout)", r"^neck/"),
    ("head", r"^head/"),
)

_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*.*?metadata=\{op_name=\"([^\"]*)\"")


def instruction_paths(hlo_text: str) -> dict[str, str]:
    """{HLO instruction name: op_name metadata} for every instruction that has one."""
    out = {}
    for line in hlo_text.splitlines():
        m = _INSTR.match(line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def module_path(op_name: str, root: str = "BeltCrackDet") -> str:
    """'jit(step)/transpose(jvp(BeltCrackDet))/neck/wfm/swin/...' -> 'neck/wfm/swin/...' ('' if no model path)."""
    i = op_name.rfind(root)
    if i < 0:
        return ""
    rest = op_name[i + len(root):]
    return re.sub(r"^(\.\w+)?\)*/?", "", rest)


def group_of(path: str, groups=GROUPS) -> str:
    for name, pattern in groups:
        if re.search(pattern, path):
            return name
    return "outside the model (loss, optimiser, casts)" if not path else "other"


def trace_op_times(fn: Callable, args: tuple, runs: int = 3) -> tuple[dict[str, float], float]:
    """Runs `fn(*args)` `runs` times under the profiler; returns ({event name: mean seconds per run}, wall s per
    run). `fn` must already be compiled/warm."""
    import jax

    tmp = tempfile.mkdtemp(prefix="bench_trace_")
    try:
        t0 = time.perf_counter()
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            for _ in range(runs):
                jax.block_until_ready(fn(*args))
        wall = (time.perf_counter() - t0) / runs
        paths = glob.glob(os.path.join(tmp, "**", "*.trace.json.gz"), recursive=True)
        if not paths:
            return {}, wall
        with gzip.open(paths[0]) as f:
            data = json.load(f)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    events = data["traceEvents"] if isinstance(data, dict) else data
    totals: dict[str, float] = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and "dur" in e:
            totals[e["name"]] += e["dur"] * 1e-6 / runs
    return dict(totals), wall


def profile_compiled(compiled, args: tuple, runs: int = 3, root: str = "BeltCrackDet") -> dict[str, Any]:
    """Per-group and per-instruction op time of a compiled executable (see module docstring)."""
    paths = instruction_paths(compiled.as_text())
    times, wall = trace_op_times(compiled, args, runs)
    groups: dict[str, float] = collections.Counter()
    ops = []
    for name, sec in times.items():
        if name not in paths:
            continue
        p = module_path(paths[name], root)
        groups[group_of(p)] += sec
        ops.append((sec, name, p or paths[name]))
    ops.sort(reverse=True)
    total = sum(groups.values())
    return {
        "wall_s": wall,
        "op_total_s": total,
        "groups": {k: {"s": v, "share": v / total if total else float("nan")}
                   for k, v in sorted(groups.items(), key=lambda kv: -kv[1])},
        "top_ops": [{"s": s, "op": n, "path": p} for s, n, p in ops[:40]],
    }


def format_profile(prof: dict[str, Any], top: int = 15) -> str:
    lines = [f"wall {prof['wall_s'] * 1e3:.1f} ms per call, summed op time {prof['op_total_s'] * 1e3:.1f} ms",
             "", "| module group | ms | share |", "|---|---:|---:|"]
    for k, v in prof["groups"].items():
        lines.append(f"| {k} | {v['s'] * 1e3:.1f} | {100 * v['share']:.1f}% |")
    lines += ["", f"Top {top} ops:", "", "| ms | HLO op | module path |", "|---:|---|---|"]
    for o in prof["top_ops"][:top]:
        lines.append(f"| {o['s'] * 1e3:.2f} | `{o['op']}` | `{o['path'][:90]}` |")
    return "\n".join(lines)


def main(argv=None) -> int:
    import argparse

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from bench import common

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/default.py")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--mode", choices=("forward", "train"), default="forward")
    ap.add_argument("--set", nargs="*", default=[], help="model overrides, e.g. fold_bn=true")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args(argv)
    common.setup_jax()
    import jax

    model, variables = common.model_and_variables(args.config, args.set, args.size)
    if args.mode == "forward":
        fn = common.forward_fn(model)
        fargs = (variables, common.sample_clips(args.batch, model.num_frames, args.size))
    else:  # no donation here: the same state is fed to every profiled call
        cfg = common.load_config(args.config, common.parse_overrides(args.set))
        fn, state, _ = common.train_step_parts(model, variables, cfg)
        fargs = (state, common.sample_batch(args.batch, model.num_frames, args.size))
    compiled = jax.jit(fn).lower(*fargs).compile()
    common.block(compiled(*fargs))
    prof = profile_compiled(compiled, fargs, args.runs)
    print(format_profile(prof, args.top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
