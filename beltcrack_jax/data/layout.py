"""Read and validate a BeltCrack release-layout folder (real download or synthetic).

Layout (spec §4)::

    ROOT/annotations/<split>/coco.json          (or the only *.json in that folder)
    ROOT/<file_name>                            file_name = <sequence dir>/<n>.jpg, n = 0, 1, ... (no zero padding)

COCO: `images` (id, file_name, width, height, optional sequence / frame_index), `annotations` (id, image_id,
category_id = 1, bbox [x, y, w, h] original px), `categories` [{id: 1, name: 'crack'}], optional top-level
`sequences` [{name, view, light, weather, speed, ...}]. The sequence of a frame is the directory part of its
file_name. Frames on disk but not in the json are *unannotated* frames (history only); a frame in the json with
no annotation is an *annotated negative*.

`read_layout` checks everything and raises `LayoutError` listing every problem, or with `skip_invalid=True`
skips the bad items and counts them in `Layout.report`. `validate` only reports. What `skip_invalid` skips:

=====================  ==========================================================================================
problem                skipped item
=====================  ==========================================================================================
bad_json               the split
bad_file_name          the image entry (+ its annotations)
duplicate_image_id     every entry with that id (+ their annotations); the files stay as unannotated frames
duplicate_file_name    every entry naming that file (+ annotations); the file stays as an unannotated frame
duplicate_annotation   the later annotations with an already used id
unknown_image_id       the annotation
bad_category           the annotation's frame becomes unannotated (its ground truth is incomplete)
bad_box                the annotation's frame becomes unannotated (not used as a key frame, still a history frame)
size_mismatch          the frame becomes unannotated (json width/height disagree with the file)
missing_frame          the frame (the sequence is split there)
corrupt_image          the frame (the sequence is split there)
frame_gap              nothing is lost: the sequence is split into contiguous segments at the gap
short_sequence         the sequence / segment (fewer frames than `min_sequence_length`)
empty_split            the split
=====================  ==========================================================================================
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import io
import json
import os
import re
from typing import Any

import numpy as np

FRAME_NAME = re.compile(r"^(0|[1-9][0-9]*)\.jpg$")
TAG_KEYS = ("view", "light", "weather", "speed")
PROBLEM_KINDS = (
    "bad_json", "bad_file_name", "duplicate_image_id", "duplicate_file_name", "duplicate_annotation",
    "unknown_image_id", "bad_category", "bad_box", "size_mismatch", "missing_frame", "corrupt_image",
    "frame_gap", "short_sequence", "empty_split",
)


class LayoutError(ValueError):
    """A release-layout folder has problems; `.report` lists them all."""

    def __init__(self, report: "Report"):
        self.report = report
        super().__init__(report.format(header="invalid BeltCrack release layout (pass skip_invalid=True / "
                                              "--skip-invalid to skip the bad items and count them)"))


@dataclasses.dataclass(frozen=True)
class Problem:
    kind: str      # one of PROBLEM_KINDS
    path: str      # the file (json, frame) or folder concerned
    message: str

    def __str__(self) -> str:
        return f"[{self.kind}] {self.path}: {self.message}"


@dataclasses.dataclass
class Report:
    """Problems found plus informational counts (nothing is dropped silently)."""

    root: str
    problems: list[Problem] = dataclasses.field(default_factory=list)
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    info: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def add(self, kind: str, path: str, message: str) -> None:
        if kind not in PROBLEM_KINDS:
            raise ValueError(f"unknown problem kind {kind!r}")
        self.problems.append(Problem(kind, str(path), message))

    @property
    def ok(self) -> bool:
        return not self.problems

    def counts(self) -> dict[str, int]:
        return dict(collections.Counter(p.kind for p in self.problems))

    def format(self, header: str = "", max_lines: int = 200) -> str:
        lines = [header] if header else []
        lines.append(f"root: {self.root}")
        if self.problems:
            counts = ", ".join(f"{k} {v}" for k, v in sorted(self.counts().items()))
            lines.append(f"{len(self.problems)} problem(s): {counts}")
            lines += [f"  {p}" for p in self.problems[:max_lines]]
            if len(self.problems) > max_lines:
                lines.append(f"  ... and {len(self.problems) - max_lines} more")
        else:
            lines.append("no problems found")
        if self.skipped:
            lines.append("skipped (skip_invalid): " + ", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items())))
        if self.info:
            lines.append("info: " + ", ".join(f"{k} {v}" for k, v in sorted(self.info.items())))
        return "\n".join(lines)


@dataclasses.dataclass
class Frame:
    number: int
    file_name: str                  # relative to ROOT
    image_id: int = -1              # -1: not in the json
    annotated: bool = False         # listed in the json with valid ground truth (possibly zero boxes)
    width: int = 0                  # original size (from the file when checked, else from the json)
    height: int = 0
    boxes_xywh: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 4), np.float64))
    labels: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0,), np.int32))


@dataclasses.dataclass
class Sequence:
    name: str                       # sequence directory relative to ROOT (e.g. 'train/seq_003')
    frames: list[Frame]             # contiguous frame numbers, ascending
    tags: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Split:
    name: str
    json_path: str
    sequences: list[Sequence]

    @property
    def num_frames(self) -> int:
        return sum(len(s.frames) for s in self.sequences)


@dataclasses.dataclass
class Layout:
    root: str
    splits: dict[str, Split]
    report: Report


def natural_key(s: str):
    """Sort key that orders 'seq2' before 'seq10'."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def _check_image(path: str, full: bool) -> tuple[str | None, tuple[int, int] | None]:
    """-> (error message or None, (width, height) or None). Full decode unless `full` is False."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return f"cannot read: {e}", None
    if not data:
        return "empty file", None
    try:
        img = Image.open(io.BytesIO(data))
        size = img.size
        fmt = img.format
        if full:
            img.load()  # raises on truncated / corrupt entropy-coded data
    except Exception as e:  # noqa: BLE001 - any decoder failure is a corrupt file
        return f"cannot decode ({type(e).__name__}: {e})", None
    if fmt == "JPEG" and not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        return "truncated JPEG (no end-of-image marker)", None
    return None, size


def _find_json(ann_dir: str) -> str | None:
    p = os.path.join(ann_dir, "coco.json")
    if os.path.isfile(p):
        return p
    cands = sorted(f for f in os.listdir(ann_dir) if f.endswith(".json"))
    return os.path.join(ann_dir, cands[0]) if len(cands) == 1 else None


def _seq_tags(coco: dict) -> dict[str, dict[str, str]]:
    out = {}
    for s in coco.get("sequences", []) or []:
        if isinstance(s, dict) and "name" in s:
            out[str(s["name"])] = {k: str(s[k]) for k in TAG_KEYS if k in s and s[k] is not None}
    return out


def read_layout(
    root: str | os.PathLike,
    *,
    min_sequence_length: int = 5,
    skip_invalid: bool = False,
    check_images: bool = True,
    full_decode: bool = True,
    num_threads: int = 4,
    splits: list[str] | None = None,
) -> Layout:
    """Parse and check a release-layout folder -> Layout (sequences of contiguous frames per split).

    check_images: open every frame (full decode unless full_decode=False: header + end marker only).
    Raises LayoutError listing every problem unless skip_invalid (then bad items are skipped and counted in
    `layout.report.skipped`). Nothing is ever dropped without being reported.
    """
    layout = _read(os.fspath(root), min_sequence_length, skip_invalid, check_images, full_decode, num_threads, splits)
    if layout.report.problems and not skip_invalid:
        raise LayoutError(layout.report)
    return layout


def validate(root: str | os.PathLike, **kwargs) -> Report:
    """Every problem in a release-layout folder (never raises for data problems). kwargs as `read_layout`."""
    kwargs.pop("skip_invalid", None)
    return _read(os.fspath(root), kwargs.pop("min_sequence_length", 5), True, kwargs.pop("check_images", True),
                 kwargs.pop("full_decode", True), kwargs.pop("num_threads", 4), kwargs.pop("splits", None)).report


def _read(root, min_len, skip, check_images, full_decode, num_threads, only_splits) -> Layout:
    report = Report(root=root)
    ann_root = os.path.join(root, "annotations")
    if not os.path.isdir(ann_root):
        raise FileNotFoundError(f"{ann_root} does not exist: not a BeltCrack release layout "
                                f"(expected ROOT/annotations/<split>/coco.json and frames at ROOT/<file_name>)")
    split_names = sorted(d for d in os.listdir(ann_root) if os.path.isdir(os.path.join(ann_root, d)))
    if only_splits is not None:
        missing = sorted(set(only_splits) - set(split_names))
        if missing:
            raise FileNotFoundError(f"splits {missing} not found under {ann_root} (found {split_names})")
        split_names = [s for s in split_names if s in only_splits]
    if not split_names:
        raise FileNotFoundError(f"no split folders under {ann_root}")

    splits: dict[str, Split] = {}
    pool = concurrent.futures.ThreadPoolExecutor(max(1, num_threads)) if check_images else None
    try:
        for split in split_names:
            s = _read_split(root, split, report, min_len, check_images, full_decode, pool)
            if s is not None:
                splits[split] = s
    finally:
        if pool is not None:
            pool.shutdown()
    report.info["frames_kept"] = sum(sp.num_frames for sp in splits.values())
    return Layout(root=root, splits=splits, report=report)


def _read_split(root, split, report, min_len, check_images, full_decode, pool) -> Split | None:
    ann_dir = os.path.join(root, "annotations", split)
    json_path = _find_json(ann_dir)
    if json_path is None:
        report.add("bad_json", ann_dir, "no coco.json (and not exactly one *.json) in this folder")
        report.skipped["splits"] += 1
        return None
    try:
        with open(json_path) as f:
            coco = json.load(f)
        images, anns = coco["images"], coco.get("annotations", [])
        if not isinstance(images, list) or not isinstance(anns, list):
            raise TypeError("'images' and 'annotations' must be lists")
    except Exception as e:  # noqa: BLE001
        report.add("bad_json", json_path, f"cannot parse COCO json ({type(e).__name__}: {e})")
        report.skipped["splits"] += 1
        return None
    cat_ids = {c.get("id") for c in coco.get("categories", []) if isinstance(c, dict)} or {1}
    tags_by_name = _seq_tags(coco)

    # ---- images: ids, file names
    by_id: dict[int, dict] = {}
    id_count = collections.Counter()
    name_count = collections.Counter()
    parsed = []
    for k, im in enumerate(images):
        try:
            iid, fname = int(im["id"]), str(im["file_name"])
        except Exception as e:  # noqa: BLE001
            report.add("bad_json", json_path, f"images[{k}] lacks a valid id/file_name ({e!r})")
            report.skipped["image_entries"] += 1
            continue
        fname = fname.replace("\\", "/")
        while fname.startswith("./"):
            fname = fname[2:]
        seq, base = os.path.split(fname)
        if not seq or not FRAME_NAME.match(base):
            report.add("bad_file_name", f"{json_path}: image id {iid}",
                       f"file_name {fname!r} is not of the form '<sequence>/<n>.jpg' (n = 0, 1, ... without zero "
                       f"padding)")
            report.skipped["image_entries"] += 1
            continue
        id_count[iid] += 1
        name_count[fname] += 1
        parsed.append((iid, fname, seq, int(base[:-4]), im))
    dup_ids = {i for i, c in id_count.items() if c > 1}
    dup_names = {n for n, c in name_count.items() if c > 1}
    for i in sorted(dup_ids):
        report.add("duplicate_image_id", json_path, f"image id {i} is used by {id_count[i]} image entries")
    for n in sorted(dup_names):
        report.add("duplicate_file_name", json_path, f"file_name {n!r} is listed by {name_count[n]} image entries")
    bad_ids = set(dup_ids)
    for iid, fname, seq, num, im in parsed:
        if iid in dup_ids or fname in dup_names:
            report.skipped["image_entries"] += 1
            bad_ids.add(iid)
            continue
        by_id[iid] = dict(file_name=fname, seq=seq, num=num, width=im.get("width"), height=im.get("height"),
                          tag_name=im.get("sequence"))

    # ---- annotations
    boxes_by_id: dict[int, list] = collections.defaultdict(list)
    invalid_gt: set[int] = set()
    ann_ids = set()
    for k, a in enumerate(anns):
        where = f"{json_path}: annotations[{k}]"
        try:
            iid = int(a["image_id"])
            bbox = [float(v) for v in a["bbox"]]
            if len(bbox) != 4 or not all(np.isfinite(bbox)):
                raise ValueError(f"bbox {a['bbox']!r}")
        except Exception as e:  # noqa: BLE001
            report.add("bad_json", where, f"missing/invalid image_id or bbox ({e!r})")
            report.skipped["annotations"] += 1
            continue
        aid = a.get("id")
        if aid is not None:
            if aid in ann_ids:
                report.add("duplicate_annotation", where, f"annotation id {aid} is used more than once")
                report.skipped["annotations"] += 1
                continue
            ann_ids.add(aid)
        if iid not in by_id:
            if iid in bad_ids:  # already reported with its image entry
                report.skipped["annotations"] += 1
                continue
            report.add("unknown_image_id", where, f"annotation for image id {iid}, which is not in 'images'")
            report.skipped["annotations"] += 1
            continue
        cat = a.get("category_id", 1)
        if cat not in cat_ids:
            report.add("bad_category", where, f"category_id {cat!r} not in categories {sorted(cat_ids)}")
            invalid_gt.add(iid)
            continue
        boxes_by_id[iid].append((bbox, int(cat) - 1, where))

    # ---- sequences: json-listed frames plus frames found on disk
    seq_frames: dict[str, dict[int, Frame]] = collections.defaultdict(dict)
    listed: dict[str, set[int]] = collections.defaultdict(set)
    for iid, d in by_id.items():
        fr = Frame(number=d["num"], file_name=d["file_name"], image_id=iid, annotated=True,
                   width=int(d["width"] or 0), height=int(d["height"] or 0))
        seq_frames[d["seq"]][d["num"]] = fr
        listed[d["seq"]].add(d["num"])
    for name in tags_by_name:  # sequences named only in the `sequences` list
        if name not in seq_frames and os.path.isdir(os.path.join(root, name)):
            seq_frames[name] = {}
    for seq in list(seq_frames):
        d = os.path.join(root, seq)
        if not os.path.isdir(d):
            continue
        for entry in os.scandir(d):
            if not entry.is_file():
                continue
            m = FRAME_NAME.match(entry.name)
            if not m:
                report.info["ignored_files_in_sequence_folders"] += 1
                continue
            n = int(m.group(1))
            if n not in seq_frames[seq]:
                seq_frames[seq][n] = Frame(number=n, file_name=f"{seq}/{entry.name}")
                report.info["unannotated_frames"] += 1

    # ---- frame files: existence and decodability
    frames_all = [fr for seq in seq_frames.values() for fr in seq.values()]
    paths = [os.path.join(root, fr.file_name) for fr in frames_all]
    exists = [os.path.isfile(p) for p in paths]
    if check_images:
        results = list(pool.map(lambda p_e: _check_image(p_e[0], full_decode) if p_e[1] else (None, None),
                                zip(paths, exists)))
    else:
        results = [(None, None)] * len(paths)
    dropped: dict[str, set[int]] = collections.defaultdict(set)
    for fr, p, ok, (err, size) in zip(frames_all, paths, exists, results):
        seq = os.path.dirname(fr.file_name)
        if not ok:
            report.add("missing_frame", p, f"listed in the json (image id {fr.image_id}) but the file does not exist")
            dropped[seq].add(fr.number)
            continue
        if err is not None:
            report.add("corrupt_image", p, err)
            dropped[seq].add(fr.number)
            continue
        if size is not None:
            if fr.annotated and (fr.width, fr.height) != (0, 0) and (fr.width, fr.height) != tuple(size):
                report.add("size_mismatch", p, f"json says {fr.width}x{fr.height} (WxH), the file is "
                                               f"{size[0]}x{size[1]}")
                invalid_gt.add(fr.image_id)
            fr.width, fr.height = int(size[0]), int(size[1])
    report.info["frames_checked" if check_images else "frames_not_checked"] += len(frames_all)

    # ---- boxes (need the frame size)
    frame_by_id = {fr.image_id: fr for fr in frames_all if fr.annotated}
    for iid, items in boxes_by_id.items():
        fr = frame_by_id[iid]
        good = []
        for bbox, label, where in items:
            x, y, w, h = bbox
            msg = None
            if w <= 0 or h <= 0:
                msg = f"box {bbox} has non-positive size"
            elif fr.width and fr.height and (x < 0 or y < 0 or x + w > fr.width or y + h > fr.height):
                msg = f"box {bbox} (xywh) lies outside the {fr.width}x{fr.height} image {fr.file_name}"
            if msg:
                report.add("bad_box", where, msg)
                invalid_gt.add(iid)
            good.append((bbox, label))
        if good:
            fr.boxes_xywh = np.asarray([g[0] for g in good], np.float64).reshape(-1, 4)
            fr.labels = np.asarray([g[1] for g in good], np.int32)
    for iid in invalid_gt:
        fr = frame_by_id.get(iid)
        if fr is not None and fr.annotated:
            fr.annotated = False
            fr.image_id = -1
            fr.boxes_xywh = np.zeros((0, 4), np.float64)
            fr.labels = np.zeros((0,), np.int32)
            report.skipped["frames_marked_unannotated"] += 1

    # ---- contiguity, segments, lengths
    sequences = []
    for seq in sorted(seq_frames, key=natural_key):
        frames = seq_frames[seq]
        numbers = sorted(frames)
        if not numbers:
            report.add("short_sequence", os.path.join(root, seq), "sequence has no frames")
            continue
        present = set(numbers)
        # gaps: numbers missing from 0..max that were never listed anywhere (listed-but-missing is reported above)
        absent = [n for n in range(0, numbers[-1] + 1) if n not in present]
        if absent:
            report.add("frame_gap", os.path.join(root, seq),
                       f"frame numbers are not contiguous from 0: missing {_ranges(absent)} (of 0..{numbers[-1]})")
        usable = [n for n in numbers if n not in dropped[seq]]
        if len(usable) < len(numbers):
            report.skipped["frames"] += len(numbers) - len(usable)
        segments, cur = [], []
        for n in usable:
            if cur and n != cur[-1] + 1:
                segments.append(cur)
                cur = []
            cur.append(n)
        if cur:
            segments.append(cur)
        if len(segments) > 1:
            report.info["sequences_split_into_segments"] += 1
        tags = tags_by_name.get(seq) or tags_by_name.get(os.path.basename(seq)) or {}
        if not tags:
            tag_names = {by_id[f.image_id]["tag_name"] for f in frames.values() if f.annotated and f.image_id in by_id}
            tag_names.discard(None)
            if len(tag_names) == 1:
                tags = tags_by_name.get(str(tag_names.pop()), {})
        for seg in segments:
            label = seq if len(segments) == 1 else f"{seq} (frames {seg[0]}..{seg[-1]})"
            if len(seg) < min_len:
                if len(segments) == 1 and len(usable) == len(numbers) and not absent:
                    report.add("short_sequence", os.path.join(root, seq),
                               f"{label} has {len(seg)} frame(s), fewer than the clip length T = {min_len}")
                else:  # a piece left by a gap / skipped frames: the cause is already reported
                    report.info["short_segments_after_split"] += 1
                report.skipped["frames"] += len(seg)
                report.skipped["sequences"] += 1
                continue
            sequences.append(Sequence(name=seq, frames=[frames[n] for n in seg], tags=dict(tags)))
    if not any(f.annotated for s in sequences for f in s.frames):
        what = "no usable frames" if not sequences else "no annotated frames (no ground truth)"
        report.add("empty_split", json_path, f"split {split!r} has {what}")
        report.skipped["splits"] += 1
        return None
    return Split(name=split, json_path=json_path, sequences=sequences)


def _ranges(nums: list[int]) -> str:
    out, start, prev = [], None, None
    for n in nums:
        if start is None:
            start = prev = n
        elif n == prev + 1:
            prev = n
        else:
            out.append(f"{start}" if start == prev else f"{start}..{prev}")
            start = prev = n
    out.append(f"{start}" if start == prev else f"{start}..{prev}")
    s = ", ".join(out[:10])
    return s + (f", ... ({len(out)} ranges)" if len(out) > 10 else "")


def layout_summary(layout: Layout) -> dict[str, Any]:
    """Per-split counts (frames, sequences, annotated, positive, boxes, max boxes per frame)."""
    out = {}
    for name, sp in layout.splits.items():
        frames = [f for s in sp.sequences for f in s.frames]
        nb = [len(f.boxes_xywh) for f in frames]
        out[name] = dict(sequences=len(sp.sequences), frames=len(frames),
                         annotated=sum(f.annotated for f in frames),
                         positive=sum(1 for f, n in zip(frames, nb) if f.annotated and n > 0),
                         boxes=int(sum(nb)), max_boxes_per_frame=int(max(nb, default=0)))
    return out


def write_example_layout(
    root: str | os.PathLike,
    sequences: dict[str, dict[str, int]] | None = None,
    *,
    size_wh: tuple[int, int] = (64, 48),
    boxes_per_frame=None,
    unlisted_frames: dict[str, list[int]] | None = None,
    seed: int = 0,
) -> str:
    """Write a small release-layout folder with solid-colour JPEG frames (for tests and examples).

    sequences: {split: {sequence_name: num_frames}} (default: train with 2 sequences, test with 1).
    boxes_per_frame(split, seq, n) -> list of COCO [x, y, w, h] (default: one box on odd frames, none on even).
    unlisted_frames: {"<split>/<seq>": [n, ...]} frames written to disk but left out of the json.
    Frame colours are unique per (split, sequence, frame) so tests can tell frames apart. Returns root.
    """
    from PIL import Image

    root = os.fspath(root)
    sequences = sequences or {"train": {"seq_a": 7, "seq_b": 6}, "test": {"seq_c": 5}}
    unlisted = {k: set(v) for k, v in (unlisted_frames or {}).items()}
    rng = np.random.default_rng(seed)
    w, h = size_wh

    def default_boxes(split, seq, n):
        if n % 2 == 0:
            return []
        bw, bh = int(rng.integers(4, w // 3)), int(rng.integers(4, h // 3))
        return [[float(rng.integers(0, w - bw)) + 0.25, float(rng.integers(0, h - bh)) + 0.5, bw + 0.125, bh * 1.0]]

    boxes_fn = boxes_per_frame or default_boxes
    image_id, ann_id, colour = 1, 1, 0
    for split, seqs in sequences.items():
        images, anns, seq_list = [], [], []
        for s_i, (seq, n_frames) in enumerate(seqs.items()):
            d = os.path.join(root, split, seq)
            os.makedirs(d, exist_ok=True)
            seq_list.append(dict(name=f"{split}/{seq}", view=("top-down", "bottom-up")[s_i % 2], light="noon",
                                 weather="clear", speed=str(1.5 + s_i)))
            for n in range(n_frames):
                colour += 1
                rgb = ((colour * 37) % 256, (colour * 91) % 256, (colour * 53) % 256)
                Image.new("RGB", (w, h), rgb).save(os.path.join(d, f"{n}.jpg"), quality=95)
                if n in unlisted.get(f"{split}/{seq}", ()):
                    continue
                images.append(dict(id=image_id, file_name=f"{split}/{seq}/{n}.jpg", width=w, height=h,
                                   sequence=f"{split}/{seq}", frame_index=n))
                for box in boxes_fn(split, seq, n):
                    anns.append(dict(id=ann_id, image_id=image_id, category_id=1, bbox=list(box),
                                     area=box[2] * box[3], iscrowd=0))
                    ann_id += 1
                image_id += 1
        ad = os.path.join(root, "annotations", split)
        os.makedirs(ad, exist_ok=True)
        with open(os.path.join(ad, "coco.json"), "w") as f:
            json.dump(dict(images=images, annotations=anns, categories=[dict(id=1, name="crack")],
                           sequences=seq_list), f)
    return root
