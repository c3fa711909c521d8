"""Box utilities shared by the loss and the evaluation code (pure `jnp`, jit/vmap/grad friendly).

Boxes are `[cx, cy, w, h]` ("cxcywh") or `[x1, y1, x2, y2]` ("xyxy") along the last axis, in input pixels.
The formulas reproduce the reference (`nets/yolo_training.py`) operation by operation, so float32 results
match it to the last bits where the order of operations allows it:

* `pairwise_iou`   = `YOLOLoss.bboxes_iou(a, b, xyxy=False)` (SimOTA's IoU; no eps in the denominator).
* `pairwise_iou_xyxy` = the IoU of torchvision's NMS kernel (the evaluation's NMS, `eval/postprocess.py`).
* `ciou`           = `IOUloss(loss_type="ciou")` before the `1 - clamp(., -1, 1)`; `iou_loss` gives the loss.
* `nwd`            = `wasserstein_loss` (normalised Gaussian Wasserstein distance, C = 12).
* `make_anchors` / `decode_boxes` = the grid of `YOLOLoss.get_output_and_grid` / `utils_bbox.decode_outputs`
  (anchor = row-major `y * W + x`, levels concatenated in the order given; centre `(t + grid) * stride`,
  **no +0.5**; size `exp(t) * stride`).

PyTorch's `clamp` passes the gradient at the bounds (inclusive), `jnp.clip` does not; `torch_clamp` below
keeps PyTorch's rule so gradients match at ties (e.g. CIoU exactly 1 for identical boxes).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp


def torch_clamp(x: jax.Array, lo: float | None = None, hi: float | None = None) -> jax.Array:
    """`torch.clamp` with PyTorch's gradient (1 where lo <= x <= hi, bounds included, else 0)."""
    if lo is not None:
        x = jnp.where(x < lo, jnp.asarray(lo, x.dtype), x)
    if hi is not None:
        x = jnp.where(x > hi, jnp.asarray(hi, x.dtype), x)
    return x


def _check_last4(name: str, x: jax.Array) -> None:
    if x.shape[-1:] != (4,):
        raise ValueError(f"{name}: expected boxes with last axis 4 ([cx,cy,w,h] or [x1,y1,x2,y2]), got shape {x.shape}")


def cxcywh_to_xyxy(b: jax.Array) -> jax.Array:
    """(..., 4) [cx, cy, w, h] -> (..., 4) [x1, y1, x2, y2] (computed as c -/+ wh / 2, like the reference)."""
    _check_last4("cxcywh_to_xyxy", b)
    c, wh = b[..., :2], b[..., 2:]
    return jnp.concatenate([c - wh / 2, c + wh / 2], axis=-1)


def xyxy_to_cxcywh(b: jax.Array) -> jax.Array:
    """(..., 4) [x1, y1, x2, y2] -> (..., 4) [cx, cy, w, h]."""
    _check_last4("xyxy_to_cxcywh", b)
    lo, hi = b[..., :2], b[..., 2:]
    return jnp.concatenate([(lo + hi) / 2, hi - lo], axis=-1)


def pairwise_iou(a: jax.Array, b: jax.Array) -> jax.Array:
    """IoU of every box of `a` (M, 4) with every box of `b` (N, 4), both cxcywh -> (M, N).

    Reference `bboxes_iou(a, b, xyxy=False)`: the intersection counts only where tl < br in both axes and
    the union has no eps, so two zero-area boxes give NaN (never the case for valid GT / exp-decoded boxes).
    """
    _check_last4("pairwise_iou(a)", a)
    _check_last4("pairwise_iou(b)", b)
    a_c, a_wh = a[:, None, :2], a[:, None, 2:]
    b_c, b_wh = b[None, :, :2], b[None, :, 2:]
    tl = jnp.maximum(a_c - a_wh / 2, b_c - b_wh / 2)
    br = jnp.minimum(a_c + a_wh / 2, b_c + b_wh / 2)
    area_a = a[:, 2] * a[:, 3]
    area_b = b[:, 2] * b[:, 3]
    en = jnp.all(tl < br, axis=-1).astype(a.dtype)
    area_i = (br[..., 0] - tl[..., 0]) * (br[..., 1] - tl[..., 1]) * en
    return area_i / (area_a[:, None] + area_b[None, :] - area_i)


