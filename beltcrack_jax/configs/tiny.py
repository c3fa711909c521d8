"""A tiny BeltCrackDet for CPU tests and smoke runs: the default recipe with every channel count x 1/8.

Same architecture and T as the reference (configs/default.py), only narrower: backbone 4 -> 8 -> 16 -> 32 -> 64
channels, neck C = 16, head hidden 32 (about 0.9 M parameters). Use 64x64 clips (H, W must be multiples of 32);
a forward on CPU takes well under a second after compilation.
"""

from beltcrack_jax.configs import default as _default

TINY_SIZE = 64   # clip height and width (data.image_size)


def get_config():
    c = _default.get_config()
    c.model.width = 0.125          # 128 -> 16 channels in the neck, 256 -> 32 in the head
    c.data.image_size = TINY_SIZE
    c.data.name = "beltcrack/synthetic_tiny"
    return c
