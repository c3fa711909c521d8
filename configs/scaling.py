"""Thin alias of the packaged config `beltcrack_jax/configs/scaling.py` (also `--config scaling` from any directory)."""

from beltcrack_jax.configs.scaling import *  # noqa: F401,F403
from beltcrack_jax.configs.scaling import get_config  # noqa: F401
