"""Thin alias of the packaged config `beltcrack_jax/configs/demo.py` (also `--config demo` from any directory)."""

from beltcrack_jax.configs.demo import *  # noqa: F401,F403
from beltcrack_jax.configs.demo import get_config  # noqa: F401
