"""Evaluation profiles: every threshold a metric depends on, in one printed object.

| profile | frames run | resize | conf | NMS IoU | cap | metrics |
|---|---|---|---|---|---|---|
| `paper` | annotated only | stretch | 0.003 | 0.20 | none | COCO mAP50/mAP + curve P/R/F1 (`vid_map_coco.py`, what the code did) |
| `paper-stated` | annotated only | stretch | 0.001 | 0.65 | none | same, with the thresholds the paper states |
| `callback` | annotated only | letterbox | 0.05 | 0.50 | 100 (top scores) | the training-time EvalCallback's settings (*) |
| `deployment` | all, incl. crack-free | stretch | 0.003 | 0.20 | none | COCO on all frames + frame/event metrics at `score_thres` |

(*) The reference EvalCallback keeps the 100 LOWEST-scoring boxes when more survive (a numpy argsort quirk,
spec §2); this port keeps the 100 highest. It only affects the mAP logged during training.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Profile:
    name: str
    annotated_only: bool          # run/evaluate only frames with >= 1 GT box (the reference's test protocol)
    letterbox: bool               # resize mode of the evaluation input (reference test script: stretch)
    conf_thres: float             # candidate threshold on obj * cls before NMS
    nms_thres: float              # NMS suppresses IoU > nms_thres (class-aware)
    max_detections: int | None    # top-k cap after NMS (None = no cap, the reference)
    score_thres: float | None = None   # deployment: fixed operating point for frame/event metrics
    match_iou: float = 0.5        # deployment: IoU for a TP match
    first_k: int = 5              # deployment: a crack is found if detected in its first k frames in view
    link_iou: float = 0.1         # deployment: IoU to link GT boxes into tracks (no track_id in the json)
    max_gap: int = 2              # deployment: frames a track may skip while linking

    def describe(self) -> str:
        """One line naming every threshold this profile uses."""
        parts = [f"profile={self.name}", "frames=" + ("annotated-only" if self.annotated_only else "all"),
                 "resize=" + ("letterbox" if self.letterbox else "stretch"), f"conf={self.conf_thres:g}",
                 f"nms_iou={self.nms_thres:g}", f"max_dets={self.max_detections or 'none'}",
                 "coco=IoU.50:.95/101pts/maxDets100", "P/R/F1=curve@IoU.5"]
        if self.score_thres is not None:
            parts += [f"score_thres={self.score_thres:g}", f"match_iou={self.match_iou:g}",
                      f"first_k={self.first_k}", f"link_iou={self.link_iou:g}", f"max_gap={self.max_gap}"]
        return " ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PROFILES: dict[str, Profile] = {
    "paper": Profile("paper", annotated_only=True, letterbox=False, conf_thres=0.003, nms_thres=0.20,
                     max_detections=None),
    "paper-stated": Profile("paper-stated", annotated_only=True, letterbox=False, conf_thres=0.001,
                            nms_thres=0.65, max_detections=None),
    "callback": Profile("callback", annotated_only=True, letterbox=True, conf_thres=0.05, nms_thres=0.5,
                        max_detections=100),
    "deployment": Profile("deployment", annotated_only=False, letterbox=False, conf_thres=0.003, nms_thres=0.20,
                          max_detections=None, score_thres=0.5),
}


def get_profile(name: str, overrides: dict | None = None) -> Profile:
    """A named profile, optionally with some fields replaced (e.g. from `config.eval.deployment`)."""
    if name not in PROFILES:
        raise ValueError(f"unknown evaluation profile {name!r}; expected one of {sorted(PROFILES)}")
    p = PROFILES[name]
    if overrides:
        fields = {f.name for f in dataclasses.fields(Profile)}
        bad = set(overrides) - fields
        if bad:
            raise ValueError(f"profile {name!r}: unknown override(s) {sorted(bad)}; fields are {sorted(fields)}")
        p = dataclasses.replace(p, **overrides)
    return p
