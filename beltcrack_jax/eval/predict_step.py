"""The one jitted inference step: uint8 clips -> normalise -> model -> decode -> NMS -> original pixels.

Used by the evaluator (evaluate.py and the train loop's periodic evaluation), by predict.py's window mode and,
wrapped in `jax.export`, by export.py; predict.py's stream mode runs the same model through
`BeltCrackDet.backbone_features` / `neck_head` and the same `postprocess.detect`.
"""

from __future__ import annotations

import functools

import jax

from beltcrack_jax.data.transforms import normalize
from beltcrack_jax.eval import postprocess as pp


@functools.partial(jax.jit, static_argnames=("model", "max_detections", "method"))
def predict_step(variables, clips, resize, orig_hw, conf_thres, nms_thres, *, model, max_detections=None,
                 method="auto"):
    """uint8 clips (B, T, H, W, 3) -> (Detections with xyxy boxes in original pixels, (B, h, w) score map,
    raw head output (B, h, w, 5+K)).

    resize (B, 5) int32 `[nw, nh, dx, dy, flip]` and orig_hw (B, 2) are the pipeline's per-clip metadata;
    conf_thres / nms_thres are traced (changing them does not recompile). Module-level, so every caller with the
    same model and settings shares one compilation."""
    raw = model.apply(variables, normalize(clips), train=False)
    dets, smap = pp.detect(raw, resize, orig_hw, conf_thres, nms_thres, input_hw=tuple(clips.shape[2:4]),
                           max_detections=max_detections, method=method)
    return dets, smap, raw
