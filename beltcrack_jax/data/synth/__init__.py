"""Synthetic conveyor-belt crack sequences in the BeltCrack release layout (see beltcrack_jax.data.synthetic)."""
