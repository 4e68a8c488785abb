"""Runs a kdjax study: python -m kdjax.main --config configs/ema.py --workdir runs/ema [--config.x=...]."""

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from kdjax import cli
from kdjax import experiment
from kdjax import progress

_CONFIG = config_flags.DEFINE_config_file("config", None, "A config file, e.g. configs/ema.py.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the run writes its files.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
  cli.quiet_stderr()
  with progress.printing(sys.stdout):  # the run's lines (the kdjax logger) on stdout
    code = cli.run_main("kdjax", lambda: experiment.train_and_evaluate(_CONFIG.value, _WORKDIR.value))
  sys.exit(code)


if __name__ == "__main__":
  app.run(main)
