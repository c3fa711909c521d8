"""TFDS builder package for `beltcrack` (tfds-new layout: the dataset name comes from `beltcrack_dataset_builder`)."""

from beltcrack_jax.data.tfds_beltcrack.beltcrack_dataset_builder import RELEASES, SYNTHETIC, BeltCrackConfig, Builder

__all__ = ["Builder", "BeltCrackConfig", "RELEASES", "SYNTHETIC"]
