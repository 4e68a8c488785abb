"""Runs a kdjax study: python -m kdjax.main --config configs/ema.py --workdir runs/ema [--config.x=...]."""

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from kdjax import checkpoints
from kdjax import config as config_lib
from kdjax import data as data_lib
from kdjax import experiment
from kdjax import rundir
from kdjax import train

_CONFIG = config_flags.DEFINE_config_file("config", None, "A config file, e.g. configs/ema.py.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the run writes its files.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
  checkpoints.quiet_stderr()
  try:
    experiment.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (config_lib.ConfigError, data_lib.DataError) as error:
    print(f"kdjax: error: {error}", file=sys.stderr)
    sys.exit(2)
  except (train.DivergenceError, checkpoints.CheckpointError, rundir.WriteError) as error:
    print(f"kdjax: error: {error}", file=sys.stderr)
    checkpoints.exit_now(1)  # no teardown noise from a failed Orbax read after the one line
  except OSError as error:  # e.g. a full disk while writing report.md or curves.png
    print(f"kdjax: error: {error.filename or ''}: {error.strerror or error}", file=sys.stderr)
    checkpoints.exit_now(1)


if __name__ == "__main__":
  app.run(main)
