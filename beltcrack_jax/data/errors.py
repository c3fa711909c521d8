"""Errors about built datasets, and the one command that rebuilds one (named in every such error)."""

from __future__ import annotations

import shlex


class DatasetError(ValueError):
    """A built dataset cannot be used as it is: its release changed since the build, or a record file is damaged.
    The message names the dataset and file and gives the command that rebuilds it."""


def rebuild_command(name: str, data_dir: str | None, skip_invalid: bool = False) -> str:
    """`python -m beltcrack_jax.data.build NAME --data-dir DIR --rebuild [--skip-invalid]`."""
    cmd = ["python", "-m", "beltcrack_jax.data.build", name]
    if data_dir:
        cmd += ["--data-dir", str(data_dir)]
    cmd.append("--rebuild")
    if skip_invalid:
        cmd.append("--skip-invalid")
    return " ".join(shlex.quote(c) for c in cmd)
