"""TFDS builder `beltcrack`: ArrayRecord records (one per frame, ordered by (sequence, frame)), built and read
without TensorFlow; build-time validation; synthetic configs generate their own frames."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow_datasets as tfds

import beltcrack_jax.data  # noqa: F401  (registers 'beltcrack')
from beltcrack_jax.data import layout as L
from beltcrack_jax.data import pipeline as P
from beltcrack_jax.data import transforms as T
from beltcrack_jax.data.tfds_beltcrack import BeltCrackConfig

SEQS = {"train": {"seq_b": 6, "seq_a": 7, "seq_10": 5, "seq_2": 5}, "test": {"seq_c": 5}}
UNLISTED = {"train/seq_a": [0, 1, 5]}


def _build(data_dir, name="beltcrack/beltcrack14ks", **builder_kwargs):
    b = tfds.builder(name, data_dir=data_dir, **builder_kwargs)
    b.download_and_prepare()
    return b


def _manual_root(data_dir, release="BeltCrack14ks"):
    return os.path.join(data_dir, "downloads", "manual", release)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("tfds"))
    root = L.write_example_layout(_manual_root(d), SEQS, unlisted_frames=UNLISTED)
    _build(d)
    return d, root


def _read_json(root, split):
    with open(os.path.join(root, "annotations", split, "coco.json")) as f:
        return json.load(f)


def test_registered_configs():
    names = {c.name for c in tfds.builder_cls("beltcrack").BUILDER_CONFIGS}
    assert names == {"beltcrack14ks", "beltcrack9kd", "beltcrack14ks_letterbox512", "beltcrack9kd_letterbox512",
                     "synthetic_tiny", "synthetic_learn", "synthetic_demo", "synthetic_ambiguous", "synthetic_veiled",
                     "synthetic_14ks_like", "synthetic_9kd_like"}
    instr = tfds.builder_cls("beltcrack").MANUAL_DOWNLOAD_INSTRUCTIONS
    assert "<data_dir>/downloads/manual/BeltCrack14ks" in instr and "BeltCrack9kd" in instr


def test_records_one_per_frame_in_sequence_order(release):
    data_dir, root = release
    src = tfds.data_source("beltcrack/beltcrack14ks", split="train", data_dir=data_dir,
                           decoders={"image": tfds.decode.SkipDecoding()})
    recs = [src[i] for i in range(len(src))]
    # natural sequence order, frames ascending, every file on disk exactly once
    order = [(r["sequence"].decode(), int(r["frame_index"])) for r in recs]
    expect = [(f"train/{s}", n) for s in ["seq_2", "seq_10", "seq_a", "seq_b"] for n in range(SEQS["train"][s])]
    assert order == expect
    on_disk = sorted(f"train/{s}/{f}" for s in SEQS["train"] for f in os.listdir(os.path.join(root, "train", s)))
    assert sorted(r["file_name"].decode() for r in recs) == on_disk
    coco = _read_json(root, "train")
    by_name = {im["file_name"]: im for im in coco["images"]}
    anns = {}
    for a in coco["annotations"]:
        anns.setdefault(a["image_id"], []).append(a["bbox"])
    for i, r in enumerate(recs):
        fn = r["file_name"].decode()
        start = next(j for j, o in enumerate(order) if o[0] == order[i][0])
        assert r["sequence_start"] == start and r["sequence_length"] == SEQS["train"][order[i][0].split("/")[1]]
        assert r["image"] == open(os.path.join(root, fn), "rb").read()  # bytes stored verbatim
        assert (int(r["height"]), int(r["width"])) == (48, 64)
        if fn in by_name:
            im = by_name[fn]
            assert r["annotated"] and r["image_id"] == im["id"]
            # full float precision: exactly the json numbers (xywh, original pixels)
            np.testing.assert_array_equal(r["boxes"], np.asarray(anns.get(im["id"], []), np.float64).reshape(-1, 4))
            assert r["boxes"].dtype == np.float64 and (r["labels"] == 0).all()
        else:
            assert fn.startswith("train/seq_a/") and int(r["frame_index"]) in UNLISTED["train/seq_a"]
            assert not r["annotated"] and r["image_id"] == -1 and r["boxes"].shape == (0, 4)
        assert r["view"].decode() in ("top-down", "bottom-up") and r["light"] == b"noon"
    # the metadata index mirrors the records (no image read needed)
    idx = P.split_index_from_metadata(src.dataset_info.metadata, "train")
    assert idx.num_records == len(recs)
    for i, r in enumerate(recs):
        assert idx.sequence_start[i] == r["sequence_start"] and idx.image_id[i] == r["image_id"]
        np.testing.assert_array_equal(idx.frame_boxes(i)[0], r["boxes"])
    gt = idx.coco_ground_truth()
    assert sorted(im["id"] for im in gt["images"]) == sorted(im["id"] for im in coco["images"])
    assert sorted(map(tuple, (a["bbox"] for a in gt["annotations"]))) == sorted(
        map(tuple, (a["bbox"] for a in coco["annotations"])))


def test_clip_by_index_arithmetic(release):
    data_dir, _ = release
    src = tfds.data_source("beltcrack/beltcrack14ks", split="train", data_dir=data_dir,
                           decoders={"image": tfds.decode.SkipDecoding()})
    for i in range(len(src)):
        r = src[i]
        clip = P.clip_record_indices(i, int(r["sequence_start"]), 5)
        frames = [int(src[j]["frame_index"]) for j in clip]
        n = int(r["frame_index"])
        assert frames == [max(n - k, 0) for k in range(4, -1, -1)]
        assert {src[j]["sequence"] for j in clip} == {r["sequence"]}


def test_synthetic_tiny_build_and_read_clips(tmp_path):
    d = str(tmp_path)
    _build(d, "beltcrack/synthetic_tiny")
    src = tfds.data_source("beltcrack/synthetic_tiny", split="train", data_dir=d)
    r = src[0]
    assert r["image"].dtype == np.uint8 and r["image"].shape == (int(r["height"]), int(r["width"]), 3)
    root = src.dataset_info.metadata["source_root"]
    coco = _read_json(root, "train")
    cfg = _config(d, "beltcrack/synthetic_tiny", image_size=(108, 192), max_boxes=32)
    it = P.make_eval_iterator(cfg, "train", batch_size_per_process=4)
    anns = {}
    for a in coco["annotations"]:
        anns.setdefault(a["image_id"], []).append(a["bbox"])
    seen = 0
    for batch in it:
        for b in range(4):
            if not batch["valid"][b]:
                continue
            seen += 1
            # stretch to the original size is the identity resize: boxes = the json boxes truncated to ints
            xywh = np.asarray(anns[int(batch["image_id"][b])], np.float64)
            x1, y1 = np.trunc(xywh[:, 0]), np.trunc(xywh[:, 1])
            x2, y2 = x1 + np.trunc(xywh[:, 2]), y1 + np.trunc(xywh[:, 3])
            x2, y2 = np.minimum(x2, 192), np.minimum(y2, 108)
            keep = ((x2 - x1) > 1) & ((y2 - y1) > 1)
            exp = np.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], 1)[keep]
            got = batch["boxes"][b][batch["box_mask"][b]]
            np.testing.assert_array_equal(got, exp.astype(np.float32))
            assert (batch["orig_hw"][b] == (108, 192)).all()
    assert seen == sum(1 for im in coco["images"] if im["id"] in anns)


def test_build_and_read_without_tensorflow(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        import beltcrack_jax.data as bd
        from beltcrack_jax.data import layout
        import tensorflow_datasets as tfds
        d = {str(tmp_path)!r}
        layout.write_example_layout(d + '/downloads/manual/BeltCrack9kd', {{'train': {{'s': 6}}, 'test': {{'t': 5}}}})
        tfds.builder('beltcrack/beltcrack9kd', data_dir=d).download_and_prepare()
        src = tfds.data_source('beltcrack/beltcrack9kd', split='train', data_dir=d)
        assert src[3]['image'].shape == (48, 64, 3)
        import ml_collections as mc
        c = mc.ConfigDict(dict(seed=0, model=dict(num_frames=5), data=dict(name='beltcrack/beltcrack9kd',
            data_dir=d, image_size=64, max_boxes=4, num_workers=0, num_threads=1)))
        batch = next(bd.make_train_iterator(c, 'train', batch_size_per_process=2))
        assert batch['clips'].shape == (2, 5, 64, 64, 3)
        print('TF_IMPORTED', 'tensorflow' in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "TF_IMPORTED False" in out.stdout


def test_invalid_release_fails_build_then_skip_invalid(tmp_path):
    d = str(tmp_path)
    root = L.write_example_layout(_manual_root(d), {"train": {"a": 6, "b": 5}})
    bad = os.path.join(root, "train", "a", "5.jpg")
    with open(bad, "wb") as f:
        f.write(b"\xff\xd8 broken")
    with pytest.raises(L.LayoutError, match="corrupt_image") as e:
        _build(d)
    assert bad in str(e.value)
    b = _build(d, skip_invalid=True)
    md = b.info.metadata["report"]
    assert md["problems"] == {"corrupt_image": 1} and md["skipped"]["frames"] == 1
    src = tfds.data_source("beltcrack/beltcrack14ks", split="train", data_dir=d,
                           decoders={"image": tfds.decode.SkipDecoding()})
    names = [src[i]["file_name"].decode() for i in range(len(src))]
    assert "train/a/5.jpg" not in names and len(names) == 10


def test_missing_manual_download_says_where(tmp_path):
    with pytest.raises(Exception, match="downloads/manual"):
        _build(str(tmp_path), "beltcrack/beltcrack9kd")


def test_storage_resize_keeps_original_geometry(tmp_path):
    d = str(tmp_path)
    L.write_example_layout(_manual_root(d), {"train": {"a": 5}}, size_wh=(96, 64))
    cfg = BeltCrackConfig(name="small14ks", release="BeltCrack14ks", storage_max_side=48)
    tfds.builder("beltcrack", config=cfg, data_dir=d).download_and_prepare()
    src = tfds.data_source("beltcrack/small14ks", split="train", data_dir=d)
    r = src[1]
    assert r["image"].shape == (32, 48, 3) and (int(r["height"]), int(r["width"])) == (64, 96)
    p = T.resize_params("letterbox", (int(r["height"]), int(r["width"])), 64)
    assert (p.nw, p.nh) == (64, 42)


def _config(data_dir, name, **data):
    import importlib.util
    import pathlib

    spec = importlib.util.spec_from_file_location(
        "_cfg_default", pathlib.Path(__file__).resolve().parents[1] / "configs" / "default.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    c.data.name, c.data.data_dir, c.data.num_workers, c.data.num_threads = name, data_dir, 0, 1
    for k, v in data.items():
        if k in c.data:
            del c.data[k]  # allow a type change (e.g. image_size int -> (H, W))
        c.data[k] = v
    return c


def test_presized_storage_is_bit_exact_and_skips_the_resize(tmp_path):
    d = str(tmp_path)
    L.write_example_layout(_manual_root(d), {"train": {"a": 5}}, size_wh=(96, 64))
    tfds.builder("beltcrack/beltcrack14ks", data_dir=d).download_and_prepare()
    cfg = BeltCrackConfig(name="lb48", release="BeltCrack14ks", storage_resize="letterbox", storage_size=48)
    tfds.builder("beltcrack", config=cfg, data_dir=d).download_and_prepare()
    raw = tfds.data_source("beltcrack/beltcrack14ks", split="train", data_dir=d,
                           decoders={"image": tfds.decode.SkipDecoding()})
    small = tfds.data_source("beltcrack/lb48", split="train", data_dir=d,
                             decoders={"image": tfds.decode.SkipDecoding()})
    for i in range(5):
        assert small[i]["image"][:4] == b"\x89PNG" and (int(small[i]["height"]), int(small[i]["width"])) == (64, 96)
        p = T.resize_params("letterbox", (64, 96), 48)
        np.testing.assert_array_equal(T.load_frame(small[i]["image"], p), T.load_frame(raw[i]["image"], p))
