"""beltcrack-jax: a JAX/Flax port of BeltCrackDet (sequential-image conveyor-belt crack detection)."""

__version__ = "0.1.0"
