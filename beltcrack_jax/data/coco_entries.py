"""One split's COCO json, read strictly: the file itself, its categories and sequence tags, its image entries and
annotations, each accepted or reported (with its json path) and rejected. Used by `layout.read_layout`.

A rejected image entry takes its annotations with it without further problems (also when its id was unreadable:
what the id most likely meant is remembered); an annotation with a problem leaves its frame unannotated rather
than with part of its boxes.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import posixpath

from beltcrack_jax.data import coco_fields as F
from beltcrack_jax.data import release_paths as paths
from beltcrack_jax.data.problems import Report

TAG_KEYS = ("view", "light", "weather", "speed")


@dataclasses.dataclass(frozen=True)
class SplitContext:
    """Where the checks of one split are: the release root (as given and resolved), the split and its json."""

    root: str
    root_real: str
    split: str
    json_path: str
    report: Report

    def add(self, kind: str, message: str, where: str = "", path: str | None = None) -> None:
        self.report.add(kind, self.json_path if path is None else path, message, where)


def find_json(ann_dir: str) -> tuple[str | None, str]:
    p = os.path.join(ann_dir, "coco.json")
    if os.path.isfile(p):
        return p, ""
    cands = sorted(f for f in os.listdir(ann_dir) if f.endswith(".json"))
    if len(cands) == 1:
        return os.path.join(ann_dir, cands[0]), ""
    found = f"found {cands}" if cands else "found none"
    return None, f"expected coco.json (or exactly one *.json) in this folder; {found}"


def load_json(path: str) -> tuple[dict | None, str]:
    """The COCO dict, or None and why not. UTF-8 (with or without BOM), UTF-16/32 and CRLF line ends are fine."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return None, f"cannot read the file ({type(e).__name__}: {e})"
    if not data.strip():
        return None, "empty file: expected a COCO json object"
    try:
        coco = json.loads(data)  # detects the UTF encoding and skips a byte-order mark
    except UnicodeDecodeError as e:
        return None, f"not UTF-8/16/32 text ({e}); save the json as UTF-8"
    except json.JSONDecodeError as e:
        cut = " - the file ends early (truncated copy?)" if e.pos >= len(data.rstrip()) - 1 else ""
        return None, f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}{cut}"
    if not isinstance(coco, dict):
        return None, f"the top level is {F.describe(coco)[:40]}...; expected a COCO object {{images, annotations, ...}}"
    for key in ("images", "annotations"):
        if key not in coco:
            extra = ' (a split without boxes must still say "annotations": [])' if key == "annotations" else ""
            return None, f"has no {key!r} list; expected a COCO object with 'images' and 'annotations'{extra}"
        if not isinstance(coco[key], list):
            return None, f"{key!r} is {F.describe(coco[key])}; expected a list"
    return coco, ""


def category_ids(coco: dict, ctx: SplitContext) -> set[int] | None:
    """Category ids the annotations may use ({1} when the json lists none); None if 'categories' is unusable."""
    cats = coco.get("categories", [])
    if cats is None:
        cats = []
    if not isinstance(cats, list):
        ctx.add("bad_json", f"'categories' is {F.describe(cats)}; expected a list of {{id, name}} objects")
        return None
    ids = set()
    for k, c in enumerate(cats):
        raw = c.get("id", F.MISSING) if isinstance(c, dict) else c
        try:
            if not isinstance(c, dict):
                raise F.FieldError(f"is {F.describe(c)}; expected an object {{id, name}}")
            ids.add(F.category_id(raw))
        except F.FieldError as e:
            ctx.add("bad_entry", f"{'id ' if isinstance(c, dict) else ''}{e}", f"categories[{k}]"
                    + (".id" if isinstance(c, dict) else ""))
    return ids or {1}


