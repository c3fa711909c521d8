"""Demo: a short CPU training + evaluation on the embedded synthetic `demo` data (`make demo`).

`python train.py --config configs/demo.py --workdir workdirs/demo`, then `python evaluate.py --config
configs/demo.py --workdir workdirs/demo`: the synthetic_demo dataset is generated on first use (TFDS, data/tfds), a
tiny BeltCrackDet (every channel x 1/8, ~0.9 M parameters, the reference architecture and T = 5) trains from
scratch on 128x128 clips for about 5 minutes on 2 CPU cores; the loss falls from ~4 to ~1.8. A from-scratch
detector this small and this short learns only the beginnings of detection: expect mAP50 of a few 1e-3 (paper
profile), rising with `--config.train.epochs`. Rerunning resumes from the last checkpoint.
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
    # The reference trains on letterboxed clips but tests on stretched ones; a model trained for a few minutes
    # does not survive that aspect-ratio shift, so the demo trains on the test-time (stretch) resize.
    c.data.train_resize = "stretch"
    c.data.num_workers = 0                # in-process loading (2-core machines)
    c.data.num_threads = 2
    c.train.batch_size = 8
    c.train.epochs = 12                   # ~340 steps: about 5 minutes on 2 CPU cores
    c.train.lr.base = 0.16                # lr_max = 8/64 x 0.16 = 2e-2 (inside the reference clamp)
    c.train.lr.min = 1.6e-3
    c.train.lr.warmup_epochs = 1
    c.train.lr.no_aug_epochs = 1
    c.train.log_every_steps = 20
    c.train.checkpoint_every_epochs = 4
    c.train.eval_every_epochs = 0         # `make demo` runs evaluate.py (metrics, plots) after training
    c.eval.batch_size = 8
    c.eval.num_vis = 12                   # detection grid PNG (TP / miss / FP colours)
    return c
