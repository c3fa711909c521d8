"""Synthetic BeltCrack: realistic conveyor-belt crack video sequences in the BeltCrack release layout.

Public API:
  generate(preset, out_dir, seed=0, *, num_sequences=None, scale=None, max_frames=None) -> pathlib.Path
  PRESETS: preset name -> Preset ('tiny', 'demo', '14ks-like', '9kd-like')
  summarize(root) -> dict of statistics; contact_sheet(root, png) -> pathlib.Path

Layout written: ROOT/annotations/<split>/coco.json, frames at ROOT/<split>/<sequence>/<n>.jpg.

CLI:
  python -m beltcrack_jax.data.synthetic --preset tiny --out DIR --seed 0 [--contact-sheet PATH]
      [--num-sequences N] [--scale S] [--max-frames F] [--overwrite]

A non-empty --out is refused (old frames left there would be read as unannotated history frames of the new
release); --overwrite first deletes the release a previous run wrote there (a folder with annotations/).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import sys
import time

from beltcrack_jax.data.synth.presets import AREA_CLASSES, PRESETS, Preset, area_class
from beltcrack_jax.data.synth.report import contact_sheet, summarize
from beltcrack_jax.data.synth.writer import generate

__all__ = ["AREA_CLASSES", "PRESETS", "Preset", "area_class", "contact_sheet", "generate", "summarize", "main"]


def _dir_size(root: pathlib.Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def _clear_out_dir(out: pathlib.Path, overwrite: bool) -> str | None:
    """Empties `out` for a fresh release if allowed; returns why not, or None."""
    if not out.exists():
        return None
    if not out.is_dir():
        return f"--out {out} exists and is not a folder"
    if not any(out.iterdir()):
        return None
    if not overwrite:
        return (f"--out {out} is not empty: frames left there would be mixed into the new release as unannotated "
                f"history frames. Use an empty folder, or --overwrite to replace the release written there")
    if not (out / "annotations").is_dir():
        return f"--out {out} is not empty and does not look like a release (no annotations/): not deleting it"
    shutil.rmtree(out)
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    ap.add_argument("--out", required=True, help="dataset root to write")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num-sequences", type=int, default=None)
    ap.add_argument("--scale", type=float, default=None, help="output scale vs the preset's native size")
    ap.add_argument("--max-frames", type=int, default=None, help="cap on frames per sequence")
    ap.add_argument("--contact-sheet", default=None, help="also save a PNG grid of frames with boxes here")
    ap.add_argument("--overwrite", action="store_true", help="replace a release already written to --out")
    args = ap.parse_args(argv)
    refused = _clear_out_dir(pathlib.Path(args.out), args.overwrite)
    if refused:
        print(f"error: {refused}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    root = generate(args.preset, args.out, args.seed, num_sequences=args.num_sequences, scale=args.scale,
                    max_frames=args.max_frames)
    dt = time.perf_counter() - t0
    stats = summarize(root)
    stats["seconds"] = round(dt, 2)
    stats["bytes_on_disk"] = _dir_size(root)
    print(json.dumps(stats, indent=1))
    if args.contact_sheet:
        print("contact sheet:", contact_sheet(root, args.contact_sheet))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
