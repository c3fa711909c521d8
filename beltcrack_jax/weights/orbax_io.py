"""Orbax folders of {'params', 'batch_stats'}: what `beltcrack-convert` writes and `train.init_from` reads."""

from __future__ import annotations

import os
from typing import Any, Mapping

import orbax.checkpoint as ocp


def save_variables(directory: str, variables: Mapping[str, Any], force: bool = False) -> str:
    """Writes {'params', 'batch_stats'} as an orbax checkpoint at `directory` (absolute path used); returns it."""
    directory = os.path.abspath(directory)
    tree = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(directory, tree, force=force)
    ckptr.wait_until_finished()
    ckptr.close()
    return directory


def load_variables(directory: str) -> dict[str, Any]:
    """Reads an orbax checkpoint written by `save_variables` / the convert CLI -> {'params', 'batch_stats'}."""
    ckptr = ocp.StandardCheckpointer()
    try:
        tree = ckptr.restore(os.path.abspath(directory))
    finally:
        ckptr.close()
    return {"params": tree["params"], "batch_stats": tree.get("batch_stats", {})}
