"""COCO metrics the way the reference reports them (spec §7; `vid_map_coco.py`, `utils/utils_map.py`).

`coco_metrics(gt, detections, profile)` runs pycocotools' COCOeval('bbox') with its defaults (IoU .50:.95,
101 recall points, maxDets 1/10/100, all area ranges) and derives:

* `map50` = stats[1] (AP at IoU .5, area all, maxDets 100), `map50_95` = stats[0];
* `recall` = eval['recall'][IoU .5, class, area all, maxDets 100];
* `precision` = mean of eval['precision'][IoU .5, 0 : int(100 * recall), class, area all, maxDets 100], i.e. the
  interpolated precision at the recall points 0.00, 0.01, ..., (int(100 R) - 1) / 100 — a curve summary, not a
  precision at a score threshold;
* `f1` = 2 P R / (P + R).
With several categories P/R/F1 are the mean over categories that have GT (the reference has one class and
reads index 0). If int(100 R) == 0 the reference would take the mean of an empty slice (NaN); here P = F1 = 0.

Image set: the profile decides which GT images are evaluated (`params.imgIds`). `paper`/`paper-stated` use only
images with at least one annotation (the reference runs the detector on `cocoGt.imgToAnns` only); `deployment`
uses every image of the GT json, so detections on crack-free frames count as false positives. Detections on
images outside the evaluated set are ignored (counted in `num_detections_ignored`); detections whose image id is
not in the GT json at all raise a ValueError.

Robustness: no detections (pycocotools' `loadRes([])` raises IndexError) gives zeros; images without GT and
GT without detections are ordinary cases; COCOeval's prints are captured and returned as `summary_text`.
Optional backend `faster_coco_eval` (same API) if installed; it must give identical numbers.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from typing import Any, Iterable

import numpy as np

STAT_NAMES = ("map50_95", "map50", "map75", "map50_95_small", "map50_95_medium", "map50_95_large",
              "ar1", "ar10", "ar100", "ar100_small", "ar100_medium", "ar100_large")

# Which image set each metric profile evaluates (the profile objects live in `profiles.py`).
ANNOTATED_ONLY = {"paper": True, "paper-stated": True, "callback": True, "deployment": False, "all": False}


def _backend(name: str):
    if name == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
        return COCO, COCOeval
    if name == "faster_coco_eval":
        try:
            from faster_coco_eval import COCO, COCOeval_faster
        except ImportError as e:  # pragma: no cover - optional dependency
            raise ValueError("coco backend 'faster_coco_eval' requested but the package is not installed "
                             "(pip install faster-coco-eval)") from e
        return COCO, COCOeval_faster
    raise ValueError(f"coco backend must be 'pycocotools' or 'faster_coco_eval', got {name!r}")


def validate_gt(gt: dict) -> dict:
    """Checks a COCO GT dict and returns a copy with the fields COCOeval needs (area, iscrowd, id) filled."""
    if not isinstance(gt, dict):
        raise ValueError(f"GT must be a COCO dict, got {type(gt).__name__}")
    for key in ("images", "annotations", "categories"):
        if key not in gt:
            raise ValueError(f"GT COCO dict has no '{key}' list (keys: {sorted(gt)})")
    out = {k: v for k, v in gt.items() if k not in ("annotations",)}
    out["images"] = [dict(im) for im in gt["images"]]
    img_ids = {im["id"] for im in out["images"]}
    cat_ids = {c["id"] for c in gt["categories"]}
    anns = []
    for i, a in enumerate(gt["annotations"]):
        a = dict(a)
        if a.get("image_id") not in img_ids:
            raise ValueError(f"GT annotation {i} refers to image_id {a.get('image_id')!r}, not in GT images")
        if a.get("category_id") not in cat_ids:
            raise ValueError(f"GT annotation {i} has category_id {a.get('category_id')!r}; "
                             f"GT categories are {sorted(cat_ids)}")
        bbox = a.get("bbox")
        if bbox is None or len(bbox) != 4:
            raise ValueError(f"GT annotation {i}: bbox must be [x, y, w, h], got {bbox!r}")
        a["bbox"] = [float(v) for v in bbox]
        a.setdefault("area", a["bbox"][2] * a["bbox"][3])
        a.setdefault("iscrowd", 0)
        a.setdefault("id", i + 1)
        anns.append(a)
    ids = [a["id"] for a in anns]
    if len(set(ids)) != len(ids):
        raise ValueError("GT annotation ids are not unique")
    out["annotations"] = anns
    return out


def validate_detections(detections: Iterable[dict], gt: dict) -> list[dict]:
    """Checks detection dicts {image_id, category_id, bbox [x, y, w, h] px, score}; returns clean copies."""
    img_ids = {im["id"] for im in gt["images"]}
    cat_ids = {c["id"] for c in gt["categories"]}
    out = []
    unknown = set()
    for i, d in enumerate(detections):
        for key in ("image_id", "category_id", "bbox", "score"):
            if key not in d:
                raise ValueError(f"detection {i} has no '{key}' (expected image_id, category_id, bbox, score)")
        if d["image_id"] not in img_ids:
            unknown.add(d["image_id"])
            continue
        if d["category_id"] not in cat_ids:
            raise ValueError(f"detection {i} has category_id {d['category_id']!r}; GT categories are "
                             f"{sorted(cat_ids)} (use the GT json's ids, not 0-based class indices)")
        bbox = [float(v) for v in d["bbox"]]
        score = float(d["score"])
        if len(bbox) != 4 or not all(math.isfinite(v) for v in bbox) or not math.isfinite(score):
            raise ValueError(f"detection {i}: bbox must be 4 finite numbers and score finite, got {d['bbox']!r}, "
                             f"{d['score']!r}")
        out.append({"image_id": d["image_id"], "category_id": d["category_id"], "bbox": bbox, "score": score})
    if unknown:
        shown = sorted(unknown, key=str)[:10]
        raise ValueError(f"{len(unknown)} detection image id(s) are not in the GT json, e.g. {shown} "
                         f"(GT has {len(img_ids)} images)")
    return out


def evaluated_image_ids(gt: dict, annotated_only: bool) -> list:
    """The GT image ids a profile evaluates (sorted like COCO.getImgIds)."""
    if annotated_only:
        ids = {a["image_id"] for a in gt["annotations"]}
        return [im["id"] for im in gt["images"] if im["id"] in ids]
    return [im["id"] for im in gt["images"]]


def pr_f1_from_eval(precision: np.ndarray, recall: np.ndarray, k: int = 0) -> tuple[float, float, float]:
    """The reference's P/R/F1 for category index k from COCOeval.eval['precision'] (T,R,K,A,M) and
    ['recall'] (T,K,A,M): IoU .5, area all, maxDets 100."""
    r = float(recall[0, k, 0, -1])
    if r < 0:  # no GT for this category
        return float("nan"), float("nan"), float("nan")
    n = int(r * 100)
    p = float(np.mean(precision[0, :n, k, 0, -1])) if n > 0 else 0.0
    f1 = 2 * p * r / (p + r) if (p + r) > 0 else 0.0
    return p, r, f1


def coco_metrics(gt: dict, detections: list[dict], profile: str = "paper", *, backend: str = "pycocotools",
                 image_ids: list | None = None) -> dict[str, Any]:
    """COCO bbox metrics + the reference's P/R/F1.

    gt: COCO dict (images, annotations with bbox [x, y, w, h] in original pixels, categories).
    detections: list of {image_id, category_id (GT ids), bbox [x, y, w, h] px, score}.
    profile: 'paper' / 'paper-stated' / 'callback' (annotated images only) or 'deployment' / 'all' (every
    image). image_ids: explicit evaluated set (overrides the profile's).
    Returns a dict: map50, map50_95, precision, recall, f1, the 12 COCO stats by name, `pr_curve` (101
    interpolated precisions at IoU .5 for category index 0, -1 where undefined), `rec_thrs`, counts and
    `summary_text` (what COCOeval printed).
    """
    if profile not in ANNOTATED_ONLY:
        raise ValueError(f"coco_metrics: unknown profile {profile!r}; expected one of {sorted(ANNOTATED_ONLY)}")
    gt = validate_gt(gt)
    dets = validate_detections(detections, gt)
    ids = evaluated_image_ids(gt, ANNOTATED_ONLY[profile]) if image_ids is None else list(image_ids)
    known = {im["id"] for im in gt["images"]}
    bad = [i for i in ids if i not in known]
    if bad:
        raise ValueError(f"image_ids not in the GT json: {bad[:10]}")
    idset = set(ids)
    used = [d for d in dets if d["image_id"] in idset]
    COCO, COCOeval = _backend(backend)

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        if used:
            coco_dt = coco_gt.loadRes(copy.deepcopy(used))
        else:  # loadRes([]) crashes: build an empty result set by hand
            coco_dt = COCO()
            coco_dt.dataset = {"images": list(gt["images"]), "annotations": [],
                               "categories": copy.deepcopy(gt["categories"])}
            coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.params.imgIds = ids
        num_gt = sum(1 for a in gt["annotations"] if a["image_id"] in idset and not a.get("iscrowd", 0))
        if ids:
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
    out: dict[str, Any] = {"profile": profile, "backend": backend, "num_images": len(ids), "num_gt": num_gt,
                           "num_detections": len(used), "num_detections_ignored": len(dets) - len(used)}
    if not ids or num_gt == 0:
        stats = np.full(12, -1.0)
        prec = np.full((10, 101, max(len(gt["categories"]), 1), 4, 3), -1.0)
        rec = np.full((10, max(len(gt["categories"]), 1), 4, 3), -1.0)
    else:
        stats = np.asarray(ev.stats, np.float64)
        prec, rec = np.asarray(ev.eval["precision"]), np.asarray(ev.eval["recall"])
    out.update({name: float(v) for name, v in zip(STAT_NAMES, stats)})
    per_cat = [pr_f1_from_eval(prec, rec, k) for k in range(prec.shape[2])]
    valid = [t for t in per_cat if not math.isnan(t[1])]
    if valid:
        out["precision"], out["recall"], out["f1"] = (float(np.mean([t[j] for t in valid])) for j in range(3))
    else:
        out["precision"] = out["recall"] = out["f1"] = float("nan")
    out["pr_curve"] = prec[0, :, 0, 0, -1].tolist()
    out["rec_thrs"] = np.linspace(0.0, 1.0, 101).tolist()
    out["summary_text"] = buf.getvalue()
    return out


def detections_to_coco(boxes_xyxy: np.ndarray, scores: np.ndarray, classes: np.ndarray, image_id,
                       category_ids: list) -> list[dict]:
    """One image's detections (xyxy original pixels, scores, 0-based class indices) -> COCO result dicts.
    category_ids[c] is the GT json id of class index c (the reference: cocoGt.getCatIds())."""
    out = []
    for (x1, y1, x2, y2), s, c in zip(np.asarray(boxes_xyxy, np.float64), np.asarray(scores), np.asarray(classes)):
        c = int(c)
        if not 0 <= c < len(category_ids):
            raise ValueError(f"class index {c} has no category id (categories: {category_ids})")
        out.append({"image_id": image_id, "category_id": category_ids[c],
                    "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)], "score": float(s)})
    return out
