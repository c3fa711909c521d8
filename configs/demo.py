"""Demo: a short CPU training + evaluation on the embedded synthetic `demo` data (`make demo`).

`python train.py --config configs/demo.py --workdir workdirs/demo`: the synthetic_demo dataset is generated on
first use (TFDS, data/tfds), a tiny BeltCrackDet (every channel x 1/8, ~0.9 M parameters, the reference
architecture and T = 5) trains on 128x128 clips for a few minutes on 2 CPU cores; the loss visibly falls; the
final evaluation prints mAP50 / P / R / F1 (paper profile). Rerunning resumes from the last checkpoint.
"""

import importlib.util
import pathlib

_spec = importlib.util.spec_from_file_location("_beltcrack_default_config",
                                               pathlib.Path(__file__).with_name("default.py"))
_default = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_default)


def get_config():
    c = _default.get_config()
    c.model.width = 0.125                 # tiny: backbone 4..64 channels, neck 16, head 32
    c.data.name = "beltcrack/synthetic_demo"
    c.data.image_size = 128
    c.data.num_workers = 0                # in-process loading (2-core machines)
    c.data.num_threads = 2
    c.train.batch_size = 8
    c.train.epochs = 4
    c.train.lr.base = 0.08                # lr_max = 8/64 x 0.08 = 1e-2 (inside the reference clamp)
    c.train.lr.min = 8e-4
    c.train.lr.warmup_epochs = 1
    c.train.lr.no_aug_epochs = 1
    c.train.log_every_steps = 10
    c.train.checkpoint_every_epochs = 1
    c.train.eval_every_epochs = 4         # evaluate once, at the end
    c.eval.batch_size = 8
    c.eval.num_vis = 0
    return c
