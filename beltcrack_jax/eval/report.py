"""What an evaluation reports, from its `EvalResult` (`runner.py`): the summary table, the JSON / CSV outputs and
the figures (PR curve, Fig.-7-style detection grid, heat-map grid) as PNG files (evaluate.py) or as uint8 arrays
(`figure_images`: TensorBoard images of the train loop's periodic evaluation).
"""

from __future__ import annotations

import json
import os
from typing import Callable

import numpy as np

from beltcrack_jax.eval import plots


def format_table(metrics: dict) -> str:
    """Human-readable summary: the profile line, the headline metrics, deployment and per-condition rows."""
    lines = [metrics.get("profile_line", f"profile={metrics.get('profile')}"),
             f"split={metrics.get('split')} images={metrics['num_images']} gt={metrics['num_gt']} "
             f"detections={metrics['num_detections']}",
             f"{'':24s}{'mAP50':>8s}{'mAP':>8s}{'P':>8s}{'R':>8s}{'F1':>8s}"]

    def row(name, m):
        vals = [m.get(k, float("nan")) for k in ("map50", "map50_95", "precision", "recall", "f1")]
        return f"{name[:24]:24s}" + "".join(f"{v:8.4f}" if v is not None else f"{'-':>8s}" for v in vals)

    lines.append(row("all", metrics))
    for tag, vals in metrics.get("by_condition", {}).items():
        for v, m in vals.items():
            lines.append(row(f"  {tag}={v} ({m['num_images']})", m))
    dep = metrics.get("deployment")
    if dep:
        lines.append(f"deployment @score {dep['score_thres']:g}: P {dep['precision']:.4f} R {dep['recall']:.4f} "
                     f"F1 {dep['f1']:.4f} | FP/frame {dep['fp_per_frame']:.4f} FP/clean frame "
                     f"{dep['fp_per_clean_frame']:.4f} clean-frame alarm rate {dep['clean_frame_alarm_rate']:.4f} | "
                     f"events {dep['num_events']} recall {dep['event_recall']:.4f} (first {dep['first_k']} frames) "
                     f"delay mean {dep['delay_mean']:.2f} median {dep['delay_median']:.2f} p90 {dep['delay_p90']:.2f}"
                     f" frames | tracks from {dep['track_source']}")
    return "\n".join(lines)


def _json_safe(x):
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if np.isfinite(v) else None
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, np.ndarray):
        return _json_safe(x.tolist())
    return x


def load_key_frames(config, split: str, records: list[int], data_dir: str | None = None) -> dict[int, np.ndarray]:
    """Decodes the key frames (original size, RGB uint8) of the given record indices from the TFDS split."""
    from beltcrack_jax.data import pipeline
    from beltcrack_jax.data.transforms import decode_frame

    src, _ = pipeline.open_source(config.data.name, split, config.data.data_dir if data_dir is None else data_dir,
                                  prepare=False)
    return {int(r): np.asarray(decode_frame(src[int(r)]["image"])) for r in records}


def figure_images(result, config, *, frames: dict[int, np.ndarray] | None = None,
                  data_dir: str | None = None, vis_score: float | None = None) -> dict[str, np.ndarray]:
    """uint8 RGB arrays: `pr_curve`, and with `result.vis` samples `detection_grid` (TP green / miss red /
    FP yellow) and `heatmap_grid`."""
    from beltcrack_jax.data.transforms import as_hw, resize_params

    m = result.metrics
    prof = result.profile
    out = {"pr_curve": plots.pr_curve_image({f"{m['profile']} {m.get('split', '')}": (m["pr_curve"], m["map50"])},
                                            title=f"PR @ IoU 0.5: {prof.name} (conf {prof.conf_thres:g}, "
                                                  f"NMS {prof.nms_thres:g})")}
    if not result.vis:
        return out
    vis_score = float(config.eval.vis_score if vis_score is None else vis_score)
    if frames is None:
        frames = load_key_frames(config, m["split"], [v["record_index"] for v in result.vis], data_dir)
    imgs, gts, dets, scores, titles, heat = [], [], [], [], [], []
    hw = as_hw(config.data.image_size)
    mode = "letterbox" if prof.letterbox else "stretch"
    by_id = {im["id"]: im for im in result.gt["images"]}
    for v in result.vis:
        f = frames[v["record_index"]]
        keep = v["scores"] >= vis_score
        imgs.append(f)
        gts.append(v["gt_boxes"])
        dets.append(v["boxes"][keep])
        scores.append(v["scores"][keep])
        im = by_id.get(v["image_id"], {})
        titles.append(f"{im.get('sequence', '')}/{im.get('frame_index', '')}")
        p = resize_params(mode, f.shape[:2], hw)
        heat.append(plots.heatmap_overlay(f, v["score_map"], (p.nw, p.nh, p.dx, p.dy), hw))
    out["detection_grid"] = plots.detection_grid(imgs, gts, dets, scores, titles)
    none = [np.zeros((0, 4))] * len(heat)
    out["heatmap_grid"] = plots.detection_grid(heat, none, none, [np.zeros(0)] * len(heat), titles)
    return out


def write_figures(result, out_dir: str, config, *, frames: dict[int, np.ndarray] | None = None,
                  data_dir: str | None = None, vis_score: float | None = None) -> dict[str, str]:
    """`figure_images` as PNGs in `out_dir` -> {name: path}."""
    images = figure_images(result, config, frames=frames, data_dir=data_dir, vis_score=vis_score)
    return {k: plots.save_png(os.path.join(out_dir, f"{k}.png"), v) for k, v in images.items()}


def write_outputs(metrics: dict, detections: list[dict], out_dir: str) -> dict[str, str]:
    """detections.json and conditions.csv into `out_dir` -> their paths (metrics.json is written last, by
    `write_metrics`, so that it can name every output)."""
    outputs = {"detections": os.path.join(out_dir, "detections.json"),
               "conditions": os.path.join(out_dir, "conditions.csv")}
    with open(outputs["detections"], "w") as f:
        json.dump(detections, f)
    with open(outputs["conditions"], "w") as f:
        f.write("tag,value,num_images,num_gt,map50,map50_95,precision,recall,f1\n")
        for tag, vals in metrics.get("by_condition", {}).items():
            for v, r in vals.items():
                f.write(f"{tag},{v},{r['num_images']},{r['num_gt']},{r['map50']:.6f},{r['map50_95']:.6f},"
                        f"{r['precision']:.6f},{r['recall']:.6f},{r['f1']:.6f}\n")
    return outputs


def write_metrics(metrics: dict, path: str) -> str:
    """metrics.json (non-finite numbers as null, COCOeval's text left out)."""
    with open(path, "w") as f:
        json.dump(_json_safe({k: v for k, v in metrics.items() if k != "summary_text"}), f, indent=1)
    return path
