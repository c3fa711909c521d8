"""Thin alias of the packaged config `beltcrack_jax/configs/tiny.py` (also `--config tiny` from any directory)."""

from beltcrack_jax.configs.tiny import *  # noqa: F401,F403
from beltcrack_jax.configs.tiny import get_config  # noqa: F401
