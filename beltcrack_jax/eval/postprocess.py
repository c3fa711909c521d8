"""Raw head output -> detections in original-image pixels, on device with static shapes (reference:
`utils/utils_bbox.py`). Box formulas come from `losses/boxes.py`, the resize inverse from `data/transforms.py`.

1. `decode(raw, input_hw)`: raw head output (B, h, w, 5+C) `[tx, ty, tw, th, obj, cls...]` ->
   (B, N = h*w, 4+1+C) `[cx, cy, w, h]` normalised by the input W/H, sigmoid obj/cls. Anchor index = y*w + x
   (row-major), grid WITHOUT the +0.5 offset, sizes exp(t)*stride, stride = input_H / h.
2. `nms(decoded, conf_thres, nms_thres)`: corners (normalised), class_conf/class = max over classes,
   candidates = obj*class_conf >= conf_thres, class-aware greedy NMS on score obj*class_conf with a stable
   descending sort (ties keep the lower anchor index first) and suppression when IoU > nms_thres (torchvision's
   CPU kernel semantics, `boxes.pairwise_iou_xyxy`). No cap unless `max_detections`.
3. `detect(raw, resize, orig_hw, ...)`: 1 + 2, then the boxes mapped back with the pipeline's own resize
   metadata (`transforms.boxes_to_original`), plus the obj x cls score map. Every inference path (evaluation,
   predict, the exported model) calls it through `eval/predict_step.py`.

Static shapes. Every image keeps N slots; the output is `Detections` with K = max_detections or N slots in NMS
keep order (descending score) followed by padding, and a `valid` mask.

NMS algorithm (N candidates per image, d = longest chain of "kept box suppresses a box that would otherwise
suppress another" -- in practice a handful, at most N):
* `method="fixpoint"` (default on accelerators): sort, build the N x N suppression matrix
  S[i, j] = (j after i in score order) & same class & IoU > thr & both valid, then iterate
  keep <- valid & ~any_i(keep_i & S[i, :]) from keep = valid until it stops changing. The fixed point of that
  map is unique and is exactly greedy NMS (induction over score order: entry j is final once all entries before
  it are). Work O(d N^2), d + 1 data-parallel steps in a `lax.while_loop` (capped at N + 1).
* `method="sequential"` (default on CPU): the textbook greedy scan as a `lax.fori_loop` over the N rows of S:
  O(N^2) work but N dependent steps (latency-bound on accelerators).
Timings of both: BENCHMARKS.md ("NMS and detector notes").
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from beltcrack_jax.data.transforms import boxes_to_original
from beltcrack_jax.losses import boxes as box_lib

class Detections(NamedTuple):
    """Fixed-size per-image detections (K slots, kept detections first in descending score order).

    boxes: (B, K, 4) `[x1, y1, x2, y2]` (normalised by the input size after `nms`; original pixels after `detect`).
    scores: (B, K) obj * class_conf.   obj, class_conf: (B, K).   classes: (B, K) int32 (0-based).
    anchor_index: (B, K) int32, row-major anchor of each slot.   valid: (B, K) bool.
    """

    boxes: jax.Array
    scores: jax.Array
    obj: jax.Array
    class_conf: jax.Array
    classes: jax.Array
    anchor_index: jax.Array
    valid: jax.Array


# ---------------------------------------------------------------------------------------------- decoding


def decode(raw: jax.Array, input_hw: tuple[int, int]) -> jax.Array:
    """Reference `decode_outputs` for one stride level, NHWC.

    raw: (B, h, w, 5+C) raw head output. input_hw: (H, W) of the network input (static).
    Returns (B, h*w, 5+C) float32: `[cx, cy, w, h]` divided by input W (x, w) and H (y, h), then sigmoid(obj),
    sigmoid(cls...).
    """
    if raw.ndim != 4 or raw.shape[-1] < 6:
        raise ValueError(f"decode: expected raw head output (B, h, w, 5+C) with C >= 1, got shape {raw.shape}")
    _, h, w, _ = raw.shape
    in_h, in_w = int(input_hw[0]), int(input_hw[1])
    grid, stride = box_lib.make_anchors([(h, w)], [in_h / h])  # the reference uses input_H / h for both axes
    x = box_lib.flatten_levels(raw.astype(jnp.float32))
    scale = jnp.array([in_w, in_h, in_w, in_h], jnp.float32)
    return jnp.concatenate([box_lib.decode_boxes(x[..., :4], grid, stride) / scale, jax.nn.sigmoid(x[..., 4:])],
                           axis=-1)


# ---------------------------------------------------------------------------------------------- NMS core


def descending_order(scores: jax.Array, valid: jax.Array) -> jax.Array:
    """Stable descending order of (N,) scores with invalid entries last; ties keep ascending index order."""
    n = scores.shape[0]
    key = jnp.where(valid, -scores.astype(jnp.float32), jnp.inf)
    _, order = jax.lax.sort((key, jnp.arange(n, dtype=jnp.int32)), num_keys=2)
    return order


def greedy_keep_sorted(boxes: jax.Array, classes: jax.Array, valid: jax.Array, iou_thres,
                       method: str = "auto") -> jax.Array:
    """Greedy NMS on boxes ALREADY in descending score order. (N, 4), (N,), (N,) -> keep (N,) bool.

    Box j is suppressed by an earlier kept box i of the same class with IoU(i, j) > iou_thres.
    method: 'fixpoint', 'sequential' or 'auto' (sequential on CPU, fixpoint on accelerators; decided at trace
    time from `jax.default_backend()`).
    """
    n = boxes.shape[0]
    if method == "auto":
        method = "sequential" if jax.default_backend() == "cpu" else "fixpoint"
    iou = box_lib.pairwise_iou_xyxy(boxes, boxes)
    later = jnp.arange(n)[None, :] > jnp.arange(n)[:, None]
    sup = (iou > iou_thres) & later & (classes[:, None] == classes[None, :]) & valid[:, None] & valid[None, :]
    if method == "fixpoint":
        def step(keep):
            return valid & ~jnp.any(sup & keep[:, None], axis=0)

        def cond(carry):
            keep, prev, it = carry
            return jnp.any(keep != prev) & (it <= n)

        def body(carry):
            keep, _, it = carry
            return step(keep), keep, it + 1

        keep0 = valid
        keep, _, _ = jax.lax.while_loop(cond, body, (step(keep0), keep0, jnp.int32(1)))
        return keep
    if method == "sequential":
        def row(i, keep):
            return keep & ~(sup[i] & keep[i])

        return jax.lax.fori_loop(0, n, row, valid)
    raise ValueError(f"greedy_keep_sorted: method must be 'auto', 'fixpoint' or 'sequential', got {method!r}")


def _nms_one(decoded: jax.Array, conf_thres, nms_thres, candidate_mask, max_detections: int | None,
             class_aware: bool, method: str) -> Detections:
    """One image: decoded (N, 5+C) normalised -> Detections with leading axis K (no batch)."""
    n = decoded.shape[0]
    boxes = box_lib.cxcywh_to_xyxy(decoded[:, :4])
    obj = decoded[:, 4]
    cls_scores = decoded[:, 5:]
    class_conf = jnp.max(cls_scores, axis=-1)
    classes = jnp.argmax(cls_scores, axis=-1).astype(jnp.int32)  # first maximum, like torch.max
    score = obj * class_conf
    valid = score >= conf_thres
    if candidate_mask is not None:
        valid = valid & candidate_mask
    order = descending_order(score, valid)
    sb, sc, sv = boxes[order], classes[order], valid[order]
    keep_classes = sc if class_aware else jnp.zeros_like(sc)
    keep = greedy_keep_sorted(sb, keep_classes, sv, nms_thres, method=method)
    # stable partition: kept entries first (they are already in descending score order)
    part = jnp.argsort(~keep, stable=True)
    k = n if max_detections is None else min(int(max_detections), n)
    sel = order[part[:k]]
    return Detections(boxes=boxes[sel], scores=score[sel], obj=obj[sel], class_conf=class_conf[sel],
                      classes=classes[sel], anchor_index=sel.astype(jnp.int32), valid=keep[part[:k]])


@functools.partial(jax.jit, static_argnames=("max_detections", "class_aware", "method"))
def nms(decoded: jax.Array, conf_thres, nms_thres, candidate_mask: jax.Array | None = None,
        max_detections: int | None = None, class_aware: bool = True, method: str = "auto") -> Detections:
    """Reference `non_max_suppression` (before `yolo_correct_boxes`), batched, static shapes.

    decoded: (B, N, 5+C) from `decode`. conf_thres, nms_thres: scalars (traced: changing them does not
    recompile). candidate_mask: optional (B, N) bool of anchors allowed at all. max_detections: optional
    top-k cap on the kept detections (None = no cap, the reference). Returns `Detections` (K = cap or N)
    with boxes `[x1, y1, x2, y2]` normalised by the input size.
    """
    if decoded.ndim != 3 or decoded.shape[-1] < 6:
        raise ValueError(f"nms: expected decoded predictions (B, N, 5+C), got shape {decoded.shape}")
    fn = functools.partial(_nms_one, max_detections=max_detections, class_aware=class_aware, method=method)
    if candidate_mask is None:
        return jax.vmap(lambda d: fn(d, conf_thres, nms_thres, None))(decoded)
    return jax.vmap(lambda d, m: fn(d, conf_thres, nms_thres, m))(decoded, candidate_mask)


# ---------------------------------------------------------------------------------------------- end-to-end


def score_map(raw: jax.Array) -> jax.Array:
    """(B, h, w, 5+C) raw -> (B, h, w) sigmoid(obj) * max sigmoid(cls): the heat map of the figures."""
    sig = jax.nn.sigmoid(raw[..., 4:].astype(jnp.float32))
    return sig[..., 0] * jnp.max(sig[..., 1:], axis=-1)


def detect(raw: jax.Array, resize: jax.Array, orig_hw: jax.Array, conf_thres, nms_thres, *,
           input_hw: tuple[int, int], max_detections: int | None = None, method: str = "auto"
           ) -> tuple[Detections, jax.Array]:
    """Raw head output (B, h, w, 5+C) -> (`Detections` with xyxy boxes in ORIGINAL-image pixels, score map).

    resize (B, 5) `[nw, nh, dx, dy, flip]` and orig_hw (B, 2) are the data pipeline's per-clip metadata
    (`transforms.ResizeParams.as_array`); conf_thres / nms_thres may be traced scalars. Not jitted itself: it is
    part of the jitted steps of `eval/predict_step.py` and `predict.py`."""
    dets = nms(decode(raw, input_hw), conf_thres, nms_thres, max_detections=max_detections, method=method)
    h, w = input_hw
    boxes = boxes_to_original(dets.boxes * jnp.array([w, h, w, h], jnp.float32), resize, orig_hw)
    return dets._replace(boxes=boxes), score_map(raw)


def to_reference_rows(dets: Detections, i: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Host helper: image i's valid detections as the reference's rows `[y1, x1, y2, x2, obj, cls_conf, cls]`
    (NMS keep order) and their anchor indices."""
    v = np.asarray(dets.valid[i])
    b = np.asarray(dets.boxes[i])[v]
    rows = np.concatenate([b[:, [1, 0, 3, 2]], np.asarray(dets.obj[i])[v, None],
                           np.asarray(dets.class_conf[i])[v, None],
                           np.asarray(dets.classes[i])[v, None].astype(np.float32)], axis=1)
    return rows.astype(np.float32), np.asarray(dets.anchor_index[i])[v]
