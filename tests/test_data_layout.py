"""Release-layout reader / validator: every kind of bad input gives a clear error naming the file and the problem,
or (skip_invalid) is skipped and counted; nothing is dropped silently."""

import json
import os

import numpy as np
import pytest

from beltcrack_jax.data import layout as L
from beltcrack_jax.data import validate as V

SEQS = {"train": {"seq_a": 7, "seq_b": 6}, "test": {"seq_c": 5}}


@pytest.fixture
def root(tmp_path):
    return L.write_example_layout(tmp_path / "rel", SEQS)


def _json(root, split):
    p = os.path.join(root, "annotations", split, "coco.json")
    with open(p) as f:
        return p, json.load(f)


def _edit(root, split, fn):
    p, coco = _json(root, split)
    fn(coco)
    with open(p, "w") as f:
        json.dump(coco, f)
    return p


def _expect(root, kind, *needles, **kw):
    """read_layout must raise LayoutError with a problem of `kind` whose text contains every needle."""
    with pytest.raises(L.LayoutError) as e:
        L.read_layout(root, **kw)
    probs = [p for p in e.value.report.problems if p.kind == kind]
    assert probs, f"no {kind} problem in:\n{e.value}"
    text = "\n".join(str(p) for p in probs)
    for n in needles:
        assert n in text, f"{n!r} not in {text}"
    assert kind in str(e.value)  # the error message itself lists the problems
    return e.value.report


def test_clean_layout_reads_everything(root):
    lay = L.read_layout(root)
    assert lay.report.ok and set(lay.splits) == {"train", "test"}
    seqs = lay.splits["train"].sequences
    assert [s.name for s in seqs] == ["train/seq_a", "train/seq_b"]
    assert [f.number for f in seqs[0].frames] == list(range(7))
    assert seqs[0].tags == {"view": "top-down", "light": "noon", "weather": "clear", "speed": "1.5"}
    # boxes are the json floats, unchanged
    _, coco = _json(root, "train")
    by_id = {}
    for a in coco["annotations"]:
        by_id.setdefault(a["image_id"], []).append(a["bbox"])
    for f in seqs[0].frames + seqs[1].frames:
        np.testing.assert_array_equal(f.boxes_xywh, np.asarray(by_id.get(f.image_id, []), np.float64).reshape(-1, 4))
        assert f.annotated and (f.width, f.height) == (64, 48)
    assert V.main([root]) == 0


def test_unlisted_frames_are_unannotated_not_errors(tmp_path):
    root = L.write_example_layout(tmp_path / "r", {"train": {"s": 8}}, unlisted_frames={"train/s": [0, 1, 2, 6]})
    lay = L.read_layout(root)
    frames = lay.splits["train"].sequences[0].frames
    assert [f.number for f in frames] == list(range(8))
    assert [f.annotated for f in frames] == [n not in (0, 1, 2, 6) for n in range(8)]
    assert all(f.image_id == -1 and len(f.boxes_xywh) == 0 for f in frames if not f.annotated)
    assert lay.report.info["unannotated_frames"] == 4


def test_missing_frame_file(root):
    missing = os.path.join(root, "train", "seq_a", "6.jpg")
    os.remove(missing)
    _expect(root, "missing_frame", missing, "does not exist")
    lay = L.read_layout(root, skip_invalid=True)
    assert [f.number for f in lay.splits["train"].sequences[0].frames] == list(range(6))
    assert lay.report.skipped["frames"] == 1


