"""Does time + space + frequency earn its cost? The full BeltCrackDet vs its single-frame ablation ("w/o All",
Table 5), several seeds each, on data where the key frame alone is ambiguous (configs/veiled.py: strong veils
over the demo's cracks; configs/ambiguous.py: veils and fainter, thinner cracks).

    python experiments/temporal_gain.py --config veiled [--seeds 0 1 2] [--root W] [--name N]
        [--extra --config.x=y ...]
    python experiments/temporal_gain.py --config veiled --report-only     # tabulate the finished runs only

Each run: `train.py` (periodic val evaluation keeps the best checkpoint) then `evaluate.py --step best` on the test
split, in separate processes; finished runs are reused (their workdir resumes and their evaluation is read back).
Writes experiments/results/temporal_gain_<name>.json, a learning-curve figure (val mAP50 against step, every
run), and the results table into EXPERIMENTS.md between the `temporal_gain:<name>` markers (default root
workdirs/temporal_gain_<name>). The name defaults to the config's; give another one (`--name veiled_old_recipe
--extra ...`) to keep a variant's runs, files and table apart from the config's own.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
SINGLE_FRAME = ["--config.model.hsm=False", "--config.model.atm=False", "--config.model.wfm=False",
                "--config.model.rcu=0"]
VARIANTS = {"full": [], "single_frame": SINGLE_FRAME}


def run(cmd: list[str], log: pathlib.Path) -> None:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "17179869184"}
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env)
    if proc.returncode:
        sys.exit(f"command failed ({proc.returncode}), see {log}: {' '.join(cmd)}")


def one(variant: str, seed: int, root: pathlib.Path, config: str, extra: list[str]) -> dict:
    work = root / f"{variant}_s{seed}"
    work.mkdir(parents=True, exist_ok=True)
    flags = [f"--config={config}", f"--config.seed={seed}", *VARIANTS[variant], *extra]
    t0 = time.time()
    run([sys.executable, "train.py", *flags, f"--workdir={work}"], work / "run.log")
    train_s = time.time() - t0
    out = work / "eval_test_best"
    if not (out / "metrics.json").exists():
        run([sys.executable, "evaluate.py", *flags, f"--workdir={work}", "--step=best", "--split=test",
             f"--output_dir={out}"], work / "run.log")
    row = finished(variant, seed, root, train_s)
    json.dump(row, open(work / "row.json", "w"))
    return row


def finished(variant: str, seed: int, root: pathlib.Path, train_s: float | None = None) -> dict | None:
    """The result row of a run whose test evaluation exists, else None."""
    work = root / f"{variant}_s{seed}"
    out = work / "eval_test_best" / "metrics.json"
    if not out.exists():
        return None
    if train_s is None and (work / "row.json").exists():
        train_s = json.load(open(work / "row.json"))["train_seconds"]
    test = json.load(open(out))
    best = json.load(open(work / "best" / "best.json"))
    return {"variant": variant, "seed": seed, "workdir": str(work.relative_to(ROOT)), "best_step": best["step"],
            "val_map50": best["value"], "test_map50": float(test["map50"]), "test_recall": float(test["recall"]),
            "test_precision": float(test["precision"]),
            "train_seconds": None if train_s is None else round(train_s, 1)}


def curves_png(rows: list[dict], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from beltcrack_jax.train.curves import read_metrics

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for r in rows:
        m = read_metrics(str(ROOT / r["workdir"] / "metrics.jsonl"))
        color = "tab:blue" if r["variant"] == "full" else "tab:orange"
        label = f"{r['variant']} seed {r['seed']}"
        if m.get("train/loss"):
            axes[0].plot(*zip(*m["train/loss"]), color=color, alpha=0.7, label=label)
        if m.get("val/map50"):
            axes[1].plot(*zip(*m["val/map50"]), color=color, alpha=0.7, marker="o", ms=3, label=label)
    axes[0].set_yscale("log")
    for ax, title in zip(axes, ("train loss", "val mAP50")):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def table(rows: list[dict], command: str, png: str) -> str:
    def stats(variant, key):
        v = np.array([r[key] for r in rows if r["variant"] == variant])
        return v.mean(), v.std(ddof=1) if len(v) > 1 else 0.0

    lines = [f"Command: `{command}`", "",
             "| variant | seed | best step | val mAP50 | test mAP50 | test P | test R | train s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['seed']} | {r['best_step']} | {r['val_map50']:.3f} | "
                     f"{r['test_map50']:.3f} | {r['test_precision']:.3f} | {r['test_recall']:.3f} | "
                     f"{'-' if r['train_seconds'] is None else format(r['train_seconds'], '.0f')} |")
    lines += ["", "| variant | val mAP50 (mean ± std) | test mAP50 (mean ± std) |", "|---|---:|---:|"]
    for variant in VARIANTS:
        (vm, vs), (tm, ts) = stats(variant, "val_map50"), stats(variant, "test_map50")
        lines.append(f"| {variant} | {vm:.3f} ± {vs:.3f} | {tm:.3f} ± {ts:.3f} |")
    (fm, fs), (sm, ss) = stats("full", "test_map50"), stats("single_frame", "test_map50")
    gap, spread = fm - sm, max(fs, ss)
    counts = [sum(r["variant"] == v for r in rows) for v in VARIANTS]
    verdict = ("ahead by more than 2 std" if gap > 2 * spread else "NOT ahead by more than 2 std")
    if min(counts) < 2:
        verdict = f"not compared: only {min(counts)} seed(s) of a variant finished, so there is no std"
    lines += ["", f"Test mAP50 gap full - single frame: {gap:+.3f}; larger std {spread:.3f}: the full model is "
                  f"{verdict} (std = sample std over seeds).", "", f"![learning curves]({png})"]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--config", default="veiled", help="packaged config name or config file")
    ap.add_argument("--root", default=None, help="default workdirs/temporal_gain_<name>")
    ap.add_argument("--extra", nargs="*", default=[], help="more --config.* flags for every run")
    ap.add_argument("--name", default=None, help="name of the root, result files and EXPERIMENTS.md markers "
                                                 "(default: the config's name)")
    ap.add_argument("--report-only", action="store_true",
                    help="train nothing: tabulate the runs of these seeds that have finished")
    args = ap.parse_args(argv)
    name = args.name or pathlib.Path(args.config.partition(":")[0]).stem
    root = ROOT / (args.root or f"workdirs/temporal_gain_{name}")
    rows = []
    for seed in args.seeds:
        for variant in VARIANTS:
            row = finished(variant, seed, root) if args.report_only else one(variant, seed, root, args.config,
                                                                                args.extra)
            if row is not None:
                rows.append(row)
                print(json.dumps(row), flush=True)
    results = ROOT / "experiments" / "results"
    results.mkdir(parents=True, exist_ok=True)
    json.dump(rows, open(results / f"temporal_gain_{name}.json", "w"), indent=1)
    png = results / f"temporal_gain_{name}_curves.png"
    curves_png(rows, png)
    command = "python experiments/temporal_gain.py " + " ".join(sys.argv[1:] if argv is None else argv)
    body = table(rows, command.strip(), str(png.relative_to(ROOT)))
    doc = ROOT / "EXPERIMENTS.md"
    text = doc.read_text() if doc.exists() else ""
    begin, end = f"<!-- temporal_gain:{name}:begin -->", f"<!-- temporal_gain:{name}:end -->"
    if begin in text and end in text:
        text = text[:text.index(begin) + len(begin)] + "\n" + body + "\n" + text[text.index(end):]
    else:
        text += f"\n{begin}\n{body}\n{end}\n"
    doc.write_text(text)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
