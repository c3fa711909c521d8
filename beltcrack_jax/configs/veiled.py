"""The temporal-gain experiment on `synthetic_veiled` (EXPERIMENTS.md, section 3): the demo recipe on the demo's
bold cracks, with strong transient veils over part of ~60 % of the frames, so the key frame alone often hides a
crack that the 5-frame clip shows. 10 epochs (~1000 steps): the demo reaches test mAP50 ~0.6 in 7.

    python experiments/temporal_gain.py --config veiled      # full model vs single frame, 3 seeds each
    python train.py --config veiled --workdir W [--config.seed=1] [single frame:
        --config.model.hsm=False --config.model.atm=False --config.model.wfm=False --config.model.rcu=0]
"""

from beltcrack_jax.configs import demo as _demo


def get_config():
    c = _demo.get_config()
    c.data.name = "beltcrack/synthetic_veiled"
    c.train.epochs = 10                   # 90 training sequences (~102 steps / epoch): ~1020 steps
    c.train.eval_every_epochs = 2         # learning curves with 5 val points
    c.train.checkpoint_every_epochs = 2
    return c
