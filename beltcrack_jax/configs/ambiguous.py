"""The temporal-gain experiment (EXPERIMENTS.md): the demo recipe on the `synthetic_ambiguous` data, where a
transient veil hides part of about half the frames and the cracks are fainter, so the key frame alone is often
not enough while the 5-frame clip is.

    python experiments/temporal_gain.py            # full model vs single frame, 3 seeds each, -> EXPERIMENTS.md
    python train.py --config configs/ambiguous.py --workdir W [--config.seed=1] [single frame:
        --config.model.hsm=False --config.model.atm=False --config.model.wfm=False --config.model.rcu=0]
"""

from beltcrack_jax.configs import demo as _demo


def get_config():
    c = _demo.get_config()
    c.data.name = "beltcrack/synthetic_ambiguous"
    c.train.epochs = 8                    # 54 training sequences (~70 steps / epoch): ~550 steps
    c.train.eval_every_epochs = 2         # learning curves with 4 val points
    c.train.checkpoint_every_epochs = 2
    return c
