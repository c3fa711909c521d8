"""Thin alias of the packaged config `beltcrack_jax/configs/default.py` (also `--config default` from any directory)."""

from beltcrack_jax.configs.default import *  # noqa: F401,F403
from beltcrack_jax.configs.default import get_config  # noqa: F401
