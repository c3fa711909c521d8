"""Evaluation: decode + NMS on device, the reference's COCO metrics, deployment metrics, profiles, figures.

    postprocess   decode / class-aware NMS (static shapes) / boxes back to original pixels: `detect`
    predict_step  the one jitted inference step (normalise -> model -> detect), shared by every caller
    coco          coco_metrics(gt, detections, profile) -> map50, map50_95, precision, recall, f1, ...
    deployment    deployment_metrics(gt, detections): per-frame false positives, event recall and delay
    profiles      paper / paper-stated / callback / deployment (every threshold, printed by describe())
    runner        Evaluator(config).run(variables) -> EvalResult: one split, one profile
    report        summary table, metrics.json / detections.json / conditions.csv, figures (PNG or arrays)
    evaluator     run_evaluation (evaluate.py) and make_eval_hook(config, model, mesh) (the train loop)
    plots         PR curve, Fig.-7-style detection grid, objectness heat-map overlay
"""

from beltcrack_jax.eval.coco import coco_metrics
from beltcrack_jax.eval.deployment import deployment_metrics
from beltcrack_jax.eval.profiles import PROFILES, Profile, get_profile


def make_eval_hook(config, model, mesh):
    """Periodic evaluation for `beltcrack_jax.train.loop`: hook(state, step) -> scalar metrics."""
    from beltcrack_jax.eval.evaluator import make_eval_hook as _make

    return _make(config, model, mesh)


__all__ = ["coco_metrics", "deployment_metrics", "PROFILES", "Profile", "get_profile", "make_eval_hook"]
