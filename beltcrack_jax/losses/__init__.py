"""Training loss of BeltCrackDet (YOLOX SimOTA + CIoU/NWD box loss + focal objectness/class), pure JAX.

Public entry point: `detection_loss(raw, gt_boxes, gt_classes, gt_mask, **options) -> (total, aux)`.
Box helpers (`boxes`) are shared with the evaluation code.
"""

from beltcrack_jax.losses.boxes import (ciou, cxcywh_to_xyxy, decode_boxes, flatten_levels, iou_loss, make_anchors,
                                        nwd, paired_iou, pairwise_iou, torch_clamp, xyxy_to_cxcywh)
from beltcrack_jax.losses.focal import bce_with_logits, binary_cross_entropy, sigmoid_focal_loss
from beltcrack_jax.losses.simota import Assignment, candidates, simota_assign, simota_assign_batch
from beltcrack_jax.losses.yolox_loss import detection_loss

__all__ = [
    "Assignment", "bce_with_logits", "binary_cross_entropy", "candidates", "ciou", "cxcywh_to_xyxy",
    "decode_boxes", "detection_loss", "flatten_levels", "iou_loss", "make_anchors", "nwd", "paired_iou",
    "pairwise_iou", "sigmoid_focal_loss", "simota_assign", "simota_assign_batch", "torch_clamp",
    "xyxy_to_cxcywh",
]
