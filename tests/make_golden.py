"""Build tests/golden/ from the full golden folder (../shared/golden): only the keys the tests read, stored
compactly (tests/golden_codec.py). Run from the repo root:

    python tests/make_golden.py [NAME ...] [--source ../shared/golden] [--out tests/golden]

`KEPT` is the one list of what the in-repo copy holds, `QUANTIZED` the one list of what is stored lossily (large
float32 activations, to a step far below the tests' tolerances) and `ZERO_SIGN_DROPPED` where -0.0 is stored as
+0.0; tests/test_golden_copy.py checks the copy against these tables and, when the source folder is present,
against the source: bit for bit, within each quantized key's recorded `max_error`, and equal as numbers where a
zero's sign was dropped.
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
    # every module case's weights are copies of state-dict entries: the tests take them from the state dict
    # (golden_utils.CASE_PARAM_PREFIXES; the train-mode BaseConv case's too); the BN tests compare running
    # statistics, not the step counters
    "modules_io": (("*",), ("*/param/*", "*/state_after/*num_batches_tracked")),
    # the EMA counters are checked on the f64 track, the f32 track is driven by its step-1 data only
    "optim_io": (("*",), ("f32/step*/ema[AB]_decay", "f32/step*/ema[AB]_updates", "f32/step[23]/loss",
                          "f32/step[23]/target", "f64/step*/input_x", "f64/step*/loss", "f64/step*/target",
                          "group_hyper/dampening", "group_hyper/nesterov")),
    "pipeline_io": (("*",), ()),
}


# file -> (minimum size, rules): float32 arrays of at least that many elements are rounded to a step of 2^-bits of
# their largest magnitude's binade, so |stored - original| <= 2^-(bits+1) * max|original|; the first rule whose
# pattern matches gives the bits (None: exact). The low mantissa bits of these activations (16.4 MB of float32)
# were what kept the in-repo copy above the size budget. Measured (tests/golden/README.md): every test keeps its
# tolerance, and the largest err / tolerance of any golden comparison moves by at most a few %.
_TEST_INPUTS = tuple(f"full_intermediates/{k}" for k in (
    "backbone_feats_BTCHW", "neck.conv_dw_per_frame_BTCHW", "neck.gal",             # ATM / HSM / WFM / Swin inputs
    "neck.conv_fin_mix", "neck.conv_fre_new", "neck.conv_t", "neck.resblock0", "neck.resblock1"))   # RCU inputs
QUANTIZED: dict[str, tuple[int, tuple[tuple[tuple[str, ...], int | None], ...]]] = {
    "modules_io": (16384, (
        (("*_train/*",), None),               # exact: the train-mode cases' BatchNorm statistics are compared at 1e-5
        # the input of a module test: its error is amplified by the module (17 bits moved ATM's err / tol from 0.03
        # to 0.5); 21 bits is ~4 float32 ulps of the largest value
        (("*/in/*", *_TEST_INPUTS), 21),
        # compared outputs only: <= 7.6e-6 * max|ref|, 7.6 % of FULL_TOL (1e-4) and 3.8 % of MODULE_TOL (2e-4)
        (("full_intermediates/*", "*/out/*"), 16),
    )),
}
# files whose float16 weights are stored with -0.0 as +0.0 (half their zeros; the sign cost 2 MB): equal as
# numbers, and no operation of the forward tells them apart except through the sign of an exact-zero result
ZERO_SIGN_DROPPED = ("reference_state_dict",)


def quantize_bits(name: str, arrays) -> dict[str, int]:
    """The keys of `arrays` that `QUANTIZED` stores lossily, with their bits."""
    if name not in QUANTIZED:
        return {}
    min_size, rules = QUANTIZED[name]
    out = {}
    for k, a in arrays.items():
        if a.dtype != np.float32 or a.size < min_size:
            continue
        bits = next((b for patterns, b in rules if any(fnmatch.fnmatchcase(k, p) for p in patterns)), None)
        if bits is not None:
            out[k] = bits
    return out


def drop_zero_sign(a: np.ndarray) -> np.ndarray:
    return a + np.zeros((), a.dtype) if a.dtype.kind == "f" else a     # -0.0 + 0.0 = +0.0, every other value kept


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
        if name in ZERO_SIGN_DROPPED:
            arrays = {k: drop_zero_sign(a) for k, a in arrays.items()}
        path = args.out / f"{name}.npz"
        write_golden(path, arrays, quantize_bits(name, arrays))
        print(f"{path}: {len(arrays)} keys, {path.stat().st_size:,} bytes ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
