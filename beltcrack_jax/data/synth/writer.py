"""Write a synthetic dataset in the BeltCrack release layout.

ROOT/annotations/<split>/coco.json and ROOT/<split>/<sequence>/<n>.jpg (n = frame number from 0, no padding).
Every frame is listed in `images` (extra fields `sequence`, `frame_index`); crack-free frames have no annotations;
annotations carry an extra `track_id` (the crack's id, constant within its sequence); the extra top-level
`sequences` list carries the per-sequence condition tags.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np

from beltcrack_jax.data.synth.presets import PRESETS, Preset
from beltcrack_jax.data.synth.sequence import Sequence

GENERATOR_VERSION = "1"


def split_counts(n: int, splits: tuple[tuple[str, float], ...]) -> list[int]:
    """Sequences per split by largest remainder; every split gets at least one when n >= number of splits."""
    frac = np.array([f for _, f in splits], np.float64)
    frac = frac / frac.sum()
    raw = n * frac
    cnt = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - cnt), kind="stable")[: n - cnt.sum()]:
        cnt[i] += 1
    if n >= len(splits):
        while (cnt == 0).any():
            cnt[np.argmax(cnt)] -= 1
            cnt[np.argmin(cnt)] += 1
    return [int(c) for c in cnt]


def resolve_preset(preset: str | Preset, scale: float | None = None) -> Preset:
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
        preset = PRESETS[preset]
    return preset.with_scale(scale) if scale is not None else preset


@dataclasses.dataclass(frozen=True)
class PlannedSequence:
    index: int            # sequence index (its renderer is Sequence(preset, seed, index, num_frames))
    name: str             # folder name, seq<index>
    num_frames: int
    first_image_id: int   # COCO id of frame 0; frame t has first_image_id + t


def sequence_plan(preset: str | Preset, seed: int = 0, num_sequences: int | None = None,
                  max_frames: int | None = None) -> dict[str, list[PlannedSequence]]:
    """{split: its sequences in writing order}: which sequence goes to which split, its length and its frames'
    COCO image ids, without rendering anything (what `generate` writes, and what a script needs to re-render one
    frame of a generated dataset)."""
    p = resolve_preset(preset)
    n_seq = p.num_sequences if num_sequences is None else int(num_sequences)
    if n_seq < 1:
        raise ValueError(f"num_sequences must be >= 1, got {num_sequences!r}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames!r}")
    rng = np.random.default_rng([seed, 0xDA7A])
    counts = split_counts(n_seq, p.splits)
    order = rng.permutation(n_seq)
    split_of = {}
    k = 0
    for (name, _), c in zip(p.splits, counts):
        for i in order[k : k + c]:
            split_of[int(i)] = name
        k += c
    lengths = rng.integers(p.frames[0], p.frames[1] + 1, n_seq)
    if max_frames is not None:
        lengths = np.minimum(lengths, max_frames)
    plan, image_id = {}, 1
    for split, _ in p.splits:
        plan[split] = []
        for i in range(n_seq):
            if split_of.get(i) == split:
                plan[split].append(PlannedSequence(i, f"seq{i:03d}", int(lengths[i]), image_id))
                image_id += int(lengths[i])
    return plan


def generate(preset: str | Preset, out_dir, seed: int = 0, *, num_sequences: int | None = None,
             scale: float | None = None, max_frames: int | None = None) -> pathlib.Path:
    """Render a dataset; returns its root. Same arguments -> byte-identical files.

    Args:
      preset: a key of PRESETS ('tiny', 'demo', '14ks-like', '9kd-like') or a Preset.
      out_dir: dataset root (created; existing files with the same names are overwritten).
      seed: master seed.
      num_sequences: override the preset's number of sequences (split ratios kept, each split non-empty if possible).
      scale: output scale relative to the preset's native size (e.g. 0.25 renders 1920x1080 presets at 480x270).
      max_frames: cap on frames per sequence (short test runs).
    """
    p = resolve_preset(preset, scale)
    w, h = p.out_size
    root = pathlib.Path(out_dir)
    ann_id = 1
    for split, plan in sequence_plan(p, seed, num_sequences, max_frames).items():
        images, anns, seqs = [], [], []
        for s in plan:
            seq = Sequence(p, seed, s.index, s.num_frames)
            seqs.append(seq.info(s.name, split))
            d = root / split / s.name
            d.mkdir(parents=True, exist_ok=True)
            for t in range(seq.num_frames):
                fr = seq.render(t)
                image_id = s.first_image_id + t
                (d / f"{t}.jpg").write_bytes(fr.jpeg)
                images.append({"id": image_id, "file_name": f"{split}/{s.name}/{t}.jpg", "width": w, "height": h,
                               "sequence": s.name, "frame_index": t})
                for b, tid in zip(fr.boxes, fr.track_ids):
                    bb = [float(x) for x in b]
                    anns.append({"id": ann_id, "image_id": image_id, "category_id": 1, "bbox": bb,
                                 "area": bb[2] * bb[3], "iscrowd": 0, "track_id": int(tid)})
                    ann_id += 1
        coco = {
            "info": {"description": f"synthetic BeltCrack ({p.name})", "version": GENERATOR_VERSION,
                     "preset": p.name, "seed": int(seed), "scale": p.scale, "native_width": p.width,
                     "native_height": p.height, "split": split},
            "images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "crack", "supercategory": "defect"}],
            "sequences": seqs,
        }
        ann_dir = root / "annotations" / split
        ann_dir.mkdir(parents=True, exist_ok=True)
        (ann_dir / "coco.json").write_text(json.dumps(coco, separators=(",", ":")))
    return root
