"""`app.run` for the absl CLIs, with their flags listed by `--help`.

absl's `--help` lists the flags of the main module (by `sys.argv[0]`); a console script's main module is its
generated wrapper and `python train.py`'s is the thin alias, so neither would list any. Declaring the CLI
module's flags key for `sys.argv[0]` fixes both.
"""

import sys

from absl import app, flags


def run_main(main, module_name: str, argv=None) -> None:
    for flag in flags.FLAGS.get_key_flags_for_module(module_name):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    app.run(main, argv=argv)
