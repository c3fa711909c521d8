"""Read and validate a BeltCrack release-layout folder (real download or synthetic).

Layout (spec §4)::

    ROOT/annotations/<split>/coco.json          (or the only *.json in that folder)
    ROOT/<file_name>                            file_name = <sequence dir>/<n>.jpg, n = 0, 1, ... (no zero padding)

COCO: `images` (id, file_name, width, height, optional sequence / frame_index), `annotations` (id, image_id,
category_id = 1, bbox [x, y, w, h] original px), `categories` [{id: 1, name: 'crack'}], optional top-level
`sequences` [{name, view, light, weather, speed, ...}]. The sequence of a frame is the directory part of its
file_name. Frames on disk but not in the json are *unannotated* frames (history only); a frame in the json with
no annotation is an *annotated negative*.

`read_layout` runs every check and raises `LayoutError` listing every problem, or with `skip_invalid=True` skips
the bad items and counts them in `Layout.report`. These are the only checks: the validator CLI and the TFDS
builder (hence the training pipeline's build) call them. The problem codes, what each means and what a skip
drops are listed in `beltcrack_jax.data.problems.PROBLEMS`. One fault gives one problem: the annotations of a
rejected image entry, or the frames of a missing sequence folder, are counted, not reported again one by one.
The json of a split is read by `coco_entries`; this module checks the folders and frame files and cuts the
sequences into contiguous segments.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import os
import posixpath
import re
from typing import Any

import numpy as np

from beltcrack_jax.data import coco_entries
from beltcrack_jax.data import release_paths as paths
from beltcrack_jax.data.frame_check import check_frame_file
from beltcrack_jax.data.problems import PROBLEM_KINDS, PROBLEMS, LayoutError, Problem, Report  # noqa: F401

FRAME_NAME = paths.FRAME_NAME
TAG_KEYS = coco_entries.TAG_KEYS


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

    check_images: open every frame (full decode unless full_decode=False: header, mode and end marker only).
    Raises LayoutError listing every problem unless skip_invalid (then bad items are skipped and counted in
    `layout.report.skipped`). Nothing is ever dropped without being reported. A folder that is not a release
    layout at all (no annotations/ folder, no split folders) raises FileNotFoundError.
    """
    layout = _read(os.fspath(root), min_sequence_length, check_images, full_decode, num_threads, splits)
    if layout.report.problems and not skip_invalid:
        raise LayoutError(layout.report)
    return layout


def validate(root: str | os.PathLike, **kwargs) -> Report:
    """Every problem in a release-layout folder (never raises for data problems). kwargs as `read_layout`."""
    kwargs.pop("skip_invalid", None)
    return read_layout(root, skip_invalid=True, **kwargs).report


def _read(root, min_len, check_images, full_decode, num_threads, only_splits) -> Layout:
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
        loose = sorted(f for f in os.listdir(ann_root) if f.endswith(".json"))
        hint = (f"; found {loose[:3]} directly in it: move each to annotations/<split>/coco.json, e.g. "
                f"annotations/{os.path.splitext(loose[0])[0]}/coco.json") if loose else ""
        raise FileNotFoundError(f"no split folders under {ann_root} (expected annotations/<split>/coco.json){hint}")

    root_real = os.path.realpath(root)
    splits: dict[str, Split] = {}
    referenced: set[str] = set()
    pool = concurrent.futures.ThreadPoolExecutor(max(1, num_threads)) if check_images else None
    try:
        for split in split_names:
            s = _read_split(root, root_real, split, report, min_len, check_images, full_decode, pool, referenced)
            if s is not None:
                splits[split] = s
            else:
                report.dropped_splits.append(split)
    finally:
        if pool is not None:
            pool.shutdown()
    report.info["frames_kept"] = sum(sp.num_frames for sp in splits.values())
    _note_unreferenced_folders(root, referenced, report)
    return Layout(root=root, splits=splits, report=report)