def pairwise_iou_xyxy(a: jax.Array, b: jax.Array) -> jax.Array:
    """IoU of (M, 4) x (N, 4) xyxy boxes -> (M, N) with torchvision's NMS formula: inter = max(0, overlap) per
    axis, IoU = inter / (area_a + area_b - inter), no epsilon (kept apart from `pairwise_iou`: NMS keep decisions
    at the threshold depend on these exact roundings)."""
    _check_last4("pairwise_iou_xyxy(a)", a)
    _check_last4("pairwise_iou_xyxy(b)", b)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    xx1 = jnp.maximum(a[:, None, 0], b[None, :, 0])
    yy1 = jnp.maximum(a[:, None, 1], b[None, :, 1])
    xx2 = jnp.minimum(a[:, None, 2], b[None, :, 2])
    yy2 = jnp.minimum(a[:, None, 3], b[None, :, 3])
    inter = jnp.maximum(0.0, xx2 - xx1) * jnp.maximum(0.0, yy2 - yy1)
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def _paired_iou_parts(pred: jax.Array, target: jax.Array):
    p_tl, p_br = pred[..., :2] - pred[..., 2:] / 2, pred[..., :2] + pred[..., 2:] / 2
    t_tl, t_br = target[..., :2] - target[..., 2:] / 2, target[..., :2] + target[..., 2:] / 2
    tl = jnp.maximum(p_tl, t_tl)
    br = jnp.minimum(p_br, t_br)
    area_p = pred[..., 2] * pred[..., 3]
    area_g = target[..., 2] * target[..., 3]
    en = jnp.all(tl < br, axis=-1).astype(pred.dtype)
    area_i = (br[..., 0] - tl[..., 0]) * (br[..., 1] - tl[..., 1]) * en
    area_u = area_p + area_g - area_i
    iou = area_i / (area_u + 1e-16)
    return iou, area_u, (p_tl, p_br, t_tl, t_br)


