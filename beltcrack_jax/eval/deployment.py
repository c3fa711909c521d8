"""Deployment metrics: every frame (crack-free ones included) at a fixed confidence threshold.

What the paper protocol cannot show (spec §7: only annotated frames are run). Given the GT of a whole split
(COCO dict, crack-free frames are images without annotations) and the detections on every frame:

Frame level (operating point `score_thres`): in each frame, detections with score >= score_thres are matched
greedily in descending score order to unmatched GT boxes of the same category with IoU >= `match_iou` (COCO's
rule at IoU .5). Reported: TP, FP, FN, precision, recall, F1, false positives per frame, false positives per
crack-free frame, and the fraction of crack-free frames that raise any alarm.

Event level (a crack = one physical crack followed across the frames it is in view):
* Identity: the annotation field `track_id` (or `instance_id`) when the GT json has it. Otherwise GT boxes are
  linked frame to frame inside each sequence: a track's next box is predicted with constant velocity (last
  displacement of its centre; zero for a new track), and boxes of the next frame(s) are assigned greedily by
  descending IoU with that prediction when IoU >= `link_iou`; a track may skip up to `max_gap - 1` frames.
  Unassigned boxes start new tracks. This is a heuristic (a belt moves cracks steadily through the view, so
  constant-velocity prediction is a good prior); supply `track_id` for exact identities.
* A crack is *found* if it is detected (a TP match of one of its boxes at the operating point) in any of its first
  `first_k` frames in view. Delay = frame-number difference between its first appearance and the first detection
  (0 = detected on the first frame). Reported: number of events, event recall, mean/median/p90/max delay over
  found events.
* Sequences and frame numbers come from each image's `sequence`/`video_id` and `frame_index`/`frame_id` fields, or
  else from the reference's file layout `.../<sequence>/<n>.jpg` (sequence = directory, n = frame number).
"""

from __future__ import annotations

import collections
import os
from typing import Any

import numpy as np

SEQ_KEYS = ("sequence", "video_id", "sequence_id", "seq")
FRAME_KEYS = ("frame_index", "frame_id", "frame")
TRACK_KEYS = ("track_id", "instance_id")


