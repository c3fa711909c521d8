"""Learning regression: the tiny full model and the single-frame ablation, trained from scratch with the demo's
recipe on a handful of synthetic clips, detect the cracks of those clips (mAP50 >= 0.9).

This guards every change to the model, the loss, the data pipeline and the train step: parity tests check that
each part computes what the reference computes; this checks that together they still learn. Runs the real train
loop (`train_and_evaluate`), the real pipeline (TFDS records of the `tiny` synthetic preset) and the real
evaluator (paper profile) through `beltcrack_jax.train.overfit`.
"""

import importlib.util
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SINGLE_FRAME = dict(hsm=False, atm=False, wfm=False, rcu=0)
CLIPS, STEPS = 8, 150


def learning_config(data_dir, **model):
    spec = importlib.util.spec_from_file_location("_demo_cfg", ROOT / "configs" / "demo.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()                 # the demo recipe (init, prior, lr, schedule) ...
    c.data.name = "beltcrack/synthetic_tiny"
    c.data.data_dir = str(data_dir)
    c.data.image_size = 64               # ... on 64x64 clips of the tiny preset
    c.data.augment.flip = c.data.augment.hsv = False
    c.model.backbone_per_frame = 0       # one backbone call: the same numbers, less to compile
    c.model.swin_window_chunk = 0
    c.train.log_every_steps = STEPS
    c.train.progress_bar = False
    c.model.update(model)
    return c


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tfds")


@pytest.mark.parametrize("variant", ["full", "single_frame"])
def test_tiny_models_fit_a_handful_of_clips(variant, data_dir):
    from beltcrack_jax.train.overfit import overfit

    cfg = learning_config(data_dir, **(SINGLE_FRAME if variant == "single_frame" else {}))
    res = overfit(cfg, CLIPS, STEPS)
    assert res["map50"] >= 0.9, res
    assert res["eval_loss"] < 1.0, res
