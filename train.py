"""Train BeltCrackDet: `python train.py --config configs/default.py --workdir W` — the same as `beltcrack-train`
(see beltcrack_jax/cli/train.py for the flags)."""

from beltcrack_jax.cli.train import run

if __name__ == "__main__":
    run()