def iou_xywh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of (N, 4) x (M, 4) boxes in COCO [x, y, w, h] (pycocotools' non-crowd formula)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    ax2, ay2, bx2, by2 = a[:, 0] + a[:, 2], a[:, 1] + a[:, 3], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    iw = np.clip(np.minimum(ax2[:, None], bx2[None]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(ay2[:, None], by2[None]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def frame_info(image: dict) -> tuple[str, int]:
    """(sequence, frame number) of a GT image entry (fields, else `<...>/<sequence>/<n>.<ext>`)."""
    seq = next((image[k] for k in SEQ_KEYS if k in image), None)
    frame = next((image[k] for k in FRAME_KEYS if k in image), None)
    if seq is None or frame is None:
        name = image.get("file_name")
        if name is None:
            raise ValueError(f"image {image.get('id')!r}: no sequence/frame fields and no file_name to parse")
        stem = os.path.splitext(os.path.basename(name))[0]
        try:
            f = int(stem)
        except ValueError as e:
            raise ValueError(f"image {image.get('id')!r}: cannot read a frame number from file_name {name!r} "
                             f"(expected '<sequence>/<n>.jpg' or fields {SEQ_KEYS}/{FRAME_KEYS})") from e
        seq = seq if seq is not None else os.path.dirname(name)
        frame = frame if frame is not None else f
    return str(seq), int(frame)


def match_frame(gt_boxes: np.ndarray, gt_cats: np.ndarray, det_boxes: np.ndarray, det_scores: np.ndarray,
                det_cats: np.ndarray, iou_thres: float) -> tuple[np.ndarray, np.ndarray]:
    """Greedy matching in one frame. Returns (det -> matched GT index or -1, GT -> matched det or -1)."""
    order = np.argsort(-np.asarray(det_scores), kind="stable")
    ious = iou_xywh(det_boxes, gt_boxes)
    det_m = np.full(len(det_scores), -1)
    gt_m = np.full(len(gt_boxes), -1)
    for d in order:
        best, best_iou = -1, iou_thres
        for g in range(len(gt_boxes)):
            if gt_m[g] >= 0 or gt_cats[g] != det_cats[d]:
                continue
            if ious[d, g] >= best_iou:
                best, best_iou = g, ious[d, g]
        if best >= 0:
            det_m[d], gt_m[best] = best, d
    return det_m, gt_m


def link_tracks(frames: list[tuple[int, list[dict]]], link_iou: float = 0.1, max_gap: int = 2) -> dict:
    """Assigns track ids to GT annotations of ONE sequence. frames: [(frame number, [annotation dicts])]
    sorted by frame. Returns {annotation id: track id (local int)}."""
    tracks: list[dict] = []  # each: last_box (xywh), velocity (dx, dy), last_frame, cat
    out = {}
    for fno, anns in frames:
        live = [t for t in tracks if 0 < fno - t["last_frame"] <= max_gap]
        pairs = []
        for ti, t in enumerate(live):
            steps = fno - t["last_frame"]
            pred = np.array(t["last_box"], np.float64)
            pred[:2] += np.asarray(t["vel"]) * steps
            for ai, a in enumerate(anns):
                if a["category_id"] != t["cat"]:
                    continue
                iou = float(iou_xywh(pred[None], np.asarray(a["bbox"])[None])[0, 0])
                if iou >= link_iou:
                    pairs.append((iou, ti, ai))
        pairs.sort(key=lambda p: (-p[0], p[1], p[2]))
        used_t, used_a = set(), set()
        for iou, ti, ai in pairs:
            if ti in used_t or ai in used_a:
                continue
            used_t.add(ti)
            used_a.add(ai)
            t, a = live[ti], anns[ai]
            steps = fno - t["last_frame"]
            c_old = np.array(t["last_box"][:2]) + np.array(t["last_box"][2:]) / 2
            c_new = np.array(a["bbox"][:2], np.float64) + np.array(a["bbox"][2:], np.float64) / 2
            t["vel"] = tuple((c_new - c_old) / steps)
            t["last_box"], t["last_frame"] = list(map(float, a["bbox"])), fno
            out[a["id"]] = t["tid"]
        for ai, a in enumerate(anns):
            if ai in used_a:
                continue
            t = {"tid": len(tracks), "last_box": list(map(float, a["bbox"])), "vel": (0.0, 0.0),
                 "last_frame": fno, "cat": a["category_id"]}
            tracks.append(t)
            out[a["id"]] = t["tid"]
    return out


def deployment_metrics(gt: dict, detections: list[dict], *, score_thres: float = 0.5, match_iou: float = 0.5,
                       first_k: int = 5, link_iou: float = 0.1, max_gap: int = 2) -> dict[str, Any]:
    """Frame- and event-level metrics over EVERY image of `gt` (see the module docstring).

    gt: COCO dict (validated like `coco.validate_gt`); detections: COCO result dicts (all frames).
    Returns a dict of floats/ints (plus `events`: per-crack records {sequence, track, first_frame, found,
    delay}).
    """
    from beltcrack_jax.eval.coco import validate_detections, validate_gt

    if first_k < 1:
        raise ValueError(f"deployment_metrics: first_k must be >= 1, got {first_k}")
    gt = validate_gt(gt)
    dets = validate_detections(detections, gt)
    images = {im["id"]: im for im in gt["images"]}
    gt_by_img = collections.defaultdict(list)
    for a in gt["annotations"]:
        if not a.get("iscrowd", 0):
            gt_by_img[a["image_id"]].append(a)
    dt_by_img = collections.defaultdict(list)
    for d in dets:
        if d["score"] >= score_thres:
            dt_by_img[d["image_id"]].append(d)

    # ---- frame level
    tp = fp = fn = 0
    fp_on_clean = 0
    clean_frames = clean_alarm = 0
    matched_ann = set()
    for iid in images:
        g, d = gt_by_img.get(iid, []), dt_by_img.get(iid, [])
        det_m, gt_m = match_frame(np.array([a["bbox"] for a in g]).reshape(-1, 4),
                                  np.array([a["category_id"] for a in g]),
                                  np.array([x["bbox"] for x in d]).reshape(-1, 4),
                                  np.array([x["score"] for x in d]), np.array([x["category_id"] for x in d]),
                                  match_iou)
        tp += int((det_m >= 0).sum())
        fp += int((det_m < 0).sum())
        fn += int((gt_m < 0).sum())
        matched_ann.update(g[i]["id"] for i in np.nonzero(gt_m >= 0)[0])
        if not g:
            clean_frames += 1
            fp_on_clean += len(d)
            clean_alarm += int(len(d) > 0)
    n = len(images)
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * prec * rec / (prec + rec) if (tp and prec + rec > 0) else 0.0

    # ---- event level
    by_seq = collections.defaultdict(lambda: collections.defaultdict(list))
    for iid, im in images.items():
        seq, fno = frame_info(im)
        by_seq[seq][fno].extend(gt_by_img.get(iid, []))
    has_ids = any(any(k in a for k in TRACK_KEYS) for a in gt["annotations"])
    events = []
    for seq in sorted(by_seq):
        frames = sorted(by_seq[seq].items())
        if has_ids:
            tid_of = {}
            for _, anns in frames:
                for a in anns:
                    tid = next((a[k] for k in TRACK_KEYS if k in a), None)
                    if tid is None:
                        raise ValueError(f"annotation {a['id']} in sequence {seq!r} has no track_id while others do")
                    tid_of[a["id"]] = tid
        else:
            tid_of = link_tracks(frames, link_iou=link_iou, max_gap=max_gap)
        per_track = collections.defaultdict(list)
        for fno, anns in frames:
            for a in anns:
                per_track[tid_of[a["id"]]].append((fno, a["id"]))
        for tid in sorted(per_track, key=str):
            occ = sorted(per_track[tid])
            fnos = sorted({f for f, _ in occ})[:first_k]
            first = fnos[0]
            hits = [f for f, aid in occ if f in fnos and aid in matched_ann]
            found = bool(hits)
            events.append({"sequence": seq, "track": tid, "first_frame": first,
                           "frames_in_view": len({f for f, _ in occ}), "found": found,
                           "delay": (min(hits) - first) if found else None})
    delays = np.array([e["delay"] for e in events if e["found"]], np.float64)
    return {
        "score_thres": score_thres, "match_iou": match_iou, "first_k": first_k,
        "track_source": "annotation track_id" if has_ids else f"IoU linking (link_iou {link_iou}, max_gap {max_gap})",
        "num_frames": n, "num_clean_frames": clean_frames, "tp": tp, "fp": fp, "fn": fn,
        "precision": prec, "recall": rec, "f1": f1,
        "fp_per_frame": fp / n if n else float("nan"),
        "fp_per_clean_frame": fp_on_clean / clean_frames if clean_frames else float("nan"),
        "clean_frame_alarm_rate": clean_alarm / clean_frames if clean_frames else float("nan"),
        "num_events": len(events),
        "event_recall": (sum(e["found"] for e in events) / len(events)) if events else float("nan"),
        "delay_mean": float(delays.mean()) if delays.size else float("nan"),
        "delay_median": float(np.median(delays)) if delays.size else float("nan"),
        "delay_p90": float(np.percentile(delays, 90)) if delays.size else float("nan"),
        "delay_max": float(delays.max()) if delays.size else float("nan"),
        "events": events,
    }
