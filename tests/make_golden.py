"""Build tests/golden/ from the full golden folder (../shared/golden): only the keys the tests read, stored
compactly and losslessly (tests/golden_codec.py). Run from the repo root:

    python tests/make_golden.py [NAME ...] [--source ../shared/golden] [--out tests/golden]

`KEPT` is the one list of what the in-repo copy holds; tests/test_golden_copy.py checks the copy against it and,
when the source folder is present, bit for bit against the source.
"""

from __future__ import annotations

import argparse
import fnmatch
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from golden_codec import write_golden  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SOURCE = REPO.parent / "shared" / "golden"
OUT = REPO / "tests" / "golden"

# file -> (patterns kept, patterns dropped after that): every key no test reads is dropped (found by logging
# every key the golden-reading tests get; `.files` filters by prefix never reach a dropped key)
KEPT: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # the full-forward and weight-import tests load every entry
    "reference_state_dict": (("*",), ()),
    # image 1 of loss cases B, C: its raw output is already in reference_loss
    "reference_io": (("*",), ("raw_output_second_input_fp32",)),
    # only case A's decoding is compared (the loss decodes itself)
    "reference_loss": (("*",), ("[BCD]/decoded_outputs",)),
    # the train-mode BaseConv test takes its weights from the state dict (same values); the BN tests compare
    # running statistics, not the step counters
    "modules_io": (("*",), ("baseconv_train/param/*", "*/state_after/*num_batches_tracked")),
    # the EMA counters are checked on the f64 track, the f32 track is driven by its step-1 data only
    "optim_io": (("*",), ("f32/step*/ema[AB]_decay", "f32/step*/ema[AB]_updates", "f32/step[23]/loss",
                          "f32/step[23]/target", "f64/step*/input_x", "f64/step*/loss", "f64/step*/target",
                          "group_hyper/dampening", "group_hyper/nesterov")),
    "pipeline_io": (("*",), ()),
}


def kept_keys(name: str, keys) -> list[str]:
    keep, drop = KEPT[name]
    return [k for k in keys if any(fnmatch.fnmatchcase(k, p) for p in keep)
            and not any(fnmatch.fnmatchcase(k, p) for p in drop)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help=f"files to rebuild (default all: {', '.join(KEPT)})")
    ap.add_argument("--source", type=pathlib.Path, default=SOURCE, help="the full golden folder")
    ap.add_argument("--out", type=pathlib.Path, default=OUT)
    args = ap.parse_args(argv)
    if unknown := sorted(set(args.names) - set(KEPT)):
        ap.error(f"unknown golden file(s) {unknown}: choose from {', '.join(KEPT)}")
    if not args.source.is_dir():
        ap.error(f"--source {args.source} is not a folder")
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.names or KEPT:
        t0 = time.time()
        with np.load(args.source / f"{name}.npz") as f:
            arrays = {k: f[k] for k in kept_keys(name, f.files)}
        path = args.out / f"{name}.npz"
        write_golden(path, arrays)
        print(f"{path}: {len(arrays)} keys, {path.stat().st_size:,} bytes ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
