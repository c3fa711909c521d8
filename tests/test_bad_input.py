"""Bad input, as a real release copied over a network share can look: every fault gives one clear problem (a stable
code, the file and json path named, what is wrong and what is expected) or, with skip_invalid, a counted skip, in
the validator, the TFDS builder and the pipeline alike; never a traceback from deep inside, never silent loss.

Each entry of FAULTS damages a fresh copy of a small release in one way and says which problem code it must give
and how many problems in all (one fault must not bring a trail of follow-up errors).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import zlib

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import beltcrack_jax.data  # noqa: F401  (registers 'beltcrack')
from beltcrack_jax.data import build as B
from beltcrack_jax.data import layout as L
from beltcrack_jax.data import pipeline as P
from beltcrack_jax.data import synthetic
from beltcrack_jax.data import validate as V
from beltcrack_jax.data.errors import DatasetError
from beltcrack_jax.data.problems import PROBLEM_KINDS

SEQS = {"train": {"seq_a": 7, "seq_b": 6}, "test": {"seq_c": 5}}
NAME = "beltcrack/beltcrack14ks"


# ------------------------------------------------------------------------------------------------ helpers
def make_release(parent) -> str:
    return L.write_example_layout(os.path.join(parent, "rel"), SEQS)


def json_path(root, split="train"):
    return os.path.join(root, "annotations", split, "coco.json")


def load(root, split="train"):
    with open(json_path(root, split)) as f:
        return json.load(f)


def save(root, coco, split="train"):
    with open(json_path(root, split), "w") as f:
        json.dump(coco, f)


def edit(root, fn, split="train"):
    coco = load(root, split)
    fn(coco)
    save(root, coco, split)


def frame(root, rel):
    return os.path.join(root, *rel.split("/"))


def write_bytes(path, data: bytes):
    with open(path, "wb") as f:
        f.write(data)


def encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def png_rgb16(w: int, h: int) -> bytes:
    """A 16-bit-per-sample RGB PNG (PIL opens it as 'RGB' and silently drops the low byte)."""
    raw = b"".join(b"\x00" + bytes(w * 6) for _ in range(h))

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def image_index(coco, file_name):
    return next(k for k, im in enumerate(coco["images"]) if im["file_name"] == file_name)


def first_annotation_of(coco, image_id):
    return next(k for k, a in enumerate(coco["annotations"]) if a["image_id"] == image_id)


# ------------------------------------------------------------------------------------------------ the faults
# name -> (damage(root) -> strings the problem text must contain, problem code, number of problems in all)
FAULTS = {}


def fault(kind, problems=1):
    def register(fn):
        FAULTS[fn.__name__] = (fn, kind, problems)
        return fn
    return register


# json files
@fault("bad_json")
def json_truncated(root):
    data = open(json_path(root), "rb").read()
    write_bytes(json_path(root), data[: len(data) // 2])
    return [json_path(root), "truncated"]


@fault("bad_json")
def json_zero_bytes(root):
    write_bytes(json_path(root), b"")
    return [json_path(root), "empty file"]


@fault("bad_json")
def json_not_utf8(root):
    coco = load(root)
    coco["info"] = {"description": "caméra"}
    write_bytes(json_path(root), json.dumps(coco, ensure_ascii=False).encode("latin-1"))
    return [json_path(root), "UTF-8"]


@fault("bad_json")
def json_top_level_list(root):
    write_bytes(json_path(root), json.dumps(load(root)["images"]).encode())
    return [json_path(root), "top level", "expected a COCO object"]


@fault("bad_json")
def json_without_annotations(root):
    edit(root, lambda c: c.pop("annotations"))
    return [json_path(root), "'annotations'", '"annotations": []']


@fault("bad_json")
def json_images_not_a_list(root):
    edit(root, lambda c: c.update(images={"0": c["images"][0]}))
    return [json_path(root), "'images'", "expected a list"]


@fault("bad_json")
def json_categories_not_a_list(root):
    edit(root, lambda c: c.update(categories="crack"))
    return [json_path(root), "'categories'"]


@fault("bad_json")
def two_jsons_no_coco_json(root):
    os.rename(json_path(root), json_path(root).replace("coco.json", "a.json"))
    shutil.copy(json_path(root).replace("coco.json", "a.json"), json_path(root).replace("coco.json", "b.json"))
    return [os.path.join(root, "annotations", "train"), "a.json", "b.json"]


# image entries: wrong types and values
@fault("bad_entry")
def width_with_unit(root):
    edit(root, lambda c: c["images"][1].update(width="192px"))
    return ["images[1].width", "'192px' (a string)", "positive integer"]


@fault("bad_entry")
def height_negative(root):
    edit(root, lambda c: c["images"][2].update(height=-48))
    return ["images[2].height", "-48"]


@fault("bad_entry")
def image_id_list(root):
    edit(root, lambda c: c["images"][1].update(id=[2]))  # its annotations name id 2: no follow-up errors
    return ["images[1].id", "(a list)", "non-negative integer"]


@fault("bad_entry")
def image_id_fraction(root):
    edit(root, lambda c: c["images"][1].update(id=2.5))
    return ["images[1].id", "2.5"]


@fault("bad_entry")
def image_id_string(root):
    edit(root, lambda c: c["images"][3].update(id="4"))
    return ["images[3].id", "'4' (a string)"]


@fault("bad_entry")
def image_id_negative(root):
    edit(root, lambda c: c["images"][0].update(id=-1))  # -1 marks unannotated frames in the records
    return ["images[0].id", "-1"]


@fault("bad_entry")
def image_entry_not_an_object(root):
    edit(root, lambda c: c["images"].append("train/seq_a/0.jpg"))
    return ["images[13]", "(a string)", "expected an object"]


@fault("bad_entry")
def file_name_missing(root):
    edit(root, lambda c: c["images"][4].pop("file_name"))
    return ["images[4].file_name", "missing"]


@fault("bad_entry")
def file_name_a_number(root):
    edit(root, lambda c: c["images"][4].update(file_name=4))
    return ["images[4].file_name", "4 (an integer)"]


# annotations: wrong types and values
@fault("bad_entry")
def annotation_id_list(root):
    edit(root, lambda c: c["annotations"][0].update(id=[1]))
    return ["annotations[0].id", "(a list)"]


@fault("bad_entry")
def annotation_image_id_list(root):
    edit(root, lambda c: c["annotations"][1].update(image_id=[4]))
    return ["annotations[1].image_id", "(a list)"]


@fault("bad_category")
def category_id_list(root):
    edit(root, lambda c: c["annotations"][0].update(category_id=[1]))
    return ["annotations[0].category_id", "(a list)"]


@fault("bad_category")
def category_not_listed(root):
    edit(root, lambda c: c["annotations"][0].update(category_id=2))
    return ["annotations[0].category_id", "is 2", "does not list"]


@fault("bad_category")
def category_zero(root):
    edit(root, lambda c: c["annotations"][0].update(category_id=0))
    return ["annotations[0].category_id", "integer >= 1"]


@fault("bad_box")
def bbox_as_string(root):
    edit(root, lambda c: c["annotations"][0].update(bbox="8512"))  # would iterate as [8, 5, 1, 2]
    return ["annotations[0].bbox", "'8512' (a string)", "[x, y, w, h]"]


@fault("bad_box")
def bbox_nan(root):
    edit(root, lambda c: c["annotations"][0].update(bbox=[float("nan"), 1.0, 4.0, 4.0]))
    return ["annotations[0].bbox", "NaN"]


@fault("bad_box")
def bbox_infinite(root):
    edit(root, lambda c: c["annotations"][0].update(bbox=[1.0, 1.0, float("inf"), 4.0]))
    return ["annotations[0].bbox", "finite"]


@fault("bad_box")
def bbox_three_numbers(root):
    edit(root, lambda c: c["annotations"][0].update(bbox=[1, 2, 3]))
    return ["annotations[0].bbox", "[1, 2, 3]"]


@fault("bad_box")
def bbox_missing(root):
    edit(root, lambda c: c["annotations"][0].pop("bbox"))
    return ["annotations[0].bbox", "missing"]


@fault("bad_box")
def bbox_negative_width(root):
    edit(root, lambda c: c["annotations"][0].update(bbox=[5.0, 5.0, -3.0, 4.0]))
    return ["annotations[0].bbox", "non-positive size"]


@fault("bad_box")
def bbox_huge(root):
    edit(root, lambda c: c["annotations"][0].update(bbox=[1.0, 1.0, 1e9, 1e9]))
    return ["annotations[0].bbox", "outside the 64x48 image"]


@fault("unknown_image_id")
def annotation_for_unknown_image(root):
    edit(root, lambda c: c["annotations"].append(dict(id=99, image_id=4242, category_id=1, bbox=[1, 1, 4, 4])))
    return ["annotations[6]", "4242"]


# file names and where they lead
@fault("path_escape")
def file_name_climbs_out(root):
    outside = os.path.join(os.path.dirname(root), "elsewhere")
    os.makedirs(outside)
    shutil.copy(frame(root, "train/seq_a/0.jpg"), os.path.join(outside, "0.jpg"))
    edit(root, lambda c: c["images"][0].update(file_name="../elsewhere/0.jpg"))
    return ["images[0].file_name", "'../elsewhere/0.jpg'", "climbs above the release root"]


@fault("path_escape")
def file_name_absolute(root):
    edit(root, lambda c: c["images"][0].update(file_name=frame(root, "train/seq_a/0.jpg")))
    return ["images[0].file_name", "absolute path"]


@fault("path_escape")
def sequence_folder_links_outside(root):
    outside = os.path.join(os.path.dirname(root), "other_disk", "seq_b")
    shutil.move(frame(root, "train/seq_b"), outside)
    os.symlink(outside, frame(root, "train/seq_b"))
    return [frame(root, "train/seq_b"), "outside the release root", "6 frame(s)"]


@fault("path_escape")
def frame_links_outside(root):
    outside = os.path.join(os.path.dirname(root), "stray.jpg")
    shutil.move(frame(root, "train/seq_a/3.jpg"), outside)
    os.symlink(outside, frame(root, "train/seq_a/3.jpg"))
    return [frame(root, "train/seq_a/3.jpg"), "stray.jpg"]


@fault("bad_file_name")
def extension_upper_case_in_json(root):
    edit(root, lambda c: c["images"][0].update(file_name="train/seq_a/0.JPG"))
    return ["images[0].file_name", "'.JPG'", "lowercase"]


@fault("bad_file_name")
def zero_padded_name(root):
    edit(root, lambda c: c["images"][1].update(file_name="train/seq_a/0001.jpg"))
    return ["'train/seq_a/0001.jpg'", "zero-padded", "'1.jpg'"]


@fault("bad_file_name")
def png_extension(root):
    edit(root, lambda c: c["images"][1].update(file_name="train/seq_a/1.png"))
    return ["images[1].file_name", "'.png'"]


@fault("bad_file_name")
def frame_number_overflows_int32(root):
    edit(root, lambda c: c["images"][1].update(file_name="train/seq_a/4294967297.jpg"))
    return ["images[1].file_name", "2**31"]


@fault("bad_file_name")
def bad_name_without_follow_ups(root):
    """The measured case: one bad file_name used to bring a trail of unknown_image_id errors."""
    def bad(c):
        c["images"].append(dict(id=500, file_name="train/seq_a/frame7.jpg", width=64, height=48))
        c["annotations"] += [dict(id=900 + k, image_id=500, category_id=1, bbox=[1, 1, 5, 5 + k]) for k in range(30)]
    edit(root, bad)
    return ["'train/seq_a/frame7.jpg'"]


@fault("missing_frame")
def extension_upper_case_on_disk(root):
    os.rename(frame(root, "train/seq_a/3.jpg"), frame(root, "train/seq_a/3.JPG"))
    return [frame(root, "train/seq_a/3.jpg"), "'3.JPG' exists", "case-sensitive"]


@fault("missing_frame", problems=2)   # + empty_split: the test split has no frames left, which is true
def split_folder_case_differs(root):
    os.rename(frame(root, "test"), frame(root, "Test"))
    return [frame(root, "test/seq_c"), "'Test' exists", "case-sensitive"]


@fault("missing_frame")
def sequence_folder_missing(root):
    shutil.rmtree(frame(root, "train/seq_b"))  # one problem for the folder, not six
    return [frame(root, "train/seq_b"), "6 frame(s)"]


@fault("missing_frame", problems=3)   # + empty_split: the split is left without ground truth, which is true
def file_names_relative_to_the_split(root):
    edit(root, lambda c: [im.update(file_name=im["file_name"][len("train/"):]) for im in c["images"]])
    return [frame(root, "seq_a"), frame(root, "train/seq_a"), "relative to the release root"]


@fault("missing_frame")
def frame_file_missing(root):
    os.remove(frame(root, "train/seq_a/6.jpg"))
    return [frame(root, "train/seq_a/6.jpg"), "does not exist"]


# frame files
@fault("corrupt_image")
def jpeg_truncated(root):
    p = frame(root, "train/seq_b/2.jpg")
    write_bytes(p, open(p, "rb").read()[:-200])
    return [p, "truncated"]


@fault("corrupt_image")
def jpeg_zero_bytes(root):
    write_bytes(frame(root, "train/seq_b/2.jpg"), b"")
    return [frame(root, "train/seq_b/2.jpg"), "empty file"]


@fault("corrupt_image")
def jpeg_tail_zero_filled(root):
    p = frame(root, "train/seq_b/2.jpg")
    data = open(p, "rb").read()
    write_bytes(p, data[: len(data) // 2] + bytes(len(data) - len(data) // 2))  # same size, as a failed copy leaves
    return [p]


@fault("corrupt_image")
def jpeg_cut_just_before_its_end_marker(root):
    p = frame(root, "train/seq_b/2.jpg")
    write_bytes(p, open(p, "rb").read()[:-2])
    return [p, "truncated"]


@fault("corrupt_image")
def not_an_image(root):
    write_bytes(frame(root, "train/seq_b/2.jpg"), b"<html>404 Not Found</html>")
    return [frame(root, "train/seq_b/2.jpg"), "not an image file", "<html>404"]


@fault("bad_image_mode")
def grey_16_bit_png(root):
    a = (np.arange(64 * 48).reshape(48, 64) * 20).astype(np.uint16)
    write_bytes(frame(root, "train/seq_b/2.jpg"), encode(Image.fromarray(a), "PNG"))  # decodes all white
    return [frame(root, "train/seq_b/2.jpg"), "'I;16'"]


@fault("bad_image_mode")
def rgb_16_bit_png(root):
    write_bytes(frame(root, "train/seq_b/2.jpg"), png_rgb16(64, 48))
    return [frame(root, "train/seq_b/2.jpg"), "16 bits per sample"]


@fault("bad_image_mode")
def palette_gif(root):
    write_bytes(frame(root, "train/seq_b/2.jpg"), encode(Image.new("RGB", (64, 48), (9, 9, 9)), "GIF"))
    return [frame(root, "train/seq_b/2.jpg"), "'P'"]


@fault("size_mismatch")
def frame_of_another_size(root):
    p = frame(root, "train/seq_a/2.jpg")
    Image.new("RGB", (96, 48), (1, 2, 3)).save(p, quality=95)
    return [p, "64x48", "96x48"]


# duplicates
@fault("duplicate_image_id")
def image_ids_collide(root):
    edit(root, lambda c: c["images"][2].update(id=c["images"][3]["id"]))
    return [json_path(root), "image id 4"]


@fault("duplicate_file_name")
def frame_listed_twice_under_two_ids(root):
    edit(root, lambda c: c["images"].append(dict(c["images"][0], id=777, file_name="./train/seq_a//0.jpg")))
    return ["'train/seq_a/0.jpg'"]


@fault("duplicate_image_id", problems=2)
def image_entry_repeated(root):
    edit(root, lambda c: c["images"].append(dict(c["images"][5])))  # also duplicate_file_name: both are true
    return ["image id 6"]


@fault("duplicate_annotation")
def annotation_repeated(root):
    edit(root, lambda c: c["annotations"].append(dict(c["annotations"][0])))
    return ["annotations[6]", "exactly"]


@fault("duplicate_annotation")
def annotation_ids_collide(root):
    edit(root, lambda c: c["annotations"][1].update(id=c["annotations"][0]["id"]))
    return ["annotations[1]", "other contents"]


@fault("duplicate_box")
def box_listed_twice(root):
    edit(root, lambda c: c["annotations"].append(dict(c["annotations"][0], id=1000)))
    return ["annotations[6]", "already has this box"]


# sequences and splits
@fault("frame_gap")
def gap_in_frame_numbers(root):
    os.remove(frame(root, "train/seq_a/3.jpg"))
    edit(root, lambda c: c.update(images=[i for i in c["images"] if i["file_name"] != "train/seq_a/3.jpg"],
                                  annotations=[a for a in c["annotations"] if a["image_id"] != 4]))
    return [frame(root, "train/seq_a"), "missing 3"]


@fault("frame_gap")
def huge_frame_number(root):
    shutil.copy(frame(root, "train/seq_a/0.jpg"), frame(root, "train/seq_a/2000000000.jpg"))
    edit(root, lambda c: c["images"].append(dict(c["images"][0], id=888, file_name="train/seq_a/2000000000.jpg")))
    return ["missing 7..1999999999"]


@fault("short_sequence")
def sequence_shorter_than_t(root):
    for n in (4, 5, 6):
        os.remove(frame(root, f"train/seq_a/{n}.jpg"))
    edit(root, lambda c: c.update(images=[i for i in c["images"] if i["file_name"] not in
                                          {f"train/seq_a/{n}.jpg" for n in (4, 5, 6)}],
                                  annotations=[a for a in c["annotations"] if a["image_id"] not in (5, 6, 7)]))
    return [frame(root, "train/seq_a"), "4 frame(s)", "T = 5"]


@fault("empty_split")
def split_without_images(root):
    edit(root, lambda c: c.update(images=[], annotations=[]), split="test")
    return [json_path(root, "test"), "'test'"]


def test_every_problem_code_has_a_fault():
    assert {kind for _, kind, _ in FAULTS.values()} == set(PROBLEM_KINDS)
    assert len(FAULTS) >= 60


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_fault_gives_one_named_problem_or_a_counted_skip(tmp_path, name, capsys):
    damage, kind, n_problems = FAULTS[name]
    root = make_release(tmp_path)
    needles = damage(root)
    report = L.validate(root)
    mine = [p for p in report.problems if p.kind == kind]
    assert mine, report.format()
    assert len(report.problems) == n_problems, report.format()          # no trail of follow-up problems
    text = "\n".join(str(p) for p in mine)
    for needle in needles:
        assert needle in text, f"{needle!r} not in:\n{text}"
    with pytest.raises(L.LayoutError, match=rf"\[{kind}\]"):
        L.read_layout(root)
    skipped = L.read_layout(root, skip_invalid=True).report
    assert sum(skipped.skipped.values()) > 0 or kind == "frame_gap", skipped.format()
    capsys.readouterr()
    assert V.main([root]) == 1
    out = capsys.readouterr().out
    assert f"[{kind}]" in out and "FAILED" in out
    json_out = V.main([root, "--json"])
    rep = json.loads(capsys.readouterr().out)
    assert json_out == 1 and rep["exit_status"] == 1 and rep["counts"][kind] >= 1
    assert all(set(p) == {"kind", "path", "where", "message"} for p in rep["problems"])


# ------------------------------------------------------------------------------------------------ what a skip keeps
def frames_by_name(layout, split="train"):
    return {f.file_name: f for s in layout.splits[split].sequences for f in s.frames}


def test_skip_makes_a_frame_with_a_bad_box_unannotated_never_partial(tmp_path):
    root = make_release(tmp_path)
    coco = load(root)
    name = coco["images"][1]["file_name"]
    k = first_annotation_of(coco, coco["images"][1]["id"])
    coco["annotations"][k]["bbox"] = "8512"
    save(root, coco)
    fr = frames_by_name(L.read_layout(root, skip_invalid=True))[name]
    assert not fr.annotated and fr.image_id == -1 and fr.boxes_xywh.shape == (0, 4)   # history frame only


def test_skip_drops_an_identical_repeat_but_keeps_the_ground_truth(tmp_path):
    root = make_release(tmp_path)
    coco = load(root)
    a = coco["annotations"][0]
    coco["annotations"] += [dict(a), dict(a, id=1000)]   # same id repeated, and the same box under a new id
    save(root, coco)
    lay = L.read_layout(root, skip_invalid=True)
    assert lay.report.counts() == {"duplicate_annotation": 1, "duplicate_box": 1}
    fr = next(f for f in frames_by_name(lay).values() if f.image_id == a["image_id"])
    assert fr.annotated and fr.boxes_xywh.tolist() == [a["bbox"]]


def test_skip_of_a_rejected_entry_keeps_its_file_as_an_unannotated_frame(tmp_path):
    root = make_release(tmp_path)
    edit(root, lambda c: c["images"][1].update(width="192px"))
    lay = L.read_layout(root, skip_invalid=True)
    fr = frames_by_name(lay)["train/seq_a/1.jpg"]
    assert not fr.annotated and (fr.width, fr.height) == (64, 48)
    assert lay.report.skipped["image_entries"] == 1 and lay.report.skipped["annotations"] == 1


def test_readable_variants_are_not_problems(tmp_path):
    """What real exports contain and is fine: a BOM and CRLF line ends, backslashes and './' in file names,
    integral float ids and sizes, null optional fields, grey / CMYK / RGBA frames, a PNG inside a .jpg, bytes
    appended after a JPEG's end marker."""
    root = make_release(tmp_path)
    coco = load(root)
    coco["images"][0]["file_name"] = "train\\seq_a\\0.jpg"
    coco["images"][1]["file_name"] = "./train/seq_a/1.jpg"
    coco["images"][2].update(id=3.0, width=64.0, sequence=None)
    coco["annotations"][0]["id"] = None
    text = json.dumps(coco, indent=1).replace("\n", "\r\n")
    write_bytes(json_path(root), b"\xef\xbb\xbf" + text.encode())
    write_bytes(frame(root, "train/seq_b/0.jpg"), encode(Image.new("L", (64, 48), 90), "JPEG"))
    write_bytes(frame(root, "train/seq_b/1.jpg"), encode(Image.new("CMYK", (64, 48), (0, 50, 90, 10)), "JPEG"))
    write_bytes(frame(root, "train/seq_b/2.jpg"), encode(Image.new("RGBA", (64, 48), (5, 6, 7, 255)), "PNG"))
    with open(frame(root, "train/seq_b/3.jpg"), "ab") as f:
        f.write(b"camera trailer after the end-of-image marker")
    lay = L.read_layout(root)
    assert lay.report.ok, lay.report.format()
    names = frames_by_name(lay)
    assert names["train/seq_a/0.jpg"].annotated and names["train/seq_a/2.jpg"].image_id == 3
    assert lay.report.info["frames_not_jpeg_inside"] == 1


