"""Check a BeltCrack release-layout folder and report every problem.

    python -m beltcrack_jax.data.validate ROOT [--num-frames 5] [--skip-invalid] [--quick] [--max-lines N]

Exit status 0 when the folder is clean; 1 when it has problems (every one is listed: missing or corrupt frame
files, bad file names, duplicate ids, annotations for unknown images, boxes outside the image, gaps in frame
numbers, sequences shorter than T, empty splits, ...). With --skip-invalid the same problems are listed together
with what a build with `skip_invalid=True` would skip (counts), and the exit status is 0 if anything usable is
left. The TFDS builder runs exactly these checks before writing records.
"""

from __future__ import annotations

import argparse
import sys

from beltcrack_jax.data import layout as layout_lib


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m beltcrack_jax.data.validate", description=__doc__.split("\n\n")[0])
    ap.add_argument("root", help="release folder (contains annotations/<split>/*.json)")
    ap.add_argument("--num-frames", type=int, default=5, help="clip length T: shorter sequences are a problem")
    ap.add_argument("--skip-invalid", action="store_true", help="report what would be skipped; exit 0 if usable")
    ap.add_argument("--quick", action="store_true", help="check JPEG headers/end markers only, no full decode")
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--max-lines", type=int, default=200, help="problems printed at most")
    args = ap.parse_args(argv)
    try:
        lay = layout_lib._read(args.root, args.num_frames, True, True, not args.quick, args.threads, None)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rep = lay.report
    print(rep.format(max_lines=args.max_lines))
    summary = layout_lib.layout_summary(lay)
    for split, s in summary.items():
        print(f"split {split}: " + ", ".join(f"{k} {v}" for k, v in s.items()))
    if rep.ok:
        return 0
    if args.skip_invalid:
        print("with --skip-invalid / skip_invalid=True the items counted under 'skipped' are left out")
        return 0 if lay.splits else 1
    print("FAILED: fix the problems above, or build with skip_invalid=True to skip them (counted)")
    return 1


if __name__ == "__main__":
    sys.exit(main())
