"""Build (or rebuild) a `beltcrack/<config>` TFDS dataset from the command line.

    python -m beltcrack_jax.data.build beltcrack/beltcrack14ks [--data-dir data/tfds] [--skip-invalid] [--rebuild]

--rebuild regenerates the records from the release folder as it is now (needed after the release changed: reading
a stale build is refused with this command). --skip-invalid skips and counts bad items (see
`python -m beltcrack_jax.data.validate --list-checks`). Exit status 0 built (or already up to date), 1 the release
has problems (all listed) or the build is stale, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import sys


def make_builder(name: str, data_dir: str | None, **builder_kwargs):
    """tfds.builder for a registered config or a `synthetic_<preset>_seed<N>` name."""
    import tensorflow_datasets as tfds

    # Importing the builder module registers `beltcrack` with TFDS.
    from beltcrack_jax.data.tfds_beltcrack.beltcrack_dataset_builder import seeded_config

    builder_name, _, config_name = name.partition("/")
    seeded = seeded_config(config_name) if builder_name == "beltcrack" else None
    if seeded is not None:
        return tfds.builder(builder_name, config=seeded, data_dir=data_dir, **builder_kwargs)
    return tfds.builder(name, data_dir=data_dir, **builder_kwargs)


def main(argv: list[str] | None = None) -> int:
    import tensorflow_datasets as tfds

    from beltcrack_jax.data.errors import DatasetError
    from beltcrack_jax.data.problems import LayoutError

    ap = argparse.ArgumentParser(prog="python -m beltcrack_jax.data.build", description=__doc__.split("\n\n")[0])
    ap.add_argument("name", help="e.g. beltcrack/beltcrack14ks, beltcrack/synthetic_demo")
    ap.add_argument("--data-dir", default="data/tfds", help="TFDS data_dir (default: data/tfds)")
    ap.add_argument("--skip-invalid", action="store_true", help="skip and count bad items instead of failing")
    ap.add_argument("--rebuild", action="store_true", help="regenerate the records even if a build exists")
    args = ap.parse_args(argv)
    from beltcrack_jax.cli.logs import quiet_absl_logging

    quiet_absl_logging()   # TFDS's absl INFO lines, as in the other CLIs
    if not args.name.startswith("beltcrack/"):
        print(f"error: expected a name 'beltcrack/<config>', got {args.name!r}", file=sys.stderr)
        return 2
    try:
        builder = make_builder(args.name, args.data_dir, skip_invalid=args.skip_invalid)
        mode = (tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS if args.rebuild
                else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(download_mode=mode))
    except (LayoutError, DatasetError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except ValueError as e:  # an unknown config name
        print(f"error: {e}", file=sys.stderr)
        return 2
    report = (builder.info.metadata or {}).get("report", {})
    print(f"{args.name}: {builder.data_dir}")
    for split, info in builder.info.splits.items():
        print(f"  {split}: {info.num_examples} records")
    if report.get("problems"):
        print(f"  skipped (skip_invalid): {report.get('skipped')}; problems: {report.get('problems')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
