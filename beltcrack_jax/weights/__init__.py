"""Weights from elsewhere: PyTorch state dicts (reference BeltCrackDet, COCO YOLOX-S) -> Flax variables, and the
orbax folders of {'params', 'batch_stats'} that `beltcrack-convert` writes.

* `state_dict`: read a state dict (.npz / .pth / mapping) and map it onto a variables tree by the naming rule
  of `beltcrack_jax.models.naming`;
* `reference`: the strict whole-model import of the reference's state dict;
* `yolox`: the by-name-and-shape import of a COCO YOLOX-S checkpoint, with its report;
* `orbax_io`: save / load the converted variables.
"""
