"""The evaluation's two entry points, wiring the split runner (`runner.py`), the reports (`report.py`) and the
checkpoint reader (`train.checkpoint.load_variables`):

    run_evaluation(config, workdir=...)        evaluate.py's body: weights -> metrics + files in out_dir
    make_eval_hook(config, model, mesh)        the train loop's periodic evaluation: (state, step) -> scalars
                                               plus the PR curve / detection grid as images (`images/...`)

`Evaluator` / `EvalResult` / `profile_from_config` are re-exported from `runner.py` (their import path of
old).
"""

from __future__ import annotations

import os
from typing import Any, Callable

import jax

from beltcrack_jax.eval import report
from beltcrack_jax.eval.runner import EvalResult, Evaluator, profile_from_config, scalar_metrics

__all__ = ["EvalResult", "Evaluator", "profile_from_config", "make_eval_hook", "run_evaluation"]


def make_eval_hook(config, model, mesh) -> Callable[[Any, int], dict]:
    """hook(state, step) -> {map50, ..., 'images/pr_curve': uint8 HWC, 'images/detection_grid': ...} on the
    validation split (`config.data.val_split`: model selection never looks at the test split), EMA weights if
    `config.eval.use_ema`. Images only on process 0 (the one that writes TensorBoard)."""
    ev = Evaluator(config, model=model, mesh=mesh, split=config.data.val_split, log=lambda s: None)

    def hook(state, step: int) -> dict:
        res = ev.run(state.variables(ema=ev.use_ema), collect_vis=ev.num_vis > 0, step=step)
        out: dict[str, Any] = scalar_metrics(res.metrics)
        if jax.process_index() == 0:
            images = report.figure_images(res, config)
            out.update({f"images/{k}": images[k] for k in ("pr_curve", "detection_grid") if k in images})
        return out

    hook.evaluator = ev
    return hook


def run_evaluation(config, *, workdir: str | None = None, checkpoint: str | None = None, step: int | None = None,
                   variables: dict | None = None, use_ema: bool | None = None, profile: str | None = None,
                   split: str | None = None, out_dir: str | None = None, data_dir: str | None = None,
                   figures: bool = True, log: Callable[[str], None] = print, data_fn=None,
                   frames: dict | None = None) -> dict:
    """evaluate.py's body: load weights, run the split, write metrics.json / detections.json / conditions.csv /
    figures into `out_dir` (default `<workdir>/eval/<profile>_<split>_step<k>`), print the table. Returns the
    metrics dict (with `outputs` naming the files)."""
    from beltcrack_jax.train.checkpoint import load_variables

    use_ema = bool(config.eval.use_ema) if use_ema is None else use_ema
    ev = Evaluator(config, profile=profile, split=split, data_dir=data_dir, log=log, data_fn=data_fn)
    info = {"path": None, "step": None, "ema": None}
    if variables is None:
        variables, info = load_variables(config, workdir=workdir, checkpoint=checkpoint, step=step, use_ema=use_ema,
                                         model=ev.model, log=log)
    if out_dir is None:
        base = workdir or (os.path.dirname(os.path.dirname(os.path.dirname(info["path"]))) if info["path"] else ".")
        out_dir = os.path.join(base, "eval", f"{ev.profile.name}_{ev.split}_step{info['step']}")
    os.makedirs(out_dir, exist_ok=True)
    res = ev.run(variables, collect_vis=figures and ev.num_vis > 0, step=info["step"])
    m = dict(res.metrics)
    m["checkpoint"] = info
    outputs = {"metrics": os.path.join(out_dir, "metrics.json")}
    outputs.update(report.write_outputs(m, res.detections, out_dir))
    if figures:
        outputs.update(report.write_figures(res, out_dir, config, frames=frames, data_dir=data_dir))
    m["outputs"] = outputs
    report.write_metrics(m, outputs["metrics"])
    log(m["summary_text"].rstrip())
    log(report.format_table(m))
    log(f"wrote {', '.join(sorted(outputs.values()))}")
    return m
