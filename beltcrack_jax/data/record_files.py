"""The ArrayRecord shard files of a built split: which file holds a record, and are they all complete?

A shard cut short (an interrupted copy of data_dir, a full disk during the build) otherwise fails on first read
with a Riegeli `RuntimeError` that names no file. Opening each shard reads only its footer, so checking every shard
when a split is opened is cheap.
"""

from __future__ import annotations

import os

import numpy as np

from beltcrack_jax.data.errors import DatasetError, rebuild_command


def shard_files(dataset_info, split: str) -> list[tuple[str, int]]:
    """[(shard path, number of records)] in record order."""
    info = dataset_info.splits[split]
    return [(os.fspath(p), int(n)) for p, n in zip(info.filepaths, info.shard_lengths)]


def shard_of(dataset_info, split: str, record: int) -> str:
    """Path of the shard file that holds `record` of `split`."""
    shards = shard_files(dataset_info, split)
    ends = np.cumsum([n for _, n in shards])
    return shards[min(int(np.searchsorted(ends, record, side="right")), len(shards) - 1)][0]


def verify_record_files(dataset_info, split: str, name: str, data_dir: str | None) -> None:
    """Raises DatasetError naming the first shard that is missing or does not hold its recorded number of records."""
    from array_record.python import array_record_module

    for path, expected in shard_files(dataset_info, split):
        why = None
        if not os.path.isfile(path):
            why = "the file does not exist"
        else:
            try:
                found = array_record_module.ArrayRecordReader(path).num_records()
            except Exception as e:  # noqa: BLE001 - any reader failure means the file is damaged
                found, why = None, f"cannot be opened ({type(e).__name__}: {e})"
            if why is None and found != expected:
                why = (f"holds {found} readable records, the build wrote {expected} ({os.path.getsize(path)} bytes:"
                       f" truncated or damaged)")
        if why:
            raise DatasetError(f"{name}/{split}: record file {path} {why}. Rebuild the dataset with:\n  "
                               + rebuild_command(name, data_dir))
