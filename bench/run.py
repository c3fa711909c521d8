"""The benchmark suite: one command, a Markdown + JSON report.

    python -m bench [--sizes 256 512] [--batch 1] [--repeats 5] [--train-repeats 3] [--out bench/results]
                    [--skip train stream ...] [--quick]

Every measurement runs in its own process (`python -m bench.worker TASK ...`) with warm-up, then `--repeats`
timed calls; the report gives medians, minima and the p10-p90 spread of wall time, the process CPU time (robust
to other load on the machine: a shared 2-core box reads high on wall time), the conv + matmul FLOPs of the
network (the reference's FlopCounterMode quantity) as achieved GFLOP/s and as a fraction of the dense 3x3 conv
ceiling measured in the same run, XLA's cost analysis and buffer sizes, peak RSS (device memory statistics on an
accelerator), compile time, streaming per-frame latency, the data pipeline's clips/s (bench/data_pipeline.py),
and the per-module share of time (standalone jitted submodules on the shapes they see in the network).

Workers get `MALLOC_MMAP_THRESHOLD_` / `MALLOC_TRIM_THRESHOLD_` (glibc keeps large freed blocks instead of
returning them to the OS, so XLA:CPU's big temporaries are not page-faulted in again on every call; see
BENCHMARKS.md) unless `--no-malloc-tuning`; one forward is also measured without them.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402

MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "17179869184"}

# Reference PyTorch CPU numbers on this machine (spec §9) and the targets: (size, batch) -> seconds.
REFERENCE = {"forward": {256: 0.76, 512: 3.49}, "train": {256: 2.09, 512: 9.37}}
TARGET = {"forward": {256: 0.45, 512: 2.1}, "train": {256: 1.3, 512: 6.0}}
FORWARD_CEILING_TARGET = 0.75

ALL_TASKS = ("ceiling", "forward", "variants", "fwdbwd", "train", "remat", "stream", "modules", "trace", "compile",
             "pipeline", "malloc")


def run_worker(task: str, args: list[str], env_extra: dict[str, str] | None, timeout: float,
               log=print) -> dict[str, Any] | None:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    cmd = [sys.executable, "-m", "bench.worker", task, *args, "--json", out]
    env = dict(os.environ)
    for k in MALLOC_ENV:
        env.pop(k, None)
    env.update(env_extra or {})
    t0 = time.perf_counter()
    log(f"  $ {' '.join(shlex.quote(c) for c in cmd[1:])}")
    try:
        p = subprocess.run(cmd, cwd=common.REPO, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        log(f"    timed out after {timeout:.0f} s")
        return {"error": f"timeout {timeout:.0f} s", "task": task, "args": args}
    if p.returncode != 0:
        tail = (p.stderr or p.stdout)[-1500:]
        log(f"    failed (rc {p.returncode}):\n{tail}")
        return {"error": tail, "task": task, "args": args}
    with open(out) as f:
        res = json.load(f)
    os.unlink(out)
    res["argv"] = args
    log(f"    done in {time.perf_counter() - t0:.0f} s")
    return res


def run_pipeline(seconds: float, timeout: float, log=print) -> dict[str, Any] | None:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    cmd = [sys.executable, os.path.join("bench", "data_pipeline.py"), "--seconds", str(seconds), "--workers", "0",
           "--json", out]
    log(f"  $ {' '.join(cmd[1:])}")
    try:
        p = subprocess.run(cmd, cwd=common.REPO, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout {timeout:.0f} s"}
    if p.returncode != 0:
        return {"error": (p.stderr or p.stdout)[-1500:]}
    with open(out) as f:
        res = json.load(f)
    os.unlink(out)
    res["stdout"] = p.stdout
    return res


# ------------------------------------------------------------------------------------------------ report


def _ms(x: float) -> str:
    return f"{1e3 * x:.1f}"


def _s(x: float) -> str:
    return f"{x:.3f}"


def _mib(b: float | None) -> str:
    return "-" if b is None else f"{b / 2**20:.0f}"


def _ok(r: dict | None) -> bool:
    return bool(r) and "error" not in r


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    ceil = report.get("ceiling") or {}
    c = ceil.get("ceiling_gflops")
    lines = [
        "# Benchmark report",
        "",
        f"* Date: {report['date']} (suite wall time {report['suite_seconds']:.0f} s)",
        f"* Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; JAX {m['jax']} on {m['platform']} "
        f"({m['device_kind']}, {m['device_count']} device(s)); Python {m['python']}",
        f"* Command: `{report['command']}`",
        f"* Load average (1/5/15 min): before {report['load_before']}, after {report['load_after']} "
        f"(other jobs on the machine inflate wall times; CPU-time columns are the robust ones)",
        f"* Allocator: {report['allocator']}",
        f"* Model config: `{report['config']}` (+ variant overrides)",
        "",
    ]
    if _ok(ceil):
        lines += ["## Dense 3x3 convolution ceiling (f32, measured in this run)", "",
                  "| conv (N x H x W x Cin -> Cout) | GFLOP | median ms | GFLOP/s (wall) | GFLOP per CPU-s |",
                  "|---|---:|---:|---:|---:|"]
        for r in ceil["convs"]:
            lines.append(f"| {r['shape']} | {r['gflop']:.1f} | {_ms(r['wall']['median'])} | "
                         f"{r['gflops_wall']:.1f} | {r['gflops_cpu']:.1f} |")
        lines += ["", f"Ceiling = best median: **{c:.1f} GFLOP/s** ({ceil['ceiling_shape']}).", ""]

    def perf_rows(kind: str, rows: list[dict]):
        out = ["| size | batch | variant | median s/step | min | p10-p90 | clips/s | CPU s | GFLOP (counted) | "
               "GFLOP/s | % ceiling | compile s | XLA temp MiB | peak RSS MiB | reference s | target s |",
               "|---:|---:|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            if not _ok(r):
                out.append(f"| {r.get('size', '?')} | {r.get('batch', '?')} | {r.get('variant', '')} | failed: "
                           f"{str(r.get('error', ''))[:80]!r} |" + " |" * 12)
                continue
            w = r["wall"]
            size, batch = r["size"], r["batch"]
            ref = REFERENCE[kind].get(size) if batch == 1 else None
            tgt = TARGET[kind].get(size) if batch == 1 else None
            frac = f"{100 * r['gflops'] / c:.0f}%" if c else "-"
            mem = r.get("memory", {})
            out.append(
                f"| {size} | {batch} | {r.get('variant', 'default')} | **{_s(w['median'])}** | {_s(w['min'])} | "
                f"{_s(w['p10'])}-{_s(w['p90'])} | {r['clips_per_s']:.2f} | {_s(r['cpu']['median'])} | "
                f"{r['counted_gflop']:.1f} | {r['gflops']:.1f} | {frac} | {r['compile_s']:.1f} | "
                f"{_mib(mem.get('xla', {}).get('temp'))} | {mem.get('peak_rss_mib', 0):.0f} | "
                f"{'-' if ref is None else ref} | {'-' if tgt is None else tgt} |")
        return out

    if report.get("forward"):
        lines += ["## Forward (eval mode, batch of T=5 clips)", ""] + perf_rows("forward", report["forward"]) + [""]
    if report.get("fwdbwd"):
        lines += ["## Forward + backward as the reference measured it (train-mode BN, loss = mean(out^2), "
                  "gradients only)", ""] + perf_rows("train", report["fwdbwd"]) + [""]
    if report.get("train"):
        src = next((r.get("step") for r in report["train"] if _ok(r)), "")
        lines += ["## Full train step (forward + SimOTA loss + backward + SGD + EMA, donated state)", "",
                  f"Step: {src}.", ""] + perf_rows("train", report["train"]) + [""]
    if report.get("stream"):
        lines += ["## Streaming (cached backbone features: one new frame per call)", "",
                  "| size | variant | p50 ms | p99 ms | min ms | frames/s | first frame (compile) s | source |",
                  "|---:|---|---:|---:|---:|---:|---:|---|"]
        for r in report["stream"]:
            if not _ok(r):
                lines.append(f"| {r.get('size', '?')} | failed | | | | | | {str(r.get('error'))[:60]!r} |")
                continue
            w = r["wall"]
            lines.append(f"| {r['size']} | {r.get('variant', 'default')} | {_ms(w['p50'])} | {_ms(w['p99'])} | "
                         f"{_ms(w['min'])} | {r['frames_per_s']:.2f} | {r['first_frame_s']:.1f} | {r['source']} |")
        lines.append("")
    if report.get("modules"):
        for r in report["modules"]:
            if not _ok(r):
                continue
            lines += [f"## Per-module time, {r['size']}x{r['size']}, batch {r['batch']} (standalone jitted applies "
                      f"on the in-network shapes)", "",
                      "| module | x in model | CPU ms | share | wall ms | GFLOP | GFLOP per CPU-s |",
                      "|---|---:|---:|---:|---:|---:|---:|"]
            for row in sorted(r["rows"], key=lambda x: -x["cpu_ms"]):
                g = row["gflops_per_cpu_s"]
                lines.append(f"| {row['module']} | {row['times_in_model']} | {row['cpu_ms']:.1f} | "
                             f"{100 * row['share_cpu']:.1f}% | {row['wall_ms']:.1f} | {row['gflop']:.2f} | "
                             f"{'-' if g is None else f'{g:.1f}'} |")
            lines += ["", f"Sum: {r['total_cpu_ms']:.0f} CPU ms, {r['total_wall_ms']:.0f} wall ms.", ""]
    tr = report.get("trace")
    if _ok(tr):
        from bench.profile import format_profile

        lines += [f"## XLA op trace of the whole forward ({tr['size']}x{tr['size']}), grouped by module", "",
                  "(profiler on: absolute times read high; the shares are the point)", "",
                  format_profile(tr, 12), ""]
    cc = report.get("compile")
    if cc:
        lines += ["## Compile time and the persistent compilation cache", "",
                  "| size | cache | trace+lower s | compile s |", "|---:|---|---:|---:|"]
        for r in cc:
            if _ok(r):
                lines.append(f"| {r['size']} | {r['cache_state']} | {r['trace_lower_s']:.1f} | {r['compile_s']:.2f} |")
        lines.append("")
    pl = report.get("pipeline")
    if pl:
        lines += ["## Data pipeline (bench/data_pipeline.py, 512x512 letterbox, T=5)", ""]
        if _ok(pl):
            lines += ["| dataset | decoder | workers | threads | clips/s | clips per CPU-s |",
                      "|---|---|---:|---:|---:|---:|"]
            for r in pl["results"]:
                cps = r.get("clips_per_cpu_s")
                lines.append(f"| {r['dataset']} | {r['decoder']} | {r['workers']} | {r['threads']} | "
                             f"{r['clips_per_s']:.2f} | {'-' if cps is None else f'{cps:.2f}'} |")
        else:
            lines.append(f"failed: {str(pl.get('error'))[:300]}")
        lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/default.py")
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--batch", type=int, nargs="+", default=[1])
    ap.add_argument("--repeats", type=int, default=5, help="timed forward calls per measurement")
    ap.add_argument("--train-repeats", type=int, default=3)
    ap.add_argument("--frames", type=int, default=30, help="timed streaming frames")
    ap.add_argument("--skip", nargs="*", default=[], choices=ALL_TASKS)
    ap.add_argument("--only", nargs="*", default=None, choices=ALL_TASKS)
    ap.add_argument("--variants", nargs="*", default=["fast_ops=false", "fold_bn=true", "compute_dtype=bfloat16"],
                    help="forward variants measured at the first size (config.model overrides)")
    ap.add_argument("--pipeline-seconds", type=float, default=5.0)
    ap.add_argument("--no-malloc-tuning", action="store_true")
    ap.add_argument("--timeout", type=float, default=900.0, help="per worker")
    ap.add_argument("--quick", action="store_true", help="sizes 256 only, 3 repeats, no variants/trace/pipeline")
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes, args.repeats, args.train_repeats, args.frames = [args.sizes[0]], 3, 2, 10
        args.skip = list(set(args.skip) | {"variants", "trace", "pipeline", "remat", "malloc", "compile"})
    tasks = [t for t in (args.only or ALL_TASKS) if t not in args.skip]
    env = {} if args.no_malloc_tuning else dict(MALLOC_ENV)
    common.setup_jax()
    t_start = time.perf_counter()
    report: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": "python -m bench " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        "machine": common.machine_info(), "config": args.config,
        "load_before": [round(x, 2) for x in common.load_average()],
        "allocator": "glibc, " + (" ".join(f"{k}={v}" for k, v in env.items()) if env else "defaults"),
        "reference_s": REFERENCE, "target_s": TARGET,
    }
    base = ["--config", args.config]
    first = args.sizes[0]

    def log(msg):
        print(msg, flush=True)

    def measure(task, label, size, batch, repeats, variant="default", overrides=None, worker_env=env):
        """One worker run, appended to report[task] with its variant name."""
        log(label)
        extra = ["--size", str(size)] + (["--batch", str(batch)] if batch is not None else [])
        extra += ["--repeats", str(repeats)] + (["--set", overrides] if overrides else [])
        r = run_worker(task, base + extra, worker_env, args.timeout, log)
        r["variant"] = variant
        report.setdefault(task, []).append(r)

    if "ceiling" in tasks:
        log("ceiling: dense 3x3 conv")
        report["ceiling"] = run_worker("ceiling", ["--repeats", str(max(args.repeats, 5))], env, args.timeout, log)
    if "forward" in tasks:
        for size in args.sizes:
            for b in args.batch:
                measure("forward", f"forward {size} batch {b}", size, b, args.repeats)
    if "variants" in tasks:
        for v in args.variants:
            measure("forward", f"forward {first} variant {v}", first, args.batch[0], args.repeats, v, v)
    if "malloc" in tasks and env:
        measure("forward", f"forward {first} with the default allocator settings", first, None, args.repeats,
                "default, glibc malloc defaults", worker_env={})
    if "fwdbwd" in tasks:
        for size in args.sizes:
            measure("fwdbwd", f"fwd+bwd {size}", size, args.batch[0], args.train_repeats)
    if "train" in tasks:
        for size in args.sizes:
            for b in args.batch:
                measure("train", f"train {size} batch {b}", size, b, args.train_repeats)
    if "remat" in tasks:
        for pol in ("modules", "dots"):
            measure("train", f"train {first} remat={pol}", first, args.batch[0], args.train_repeats,
                    f"remat={pol}", f"remat={pol}")
    if "stream" in tasks:
        report["stream"] = []
        for size in args.sizes:
            log(f"stream {size}")
            r = run_worker("stream", base + ["--size", str(size), "--frames", str(args.frames)], env, args.timeout, log)
            r["variant"] = "default"
            report["stream"].append(r)
    if "modules" in tasks:
        report["modules"] = []
        log(f"modules {first}")
        report["modules"].append(run_worker("modules", base + ["--size", str(first), "--repeats", "3"], env,
                                            args.timeout, log))
    if "trace" in tasks:
        log(f"trace {first}")
        report["trace"] = run_worker("trace", base + ["--size", str(first), "--repeats", "4"], env, args.timeout, log)
    if "compile" in tasks:
        report["compile"] = []
        with tempfile.TemporaryDirectory(prefix="jax_cache_") as cache:
            for state in ("cold (empty cache)", "warm (persistent cache hit)"):
                log(f"compile {first}: {state}")
                r = run_worker("compile", base + ["--size", str(first), "--cache-dir", cache], env, args.timeout, log)
                if r is not None:
                    r["cache_state"] = state
                report["compile"].append(r)
    if "pipeline" in tasks:
        log("data pipeline")
        report["pipeline"] = run_pipeline(args.pipeline_seconds, args.timeout, log)

    report["load_after"] = [round(x, 2) for x in common.load_average()]
    report["suite_seconds"] = time.perf_counter() - t_start
    os.makedirs(os.path.join(common.REPO, args.out), exist_ok=True)
    stem = os.path.join(common.REPO, args.out, "latest")
    with open(stem + ".json", "w") as f:
        json.dump(report, f, indent=1, default=str)
    text = markdown(report)
    with open(stem + ".md", "w") as f:
        f.write(text + "\n")
    print(text)
    print(f"\nwrote {stem}.md and {stem}.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