def test_unreferenced_and_stray_files_are_reported_as_notes(tmp_path):
    root = make_release(tmp_path)
    shutil.copytree(frame(root, "train/seq_a"), frame(root, "train/seq_old"))
    write_bytes(frame(root, "train/seq_a/Thumbs.db"), b"x")
    rep = L.validate(root)
    assert rep.ok and rep.info["unreferenced_frame_folders"] == 1
    assert any("train/seq_old" in n for n in rep.notes) and any("Thumbs.db" in n for n in rep.notes)


# ------------------------------------------------------------------------------------------------ the validator CLI
def test_validator_exit_status(tmp_path, capsys):
    root = make_release(tmp_path)
    assert V.main([root]) == 0
    os.remove(frame(root, "train/seq_a/6.jpg"))
    assert V.main([root]) == 1
    assert V.main([root, "--skip-invalid"]) == 0          # skippable: every split survives
    edit(root, lambda c: c.update(images=[], annotations=[]), split="test")
    assert V.main([root, "--skip-invalid"]) == 1          # a whole split would be lost
    out = capsys.readouterr().out
    assert "split(s) test would be lost" in out
    assert V.main([str(tmp_path / "nowhere")]) == 2
    assert V.main(["--list-checks"]) == 0 and "bad_image_mode" in capsys.readouterr().out