def sequence_tags(coco: dict, ctx: SplitContext) -> dict[str, dict[str, str]]:
    seqs = coco.get("sequences", [])
    if seqs is None:
        return {}
    if not isinstance(seqs, list):
        ctx.add("bad_entry", f"is {F.describe(seqs)}; expected a list of {{name, view, light, weather, speed}}",
                "sequences")
        return {}
    out = {}
    for k, s in enumerate(seqs):
        if not isinstance(s, dict) or not isinstance(s.get("name"), str) or not s["name"]:
            got = F.describe(s.get("name", F.MISSING)) if isinstance(s, dict) else F.describe(s)
            ctx.add("bad_entry", f"is {got}; expected an object with a string 'name' (its tags are not used)",
                    f"sequences[{k}]" + (".name" if isinstance(s, dict) else ""))
            continue
        tags = {}
        for key in TAG_KEYS:
            v = s.get(key)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (str, int, float)):
                ctx.add("bad_entry", f"is {F.describe(v)}; expected a string or a number (tag left out)",
                        f"sequences[{k}].{key}")
                continue
            tags[key] = str(v)
        out[s["name"]] = tags
    return out


@dataclasses.dataclass(frozen=True)
class ImageEntry:
    """An accepted image entry."""

    image_id: int
    file_name: str      # normalised, relative to ROOT
    sequence: str       # directory part of file_name
    number: int         # n of <n>.jpg
    width: int          # 0 = not given
    height: int
    tag_name: str | None


def parse_images(images: list, ctx: SplitContext) -> tuple[dict[int, ImageEntry], set[int], set[str]]:
    """-> (accepted entries by id, ids of rejected entries, json keys of ids that could not be read).

    The rejected ids include what an unreadable id most likely meant ('4', [4]), so that the annotations naming
    it are recognised as belonging to the rejected entry instead of being reported again as unknown ids."""
    report = ctx.report
    parsed: list[ImageEntry] = []
    rejected_ids: set[int] = set()
    meant_ids: set[int] = set()
    rejected_raw: set[str] = set()
    id_at: dict[int, list[int]] = collections.defaultdict(list)     # id -> indices of the entries using it
    name_at: dict[str, list[int]] = collections.defaultdict(list)
    for k, im in enumerate(images):
        where = f"images[{k}]"
        if not isinstance(im, dict):
            ctx.add("bad_entry", f"is {F.describe(im)}; expected an object {{id, file_name, width, height}}", where)
            report.skipped["image_entries"] += 1
            continue
        ok = True
        raw_id = im.get("id", F.MISSING)
        try:
            iid = F.image_id(raw_id)
            id_at[iid].append(k)
        except F.FieldError as e:
            ctx.add("bad_entry", f"id {e}", f"{where}.id")
            iid, ok = None, False
            rejected_raw.add(F.value_key(raw_id))
            if F.intended_int(raw_id) is not None:
                meant_ids.add(F.intended_int(raw_id))
        label = f"{where}.file_name" + (f" (image id {iid})" if iid is not None else "")
        try:
            name = paths.normalise(F.text(im.get("file_name", F.MISSING),
                                          expected="a string '<sequence dir>/<n>.jpg'"))
            escape = paths.escape_problem(name)
            if escape:
                ctx.add("path_escape", f"file_name {im['file_name']!r} {escape}", label)
                ok = False
            else:
                bad = paths.frame_name_problem(name)
                if bad:
                    ctx.add("bad_file_name", f"file_name {im['file_name']!r} {bad}", label)
                    ok = False
        except F.FieldError as e:
            ctx.add("bad_entry", f"file_name {e}", label)
            name, ok = None, False
        size = {}
        for key in ("width", "height"):
            v = im.get(key)
            if v is None:  # absent: the size is taken from the frame file
                size[key] = 0
                continue
            try:
                size[key] = F.frame_size(v)
            except F.FieldError as e:
                ctx.add("bad_entry", f"{key} {e}", f"{where}.{key}")
                ok = False
        if not ok:
            report.skipped["image_entries"] += 1
            if iid is not None:
                rejected_ids.add(iid)
            continue
        tag = im.get("sequence")
        name_at[name].append(k)
        parsed.append(ImageEntry(iid, name, posixpath.dirname(name), paths.frame_number(name), size["width"],
                             size["height"], tag if isinstance(tag, str) else None))
    dup_ids = {i for i, at in id_at.items() if len(at) > 1}
    dup_names = {n for n, at in name_at.items() if len(at) > 1}

    def entries_at(at):
        return ", ".join(f"images[{k}]" for k in at[:5]) + (" ..." if len(at) > 5 else "")

    for i in sorted(dup_ids):
        ctx.add("duplicate_image_id", f"image id {i} is used by {len(id_at[i])} image entries ({entries_at(id_at[i])})"
                                      f"; expected unique ids")
    for n in sorted(dup_names):
        ctx.add("duplicate_file_name", f"file_name {n!r} is listed by {len(name_at[n])} image entries "
                                       f"({entries_at(name_at[n])}, after normalising slashes); expected each "
                                       f"frame once")
    entries: dict[int, ImageEntry] = {}
    for e in parsed:
        if e.image_id in dup_ids or e.file_name in dup_names:
            report.skipped["image_entries"] += 1
            rejected_ids.add(e.image_id)
            continue
        entries[e.image_id] = e
    rejected_ids |= dup_ids | (meant_ids - set(entries))
    return entries, rejected_ids, rejected_raw


