"""Synthetic BeltCrack generator: release layout, determinism, box quality, belt motion, preset statistics."""

import collections
import json
import re
import time

import cv2
import numpy as np
import pytest

from beltcrack_jax.data import synthetic
from beltcrack_jax.data.synth.presets import LIGHTS, VIEWS, WEATHERS
from beltcrack_jax.data.synth.writer import split_counts

SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    t0 = time.perf_counter()
    synthetic.generate("tiny", root, seed=0)
    return root, time.perf_counter() - t0


def _load(root):
    return {s: json.loads((root / "annotations" / s / "coco.json").read_text()) for s in SPLITS
            if (root / "annotations" / s / "coco.json").exists()}


def _gray(root, im):
    img = cv2.imread(str(root / im["file_name"]), cv2.IMREAD_GRAYSCALE)
    assert img is not None, im["file_name"]
    return img.astype(np.float32)


def test_tiny_release_layout(tiny):
    root, seconds = tiny
    assert seconds < 60, f"tiny preset took {seconds:.1f}s"
    cocos = _load(root)
    assert set(cocos) == set(SPLITS)
    image_ids, ann_ids, listed = set(), set(), set()
    for split, coco in cocos.items():
        assert coco["categories"] == [{"id": 1, "name": "crack", "supercategory": "defect"}]
        frames = collections.defaultdict(list)
        for im in coco["images"]:
            assert set(im) >= {"id", "file_name", "width", "height", "sequence", "frame_index"}
            m = re.fullmatch(rf"{split}/([A-Za-z0-9_-]+)/(0|[1-9][0-9]*)\.jpg", im["file_name"])
            assert m, im["file_name"]
            assert m.group(1) == im["sequence"] and int(m.group(2)) == im["frame_index"]
            assert im["id"] not in image_ids
            image_ids.add(im["id"])
            listed.add(im["file_name"])
            frames[im["sequence"]].append(im["frame_index"])
            img = cv2.imread(str(root / im["file_name"]), cv2.IMREAD_COLOR)
            assert img is not None and img.shape == (im["height"], im["width"], 3)
        seqs = {s["name"]: s for s in coco["sequences"]}
        assert set(seqs) == set(frames) and len(seqs) >= 1
        for name, idx in frames.items():
            assert sorted(idx) == list(range(seqs[name]["num_frames"])), name  # 0..N-1, no gaps
        ids_here = {im["id"] for im in coco["images"]}
        for a in coco["annotations"]:
            assert a["id"] not in ann_ids
            ann_ids.add(a["id"])
            assert a["image_id"] in ids_here and a["category_id"] == 1 and a["iscrowd"] == 0
            x, y, w, h = a["bbox"]
            assert all(isinstance(v, float) for v in a["bbox"])
            assert a["area"] == pytest.approx(w * h)
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*.jpg")}
    assert on_disk == listed  # every frame listed, nothing unlisted


def test_condition_tags(tiny):
    root, _ = tiny
    names = []
    for split, coco in _load(root).items():
        for s in coco["sequences"]:
            assert s["split"] == split
            assert s["view"] in VIEWS and s["light"] in LIGHTS and s["weather"] in WEATHERS
            assert isinstance(s["speed"], float) and s["speed"] > 0
            assert s["speed_class"] in ("slow", "medium", "fast") and s["motion_dir"] in ("up", "down")
            names.append(s["name"])
    assert len(names) == len(set(names))