def test_validator_names_a_json_in_the_wrong_place(tmp_path, capsys):
    os.makedirs(tmp_path / "r" / "annotations")
    write_bytes(str(tmp_path / "r" / "annotations" / "train.json"), b"{}")
    assert V.main([str(tmp_path / "r")]) == 2
    assert "annotations/train/coco.json" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ the TFDS builder
def manual_release(data_dir) -> str:
    return L.write_example_layout(os.path.join(data_dir, "downloads", "manual", "BeltCrack14ks"), SEQS)


def test_builder_gives_the_same_problems_strict_and_counts_them_when_skipping(tmp_path):
    d = str(tmp_path)
    root = manual_release(d)
    edit(root, lambda c: c["images"][1].update(width="192px"))
    write_bytes(frame(root, "train/seq_b/2.jpg"), png_rgb16(64, 48))
    with pytest.raises(L.LayoutError) as e:
        tfds.builder(NAME, data_dir=d).download_and_prepare()
    assert e.value.report.counts() == {"bad_entry": 1, "bad_image_mode": 1}
    b = tfds.builder(NAME, data_dir=d, skip_invalid=True)
    b.download_and_prepare()
    md = b.info.metadata["report"]
    assert md["problems"] == {"bad_entry": 1, "bad_image_mode": 1}
    # the 16-bit frame splits seq_b into 2 + 3 frames, both shorter than T = 5: 6 frames, 2 pieces skipped
    assert md["skipped"]["image_entries"] == 1 and md["skipped"]["frames"] == 6 and md["skipped"]["sequences"] == 2
    assert any("images[1].width" in m for m in md["messages"])
    src = tfds.data_source(NAME, split="train", data_dir=d, decoders={"image": tfds.decode.SkipDecoding()})
    recs = {src[i]["file_name"].decode(): src[i] for i in range(len(src))}
    assert "train/seq_b/2.jpg" not in recs
    assert not recs["train/seq_a/1.jpg"]["annotated"] and recs["train/seq_a/1.jpg"]["image_id"] == -1


