"""File names of a release resolved inside its root: normal form, escape checks, frame-name form, missing-file hints.

A json `file_name` is relative to the release root. Anything that leads outside the root (an absolute path, a
'..' that climbs above it, a symlink pointing out of it) is refused: frames from elsewhere must never end up in the
records. The reference loader rebuilds neighbour frames as "%d.jpg", so frame files are '<sequence dir>/<n>.jpg'.
"""

from __future__ import annotations

import os
import posixpath
import re

from beltcrack_jax.data.coco_fields import INT32_MAX

FRAME_NAME = re.compile(r"^(0|[1-9][0-9]*)\.jpg$")
_ANY_FRAME_LIKE = re.compile(r"^(?P<num>[0-9]+)\.(?P<ext>[A-Za-z]+)$")
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:/")


def normalise(file_name: str) -> str:
    """Forward slashes, no './' or '//' parts; '..' that stays inside the root is resolved ('a/../b' -> 'b')."""
    name = file_name.replace("\\", "/")
    if name.startswith("/") or _WINDOWS_DRIVE.match(name):
        return name  # absolute: left as is for `escape_problem`
    return posixpath.normpath(name)


def escape_problem(name: str) -> str | None:
    """Why a normalised file_name leads outside the root, or None."""
    if name.startswith("/") or _WINDOWS_DRIVE.match(name):
        return "is an absolute path; expected a path relative to the release root"
    if name == ".." or name.startswith("../"):
        return "climbs above the release root with '..'; expected a path inside it"
    return None


def outside_root(root_real: str, path: str) -> str | None:
    """Where `path` really leads if a symlink takes it outside `root_real` (the root's realpath), else None."""
    real = os.path.realpath(path)
    if real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep):
        return None
    return real


def frame_name_problem(name: str) -> str | None:
    """Why a normalised file_name is not '<sequence dir>/<n>.jpg', with a hint at the likely fix; None if fine."""
    seq, base = posixpath.split(name)
    if not seq or seq == ".":
        return "has no sequence directory; expected '<sequence dir>/<n>.jpg'"
    if FRAME_NAME.match(base):
        if int(base[:-4]) > INT32_MAX:
            return f"has frame number {base[:-4]}, larger than 2**31 - 1"
        return None
    m = _ANY_FRAME_LIKE.match(base)
    if m and m["ext"].lower() in ("jpg", "jpeg") and m["ext"] != "jpg":
        return f"has extension '.{m['ext']}'; expected lowercase '.jpg' (the reference loader opens '%d.jpg')"
    if m and m["ext"] == "jpg" and m["num"].startswith("0"):
        return f"is zero-padded ('{base}'); expected '{int(m['num'])}.jpg' (the reference loader opens '%d.jpg')"
    if m:
        return f"has extension '.{m['ext']}'; expected '<n>.jpg'"
    return f"has base name '{base}'; expected '<n>.jpg' with n = 0, 1, 2, ... (no zero padding)"


def frame_number(name: str) -> int:
    return int(posixpath.basename(name)[:-4])


def missing_folder_hint(root: str, folder: str, split: str) -> str:
    """A likely explanation for a sequence folder that does not exist ('' if none is found)."""
    here = root
    for part in folder.split("/"):  # the first missing component: another case of it exists?
        if not os.path.isdir(os.path.join(here, part)):
            try:
                same = [e for e in os.listdir(here) if e.lower() == part.lower() and e != part]
            except OSError:
                same = []
            if same:
                return (f" (a folder named '{same[0]}' exists in {here} where the json says '{part}': names are "
                        f"case-sensitive)")
            break
        here = os.path.join(here, part)
    if os.path.isdir(os.path.join(root, split, folder)):
        return (f" (but {os.path.join(root, split, folder)} exists: file_name must be relative to the release root, "
                f"e.g. '{split}/{folder}/<n>.jpg')")
    return ""


def missing_hint(root: str, name: str, split: str) -> str:
    """A likely explanation for a listed file that does not exist ('' if none is found)."""
    folder, base = posixpath.split(name)
    full_folder = os.path.join(root, folder)
    if os.path.isdir(full_folder):
        try:
            entries = os.listdir(full_folder)
        except OSError:
            return ""
        same = [e for e in entries if e.lower() == base.lower() and e != base]
        if same:
            return f" (a file named '{same[0]}' exists: names are case-sensitive)"
        stem = base[: -len(".jpg")]
        other = [e for e in entries if os.path.splitext(e)[0] == stem and e != base]
        if other:
            return f" (a file named '{other[0]}' exists: frames must be '<n>.jpg')"
        return ""
    return missing_folder_hint(root, folder, split)
