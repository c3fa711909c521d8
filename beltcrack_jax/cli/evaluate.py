"""`beltcrack-evaluate` (and `python evaluate.py`): evaluate a trained BeltCrackDet checkpoint on a split
(metrics.json, PR curve, detection grid, table).

    beltcrack-evaluate --config default --workdir W [--profile paper|paper-stated|callback|deployment]
    beltcrack-evaluate --config default --workdir W --step best      # the best-on-validation weights
    beltcrack-evaluate --config configs/default.py --checkpoint W/checkpoints/12000 [--raw_weights]

EMA weights by default (the reference evaluates its EMA model). Every threshold the profile uses is printed.
"""

from absl import app, flags

from beltcrack_jax.cli.config_flag import define_config_flag
from beltcrack_jax.cli.logs import quiet_absl_logging
from beltcrack_jax.cli.runner import run_main

define_config_flag("config", "Config the checkpoint was trained with")
flags.DEFINE_string("workdir", None, "Training workdir: its latest checkpoint is evaluated.")
flags.DEFINE_string("checkpoint", None, "A checkpoint folder (workdir, checkpoints/<step> or its state/).")
flags.DEFINE_string("step", None, "Checkpoint under --workdir: a step number, 'latest' (default) or 'best' (the "
                    "best validation mAP50 the train loop kept in <workdir>/best).")
flags.DEFINE_bool("raw_weights", False, "Evaluate the raw (non-EMA) weights.")
flags.DEFINE_string("profile", None, "Metric profile (default: config.eval.profile).")
flags.DEFINE_string("split", None, "Split (default: config.eval.split or config.data.test_split).")
flags.DEFINE_string("output_dir", None, "Where to write results (default: <workdir>/eval/<profile>_<split>_step<k>).")
flags.DEFINE_bool("figures", True, "Write the PR curve / detection grid / heat-map PNGs.")
flags.mark_flags_as_mutual_exclusive(["workdir", "checkpoint"], required=True)
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    quiet_absl_logging()
    from beltcrack_jax.eval.evaluator import run_evaluation

    run_evaluation(FLAGS.config, workdir=FLAGS.workdir, checkpoint=FLAGS.checkpoint, step=FLAGS.step,
                   use_ema=not FLAGS.raw_weights, profile=FLAGS.profile, split=FLAGS.split,
                   out_dir=FLAGS.output_dir, figures=FLAGS.figures)


def run():
    """Console-script entry point."""
    flags.mark_flag_as_required("config")
    run_main(main, __name__)