def _note_unreferenced_folders(root: str, referenced: set[str], report: Report) -> None:
    """Folders of frames no split's json mentions (e.g. a json older than the frames): counted, not an error."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root).replace(os.sep, "/")
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not (rel == "." and d == "annotations"))
        if rel != "." and rel not in referenced and any(FRAME_NAME.match(f) for f in filenames):
            found.append(rel)
    if found:
        report.info["unreferenced_frame_folders"] = len(found)
        report.notes.append(f"{len(found)} folder(s) of frames are not named by any split's json (not read): "
                            + ", ".join(found[:5]) + (" ..." if len(found) > 5 else ""))


# ---------------------------------------------------------------------------------------------------------------
# one split


def _read_split(root, root_real, split, report, min_len, check_images, full_decode, pool, referenced) -> Split | None:
    ann_dir = os.path.join(root, "annotations", split)
    json_path, why = coco_entries.find_json(ann_dir)
    if json_path is None:
        report.add("bad_json", ann_dir, why)
        report.skipped["splits"] += 1
        return None
    ctx = coco_entries.SplitContext(root, root_real, split, json_path, report)
    coco, why = coco_entries.load_json(json_path)
    if coco is None:
        ctx.add("bad_json", why)
        report.skipped["splits"] += 1
        return None
    cat_ids = coco_entries.category_ids(coco, ctx)
    if cat_ids is None:
        report.skipped["splits"] += 1
        return None
    tags_by_name = coco_entries.sequence_tags(coco, ctx)
    entries, rejected_ids, rejected_raw = coco_entries.parse_images(coco["images"], ctx)
    boxes_by_id, invalid_gt = coco_entries.parse_annotations(coco["annotations"], ctx, entries, rejected_ids,
                                                             rejected_raw, cat_ids)
    seq_frames, dropped = _collect_frames(ctx, entries, tags_by_name)
    referenced.update(seq_frames)
    frames_all = [fr for seq in seq_frames.values() for fr in seq.values()]
    _check_frame_files(ctx, frames_all, dropped, invalid_gt, check_images, full_decode, pool)
    _attach_boxes(ctx, frames_all, boxes_by_id, invalid_gt)
    sequences = _sequences(ctx, seq_frames, dropped, entries, tags_by_name, min_len)
    if not any(f.annotated for s in sequences for f in s.frames):
        what = "no usable frames" if not sequences else "no annotated frames (no ground truth)"
        ctx.add("empty_split", f"split {split!r} has {what}")
        report.skipped["splits"] += 1
        return None
    return Split(name=split, json_path=json_path, sequences=sequences)


def _collect_frames(ctx: coco_entries.SplitContext, entries: dict[int, coco_entries.ImageEntry],
                    tags_by_name) -> tuple[dict, dict]:
    """json-listed frames plus frames found on disk, per sequence folder -> (frames, dropped frame numbers)."""
    report, root = ctx.report, ctx.root
    seq_frames: dict[str, dict[int, Frame]] = collections.defaultdict(dict)
    for iid, e in entries.items():
        seq_frames[e.sequence][e.number] = Frame(number=e.number, file_name=e.file_name, image_id=iid,
                                                 annotated=True, width=e.width, height=e.height)
    for name in tags_by_name:  # sequences named only in the `sequences` list
        if name not in seq_frames and os.path.isdir(os.path.join(root, name)):
            seq_frames[name] = {}
    dropped: dict[str, set[int]] = collections.defaultdict(set)
    for seq in list(seq_frames):
        d = os.path.join(root, seq)
        listed = len(seq_frames[seq])
        if not os.path.isdir(d):
            # one problem for the folder, not one per frame
            ctx.add("missing_frame", f"sequence folder does not exist; the json lists {listed} frame(s) in it"
                                     f"{paths.missing_folder_hint(root, seq, ctx.split)}",
                    path=d)
            dropped[seq].update(seq_frames[seq])
            continue
        outside = paths.outside_root(ctx.root_real, d)
        if outside:
            ctx.add("path_escape", f"sequence folder is a link to {outside}, outside the release root "
                                   f"({listed} frame(s) listed); expected frames inside the root", path=d)
            dropped[seq].update(seq_frames[seq])
            continue
        try:
            listing = list(os.scandir(d))
        except OSError as e:
            ctx.add("missing_frame", f"cannot list the sequence folder ({type(e).__name__}: {e}); {listed} frame(s) "
                                     f"listed in it", path=d)
            dropped[seq].update(seq_frames[seq])
            continue
        ignored = []
        for entry in listing:
            if not entry.is_file():
                continue
            m = FRAME_NAME.match(entry.name)
            if not m:
                ignored.append(entry.name)
                continue
            n = int(m.group(1))
            if n not in seq_frames[seq]:
                seq_frames[seq][n] = Frame(number=n, file_name=f"{seq}/{entry.name}")
                report.info["unannotated_frames"] += 1
        if ignored:
            report.info["ignored_files_in_sequence_folders"] += len(ignored)
            if len(report.notes) < 20:
                report.notes.append(f"{d}: {len(ignored)} file(s) not named <n>.jpg are ignored, e.g. "
                                    f"{sorted(ignored)[:3]}")
    return seq_frames, dropped


def _check_frame_files(ctx: coco_entries.SplitContext, frames_all, dropped, invalid_gt, check_images, full_decode,
                       pool) -> None:
    """Existence, location and (check_images) decodability / mode / size of every frame not already dropped."""
    report, root = ctx.report, ctx.root
    todo = [fr for fr in frames_all if fr.number not in dropped[posixpath.dirname(fr.file_name)]]
    paths_ = [os.path.join(root, fr.file_name) for fr in todo]
    exists = [os.path.isfile(p) for p in paths_]

    def check(i):
        if not exists[i]:
            return None
        if os.path.islink(paths_[i]) and paths.outside_root(ctx.root_real, paths_[i]):
            return "escape"
        return check_frame_file(paths_[i], full_decode) if check_images else None

    results = list(pool.map(check, range(len(todo)))) if pool is not None else [check(i) for i in range(len(todo))]
    for fr, p, ok, res in zip(todo, paths_, exists, results):
        seq = posixpath.dirname(fr.file_name)
        if not ok:
            ctx.add("missing_frame", f"listed in the json (image id {fr.image_id}) but the file does not exist"
                                     f"{paths.missing_hint(root, fr.file_name, ctx.split)}", path=p)
            dropped[seq].add(fr.number)
            continue
        if res == "escape":
            ctx.add("path_escape", f"is a link to {os.path.realpath(p)}, outside the release root; expected a "
                                   f"frame inside it", path=p)
            dropped[seq].add(fr.number)
            continue
        if res is None:
            continue
        if res.kind is not None:
            ctx.add(res.kind, res.message, path=p)
            dropped[seq].add(fr.number)
            continue
        if res.format != "JPEG":
            report.info["frames_not_jpeg_inside"] += 1
        w, h = res.size_wh
        if fr.annotated and (fr.width, fr.height) != (0, 0) and (fr.width, fr.height) != (w, h):
            ctx.add("size_mismatch", f"the json says {fr.width}x{fr.height} (WxH) for image id {fr.image_id}, the "
                                     f"file is {w}x{h}", path=p)
            invalid_gt.add(fr.image_id)
        fr.width, fr.height = w, h
    report.info["frames_checked" if check_images else "frames_not_checked"] += len(todo)


def _attach_boxes(ctx: coco_entries.SplitContext, frames_all, boxes_by_id, invalid_gt) -> None:
    """Boxes onto their frames (geometry checked against the frame size); bad ground truth -> frame unannotated."""
    frame_by_id = {fr.image_id: fr for fr in frames_all if fr.annotated}
    for iid, items in boxes_by_id.items():
        fr = frame_by_id[iid]
        for (x, y, w, h), _, where in items:
            msg = None
            if w <= 0 or h <= 0:
                msg = f"box {[x, y, w, h]} has non-positive size; expected w > 0 and h > 0"
            elif fr.width and fr.height and (x < 0 or y < 0 or x + w > fr.width or y + h > fr.height):
                msg = (f"box {[x, y, w, h]} (xywh) lies outside the {fr.width}x{fr.height} image {fr.file_name}; "
                       f"expected 0 <= x, x + w <= {fr.width}, 0 <= y, y + h <= {fr.height}")
            if msg:
                ctx.add("bad_box", msg, f"{where}.bbox")
                invalid_gt.add(iid)
        fr.boxes_xywh = np.asarray([b for b, _, _ in items], np.float64).reshape(-1, 4)
        fr.labels = np.asarray([lab for _, lab, _ in items], np.int32)
    for iid in invalid_gt:
        fr = frame_by_id.get(iid)
        if fr is not None and fr.annotated:
            fr.annotated = False
            fr.image_id = -1
            fr.boxes_xywh = np.zeros((0, 4), np.float64)
            fr.labels = np.zeros((0,), np.int32)
            ctx.report.skipped["frames_marked_unannotated"] += 1


def _missing_ranges(numbers: list[int]) -> list[tuple[int, int]]:
    """Gaps in sorted, distinct frame numbers counted from 0, as inclusive (first, last) ranges."""
    out, expect = [], 0
    for n in numbers:
        if n > expect:
            out.append((expect, n - 1))
        expect = n + 1
    return out


def _format_ranges(ranges: list[tuple[int, int]]) -> str:
    s = ", ".join(str(a) if a == b else f"{a}..{b}" for a, b in ranges[:10])
    return s + (f", ... ({len(ranges)} ranges)" if len(ranges) > 10 else "")


def _sequences(ctx: coco_entries.SplitContext, seq_frames, dropped, entries, tags_by_name, min_len) -> list[Sequence]:
    """Contiguous segments of usable frames per sequence folder, at least `min_len` long."""
    report, root = ctx.report, ctx.root
    sequences = []
    for seq in sorted(seq_frames, key=natural_key):
        frames = seq_frames[seq]
        numbers = sorted(frames)
        if not numbers:
            ctx.add("short_sequence", "sequence has no frames", path=os.path.join(root, seq))
            continue
        # gaps: numbers never listed nor found (a listed-but-missing frame is reported on its own)
        gaps = _missing_ranges(numbers)
        if gaps:
            ctx.add("frame_gap", f"frame numbers are not contiguous from 0: missing {_format_ranges(gaps)} "
                                 f"(of 0..{numbers[-1]})", path=os.path.join(root, seq))
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
            tag_names = {entries[f.image_id].tag_name for f in frames.values() if f.annotated and f.image_id in entries}
            tag_names.discard(None)
            if len(tag_names) == 1:
                tags = tags_by_name.get(tag_names.pop(), {})
        for seg in segments:
            label = seq if len(segments) == 1 else f"{seq} (frames {seg[0]}..{seg[-1]})"
            if len(seg) < min_len:
                if len(segments) == 1 and len(usable) == len(numbers) and not gaps:
                    ctx.add("short_sequence", f"{label} has {len(seg)} frame(s), fewer than the clip length "
                                              f"T = {min_len}", path=os.path.join(root, seq))
                else:  # a piece left by a gap / skipped frames: the cause is already reported
                    report.info["short_segments_after_split"] += 1
                report.skipped["frames"] += len(seg)
                report.skipped["sequences"] += 1
                continue
            sequences.append(Sequence(name=seq, frames=[frames[n] for n in seg], tags=dict(tags)))
    return sequences


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
