"""The configs, importable from the installed package: `beltcrack_jax.configs.demo.get_config()`.

Each is an `ml_collections` `get_config()` file; the CLIs take either a path (`--config configs/demo.py`, the thin
files at the repository root) or one of these names (`--config demo`), see `config_path`.
"""

import pathlib

NAMES = ("default", "demo", "tiny", "scaling", "ambiguous")


def config_path(name_or_path: str) -> str:
    """The file behind `--config`: a packaged config name ('demo', or 'scaling:256' with its argument) resolves to
    the installed file; anything else is taken as a path, as given."""
    name, sep, arg = name_or_path.partition(":")
    if name in NAMES:
        return str(pathlib.Path(__file__).with_name(f"{name}.py")) + sep + arg
    return name_or_path
