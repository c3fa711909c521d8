"""One logging default for every CLI: orbax / absl INFO chatter off unless the user asks for it."""

from absl import flags, logging


def quiet_absl_logging() -> None:
    """absl verbosity WARNING unless `--verbosity` was given (argparse CLIs never parse it, so always there)."""
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