def paired_iou(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Element-wise IoU of cxcywh boxes (..., 4) and (..., 4) -> (...), with the reference's +1e-16 in the union."""
    _check_last4("paired_iou(pred)", pred)
    _check_last4("paired_iou(target)", target)
    return _paired_iou_parts(pred, target)[0]


def ciou(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Complete IoU of cxcywh boxes, element-wise (..., 4), (..., 4) -> (...). Not clamped.

    CIoU = IoU - |c_p - c_g|^2 / max(enclosing diagonal^2, 1e-6) - alpha * v,
    v = 4/pi^2 (atan(w_p / max(h_p, 1e-6)) - atan(w_g / max(h_g, 1e-6)))^2,
    alpha = v / max(1 - IoU + v, 1e-6) -- alpha is NOT detached (the reference differentiates through it).
    """
    _check_last4("ciou(pred)", pred)
    _check_last4("ciou(target)", target)
    iou, _, (p_tl, p_br, t_tl, t_br) = _paired_iou_parts(pred, target)
    d = pred[..., :2] - target[..., :2]
    center_distance = jnp.sum(d * d, axis=-1)
    enclose_wh = jnp.maximum(jnp.maximum(p_br, t_br) - jnp.minimum(p_tl, t_tl), 0.0)
    enclose_diagonal = jnp.sum(enclose_wh * enclose_wh, axis=-1)
    out = iou - 1.0 * center_distance / torch_clamp(enclose_diagonal, lo=1e-6)
    dv = (jnp.arctan(pred[..., 2] / torch_clamp(pred[..., 3], lo=1e-6))
          - jnp.arctan(target[..., 2] / torch_clamp(target[..., 3], lo=1e-6)))
    v = (4 / (jnp.pi ** 2)) * (dv * dv)
    alpha = v / torch_clamp(1.0 - iou + v, lo=1e-6)
    return out - alpha * v


def iou_loss(pred: jax.Array, target: jax.Array, loss_type: str = "ciou") -> jax.Array:
    """Per-pair box loss of the reference `IOUloss` (reduction "none"), (..., 4), (..., 4) -> (...).

    loss_type: "ciou" (reference default): 1 - clamp(CIoU, -1, 1); "giou": 1 - clamp(GIoU, -1, 1);
    "iou": 1 - IoU^2 (the YOLOX formula the reference keeps for `loss_type="iou"`).
    """
    if loss_type == "ciou":
        return 1.0 - torch_clamp(ciou(pred, target), -1.0, 1.0)
    _check_last4("iou_loss(pred)", pred)
    _check_last4("iou_loss(target)", target)
    iou, area_u, (p_tl, p_br, t_tl, t_br) = _paired_iou_parts(pred, target)
    if loss_type == "iou":
        return 1.0 - iou ** 2
    if loss_type == "giou":
        c_wh = jnp.maximum(p_br, t_br) - jnp.minimum(p_tl, t_tl)
        area_c = c_wh[..., 0] * c_wh[..., 1]
        giou = iou - (area_c - area_u) / torch_clamp(area_c, lo=1e-16)
        return 1.0 - torch_clamp(giou, -1.0, 1.0)
    raise ValueError(f"iou_loss: loss_type must be one of 'ciou', 'giou', 'iou', got {loss_type!r}")


def nwd(pred: jax.Array, target: jax.Array, constant: float = 12.0, eps: float = 1e-7) -> jax.Array:
    """Normalised Gaussian Wasserstein distance of cxcywh boxes, element-wise -> (...), in (0, 1].

    W2 = dcx^2 + dcy^2 + eps + ((w_p - w_g)^2 + (h_p - h_g)^2) / 4 (widths get +eps first, as in the
    reference); NWD = exp(-sqrt(W2) / constant). The loss term is 1 - NWD.
    """
    _check_last4("nwd(pred)", pred)
    _check_last4("nwd(target)", target)
    d = pred[..., :2] - target[..., :2]
    center_distance = d[..., 0] * d[..., 0] + d[..., 1] * d[..., 1] + eps
    dw = (pred[..., 2] + eps) - (target[..., 2] + eps)
    dh = (pred[..., 3] + eps) - (target[..., 3] + eps)
    wh_distance = (dw ** 2 + dh ** 2) / 4
    return jnp.exp(-jnp.sqrt(center_distance + wh_distance) / constant)


def make_anchors(level_shapes: Sequence[tuple[int, int]], strides: Sequence[int]):
    """Anchor grid of one or more feature levels, concatenated level by level, row-major inside a level.

    Returns (grid_xy (N, 2) float32 = (col, row), stride (N,) float32), N = sum(H_l * W_l).
    """
    if len(level_shapes) != len(strides):
        raise ValueError(f"make_anchors: {len(level_shapes)} level shapes but {len(strides)} strides")
    grids, strs = [], []
    for (h, w), s in zip(level_shapes, strides):
        ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
        grids.append(jnp.stack([xs.reshape(-1), ys.reshape(-1)], axis=-1))
        strs.append(jnp.full((h * w,), float(s), jnp.float32))
    return jnp.concatenate(grids, 0), jnp.concatenate(strs, 0)


def decode_boxes(t: jax.Array, grid_xy: jax.Array, stride: jax.Array) -> jax.Array:
    """Raw regression (..., N, 4) [tx, ty, tw, th] -> cxcywh pixels: ((t_xy + grid) * s, exp(t_wh) * s)."""
    _check_last4("decode_boxes", t)
    s = stride[:, None]
    return jnp.concatenate([(t[..., :2] + grid_xy) * s, jnp.exp(t[..., 2:4]) * s], axis=-1)


def flatten_levels(raw) -> jax.Array:
    """Head output(s) NHWC (B, H, W, C) or a sequence of them -> (B, N, C) (row-major, levels concatenated)."""
    levels = [raw] if hasattr(raw, "ndim") else list(raw)
    out = []
    for i, r in enumerate(levels):
        if r.ndim != 4:
            raise ValueError(f"head output level {i}: expected NHWC (B, H, W, 5 + num_classes), got shape {r.shape}")
        out.append(r.reshape(r.shape[0], r.shape[1] * r.shape[2], r.shape[3]))
    if len({o.shape[-1] for o in out}) != 1 or len({o.shape[0] for o in out}) != 1:
        raise ValueError(f"head outputs disagree in batch or channels: {[r.shape for r in levels]}")
    return jnp.concatenate(out, axis=1)