def test_builder_never_reads_frames_outside_the_release(tmp_path):
    d = str(tmp_path)
    root = manual_release(d)
    secret = os.path.join(d, "secret.jpg")
    Image.new("RGB", (64, 48), (200, 0, 0)).save(secret)
    edit(root, lambda c: c["images"].append(dict(id=600, file_name="../../../secret.jpg", width=64, height=48)))
    with pytest.raises(L.LayoutError, match="path_escape"):
        tfds.builder(NAME, data_dir=d).download_and_prepare()
    b = tfds.builder(NAME, data_dir=d, skip_invalid=True)
    b.download_and_prepare()
    src = tfds.data_source(NAME, split="train", data_dir=d, decoders={"image": tfds.decode.SkipDecoding()})
    secret_bytes = open(secret, "rb").read()
    assert all(src[i]["image"] != secret_bytes for i in range(len(src)))


def test_changed_release_is_refused_with_the_rebuild_command(tmp_path, capsys):
    d = str(tmp_path)
    root = manual_release(d)
    tfds.builder(NAME, data_dir=d).download_and_prepare()
    tfds.builder(NAME, data_dir=d).download_and_prepare()              # unchanged: reused
    new_box = [2.0, 3.0, 7.0, 5.0]
    edit(root, lambda c: c["annotations"][0].update(bbox=new_box))
    with pytest.raises(DatasetError, match=r"changed since .*annotations/train/coco\.json") as e:
        tfds.builder(NAME, data_dir=d).download_and_prepare()
    command = f"python -m beltcrack_jax.data.build {NAME} --data-dir {d} --rebuild"
    assert command in str(e.value)
    with pytest.raises(DatasetError, match="changed since"):         # the pipeline does not serve it either
        P.open_source(NAME, "train", d)
    # a frame file replaced by another of a different size is a change too
    assert B.main(command.split()[3:]) == 0                          # the command in the message works
    src, index = P.open_source(NAME, "train", d)
    k = int(np.flatnonzero(index.image_id == load(root)["annotations"][0]["image_id"])[0])
    assert index.frame_boxes(k)[0].tolist() == [new_box]
    with open(frame(root, "train/seq_b/4.jpg"), "ab") as f:
        f.write(b"\0" * 10)
    with pytest.raises(DatasetError, match=r"changed: train/seq_b"):
        P.open_source(NAME, "train", d)
    assert B.main([NAME, "--data-dir", d]) == 1 and "--rebuild" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ the pipeline
