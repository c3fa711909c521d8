"""YOLOX SimOTA label assignment, vectorised with static shapes (reference `YOLOLoss.get_assignments`).

Everything is computed on the full (M GT slots) x (N anchors) grid with masks instead of the reference's
boolean indexing, so shapes are static and the function jits/vmaps. GT slots with `gt_mask = False` are
padding: they are never candidates, never take anchors, never win a conflict; an image with no valid GT gets
an all-background assignment. No gradient flows through the assignment (inputs are `stop_gradient`-ed).

Rules (reference semantics, checked against the golden SimOTA internals):

1. Candidates: anchor centre ((gx + .5) s, (gy + .5) s) strictly inside a GT box, or strictly inside the square
   GT centre +- radius * s (radius 2.5), for some valid GT. geo[g, a] = in_box[g, a] & in_center[g, a].
2. cost[g, a] = cls_cost + iou_weight * (-log(IoU + 1e-8)) + geo_penalty * (not geo) over candidates, with
   cls_cost = sum_c BCE(sqrt(sigmoid(cls) sigmoid(obj)), one_hot(class)) (PyTorch's log clamp at -100).
3. k_g = max(1, int(sum of the top-min(topk, #candidates) IoUs of g over candidates)).
4. GT g takes its k_g lowest-cost candidates. Ties in cost are broken by the lower anchor index (`lax.top_k`
   order); torch.topk's order on ties is unspecified (no ties occur in the golden cases).
5. An anchor claimed by several GTs goes to argmin over ALL valid GTs of cost[:, a] (first index on ties),
   exactly as the reference (which may even pick a GT that did not claim it).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from beltcrack_jax.losses.boxes import pairwise_iou
from beltcrack_jax.losses.focal import clamped_logs


class Assignment(NamedTuple):
    """SimOTA result for one image (add a leading batch axis under vmap). N anchors, M GT slots."""

    fg_mask: jax.Array         # (N,) bool: foreground anchors
    matched_gt: jax.Array      # (N,) int32: matched GT slot per anchor, -1 for background
    pred_ious: jax.Array       # (N,) float: IoU of the anchor's prediction with its matched GT, 0 for background
    candidate_mask: jax.Array  # (N,) bool: pre-matching candidates (in some GT box or centre square)
    dynamic_ks: jax.Array      # (M,) int32: k per GT slot, 0 for padding
    num_conflicts: jax.Array   # () int32: anchors claimed by several GTs before resolution
    cost: jax.Array            # (M, N) float: cost matrix; +inf off candidates and for padded GTs
    pair_ious: jax.Array       # (M, N) float: GT-vs-prediction IoU (0 off candidates / for padded GTs)


def candidates(gt_boxes: jax.Array, gt_mask: jax.Array, centers_xy: jax.Array, strides: jax.Array,
               center_radius: float = 2.5):
    """(in_box (M, N), in_center (M, N)), both False for padded GT slots. Strict inequalities.

    gt_boxes (M, 4) cxcywh, gt_mask (M,), centers_xy (N, 2) anchor centres in pixels, strides (N,).
    """
    xc, yc = centers_xy[None, :, 0], centers_xy[None, :, 1]
    cx, cy, w, h = (gt_boxes[:, i:i + 1] for i in range(4))
    b_l = xc - (cx - 0.5 * w)
    b_r = (cx + 0.5 * w) - xc
    b_t = yc - (cy - 0.5 * h)
    b_b = (cy + 0.5 * h) - yc
    in_box = jnp.minimum(jnp.minimum(b_l, b_t), jnp.minimum(b_r, b_b)) > 0.0
    r = center_radius * strides[None, :]
    c_l = xc - (cx - r)
    c_r = (cx + r) - xc
    c_t = yc - (cy - r)
    c_b = (cy + r) - yc
    in_center = jnp.minimum(jnp.minimum(c_l, c_t), jnp.minimum(c_r, c_b)) > 0.0
    valid = gt_mask[:, None]
    return in_box & valid, in_center & valid


def simota_assign(pred_boxes: jax.Array, obj_logits: jax.Array, cls_logits: jax.Array,
                  gt_boxes: jax.Array, gt_classes: jax.Array, gt_mask: jax.Array,
                  centers_xy: jax.Array, strides: jax.Array, *, center_radius: float = 2.5,
                  topk_candidates: int = 10, iou_cost_weight: float = 3.0, geo_penalty: float = 1e5) -> Assignment:
    """SimOTA for one image.

    pred_boxes (N, 4) decoded cxcywh pixels, obj_logits (N,), cls_logits (N, C), gt_boxes (M, 4) cxcywh pixels,
    gt_classes (M,) int, gt_mask (M,) bool, centers_xy (N, 2) anchor centres ((g + 0.5) * stride), strides (N,).
    """
    n, m = pred_boxes.shape[0], gt_boxes.shape[0]
    num_classes = cls_logits.shape[-1]
    pred_boxes, obj_logits, cls_logits = jax.lax.stop_gradient((pred_boxes, obj_logits, cls_logits))
    gt_mask = gt_mask.astype(bool)
    # Padded slots may hold anything: give them a harmless box so no NaN/inf leaks through masked arithmetic.
    gt_boxes = jnp.where(gt_mask[:, None], jax.lax.stop_gradient(gt_boxes).astype(pred_boxes.dtype),
                         jnp.asarray([0.0, 0.0, 1.0, 1.0], pred_boxes.dtype))
    gt_classes = jnp.where(gt_mask, gt_classes.astype(jnp.int32), 0)

    in_box, in_center = candidates(gt_boxes, gt_mask, centers_xy, strides, center_radius)
    cand = jnp.any(in_box | in_center, axis=0)                       # (N,)
    geo = in_box & in_center                                         # (M, N)
    valid = gt_mask[:, None] & cand[None, :]                         # (M, N) pairs the reference builds

    ious = pairwise_iou(gt_boxes, pred_boxes)                        # (M, N)
    iou_cost = -jnp.log(ious + 1e-8)
    p = jnp.sqrt(jax.nn.sigmoid(cls_logits) * jax.nn.sigmoid(obj_logits)[:, None])   # (N, C)
    # BCE(p, one_hot(class)) summed over classes; logs per anchor only (targets are exactly 0 or 1).
    log_p, log_1mp = clamped_logs(p)                                                   # (N, C) each
    is_cls = gt_classes[:, None, None] == jnp.arange(num_classes)[None, None, :]     # (M, 1, C)
    cls_cost = -jnp.sum(jnp.where(is_cls, log_p[None], log_1mp[None]), axis=-1)       # (M, N), no matmul
    cost = cls_cost + iou_cost_weight * iou_cost + geo_penalty * (~geo).astype(p.dtype)
    cost = jnp.where(valid, cost, jnp.inf)
    ious = jnp.where(valid, ious, 0.0)

    # Dynamic k: IoUs are >= 0, so zeros off candidates leave the top-min(topk, #candidates) sum unchanged.
    kk = min(topk_candidates, n)
    top_ious, _ = jax.lax.top_k(ious, kk)                            # (M, kk), descending
    ks = jnp.maximum(jnp.sum(top_ious, axis=-1).astype(jnp.int32), 1)
    ks = jnp.where(gt_mask, ks, 0)

    # Each GT takes its k lowest-cost candidates (k <= topk since IoU <= 1). Claims are kept as (M, topk) lists
    # and scattered to per-anchor counts; no (M, N) matching matrix is built.
    _, low_idx = jax.lax.top_k(-cost, kk)                            # (M, kk), ascending cost, lower index on ties
    take = (jnp.arange(kk)[None, :] < ks[:, None]) & jnp.take_along_axis(valid, low_idx, axis=1)
    flat_idx = low_idx.reshape(-1)
    n_claims = jnp.zeros((n,), jnp.int32).at[flat_idx].add(take.reshape(-1).astype(jnp.int32))
    claim_gt = jnp.full((n,), -1, jnp.int32).at[flat_idx].max(
        jnp.where(take, jnp.arange(m, dtype=jnp.int32)[:, None], -1).reshape(-1))

    # Conflicts: the min-cost GT over ALL valid GTs wins (first index on ties; inf rows never win).
    # Two plain reductions instead of argmin (much faster on CPU).
    best_gt = jnp.min(jnp.where(cost == jnp.min(cost, axis=0), jnp.arange(m, dtype=jnp.int32)[:, None], m), axis=0)
    multi = n_claims > 1
    fg = n_claims > 0
    matched = jnp.where(fg, jnp.where(multi, best_gt, claim_gt), -1)
    pred_ious = jnp.where(fg, jnp.take_along_axis(ious, jnp.maximum(matched, 0)[None, :], axis=0)[0], 0.0)
    return Assignment(
        fg_mask=fg,
        matched_gt=matched,
        pred_ious=pred_ious,
        candidate_mask=cand,
        dynamic_ks=ks,
        num_conflicts=jnp.sum(multi).astype(jnp.int32),
        cost=cost,
        pair_ious=ious,
    )


def simota_assign_batch(pred_boxes, obj_logits, cls_logits, gt_boxes, gt_classes, gt_mask, centers_xy, strides,
                        **options) -> Assignment:
    """`simota_assign` vmapped over a leading batch axis of the first six arguments (anchors shared)."""
    fn = lambda *a: simota_assign(*a, centers_xy, strides, **options)  # noqa: E731
    return jax.vmap(fn)(pred_boxes, obj_logits, cls_logits, gt_boxes, gt_classes, gt_mask)
