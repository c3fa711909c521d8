"""Fingerprints: of a release folder (is it still what a build read?) and of a built split (what a run trained on).

release_fingerprint(root): the contents of every annotation json plus the list of every other file with its size,
hashed per folder (so a difference can be named) and overall. Cheap: one directory walk and the json bytes; frame
pixels are not read, so an edit that keeps a frame's byte size is not seen (a copy cut short or a frame replaced by
another file almost always changes the size). Hidden files (names starting with '.') are left out.

dataset_fingerprint(metadata, split): the built split's record index (file names, ids, boxes, sizes, order) plus
the release fingerprint it was built from; saved with each checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def release_fingerprint(root: str | os.PathLike) -> dict:
    """{'sha256', 'files', 'bytes', 'parts': {folder or json file (relative): sha256[:16]}}."""
    root = os.fspath(root)
    parts: dict[str, str] = {}
    files = total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = os.path.relpath(dirpath, root).replace(os.sep, "/")
        listing = []
        for name in sorted(f for f in filenames if not f.startswith(".")):
            path = os.path.join(dirpath, name)
            try:
                size = os.stat(path).st_size
            except OSError:  # a dangling symlink: part of the listing, with no size
                size = -1
            files += 1
            total += max(size, 0)
            rel = f"{rel_dir}/{name}" if rel_dir != "." else name
            if rel.startswith("annotations/") and name.endswith(".json"):
                with open(path, "rb") as f:
                    parts[rel] = hashlib.sha256(f.read()).hexdigest()[:16]
            else:
                listing.append(f"{name}\t{size}")
        if listing:
            parts[rel_dir] = _sha("\n".join(listing))[:16]
    overall = _sha(json.dumps(parts, sort_keys=True))
    return {"sha256": overall, "files": files, "bytes": total, "parts": parts}


def describe_difference(stored: dict, current: dict, max_items: int = 8) -> str:
    """Which folders / json files differ between two release fingerprints, as a short sentence."""
    a, b = stored.get("parts", {}), current.get("parts", {})
    changed = sorted(k for k in set(a) & set(b) if a[k] != b[k])
    added, removed = sorted(set(b) - set(a)), sorted(set(a) - set(b))
    out = []
    for label, items in (("changed", changed), ("new", added), ("gone", removed)):
        if items:
            out.append(f"{label}: {', '.join(items[:max_items])}{' ...' if len(items) > max_items else ''}")
    counts = (f"files {stored.get('files')} -> {current.get('files')}, "
              f"bytes {stored.get('bytes')} -> {current.get('bytes')}")
    return ("; ".join(out) or "contents differ") + f" ({counts})"


def dataset_fingerprint(metadata, split: str) -> str:
    """sha256 of one built split's record index and of the release fingerprint it was built from."""
    md = dict(metadata or {})
    index = (md.get("splits") or {}).get(split)
    if index is None:
        raise ValueError(f"split {split!r} is not in the dataset's metadata "
                         f"(available: {sorted(md.get('splits') or [])})")
    release = (md.get("release_fingerprint") or {}).get("sha256", "")
    return _sha(json.dumps({"split": split, "index": index, "release": release}, sort_keys=True, default=str))
