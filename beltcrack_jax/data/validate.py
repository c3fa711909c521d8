"""Check a BeltCrack release-layout folder and report every problem.

    python -m beltcrack_jax.data.validate ROOT [--num-frames 5] [--skip-invalid] [--quick] [--json] [--list-checks]

Runs exactly the checks the TFDS builder runs before writing records (`beltcrack_jax.data.layout.read_layout`).
Each problem line is `[code] file [json path]: what is wrong; what is expected`; the codes and what a skip drops
are printed by --list-checks. Exit status:
  0  no problems; with --skip-invalid also when there are problems but a `skip_invalid=True` build would keep
     every split (what it would skip is counted under 'skipped')
  1  problems; with --skip-invalid only when a whole split would be dropped or nothing usable is left
  2  not a release layout (no annotations/<split>/ folders), or bad arguments
"""

from __future__ import annotations

import argparse
import json
import sys

from beltcrack_jax.data import layout as layout_lib
from beltcrack_jax.data.problems import checks_table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m beltcrack_jax.data.validate", description=__doc__.split("\n\n")[0])
    ap.add_argument("root", nargs="?", help="release folder (contains annotations/<split>/*.json)")
    ap.add_argument("--num-frames", type=int, default=5, help="clip length T: shorter sequences are a problem")
    ap.add_argument("--skip-invalid", action="store_true",
                    help="report what a skip_invalid build would skip; exit 0 unless a whole split would be lost")
    ap.add_argument("--quick", action="store_true", help="check frame headers, modes and JPEG end markers only")
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--max-lines", type=int, default=200, help="problems printed at most")
    ap.add_argument("--json", action="store_true", help="print the report as one JSON object instead")
    ap.add_argument("--list-checks", action="store_true", help="print the problem codes and what a skip drops")
    args = ap.parse_args(argv)
    if args.list_checks:
        print(checks_table())
        return 0
    if args.root is None:
        ap.print_usage(sys.stderr)
        print("error: ROOT is required", file=sys.stderr)
        return 2
    try:
        lay = layout_lib.read_layout(args.root, min_sequence_length=args.num_frames, skip_invalid=True,
                                     full_decode=not args.quick, num_threads=args.threads)
    except (FileNotFoundError, NotADirectoryError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rep = lay.report
    lost = bool(rep.dropped_splits) or not lay.splits
    status = 0 if rep.ok or (args.skip_invalid and not lost) else 1
    summary = layout_lib.layout_summary(lay)
    if args.json:
        print(json.dumps(dict(rep.to_dict(), splits=summary, exit_status=status), indent=1))
        return status
    print(rep.format(max_lines=args.max_lines))
    for split, s in summary.items():
        print(f"split {split}: " + ", ".join(f"{k} {v}" for k, v in s.items()))
    if rep.ok:
        return 0
    if args.skip_invalid and not lost:
        print("with --skip-invalid / skip_invalid=True the items counted under 'skipped' are left out")
    elif args.skip_invalid:
        print(f"FAILED: even with --skip-invalid, split(s) {', '.join(rep.dropped_splits) or '(all)'} would be "
              f"lost entirely; fix the problems above")
    else:
        print("FAILED: fix the problems above, or build with skip_invalid=True to skip them (counted)")
    return status


if __name__ == "__main__":
    sys.exit(main())
