"""Evaluate a trained BeltCrackDet checkpoint: `python evaluate.py --config configs/default.py --workdir W` — the
same as `beltcrack-evaluate` (see beltcrack_jax/cli/evaluate.py for the flags)."""

from beltcrack_jax.cli.evaluate import run

if __name__ == "__main__":
    run()
