"""What can be wrong with a release-layout folder: stable problem codes, what each means, what a skip drops.

`Report` collects the problems of one folder (each names the file, the json path inside it where there is one,
what was found and what is expected), the counts of what `skip_invalid` skipped and informational counts.
The codes are stable: scripts and tests match on them, not on the message text.
"""

from __future__ import annotations

import collections
import dataclasses

# code -> (what it means, what skip_invalid=True skips). The order is the order of the checks.
PROBLEMS: dict[str, tuple[str, str]] = {
    "bad_json": ("the split's json is missing (or not exactly one *.json), unreadable, not valid JSON (e.g. a "
                 "truncated copy), not an object, or lacks the 'images' / 'annotations' lists", "the split"),
    "bad_entry": ("an entry of 'images', 'annotations', 'categories' or 'sequences' is not an object, or a field is "
                  "missing or of the wrong type/value (non-integer or negative id, '192px' as a width, a list as "
                  "an id, ...)", "the entry; for an annotation, its frame becomes unannotated"),
    "bad_file_name": ("file_name is not '<sequence dir>/<n>.jpg' with n = 0, 1, ... (no zero padding, lowercase "
                      ".jpg, n < 2**31)", "the image entry and its annotations"),
    "path_escape": ("file_name (or a symlink on its way) leads outside the release root: '../', an absolute path",
                    "the image entry and its annotations"),
    "duplicate_image_id": ("several image entries use one id", "every entry with that id and its annotations "
                           "(the files stay as unannotated frames)"),
    "duplicate_file_name": ("several image entries name one file", "every entry naming it and its annotations "
                            "(the file stays as an unannotated frame)"),
    "duplicate_annotation": ("several annotations use one id", "an identical repeat is dropped; if the contents "
                             "differ, the frames concerned become unannotated"),
    "duplicate_box": ("the same box (bbox and category) is listed twice for one frame", "the repeated copy"),
    "unknown_image_id": ("an annotation names an image id that no image entry has", "the annotation"),
    "bad_category": ("category_id is not an integer >= 1 listed in 'categories'", "the frame becomes unannotated"),
    "bad_box": ("bbox is not [x, y, w, h] of 4 finite numbers, has w or h <= 0, or leaves the image",
                "the frame becomes unannotated (not a key frame, still a history frame)"),
    "size_mismatch": ("the json width/height disagree with the frame file", "the frame becomes unannotated"),
    "missing_frame": ("a listed frame file (or a whole sequence folder) does not exist",
                      "the frame(s); the sequence is split there"),
    "corrupt_image": ("a frame file is empty, unreadable, truncated or cannot be decoded",
                      "the frame; the sequence is split there"),
    "bad_image_mode": ("a frame decodes but is not 8-bit RGB, L (grey), RGBA or CMYK (e.g. a 16-bit PNG, a "
                       "palette image)", "the frame; the sequence is split there"),
    "frame_gap": ("the frame numbers of a sequence are not contiguous from 0",
                  "nothing: the sequence is split into contiguous segments"),
    "short_sequence": ("a sequence has fewer frames than the clip length T", "the sequence"),
    "empty_split": ("a split has no usable frame with ground truth", "the split"),
}
PROBLEM_KINDS = tuple(PROBLEMS)


@dataclasses.dataclass(frozen=True)
class Problem:
    kind: str      # one of PROBLEM_KINDS
    path: str      # the file (json, frame) or folder concerned
    message: str   # what was found and what is expected
    where: str = ""  # json path inside `path`, e.g. "images[12].width"

    def __str__(self) -> str:
        return f"[{self.kind}] {self.path}{' ' + self.where if self.where else ''}: {self.message}"

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Report:
    """Problems found plus what a skip dropped and informational counts (nothing is dropped silently)."""

    root: str
    problems: list[Problem] = dataclasses.field(default_factory=list)
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    info: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    dropped_splits: list[str] = dataclasses.field(default_factory=list)   # splits a skip loses entirely
    notes: list[str] = dataclasses.field(default_factory=list)            # informational lines (examples)

    def add(self, kind: str, path: str, message: str, where: str = "") -> None:
        if kind not in PROBLEMS:
            raise ValueError(f"unknown problem kind {kind!r}")
        self.problems.append(Problem(kind, str(path), message, where))

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
        if self.dropped_splits:
            lines.append(f"splits lost entirely with skip_invalid: {', '.join(self.dropped_splits)}")
        if self.info:
            lines.append("info: " + ", ".join(f"{k} {v}" for k, v in sorted(self.info.items())))
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_dict(self, max_problems: int | None = None) -> dict:
        """JSON-able summary (the validator's --json output and the build metadata)."""
        probs = self.problems if max_problems is None else self.problems[:max_problems]
        return dict(root=self.root, ok=self.ok, counts=self.counts(), skipped=dict(self.skipped),
                    info=dict(self.info), dropped_splits=list(self.dropped_splits), notes=list(self.notes),
                    problems=[p.to_dict() for p in probs])


class LayoutError(ValueError):
    """A release-layout folder has problems; `.report` lists them all."""

    def __init__(self, report: Report):
        self.report = report
        super().__init__(report.format(header="invalid BeltCrack release layout (pass skip_invalid=True / "
                                              "--skip-invalid to skip the bad items and count them)"))


def checks_table() -> str:
    """The checks as text (`python -m beltcrack_jax.data.validate --list-checks`)."""
    width = max(map(len, PROBLEMS))
    return "\n".join(f"{k:<{width}}  {meaning}\n{'':<{width}}  skip_invalid skips: {skip}"
                     for k, (meaning, skip) in PROBLEMS.items())