def _tree_bytes(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_by_seed(tmp_path):
    kw = dict(num_sequences=3, max_frames=3)
    a = _tree_bytes(synthetic.generate("tiny", tmp_path / "a", 7, **kw))
    b = _tree_bytes(synthetic.generate("tiny", tmp_path / "b", 7, **kw))
    c = _tree_bytes(synthetic.generate("tiny", tmp_path / "c", 8, **kw))
    assert a == b
    jpgs = [k for k in a if k.endswith(".jpg")]
    assert jpgs and any(a[k] != c.get(k) for k in jpgs)
    assert a["annotations/train/coco.json"] != c["annotations/train/coco.json"]


def _ring_median(gray, box, others, margin):
    x, y, w, h = (int(round(v)) for v in box)
    H, W = gray.shape
    mask = np.zeros_like(gray, bool)
    mask[max(0, y - margin) : y + h + margin, max(0, x - margin) : x + w + margin] = True
    for ox, oy, ow, oh in others:  # exclude every crack box (incl. this one) from the reference belt
        ox, oy, ow, oh = int(ox), int(oy), int(ow), int(oh)
        mask[max(0, oy - 1) : oy + oh + 1, max(0, ox - 1) : ox + ow + 1] = False
    vals = gray[mask]
    return np.median(vals) if vals.size >= 30 else None


def test_boxes_inside_image_and_on_dark_crack_pixels(tiny):
    root, _ = tiny
    dark_hits, dark_n, ctrl_hits, ctrl_n = 0, 0, 0, 0
    rng = np.random.default_rng(0)
    for coco in _load(root).values():
        by_img = collections.defaultdict(list)
        for a in coco["annotations"]:
            by_img[a["image_id"]].append(a["bbox"])
        free = [im for im in coco["images"] if im["id"] not in by_img]
        for im in coco["images"]:
            boxes = by_img.get(im["id"], [])
            for x, y, w, h in boxes:
                assert w > 0 and h > 0 and x >= 0 and y >= 0
                assert x + w <= im["width"] and y + h <= im["height"]
            if not boxes:
                continue
            g = _gray(root, im)
            for b in boxes:
                x, y, w, h = (int(v) for v in b)
                ref = _ring_median(g, b, boxes, margin=max(4, max(w, h) // 2))
                if ref is None or w * h < 12:
                    continue
                dark_n += 1
                dark_hits += np.percentile(g[y : y + h, x : x + w], 5) < 0.8 * ref
                if free:  # control: the same box on a crack-free frame of the split
                    fg = _gray(root, free[int(rng.integers(len(free)))])
                    cref = _ring_median(fg, b, [b], margin=max(4, max(w, h) // 2))
                    if cref is not None:
                        ctrl_n += 1
                        ctrl_hits += np.percentile(fg[y : y + h, x : x + w], 5) < 0.8 * cref
    assert dark_n >= 20
    assert dark_hits / dark_n >= 0.85, (dark_hits, dark_n)
    if ctrl_n >= 10:
        assert ctrl_hits / ctrl_n <= 0.5 * dark_hits / dark_n, (ctrl_hits, ctrl_n)


def test_crack_free_frames_exist(tiny):
    root, _ = tiny
    n_free = n_ann = 0
    for coco in _load(root).values():
        annotated = {a["image_id"] for a in coco["annotations"]}
        n_ann += len(annotated)
        n_free += sum(im["id"] not in annotated for im in coco["images"])
    assert n_free >= 1 and n_ann >= 1


def test_cracks_move_with_the_belt(tiny):
    root, _ = tiny
    ratios, sign_ok, n = [], 0, 0
    for coco in _load(root).values():
        frame_of = {im["id"]: (im["sequence"], im["frame_index"]) for im in coco["images"]}
        tags = {s["name"]: s for s in coco["sequences"]}
        track = {}
        for a in coco["annotations"]:
            seq, t = frame_of[a["image_id"]]
            track[(seq, a["track_id"], t)] = a["bbox"]
        for (seq, tid, t), b0 in track.items():
            b1 = track.get((seq, tid, t + 1))
            # Same-size box in the next frame: the crack is fully in view both times (no entry / exit / occlusion).
            if b1 is None or abs(b1[2] - b0[2]) > 1 or abs(b1[3] - b0[3]) > 1:
                continue
            dy = (b1[1] + b1[3] / 2) - (b0[1] + b0[3] / 2)
            dx = (b1[0] + b1[2] / 2) - (b0[0] + b0[2] / 2)
            sp = tags[seq]["speed"]
            want = 1 if tags[seq]["motion_dir"] == "down" else -1
            n += 1
            sign_ok += np.sign(dy) == want
            ratios.append(abs(dy) / sp)
            assert abs(dx) <= 0.6 * abs(dy) + 1.5  # motion is along the belt (image y), not across
    assert n >= 10
    assert sign_ok / n >= 0.9
    assert 0.6 <= float(np.median(ratios)) <= 1.6, np.median(ratios)


def test_split_counts_follow_ratios():
    assert split_counts(29, (("train", 0.6), ("val", 0.2), ("test", 0.2))) == [17, 6, 6]
    assert split_counts(42, (("train", 0.8), ("test", 0.2))) == [34, 8]
    assert split_counts(3, (("train", 0.8), ("val", 0.1), ("test", 0.1))) == [1, 1, 1]


@pytest.mark.parametrize("preset,target,tol,splits", [
    ("14ks-like", 2.8, 0.7, {"train": 12, "val": 4, "test": 4}),
    ("9kd-like", 1.3, 0.35, {"train": 16, "test": 4}),
])
def test_preset_statistics_small_run(tmp_path, preset, target, tol, splits):
    root = synthetic.generate(preset, tmp_path, 0, num_sequences=20, scale=0.2, max_frames=4)
    st = synthetic.summarize(root)
    assert {k: v["sequences"] for k, v in st["splits"].items()} == splits
    assert abs(st["cracks_per_annotated_frame"] - target) <= tol, st["cracks_per_annotated_frame"]
    assert st["crack_free_frames"] >= 1
    assert sum(v > 0 for v in st["area_classes"].values()) >= 4, st["area_classes"]
    w, h = synthetic.PRESETS[preset].with_scale(0.2).out_size
    im = json.loads((root / "annotations" / "train" / "coco.json").read_text())["images"][0]
    assert (im["width"], im["height"]) == (w, h) == (384, 216)


def test_cli_and_contact_sheet(tmp_path):
    png = tmp_path / "sheet.png"
    assert synthetic.main(["--preset", "tiny", "--out", str(tmp_path / "d"), "--num-sequences", "3",
                           "--max-frames", "2", "--contact-sheet", str(png)]) == 0
    sheet = cv2.imread(str(png))
    assert sheet is not None and sheet.shape[0] > 50 and sheet.shape[1] > 50


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown preset"):
        synthetic.generate("15ks", tmp_path)
    with pytest.raises(ValueError, match="num_sequences"):
        synthetic.generate("tiny", tmp_path, num_sequences=0)
    with pytest.raises(ValueError, match="scale"):
        synthetic.generate("tiny", tmp_path, scale=-1.0)


def test_sequence_plan_is_what_generate_writes(tmp_path):
    """`sequence_plan` (split, sequence, length, image ids without rendering) names exactly the frames and COCO ids
    that `generate` writes: scripts re-render a generated frame from it (experiments/veiled_boxes.py)."""
    from beltcrack_jax.data.synth.writer import sequence_plan
    root = synthetic.generate("tiny", tmp_path, 3, num_sequences=5, max_frames=4)
    plan = sequence_plan("tiny", 3, num_sequences=5, max_frames=4)
    for split, coco in _load(root).items():
        planned = {f"{split}/{s.name}/{t}.jpg": s.first_image_id + t for s in plan[split] for t in range(s.num_frames)}
        assert planned == {im["file_name"]: im["id"] for im in coco["images"]}, split


def test_veil_cover_measures_how_hidden_each_box_is():
    """`Frame.veil_cover`: 0 for every box of an unveiled frame, the veil's mean opacity over the crack pixels
    otherwise (within 0..strength); the boxes and pixels of a frame do not depend on it."""
    import dataclasses

    from beltcrack_jax.data.synth.presets import PRESETS
    from beltcrack_jax.data.synth.sequence import Sequence
    from beltcrack_jax.data.synth.writer import sequence_plan
    clear = dataclasses.replace(PRESETS["demo"], p_veil=0.0)
    veiled = dataclasses.replace(PRESETS["demo"], p_veil=1.0, veil_strength=(0.9, 0.9))
    covers = []
    for s in sequence_plan("demo", 0)["test"][:4]:
        for t in range(0, s.num_frames, 3):
            a = Sequence(clear, 0, s.index, s.num_frames).render(t)
            b = Sequence(veiled, 0, s.index, s.num_frames).render(t)
            np.testing.assert_array_equal(a.boxes, b.boxes)   # the veil comes after the boxes' visibility test
            assert a.veil_cover.shape == (len(a.boxes),) and not a.veil_cover.any()
            assert ((b.veil_cover >= 0) & (b.veil_cover <= 0.9 + 1e-9)).all()
            covers.extend(b.veil_cover)
    covers = np.asarray(covers)
    assert len(covers) > 10 and (covers > 0.5).any() and (covers < 0.1).any(), covers   # veils cover part of a frame