def pipeline_config(data_dir, **data):
    import importlib.util
    import pathlib
    spec = importlib.util.spec_from_file_location(
        "_cfg_default", pathlib.Path(__file__).resolve().parents[1] / "configs" / "default.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    base = dict(name=NAME, data_dir=data_dir, num_workers=0, num_threads=1, image_size=64, max_boxes=4)
    base.update(data)
    for k, v in base.items():
        c.data[k] = v
    return c


def test_pipeline_builds_with_the_same_checks_and_data_skip_invalid(tmp_path):
    d = str(tmp_path)
    root = manual_release(d)
    edit(root, lambda c: c["annotations"][0].update(image_id=[2]))
    with pytest.raises(L.LayoutError, match=r"\[bad_entry\] .*annotations\[0\]\.image_id"):
        P.make_train_iterator(pipeline_config(d), "train", batch_size_per_process=1)
    it = P.make_train_iterator(pipeline_config(d, skip_invalid=True), "train", batch_size_per_process=1)
    assert next(it)["clips"].shape == (1, 5, 64, 64, 3)
    md = P.open_source(NAME, "train", d)[0].dataset_info.metadata["report"]
    assert md["problems"] == {"bad_entry": 1} and md["skipped"]["annotations"] == 1


def test_category_beyond_num_classes_is_named(tmp_path):
    d = str(tmp_path)
    root = manual_release(d)
    coco = load(root)
    coco["categories"].append(dict(id=2, name="scratch"))
    coco["annotations"][2]["category_id"] = 2
    save(root, coco)
    name = next(im["file_name"] for im in coco["images"] if im["id"] == coco["annotations"][2]["image_id"])
    with pytest.raises(ValueError, match=rf"{name} has a box of category_id 2, .*num_classes = 1"):
        P.make_train_iterator(pipeline_config(d), "train", batch_size_per_process=1)


def test_truncated_record_file_is_named(tmp_path):
    d = str(tmp_path)
    manual_release(d)
    src, _ = P.open_source(NAME, "train", d)
    shard = os.fspath(src.dataset_info.splits["train"].filepaths[0])
    data = open(shard, "rb").read()
    write_bytes(shard, data[: len(data) // 3])
    with pytest.raises(DatasetError, match=rf"record file {shard} holds 0 readable records, the build wrote 13"):
        P.open_source(NAME, "train", d)
    # a read that fails later (the open-time check skipped) names the shard too, instead of a bare Riegeli error
    cfg = pipeline_config(d)
    src, index = P.open_source(NAME, "train", d, prepare=False, verify=False)
    loader = P.ClipLoader(NAME, "train", d, P.clip_spec(cfg, train=True), 0, index=index, source=src)
    with pytest.raises(DatasetError, match=rf"(?s)cannot read records .* from record file {shard}.*--rebuild"):
        loader.load_clip(int(index.key_frames()[0]), 0)


# ------------------------------------------------------------------------------------------------ synthetic CLI
def test_synthetic_cli_refuses_a_used_out_folder(tmp_path, capsys):
    out = tmp_path / "syn"
    args = ["--preset", "tiny", "--out", str(out), "--num-sequences", "3", "--max-frames", "5"]
    assert synthetic.main(args) == 0
    stale = out / "train" / "seq_old"
    stale.mkdir(parents=True)
    shutil.copy(next((out / "train").glob("seq*/0.jpg")), stale / "0.jpg")
    assert synthetic.main(args) == 2
    assert "not empty" in capsys.readouterr().err and stale.exists()
    assert synthetic.main(args + ["--overwrite"]) == 0
    assert not stale.exists() and (out / "annotations" / "train" / "coco.json").exists()
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("mine")
    assert synthetic.main(["--preset", "tiny", "--out", str(tmp_path / "home"), "--overwrite"]) == 2
    assert (tmp_path / "home" / "notes.txt").exists()                  # never deletes what is not a release


# ------------------------------------------------------------------------------------------------ train.py
def test_train_py_prints_the_release_problem_without_a_traceback(tmp_path):
    import subprocess
    import sys
    d = str(tmp_path / "tfds")
    root = manual_release(d)
    edit(root, lambda c: c["annotations"][0].update(bbox="8512"))
    out = subprocess.run([sys.executable, "train.py", "--config", "configs/tiny.py", "--workdir", str(tmp_path / "w"),
                          f"--config.data.name={NAME}", f"--config.data.data_dir={d}", "--config.data.num_workers=0"],
                         cwd=os.path.dirname(os.path.dirname(__file__)), capture_output=True, text=True, timeout=300,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 1
    assert "error: invalid BeltCrack release layout" in out.stderr and "annotations[0].bbox" in out.stderr
    assert "Traceback" not in out.stderr
