"""experiments/veiled_boxes.py: the subset scores that EXPERIMENTS.md section 3c rests on."""

import importlib.util
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def vb():
    spec = importlib.util.spec_from_file_location("veiled_boxes", ROOT / "experiments" / "veiled_boxes.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_subset_scores_count_only_their_own_cracks(vb):
    """Detections that hit exactly the clear cracks: AP50 1 on the clear subset, 0 on the veiled one, in between on
    all; a detection of a crack outside the scored subset is not a false positive there (iscrowd)."""
    boxes = {1: [([10, 10, 40, 20], 0.0), ([100, 60, 30, 30], 0.9)],
             2: [([50, 20, 60, 15], 0.02), ([150, 90, 20, 40], 0.7)]}
    images = [{"id": i, "width": 256, "height": 144, "file_name": f"{i}.jpg"} for i in boxes]
    anns = [{"id": 10 * i + k, "image_id": i, "category_id": 1, "bbox": b, "area": b[2] * b[3], "iscrowd": 0,
             "veil_cover": c} for i, bs in boxes.items() for k, (b, c) in enumerate(bs)]
    gt = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "crack"}]}
    dets = [{"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"], "score": 0.9}
            for a in anns if a["veil_cover"] < 0.05]
    row = vb.score(gt, dets, veiled=0.5, clear=0.05)
    assert (row["clear"]["num_gt"], row["veiled"]["num_gt"], row["all"]["num_gt"]) == (2, 2, 4)
    assert row["clear"]["map50"] == pytest.approx(1.0) and row["clear"]["recall"] == pytest.approx(1.0)
    assert row["veiled"]["map50"] == 0.0 and row["veiled"]["recall"] == 0.0
    assert 0.3 < row["all"]["map50"] < 0.7
    assert all(a["iscrowd"] == 0 for a in gt["annotations"])   # the caller's GT is left as it was


def test_preset_and_seed_from_the_data_name(vb):
    assert vb.preset_and_seed("beltcrack/synthetic_veiled") == ("veiled", 0)
    assert vb.preset_and_seed("beltcrack/synthetic_demo_seed7") == ("demo", 7)
    with pytest.raises(ValueError, match="not a synthetic dataset"):
        vb.preset_and_seed("beltcrack/beltcrack14ks")
