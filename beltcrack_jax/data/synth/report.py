"""Dataset statistics and a contact sheet (PNG grid of frames with their boxes) for a release-layout dataset."""

from __future__ import annotations

import collections
import json
import pathlib

import cv2
import numpy as np

from beltcrack_jax.data.synth.presets import AREA_CLASSES, area_class


def load_splits(root) -> dict[str, dict]:
    root = pathlib.Path(root)
    return {p.parent.name: json.loads(p.read_text()) for p in sorted((root / "annotations").glob("*/coco.json"))}


def summarize(root) -> dict:
    """Frame / box counts, cracks per annotated frame, crack-free frames and native-area classes over all splits."""
    splits = load_splits(root)
    out = {"splits": {}, "area_classes": {n: 0 for n, _ in AREA_CLASSES}}
    tot_frames = tot_ann_frames = tot_boxes = 0
    for name, coco in splits.items():
        scale = float(coco["info"].get("scale", 1.0))
        per_img = collections.Counter(a["image_id"] for a in coco["annotations"])
        for a in coco["annotations"]:
            out["area_classes"][area_class(a["area"] / scale**2)] += 1
        nf, na, nb = len(coco["images"]), len(per_img), len(coco["annotations"])
        out["splits"][name] = {"sequences": len(coco["sequences"]), "frames": nf, "annotated_frames": na, "boxes": nb}
        tot_frames, tot_ann_frames, tot_boxes = tot_frames + nf, tot_ann_frames + na, tot_boxes + nb
    out.update(frames=tot_frames, annotated_frames=tot_ann_frames, crack_free_frames=tot_frames - tot_ann_frames,
               boxes=tot_boxes, cracks_per_annotated_frame=tot_boxes / max(tot_ann_frames, 1))
    return out


def contact_sheet(root, out_png, n: int = 12, cols: int = 4, thumb_w: int = 480) -> pathlib.Path:
    """Save a grid of `n` frames (spread over sequences, mostly annotated ones) with boxes and condition tags."""
    root = pathlib.Path(root)
    picks = []
    for split, coco in load_splits(root).items():
        boxes = collections.defaultdict(list)
        for a in coco["annotations"]:
            boxes[a["image_id"]].append(a["bbox"])
        tags = {s["name"]: s for s in coco["sequences"]}
        by_seq = collections.defaultdict(list)
        for im in coco["images"]:
            by_seq[im["sequence"]].append(im)
        for seq, ims in sorted(by_seq.items()):
            ims = sorted(ims, key=lambda im: im["frame_index"])
            ann = [im for im in ims if boxes[im["id"]]]
            free = [im for im in ims if not boxes[im["id"]]]
            for im in (ann[len(ann) // 2 : len(ann) // 2 + 1] + free[len(free) // 2 : len(free) // 2 + 1]):
                picks.append((im, boxes[im["id"]], tags[seq]))
    picks.sort(key=lambda p: (len(p[1]) == 0, p[0]["id"]))  # annotated first, then crack-free
    ann_p = [p for p in picks if p[1]]
    free_p = [p for p in picks if not p[1]]
    n_free = min(len(free_p), max(1, n // 6))
    sel = ann_p[: n - n_free] + free_p[:n_free]
    tiles = []
    for im, bbs, tag in sel:
        img = cv2.imread(str(root / im["file_name"]), cv2.IMREAD_COLOR)
        f = thumb_w / img.shape[1]
        img = cv2.resize(img, (thumb_w, int(round(img.shape[0] * f))), interpolation=cv2.INTER_AREA)
        for x, y, w, h in bbs:
            cv2.rectangle(img, (int(x * f), int(y * f)), (int((x + w) * f), int((y + h) * f)), (0, 255, 0), 1)
        label = f"{im['sequence']}#{im['frame_index']} {tag['view']} {tag['light']} {tag['weather']} v={tag['speed']}"
        cv2.rectangle(img, (0, 0), (thumb_w, 14), (0, 0, 0), -1)
        cv2.putText(img, label, (3, 11), cv2.FONT_HERSHEY_SIMPLEX, 0.36, (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(img)
    if not tiles:
        raise ValueError(f"no frames found under {root}")
    th = max(t.shape[0] for t in tiles)
    tiles = [np.pad(t, ((0, th - t.shape[0]), (0, 0), (0, 0))) for t in tiles]
    while len(tiles) % cols:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.concatenate(tiles[i : i + cols], 1) for i in range(0, len(tiles), cols)]
    sheet = np.concatenate(rows, 0)
    out_png = pathlib.Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out_png), sheet)
    return out_png
