"""BeltCrack data: TFDS builder `beltcrack` (registered on import), release-layout reader/validator, clip pipeline.

    import beltcrack_jax.data                       # registers tfds 'beltcrack/<config>'
    tfds.builder('beltcrack/synthetic_tiny', data_dir=D).download_and_prepare()
    it = beltcrack_jax.data.make_train_iterator(config, 'train', batch_size_per_process=4, ...)
    x = beltcrack_jax.data.normalize(batch['clips'])   # on device, float32 (B, T, H, W, 3)
"""

from beltcrack_jax.data import tfds_beltcrack  # noqa: F401  (registers the TFDS builder)
from beltcrack_jax.data.layout import LayoutError, Report, read_layout
from beltcrack_jax.data.layout import validate as validate_layout  # (`validate` is the CLI submodule)
from beltcrack_jax.data.pipeline import (
    SplitIndex,
    clip_record_indices,
    load_split_index,
    make_eval_dataset,
    make_eval_iterator,
    make_train_dataset,
    make_train_iterator,
)
from beltcrack_jax.data.transforms import normalize, normalize_np

__all__ = [
    "LayoutError", "Report", "SplitIndex", "clip_record_indices", "load_split_index", "make_eval_dataset",
    "make_eval_iterator", "make_train_dataset", "make_train_iterator", "normalize", "normalize_np",
    "read_layout", "validate_layout",
]
