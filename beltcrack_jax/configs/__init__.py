"""The configs, importable from the installed package: `beltcrack_jax.configs.demo.get_config()`.

Each is an `ml_collections` `get_config()` file; the CLIs take either a path (`--config configs/demo.py`, the thin
files at the repository root) or one of these names (`--config demo`), see `config_path`; `load_config` is the
same for code.
"""

import importlib.util
import inspect
import os
import pathlib
import sys

NAMES = ("default", "demo", "tiny", "scaling", "ambiguous", "veiled")


def config_path(name_or_path: str) -> str:
    """The file behind `--config`: a packaged config name ('demo', or 'scaling:256' with its argument) resolves to
    the installed file; anything else is taken as a path, as given."""
    name, sep, arg = name_or_path.partition(":")
    if name in NAMES:
        return str(pathlib.Path(__file__).with_name(f"{name}.py")) + sep + arg
    return name_or_path


def load_config(name_or_path: str):
    """`get_config()` of a packaged config name or a config file; `name:arg` / `path:arg` passes `arg` to it."""
    path = config_path(name_or_path)
    arg = None
    if ":" in os.path.basename(path):
        path, arg = path.rsplit(":", 1)
    spec = importlib.util.spec_from_file_location(f"_beltcrack_config_{abs(hash(path))}", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot load config file {path!r}")
    module = importlib.util.module_from_spec(spec)
    # A config file outside the package may import its siblings: make that work from any CWD.
    cfg_dir = os.path.dirname(os.path.abspath(path))
    added = cfg_dir not in sys.path
    if added:
        sys.path.insert(0, cfg_dir)
    try:
        spec.loader.exec_module(module)
    finally:
        if added:
            sys.path.remove(cfg_dir)
    fn = module.get_config
    return fn(arg) if arg is not None and inspect.signature(fn).parameters else fn()
