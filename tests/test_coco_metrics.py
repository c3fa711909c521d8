"""COCO metrics (beltcrack_jax.eval.coco) and deployment metrics against pycocotools run by hand."""

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from beltcrack_jax.eval import coco as cm
from beltcrack_jax.eval import deployment as dm
from beltcrack_jax.eval import profiles


def toy_gt(n_images=6, seed=0, clean=(4, 5)):
    """Frames of one sequence `seq/<n>.jpg`; images in `clean` have no GT."""
    rng = np.random.default_rng(seed)
    images = [{"id": i + 1, "file_name": f"a/b/seq/{i}.jpg", "height": 1080, "width": 1920} for i in range(n_images)]
    anns = []
    for i in range(n_images):
        if i in clean:
            continue
        for _ in range(int(rng.integers(1, 4))):
            x, y = rng.uniform(0, 1500), rng.uniform(0, 800)
            w, h = rng.uniform(20, 300), rng.uniform(10, 200)
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 1, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": 0})
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "crack"}]}


def toy_dets(gt, seed=1, fp_per_image=2):
    rng = np.random.default_rng(seed)
    dets = []
    for a in gt["annotations"]:
        if rng.uniform() < 0.8:  # jittered true positives
            x, y, w, h = a["bbox"]
            j = rng.normal(0, 0.08, 4) * [w, h, w, h]
            dets.append({"image_id": a["image_id"], "category_id": 1,
                         "bbox": [x + j[0], y + j[1], w + j[2], h + j[3]], "score": float(rng.uniform(0.2, 1))})
    for im in gt["images"]:
        for _ in range(fp_per_image):
            dets.append({"image_id": im["id"], "category_id": 1,
                         "bbox": [float(rng.uniform(0, 1800)), float(rng.uniform(0, 1000)), 50.0, 40.0],
                         "score": float(rng.uniform(0.0, 0.7))})
    return dets


def reference_eval(gt, dets, tmp_path, img_ids=None):
    """What vid_map_coco.py does: json files, loadRes, COCOeval, P/R/F1 from the curve."""
    gp, dp = tmp_path / "gt.json", tmp_path / "dt.json"
    gp.write_text(json.dumps(gt))
    dp.write_text(json.dumps(dets))
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gp))
        coco_dt = coco_gt.loadRes(str(dp))
        e = COCOeval(coco_gt, coco_dt, "bbox")
        if img_ids is not None:
            e.params.imgIds = img_ids
        e.evaluate()
        e.accumulate()
        e.summarize()
    recall = e.eval["recall"][0, 0, 0, -1]
    precision = np.mean(e.eval["precision"][0, :int(recall * 100), 0, 0, -1])
    f1 = 2 * precision * recall / (precision + recall)
    return e.stats, precision, recall, f1


@pytest.mark.parametrize("seed", [0, 3])
def test_paper_profile_matches_pycocotools_by_hand(seed, tmp_path):
    gt = toy_gt(seed=seed)
    dets = toy_dets(gt, seed=seed + 10)
    annotated = sorted({a["image_id"] for a in gt["annotations"]})
    # the reference runs the detector only on annotated frames, so it has no detections elsewhere
    ref_dets = [d for d in dets if d["image_id"] in annotated]
    stats, p, r, f1 = reference_eval(gt, ref_dets, tmp_path)
    out = cm.coco_metrics(gt, dets, profile="paper")
    assert out["num_detections_ignored"] == len(dets) - len(ref_dets) > 0
    assert out["map50"] == pytest.approx(stats[1], abs=1e-12)
    assert out["map50_95"] == pytest.approx(stats[0], abs=1e-12)
    assert out["precision"] == pytest.approx(p, abs=1e-12)
    assert out["recall"] == pytest.approx(r, abs=1e-12)
    assert out["f1"] == pytest.approx(f1, abs=1e-12)
    assert 0 < out["map50"] < 1 and 0 < out["recall"] <= 1
    assert "Average Precision" in out["summary_text"]


def test_deployment_profile_counts_false_positives_on_clean_frames(tmp_path):
    gt = toy_gt(seed=0)
    dets = toy_dets(gt, seed=10)
    stats, p, r, f1 = reference_eval(gt, dets, tmp_path)  # all images evaluated
    out = cm.coco_metrics(gt, dets, profile="deployment")
    assert out["map50"] == pytest.approx(stats[1], abs=1e-12)
    assert out["precision"] == pytest.approx(p, abs=1e-12)
    paper = cm.coco_metrics(gt, dets, profile="paper")
    # high-scoring FPs on the crack-free frames can only lower AP
    assert out["map50"] <= paper["map50"] + 1e-12
    assert out["num_images"] == len(gt["images"]) and paper["num_images"] == len(gt["images"]) - 2


