"""`beltcrack-train` (and `python train.py`): train BeltCrackDet.

    beltcrack-train --config demo|configs/default.py --workdir W [--config.train.batch_size=8 ...]

Resumes automatically from the latest checkpoint in W; refuses a W that holds a run of another config.
Multi-host: start one process per host with --coordinator_address/--num_processes/--process_id (or the
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID environment variables, or a SLURM allocation).
"""

import sys

from absl import app, flags

from beltcrack_jax.cli.config_flag import define_config_flag
from beltcrack_jax.cli.logs import quiet_absl_logging
from beltcrack_jax.cli.runner import run_main

_CONFIG = define_config_flag("config", "Training config")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, config.json, metrics and TensorBoard.")
_COORD = flags.DEFINE_string("coordinator_address", "", "host:port of process 0 for jax.distributed (multi-host).")
_NPROC = flags.DEFINE_integer("num_processes", 0, "Number of processes (multi-host).")
_PID = flags.DEFINE_integer("process_id", -1, "This process's index (multi-host).")
_LOCAL_DEV = flags.DEFINE_string("local_device_ids", "", "Comma-separated local device ids (multi-host, optional).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    quiet_absl_logging()
    from beltcrack_jax.data.errors import DatasetError
    from beltcrack_jax.data.problems import LayoutError
    from beltcrack_jax.train.checkpoint import IncompatibleWorkdirError
    from beltcrack_jax.train.loop import NonFiniteLossError, maybe_initialize_distributed, train_and_evaluate

    maybe_initialize_distributed(_COORD.value, _NPROC.value, _PID.value, _LOCAL_DEV.value)
    try:
        train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except (LayoutError, DatasetError, IncompatibleWorkdirError, NonFiniteLossError) as e:
        # These messages name the file / step and the fix; a traceback would only bury them.
        sys.exit(f"error: {e}")


def run():
    """Console-script entry point."""
    run_main(main, __name__)
