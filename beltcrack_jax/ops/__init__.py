"""Pure-jnp signal-processing operators (no Flax state)."""

from beltcrack_jax.ops.haar import (haar_analysis, haar_filter_bank, haar_synthesis, haar_waverec,
                                    haar_wavedec, wavedec_sizes)

__all__ = ["haar_analysis", "haar_synthesis", "haar_wavedec", "haar_waverec", "haar_filter_bank",
           "wavedec_sizes"]
