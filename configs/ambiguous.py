"""Thin alias of the packaged config `beltcrack_jax/configs/ambiguous.py` (also `--config ambiguous` from any directory)."""

from beltcrack_jax.configs.ambiguous import *  # noqa: F401,F403
from beltcrack_jax.configs.ambiguous import get_config  # noqa: F401
