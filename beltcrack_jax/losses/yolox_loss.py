"""The reference training loss (`nets/yolo_training.py::YOLOLoss`, spec section 5) for padded, batched GT.

    total = (reg_weight * L_reg + L_obj + L_cls) / max(num_fg, 1)
    L_reg = nwd_weight * mean_fg(1 - NWD) + iou_weight * sum_fg(1 - clamp(CIoU, -1, 1))
    L_obj = sum over all anchors of focal(obj_logit, fg);  L_cls = sum_fg focal(cls_logit, one_hot * IoU)

`num_fg` is the foreground count of the whole batch. Under `jit` with batch-sharded inputs the sums run over
the global batch, so the value is the same on 1 or many devices (no per-device normalisation).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from beltcrack_jax.losses.boxes import decode_boxes, flatten_levels, iou_loss, make_anchors, nwd
from beltcrack_jax.losses.focal import sigmoid_focal_loss
from beltcrack_jax.losses.simota import simota_assign_batch


def detection_loss(raw, gt_boxes: jax.Array, gt_classes: jax.Array, gt_mask: jax.Array, *,
                   strides: Sequence[int] = (8,), num_classes: int | None = None,
                   reg_weight: float = 5.0, obj_weight: float = 1.0, cls_weight: float = 1.0,
                   nwd_weight: float = 0.5, iou_weight: float = 0.5, nwd_constant: float = 12.0,
                   iou_loss_type: str = "ciou", focal_alpha: float = 0.25, focal_gamma: float = 2.0,
                   center_radius: float = 2.5, topk_candidates: int = 10, iou_cost_weight: float = 3.0,
                   geo_penalty: float = 1e5, return_cost: bool = False):
    """YOLOX/SimOTA loss with CIoU + NWD box loss and focal objectness/class losses.

    Args:
      raw: head output NHWC (B, H, W, 5 + num_classes), channels [tx, ty, tw, th, obj, cls...] (no activation);
        or a sequence of such levels matching `strides` (anchors concatenated level by level, row-major).
      gt_boxes: (B, M, 4) [cx, cy, w, h] in input pixels, padded to M slots.
      gt_classes: (B, M) int class index.  gt_mask: (B, M) bool, False for padding slots.
      strides: one stride per level (reference: (8,)).  num_classes: checked against the channel count if given.
      The remaining options are the reference constants (see configs/default.py `loss`); `iou_loss_type`
      "ciou" (reference), "giou" or "iou" (1 - IoU^2).  `return_cost`: also put the (B, M, N) `cost` and
      `pair_ious` matrices in aux (tests / debugging).

    Returns:
      (total, aux): total is a float32 scalar; aux has the components `ciou_loss_sum` (the box-IoU term, whatever
      `iou_loss_type`), `nwd_loss_mean`, `reg_loss`, `obj_loss_sum`, `cls_loss_sum`, `unnormalized_total`,
      `num_fg` (= max(global fg count, 1), the divisor), `num_fg_raw` (the count), and the assignment
      `fg_mask` (B, N) bool, `matched_gt` (B, N) int32 (-1 = background), `pred_ious` (B, N),
      `candidate_mask` (B, N), `dynamic_ks` (B, M) (0 for padding), `num_conflicts` (B,).

    Differences from the reference, by choice: with no foreground in the whole batch the reference's NWD term is
    the mean of an empty tensor (NaN, so the total is NaN); here `nwd_loss_mean` is 0 then (the sum over an empty
    set divided by max(count, 1)), so the total is finite (= L_obj, all-background focal loss) and its gradient
    too. Ties in SimOTA cost are broken towards the lower anchor index (see `simota.py`).
    """
    if iou_loss_type not in ("ciou", "giou", "iou"):
        raise ValueError(f"detection_loss: iou_loss_type must be 'ciou', 'giou' or 'iou', got {iou_loss_type!r}")
    x = flatten_levels(raw)                                       # (B, N, 5 + C)
    levels = [raw] if hasattr(raw, "ndim") else list(raw)
    if len(levels) != len(strides):
        raise ValueError(f"detection_loss: {len(levels)} head output level(s) but strides={tuple(strides)}")
    b, n, ch = x.shape
    c = ch - 5
    if c < 1 or (num_classes is not None and c != num_classes):
        raise ValueError(f"detection_loss: raw has {ch} channels, expected 5 + num_classes"
                         f" ({'5 + ' + str(num_classes) if num_classes is not None else '>= 6'})")
    m = gt_boxes.shape[1] if gt_boxes.ndim == 3 else -1
    if gt_boxes.shape != (b, m, 4) or gt_classes.shape != (b, m) or gt_mask.shape != (b, m):
        raise ValueError(f"detection_loss: expected gt_boxes (B, M, 4), gt_classes (B, M), gt_mask (B, M) with B={b};"
                         f" got {gt_boxes.shape}, {gt_classes.shape}, {gt_mask.shape}")

    x = x.astype(jnp.float32)
    grid_xy, stride = make_anchors([(r.shape[1], r.shape[2]) for r in levels], strides)
    pred_boxes = decode_boxes(x[..., :4], grid_xy, stride)       # (B, N, 4) pixels, differentiable
    obj_logits, cls_logits = x[..., 4], x[..., 5:]
    centers = (grid_xy + 0.5) * stride[:, None]
    gt_mask = gt_mask.astype(bool)
    gt_boxes = gt_boxes.astype(jnp.float32)

    asg = simota_assign_batch(pred_boxes, obj_logits, cls_logits, gt_boxes, gt_classes, gt_mask, centers, stride,
                              center_radius=center_radius, topk_candidates=topk_candidates,
                              iou_cost_weight=iou_cost_weight, geo_penalty=geo_penalty)
    fg = asg.fg_mask                                              # (B, N)
    fgf = fg.astype(jnp.float32)
    num_fg_raw = jnp.sum(fg.astype(jnp.int32))
    denom = jnp.maximum(num_fg_raw, 1).astype(jnp.float32)

    # Targets (constants): matched GT box; one-hot class times the matched IoU.
    idx = jnp.maximum(asg.matched_gt, 0)
    safe_box = jnp.asarray([0.0, 0.0, 8.0, 8.0], jnp.float32)
    reg_target = jnp.take_along_axis(gt_boxes, idx[..., None], axis=1)
    reg_target = jax.lax.stop_gradient(jnp.where(fg[..., None], reg_target, safe_box))
    matched_cls = jnp.take_along_axis(gt_classes.astype(jnp.int32), idx, axis=1)
    cls_target = jax.nn.one_hot(matched_cls, c, dtype=jnp.float32) * asg.pred_ious[..., None]
    cls_target = jax.lax.stop_gradient(jnp.where(fg[..., None], cls_target, 0.0))

    # Box terms on every anchor with background pairs replaced by a finite dummy pair (double-where: no NaN grads).
    pred_fg = jnp.where(fg[..., None], pred_boxes, safe_box)
    box_l = jnp.where(fg, iou_loss(pred_fg, reg_target, iou_loss_type), 0.0)
    nwd_l = jnp.where(fg, 1.0 - nwd(pred_fg, reg_target, nwd_constant), 0.0)
    ciou_loss_sum = jnp.sum(box_l)
    nwd_loss_mean = jnp.sum(nwd_l) / denom
    reg_loss = nwd_weight * nwd_loss_mean + iou_weight * ciou_loss_sum

    obj_loss_sum = jnp.sum(sigmoid_focal_loss(obj_logits, fgf, focal_alpha, focal_gamma))
    cls_fl = sigmoid_focal_loss(cls_logits, cls_target, focal_alpha, focal_gamma)
    cls_loss_sum = jnp.sum(jnp.where(fg[..., None], cls_fl, 0.0))

    unnormalized = reg_weight * reg_loss + obj_weight * obj_loss_sum + cls_weight * cls_loss_sum
    total = unnormalized / denom
    aux = dict(
        ciou_loss_sum=ciou_loss_sum, nwd_loss_mean=nwd_loss_mean, reg_loss=reg_loss,
        obj_loss_sum=obj_loss_sum, cls_loss_sum=cls_loss_sum, unnormalized_total=unnormalized,
        num_fg=denom, num_fg_raw=num_fg_raw,
        fg_mask=fg, matched_gt=asg.matched_gt, pred_ious=asg.pred_ious,
        candidate_mask=asg.candidate_mask, dynamic_ks=asg.dynamic_ks, num_conflicts=asg.num_conflicts,
    )
    if return_cost:
        aux.update(cost=asg.cost, pair_ious=asg.pair_ious)
    return total, aux