def parse_annotations(anns: list, ctx: SplitContext, entries: dict[int, ImageEntry], rejected_ids: set[int],
                       rejected_raw: set[str], cat_ids: set[int]):
    """-> (boxes by image id: [(xywh, label, where)], image ids whose ground truth is unusable)."""
    report = ctx.report
    boxes_by_id: dict[int, list] = collections.defaultdict(list)
    invalid_gt: set[int] = set()
    by_ann_id: dict[int, tuple] = {}
    by_box: dict[tuple, int] = {}
    for k, a in enumerate(anns):
        where = f"annotations[{k}]"
        if not isinstance(a, dict):
            ctx.add("bad_entry", f"is {F.describe(a)}; expected an object {{id, image_id, category_id, bbox}}",
                    where)
            report.skipped["annotations"] += 1
            continue
        raw_iid = a.get("image_id", F.MISSING)
        try:
            iid = F.image_id(raw_iid)
        except F.FieldError as e:
            if F.value_key(raw_iid) not in rejected_raw:
                ctx.add("bad_entry", f"image_id {e}", f"{where}.image_id")
                meant = F.intended_int(raw_iid)
                if meant in entries:  # the frame it most likely belongs to lost a box: its ground truth is partial
                    invalid_gt.add(meant)
            else:  # its image entry was rejected for this very id: already reported there
                report.info["annotations_of_rejected_images"] += 1
            report.skipped["annotations"] += 1
            continue
        if iid in rejected_ids:  # the image entry was reported and skipped; its annotations go with it
            report.info["annotations_of_rejected_images"] += 1
            report.skipped["annotations"] += 1
            continue
        if iid not in entries:
            ctx.add("unknown_image_id", f"annotation for image id {iid}, which no entry of 'images' has", where)
            report.skipped["annotations"] += 1
            continue
        try:
            aid = F.annotation_id(a["id"]) if a.get("id") is not None else None
        except F.FieldError as e:
            ctx.add("bad_entry", f"id {e}", f"{where}.id")
            invalid_gt.add(iid)
            continue
        try:
            cat = F.category_id(a.get("category_id", 1))
            if cat not in cat_ids:
                raise F.FieldError(f"is {cat}, which 'categories' does not list; expected one of {sorted(cat_ids)}")
        except F.FieldError as e:
            ctx.add("bad_category", f"category_id {e}", f"{where}.category_id")
            invalid_gt.add(iid)
            continue
        try:
            box = F.box_xywh(a.get("bbox", F.MISSING))
        except F.FieldError as e:
            ctx.add("bad_box", f"bbox {e}", f"{where}.bbox")
            invalid_gt.add(iid)
            continue
        content = (iid, box, cat)
        if aid is not None:
            if aid in by_ann_id:
                j, first = by_ann_id[aid]
                if first == content:
                    ctx.add("duplicate_annotation", f"annotation id {aid} repeats annotations[{j}] exactly "
                                                    f"(the copy is dropped); expected unique ids", where)
                    report.skipped["annotations"] += 1
                else:
                    ctx.add("duplicate_annotation", f"annotation id {aid} is also used by annotations[{j}] with "
                                                    f"other contents; expected unique ids", where)
                    invalid_gt.update({iid, first[0]})
                continue
            by_ann_id[aid] = (k, content)
        if content in by_box:
            ctx.add("duplicate_box", f"image id {iid} already has this box {list(box)} (annotations[{by_box[content]}]"
                                     f"); the copy is dropped", where)
            report.skipped["annotations"] += 1
            continue
        by_box[content] = k
        boxes_by_id[iid].append((box, cat - 1, where))
    return boxes_by_id, invalid_gt
