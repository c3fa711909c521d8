"""`--config` for the absl CLIs: a packaged config name (`demo`, `scaling:256`) or a file path, with the usual
ml_collections `--config.x.y=value` overrides.

`config_flags.DEFINE_config_file` only loads paths. Its flag hands the raw value to its parser, so wrapping that
parser to resolve the name first (`beltcrack_jax.configs.config_path`) keeps everything else of the flag —
overrides, locking, `get_config_filename` — exactly as ml_collections does it.
"""

import sys

from absl import flags
from ml_collections import config_flags

from beltcrack_jax.configs import NAMES, config_path


class _PackagedName(flags.ArgumentParser):
    """Resolves a packaged config name to its file, then parses it as ml_collections would."""

    def __init__(self, inner: flags.ArgumentParser):
        self._inner = inner

    def parse(self, argument):
        return self._inner.parse(config_path(argument) if isinstance(argument, str) else argument)

    def flag_type(self):
        return self._inner.flag_type()


def define_config_flag(name: str = "config", help_string: str = "", flag_values=flags.FLAGS) -> flags.FlagHolder:
    """Defines `--<name>` (required by the caller if needed) taking a config name or path, locked."""
    help_string = (help_string or "Config") + f": a packaged name ({', '.join(NAMES)}; name:arg) or a file path[:arg]."
    holder = config_flags.DEFINE_config_file(name, None, help_string, flag_values=flag_values, lock_config=True)
    flag = flag_values[name]
    flag.parser = _PackagedName(flag.parser)
    # absl files the flag under ml_collections (its DEFINE_flag caller): file it under our caller too, so that the
    # CLI's --help lists it.
    flag_values.register_key_flag_for_module(sys._getframe(1).f_globals["__name__"], flag)
    return holder