def test_hand_computed_ap_and_prf1():
    # 2 GT boxes on 1 image; dets: TP (0.9), FP (0.8), TP (0.7) -> PR points (1, .5), (.5, .5), (.667, 1)
    gt = {"images": [{"id": 7, "file_name": "s/0.jpg"}], "categories": [{"id": 3, "name": "crack"}],
          "annotations": [{"id": 1, "image_id": 7, "category_id": 3, "bbox": [0, 0, 100, 100]},
                          {"id": 2, "image_id": 7, "category_id": 3, "bbox": [300, 300, 100, 100]}]}
    dets = [{"image_id": 7, "category_id": 3, "bbox": [0, 0, 100, 100], "score": 0.9},
            {"image_id": 7, "category_id": 3, "bbox": [600, 600, 50, 50], "score": 0.8},
            {"image_id": 7, "category_id": 3, "bbox": [300, 300, 100, 100], "score": 0.7}]
    out = cm.coco_metrics(gt, dets)
    # interpolated precision: 1.0 for recall <= .5 (51 points), 2/3 for recall in (.5, 1] (50 points)
    assert out["map50"] == pytest.approx((51 * 1.0 + 50 * 2 / 3) / 101, abs=1e-12)
    assert out["recall"] == 1.0
    assert out["precision"] == pytest.approx((51 + 49 * 2 / 3) / 100, abs=1e-12)  # points 0.00 .. 0.99
    p = out["precision"]
    assert out["f1"] == pytest.approx(2 * p / (p + 1), abs=1e-12)
    assert out["pr_curve"][50] == pytest.approx(1.0) and out["pr_curve"][51] == pytest.approx(2 / 3)


def test_empty_detections_gives_zeros_not_a_crash(tmp_path):
    gt = toy_gt(seed=0)
    with pytest.raises(IndexError):  # the pycocotools behaviour being guarded
        with contextlib.redirect_stdout(io.StringIO()):
            c = COCO()
            c.dataset = gt
            c.createIndex()
            c.loadRes([])
    out = cm.coco_metrics(gt, [])
    assert out["map50"] == 0.0 and out["recall"] == 0.0 and out["precision"] == 0.0 and out["f1"] == 0.0
    assert out["num_detections"] == 0


def test_gt_without_detections_and_images_without_gt(tmp_path):
    gt = toy_gt(seed=0)
    dets = toy_dets(gt, seed=10)
    first = gt["annotations"][0]["image_id"]
    dets = [d for d in dets if d["image_id"] != first]  # GT image with no detections at all
    stats, p, r, f1 = reference_eval(gt, [d for d in dets if d["image_id"] not in (5, 6)], tmp_path)
    out = cm.coco_metrics(gt, dets, profile="paper")
    assert out["map50"] == pytest.approx(stats[1], abs=1e-12) and out["recall"] == pytest.approx(r, abs=1e-12)
    # only crack-free images: COCO is undefined (-1), P/R/F1 NaN, no crash
    clean = {"images": gt["images"][4:], "annotations": [], "categories": gt["categories"]}
    out = cm.coco_metrics(clean, [d for d in dets if d["image_id"] in (5, 6)], profile="deployment")
    assert out["map50"] == -1.0 and np.isnan(out["recall"]) and out["num_gt"] == 0


def test_bad_inputs_raise_clear_errors():
    gt = toy_gt(seed=0)
    with pytest.raises(ValueError, match=r"not in the GT json.*999"):
        cm.coco_metrics(gt, [{"image_id": 999, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}])
    with pytest.raises(ValueError, match="category_id 0"):
        cm.coco_metrics(gt, [{"image_id": 1, "category_id": 0, "bbox": [0, 0, 1, 1], "score": 0.5}])
    with pytest.raises(ValueError, match="no 'score'"):
        cm.coco_metrics(gt, [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}])
    with pytest.raises(ValueError, match="unknown profile"):
        cm.coco_metrics(gt, [], profile="nope")
    with pytest.raises(ValueError, match="'annotations'"):
        cm.coco_metrics({"images": [], "categories": []}, [])


def test_profiles_print_every_threshold():
    s = profiles.get_profile("paper").describe()
    for token in ("conf=0.003", "nms_iou=0.2", "resize=stretch", "frames=annotated-only", "max_dets=none"):
        assert token in s
    s = profiles.get_profile("paper-stated").describe()
    assert "conf=0.001" in s and "nms_iou=0.65" in s
    d = profiles.get_profile("deployment", {"score_thres": 0.4}).describe()
    assert "frames=all" in d and "score_thres=0.4" in d and "first_k=5" in d
    with pytest.raises(ValueError, match="unknown evaluation profile"):
        profiles.get_profile("papers")
    with pytest.raises(ValueError, match="unknown override"):
        profiles.get_profile("paper", {"conf": 0.1})


