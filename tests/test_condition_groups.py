"""Per-condition metrics group images by their sequence tags; a numeric tag with one value per sequence (the
synthetic belt speed) is grouped into terciles instead of one table row per sequence."""

from beltcrack_jax.eval.runner import _condition_groups, condition_breakdown


def test_categorical_tags_are_their_own_groups():
    assert _condition_groups(["noon", "night", "noon"]) == ["noon", "night", "noon"]
    assert _condition_groups(["1.5", "2.5", "1.5"]) == ["1.5", "2.5", "1.5"]   # few numeric values: kept


def test_numeric_tag_with_many_values_is_split_in_terciles():
    groups = _condition_groups([str(v) for v in range(1, 10)] + [""])
    assert groups[:3] == ["low (<= 3.67)"] * 3 and groups[3:6] == ["mid (3.67-6.33)"] * 3
    assert groups[6:9] == ["high (> 6.33)"] * 3 and groups[9] == ""


def test_breakdown_has_one_row_per_tercile():
    images = [{"id": i, "width": 64, "height": 64, "file_name": f"s{i}/0.jpg", "speed": str(1 + 0.1 * i)}
              for i in range(9)]
    gt = {"images": images, "categories": [{"id": 1, "name": "crack"}],
          "annotations": [{"id": i + 1, "image_id": i, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400,
                           "iscrowd": 0} for i in range(9)]}
    dets = [{"image_id": i, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.9} for i in range(0, 9, 2)]
    out = condition_breakdown(gt, dets, [im["id"] for im in images], profile="paper")
    assert set(out) == {"speed"} and len(out["speed"]) == 3
    assert sum(v["num_gt"] for v in out["speed"].values()) == 9