@pytest.mark.parametrize("how", ["garbage", "truncated", "empty"])
def test_corrupt_or_truncated_jpeg(root, how):
    p = os.path.join(root, "train", "seq_b", "5.jpg")
    data = open(p, "rb").read()
    new = {"garbage": b"\xff\xd8not a jpeg at all" * 10, "truncated": data[: len(data) // 2], "empty": b""}[how]
    with open(p, "wb") as f:
        f.write(new)
    rep = _expect(root, "corrupt_image", p)
    assert len([q for q in rep.problems if q.kind == "corrupt_image"]) == 1
    lay = L.read_layout(root, skip_invalid=True)
    assert lay.splits["train"].sequences[1].frames[-1].number == 4 and lay.report.skipped["frames"] == 1


def test_truncated_jpeg_caught_by_quick_check(root):
    p = os.path.join(root, "train", "seq_b", "3.jpg")
    data = open(p, "rb").read()
    with open(p, "wb") as f:
        f.write(data[:-40])
    _expect(root, "corrupt_image", p, full_decode=False)


def test_annotation_for_unknown_image_id(root):
    jp = _edit(root, "train", lambda c: c["annotations"].append(
        dict(id=999, image_id=4242, category_id=1, bbox=[1, 1, 5, 5])))
    _expect(root, "unknown_image_id", jp, "4242")
    lay = L.read_layout(root, skip_invalid=True)
    assert lay.report.skipped["annotations"] == 1


def test_duplicate_image_ids(root):
    def dup(c):
        c["images"][3]["id"] = c["images"][2]["id"]
    jp = _edit(root, "train", dup)
    _, coco = _json(root, "train")
    _expect(root, "duplicate_image_id", jp, f"image id {coco['images'][2]['id']}")
    lay = L.read_layout(root, skip_invalid=True)
    f2, f3 = lay.splits["train"].sequences[0].frames[2:4]
    assert not f2.annotated and not f3.annotated  # ambiguous ground truth -> unannotated, files kept
    assert lay.report.skipped["image_entries"] == 2


def test_duplicate_annotation_ids(root):
    def dup(c):
        c["annotations"][1]["id"] = c["annotations"][0]["id"]
    jp = _edit(root, "train", dup)
    _expect(root, "duplicate_annotation", jp)


def test_duplicate_file_name(root):
    def dup(c):
        c["images"].append(dict(c["images"][0], id=777))
    _edit(root, "train", dup)
    _expect(root, "duplicate_file_name", "train/seq_a/0.jpg")


@pytest.mark.parametrize("bbox,what", [([60.0, 10.0, 10.0, 5.0], "outside"), ([-3.0, 1.0, 10.0, 5.0], "outside"),
                                       ([5.0, 5.0, 0.0, 4.0], "non-positive"), ([5.0, 5.0, 4.0, -2.0], "non-positive")])
def test_bad_box(root, bbox, what):
    def bad(c):
        c["annotations"][0]["bbox"] = bbox
    jp = _edit(root, "train", bad)
    _expect(root, "bad_box", jp, what)
    _, coco = _json(root, "train")
    iid = coco["annotations"][0]["image_id"]
    lay = L.read_layout(root, skip_invalid=True)
    fr = [f for s in lay.splits["train"].sequences for f in s.frames if f.file_name == next(
        im["file_name"] for im in coco["images"] if im["id"] == iid)][0]
    assert not fr.annotated and len(fr.boxes_xywh) == 0  # kept as a history frame, not a key frame
    assert lay.report.skipped["frames_marked_unannotated"] == 1


@pytest.mark.parametrize("name", ["train/seq_a/007.jpg", "train/seq_a/frame7.jpg", "7.jpg", "train/seq_a/7.png"])
def test_bad_file_name(root, name):
    def bad(c):
        c["images"].append(dict(id=5000, file_name=name, width=64, height=48))
    jp = _edit(root, "train", bad)
    _expect(root, "bad_file_name", jp, repr(name))
    lay = L.read_layout(root, skip_invalid=True)
    assert lay.report.skipped["image_entries"] == 1


def test_gap_in_frame_numbers(root):
    os.remove(os.path.join(root, "train", "seq_a", "3.jpg"))
    _edit(root, "train", lambda c: c.update(images=[i for i in c["images"] if i["file_name"] != "train/seq_a/3.jpg"],
                                             annotations=[a for a in c["annotations"] if a["image_id"] != 4]))
    _expect(root, "frame_gap", os.path.join(root, "train/seq_a"), "missing 3")
    # skip: split into segments 0..2 and 4..6, each too short for T=5 -> counted as short and dropped
    lay = L.read_layout(root, skip_invalid=True)
    assert [s.name for s in lay.splits["train"].sequences] == ["train/seq_b"]
    assert lay.report.skipped["sequences"] == 2 and lay.report.skipped["frames"] == 6
    lay = L.read_layout(root, skip_invalid=True, min_sequence_length=3)
    assert [[f.number for f in s.frames] for s in lay.splits["train"].sequences][:2] == [[0, 1, 2], [4, 5, 6]]


def test_frames_not_starting_at_zero(tmp_path):
    root = L.write_example_layout(tmp_path / "r", {"train": {"s": 8}})
    os.remove(os.path.join(root, "train", "s", "0.jpg"))
    _edit(root, "train", lambda c: c.update(images=c["images"][1:]))
    _expect(root, "frame_gap", "missing 0")


def test_sequence_shorter_than_T(tmp_path):
    root = L.write_example_layout(tmp_path / "r", {"train": {"long": 6, "short": 3}})
    _expect(root, "short_sequence", "train/short", "3 frame(s)", "T = 5")
    assert L.read_layout(root, min_sequence_length=3).report.ok
    lay = L.read_layout(root, skip_invalid=True)
    assert [s.name for s in lay.splits["train"].sequences] == ["train/long"]


def test_empty_split(root):
    jp = _edit(root, "test", lambda c: c.update(images=[], annotations=[]))
    # the folder still holds frames, but nothing in the json references this split's sequences
    _expect(root, "empty_split", jp, "'test'")
    lay = L.read_layout(root, skip_invalid=True)
    assert set(lay.splits) == {"train"} and lay.report.skipped["splits"] == 1


def test_every_problem_reported_at_once_and_cli(root, capsys):
    os.remove(os.path.join(root, "train", "seq_a", "6.jpg"))
    _edit(root, "test", lambda c: c["annotations"].append(dict(id=999, image_id=31337, category_id=1,
                                                                bbox=[1, 1, 2, 2])))
    with open(os.path.join(root, "train", "seq_b", "2.jpg"), "wb") as f:
        f.write(b"junk")
    rep = L.validate(root)
    assert set(rep.counts()) == {"missing_frame", "unknown_image_id", "corrupt_image"}
    assert V.main([root]) == 1
    out = capsys.readouterr().out
    for k in ("missing_frame", "unknown_image_id", "corrupt_image", "seq_b/2.jpg", "31337", "FAILED"):
        assert k in out
    assert V.main([root, "--skip-invalid"]) == 0
    assert "skipped" in capsys.readouterr().out


def test_not_a_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="annotations"):
        L.read_layout(tmp_path)
    assert V.main([str(tmp_path)]) == 2