# ------------------------------------------------------------------------------------------ deployment


def moving_crack_gt(track_ids: bool):
    """Two sequences; seq A: a crack moving 60 px/frame down through frames 2..7 and a second one in 5..6;
    seq B: crack-free, 4 frames."""
    images, anns = [], []
    for f in range(9):
        images.append({"id": 100 + f, "file_name": f"x/y/A/{f}.jpg"})
        if 2 <= f <= 7:
            anns.append({"id": len(anns) + 1, "image_id": 100 + f, "category_id": 1,
                         "bbox": [500.0, 100.0 + 60 * (f - 2), 80.0, 120.0], **({"track_id": 1} if track_ids else {})})
        if 5 <= f <= 6:
            anns.append({"id": len(anns) + 1, "image_id": 100 + f, "category_id": 1,
                         "bbox": [1200.0, 50.0 + 40 * (f - 5), 60.0, 60.0], **({"track_id": 2} if track_ids else {})})
    for f in range(4):
        images.append({"id": 200 + f, "file_name": f"x/y/B/{f}.jpg"})
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "crack"}]}


@pytest.mark.parametrize("track_ids", [True, False])
def test_deployment_event_recall_and_delay(track_ids):
    gt = moving_crack_gt(track_ids)
    dets = [
        # crack 1 detected first on frame 4 (2 frames after it appeared), then again on 6
        {"image_id": 104, "category_id": 1, "bbox": [502.0, 221.0, 80.0, 118.0], "score": 0.9},
        {"image_id": 106, "category_id": 1, "bbox": [500.0, 340.0, 80.0, 120.0], "score": 0.8},
        # below the operating point: ignored
        {"image_id": 105, "category_id": 1, "bbox": [1200.0, 50.0, 60.0, 60.0], "score": 0.3},
        # false alarms on crack-free frames of B and on a crack frame
        {"image_id": 201, "category_id": 1, "bbox": [10.0, 10.0, 30.0, 30.0], "score": 0.95},
        {"image_id": 201, "category_id": 1, "bbox": [100.0, 10.0, 30.0, 30.0], "score": 0.6},
        {"image_id": 103, "category_id": 1, "bbox": [10.0, 900.0, 30.0, 30.0], "score": 0.7},
    ]
    out = dm.deployment_metrics(gt, dets, score_thres=0.5, first_k=5)
    assert out["num_events"] == 2
    assert out["event_recall"] == 0.5
    assert out["delay_mean"] == 2.0
    assert out["tp"] == 2 and out["fp"] == 3 and out["fn"] == 8 - 2
    assert out["num_frames"] == 13 and out["num_clean_frames"] == 13 - 6
    assert out["fp_per_clean_frame"] == pytest.approx(2 / 7)
    assert out["clean_frame_alarm_rate"] == pytest.approx(1 / 7)
    assert out["fp_per_frame"] == pytest.approx(3 / 13)
    # with first_k = 2 the detection on frame 4 comes too late for crack 1
    assert dm.deployment_metrics(gt, dets, score_thres=0.5, first_k=2)["event_recall"] == 0.0
    # a lower operating point finds crack 2 on its first frame
    low = dm.deployment_metrics(gt, dets, score_thres=0.25)
    assert low["event_recall"] == 1.0 and low["delay_median"] == 1.0


def test_track_linking_follows_motion():
    gt = moving_crack_gt(False)
    frames = {}
    for a in gt["annotations"]:
        frames.setdefault(a["image_id"] - 100, []).append(a)
    tid = dm.link_tracks(sorted(frames.items()))
    first = {tid[a["id"]] for a in gt["annotations"] if a["bbox"][0] == 500.0}
    second = {tid[a["id"]] for a in gt["annotations"] if a["bbox"][0] == 1200.0}
    assert len(first) == 1 and len(second) == 1 and first != second


def test_faster_coco_eval_backend_identical_if_installed():
    pytest.importorskip("faster_coco_eval")
    gt = toy_gt(seed=2)
    dets = toy_dets(gt, seed=12)
    a = cm.coco_metrics(gt, dets, backend="pycocotools")
    b = cm.coco_metrics(gt, dets, backend="faster_coco_eval")
    for k in ("map50", "map50_95", "precision", "recall", "f1"):
        assert a[k] == pytest.approx(b[k], abs=1e-12)


def test_unknown_backend():
    with pytest.raises(ValueError, match="coco backend"):
        cm.coco_metrics(toy_gt(), [], backend="detectron")
