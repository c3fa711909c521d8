"""Thin alias of the packaged config `beltcrack_jax/configs/veiled.py` (also `--config veiled` from any directory)."""

from beltcrack_jax.configs.veiled import *  # noqa: F401,F403
from beltcrack_jax.configs.veiled import get_config  # noqa: F401
