"""Learning curves from `<workdir>/metrics.jsonl`: train loss and validation mAP50 against step, as a PNG.

Rebuilt from the whole JSONL each time (so a resumed run's figure holds the history before the resume too); a
step logged twice (a resume repeats the steps after the last checkpoint) keeps its last value.
"""

from __future__ import annotations

import json
import os
from typing import Mapping

CURVES_PNG = "learning_curves.png"


def read_metrics(path: str) -> dict[str, list[tuple[int, float]]]:
    """{metric: [(step, value)] sorted by step}, the last row winning for a repeated step. Unparsable lines
    (e.g. a row cut short by a kill) are skipped."""
    by_key: dict[str, dict[int, float]] = {}
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            step = int(row.get("step", -1))
            for k, v in row.items():
                if k not in ("step", "time") and isinstance(v, (int, float)):
                    by_key.setdefault(k, {})[step] = float(v)
    return {k: sorted(d.items()) for k, d in by_key.items()}


def plot_learning_curves(workdir: str, out_png: str | None = None, *, loss_key: str = "train/loss",
                         metric_key: str = "val/map50") -> str | None:
    """Writes `<workdir>/learning_curves.png` (train loss, and val mAP50 with the best step marked); returns the
    path, or None when there is nothing to plot yet."""
    metrics = read_metrics(os.path.join(workdir, "metrics.jsonl"))
    if not metrics.get(loss_key) and not metrics.get(metric_key):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(10, 3.6))
    _panel(ax_loss, metrics, loss_key, "train loss", log=True)
    _panel(ax_map, metrics, metric_key, "val mAP50", best=True)
    fig.suptitle(os.path.basename(os.path.abspath(workdir)))
    fig.tight_layout()
    out_png = out_png or os.path.join(workdir, CURVES_PNG)
    fig.savefig(out_png + ".tmp.png", dpi=100)
    plt.close(fig)
    os.replace(out_png + ".tmp.png", out_png)
    return out_png


def _panel(ax, metrics: Mapping[str, list], key: str, title: str, log: bool = False, best: bool = False):
    pts = metrics.get(key, [])
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    if not pts:
        ax.text(0.5, 0.5, f"no {key} yet", ha="center", va="center", transform=ax.transAxes)
        return
    steps, vals = zip(*pts)
    ax.plot(steps, vals, marker="o" if len(pts) < 40 else None, ms=3)
    if log and min(vals) > 0:
        ax.set_yscale("log")
    if best:
        i = max(range(len(vals)), key=vals.__getitem__)
        ax.scatter([steps[i]], [vals[i]], color="red", zorder=3, label=f"best {vals[i]:.3f} @ {steps[i]}")
        ax.legend(loc="lower right")
