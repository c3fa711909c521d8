"""Figures: PR curve PNG, a sample-detection grid (like the paper's Fig. 7) and an objectness heat-map overlay.

Colours in the detection grid (BGR-free, RGB tuples): true positive = green (detection matched to a GT at IoU
>= 0.5), missed GT = red (a GT box no shown detection matched), false positive = yellow. Only detections with
score >= `score_thres` are drawn and matched (the grid is an operating-point picture, not the COCO curve).
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

TP_COLOR = (0, 220, 0)
MISS_COLOR = (255, 40, 40)
FP_COLOR = (255, 215, 0)


def _cv2():
    import cv2

    return cv2


def save_png(path: str, rgb: np.ndarray) -> str:
    """Writes an RGB uint8 image as PNG (creating the folder)."""
    from PIL import Image

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(np.asarray(rgb, np.uint8)).save(path)
    return path


def draw_boxes(rgb: np.ndarray, boxes_xyxy: np.ndarray, color, labels: Sequence[str] | None = None,
               thickness: int = 2) -> np.ndarray:
    """Returns a copy of an RGB uint8 image with xyxy boxes (pixels) drawn in `color`."""
    cv2 = _cv2()
    out = np.ascontiguousarray(np.asarray(rgb, np.uint8).copy())
    lim = 4 * max(out.shape[:2])  # huge boxes (e.g. exp of a large raw size) are clipped for drawing
    for i, b in enumerate(np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)):
        if not np.all(np.isfinite(b)):
            continue
        b = np.clip(b, -lim, lim)
        p1 = (int(round(b[0])), int(round(b[1])))
        p2 = (int(round(b[2])), int(round(b[3])))
        cv2.rectangle(out, p1, p2, color, thickness)
        if labels is not None:
            cv2.putText(out, labels[i], (p1[0], max(p1[1] - 4, 10)), cv2.FONT_HERSHEY_SIMPLEX,
                        max(0.4, thickness / 4), color, max(1, thickness // 2), cv2.LINE_AA)
    return out


def classify_boxes(gt_xyxy: np.ndarray, det_xyxy: np.ndarray, det_scores: np.ndarray,
                   iou_thres: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Greedy score-ordered matching (one class). Returns (det is TP (bool), GT is matched (bool))."""
    from beltcrack_jax.eval.deployment import match_frame

    def xywh(b):
        b = np.asarray(b, np.float64).reshape(-1, 4)
        return np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)

    n_d, n_g = len(det_scores), len(gt_xyxy)
    det_m, gt_m = match_frame(xywh(gt_xyxy), np.zeros(n_g), xywh(det_xyxy), np.asarray(det_scores),
                              np.zeros(n_d), iou_thres)
    return det_m >= 0, gt_m >= 0


def annotate_frame(rgb: np.ndarray, gt_xyxy: np.ndarray, det_xyxy: np.ndarray, det_scores: np.ndarray,
                   thickness: int = 3) -> np.ndarray:
    """Fig.-7-style frame: TP detections green, FP yellow, missed GT red (with scores on detections)."""
    tp, matched = classify_boxes(gt_xyxy, det_xyxy, det_scores)
    det_xyxy = np.asarray(det_xyxy).reshape(-1, 4)
    gt_xyxy = np.asarray(gt_xyxy).reshape(-1, 4)
    labels = [f"{s:.2f}" for s in det_scores]
    out = draw_boxes(rgb, gt_xyxy[~matched], MISS_COLOR, ["miss"] * int((~matched).sum()), thickness)
    out = draw_boxes(out, det_xyxy[~tp], FP_COLOR, [l for l, t in zip(labels, tp) if not t], thickness)
    out = draw_boxes(out, det_xyxy[tp], TP_COLOR, [l for l, t in zip(labels, tp) if t], thickness)
    return out


def detection_grid(frames: Sequence[np.ndarray], gts: Sequence[np.ndarray], dets: Sequence[np.ndarray],
                   scores: Sequence[np.ndarray], titles: Sequence[str] | None = None, cols: int = 4,
                   tile_w: int = 480) -> np.ndarray:
    """Grid of annotated frames (each resized to width tile_w, same aspect), RGB uint8."""
    cv2 = _cv2()
    if not frames:
        raise ValueError("detection_grid: no frames given")
    tiles = []
    for i, f in enumerate(frames):
        a = annotate_frame(f, gts[i], dets[i], scores[i], thickness=max(2, f.shape[1] // 400))
        h = max(1, int(round(a.shape[0] * tile_w / a.shape[1])))
        a = cv2.resize(a, (tile_w, h), interpolation=cv2.INTER_AREA)
        if titles is not None:
            cv2.putText(a, str(titles[i])[:60], (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1,
                        cv2.LINE_AA)
        tiles.append(a)
    th = max(t.shape[0] for t in tiles)
    tiles = [np.pad(t, ((0, th - t.shape[0]), (0, 0), (0, 0))) for t in tiles]
    cols = min(cols, len(tiles))
    rows = -(-len(tiles) // cols)
    blank = np.zeros_like(tiles[0])
    tiles += [blank] * (rows * cols - len(tiles))
    return np.concatenate([np.concatenate(tiles[r * cols:(r + 1) * cols], axis=1) for r in range(rows)], axis=0)


def pr_curve_image(curves: dict[str, tuple[Sequence[float], float]], title: str = "") -> np.ndarray:
    """PR curves at IoU 0.5 as a uint8 RGB image: curves = {label: (101 interpolated precisions (-1 =
    undefined), AP50)}."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rec = np.linspace(0, 1, 101)
    fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=120)
    for label, (prec, ap) in curves.items():
        p = np.asarray(prec, np.float64)
        ok = p >= 0
        ax.plot(rec[ok], p[ok], label=f"{label} (AP50 {ap:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision (interpolated, IoU 0.5)")
    ax.grid(alpha=0.3)
    ax.set_title(title or "precision-recall")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return rgb


def pr_curve_png(path: str, curves: dict[str, tuple[Sequence[float], float]], title: str = "") -> str:
    """`pr_curve_image` saved as a PNG -> path."""
    return save_png(path, pr_curve_image(curves, title))


def heatmap_overlay(rgb: np.ndarray, smap: np.ndarray, resize_nw_nh_dx_dy: Sequence[int], input_hw,
                    alpha: float = 0.45) -> np.ndarray:
    """Blends a (h, w) score map (on the model-input grid) onto the ORIGINAL frame.

    The map is upsampled to the input size, the part covering the resized frame (nw, nh at dx, dy) is cropped
    (undoing a letterbox; a stretch covers everything) and resized to the frame. Colormap JET, weight alpha.
    """
    cv2 = _cv2()
    ih, iw = int(input_hw[0]), int(input_hw[1])
    nw, nh, dx, dy = (int(v) for v in resize_nw_nh_dx_dy[:4])
    up = cv2.resize(np.asarray(smap, np.float32), (iw, ih), interpolation=cv2.INTER_LINEAR)
    crop = up[max(dy, 0):max(dy, 0) + nh, max(dx, 0):max(dx, 0) + nw]
    full = cv2.resize(crop, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
    color = cv2.applyColorMap(np.clip(full * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    return np.clip((1 - alpha) * rgb.astype(np.float32) + alpha * color, 0, 255).astype(np.uint8)
