"""Runs N steps of every phase of a config in kdjax and in the PyTorch reference and prints one table.

    python -m parity.check --config configs/ema.py --steps 20 [--config.optimizer.name=sgd ...] [--dtype=float64]

Both frameworks start each phase from the same weights and see the same batches in the same order (the study's
data.epoch_order). The KD phases distil from the teacher that kdjax trained in the teacher phase's N steps, given
to both. The student-weights EMA is kept in every student phase with ema.student_decay, or --student_decay
when that is 0, so that it is always checked. kdjax also runs each phase a second time from start weights moved
by one ulp, each batch reversed (the "twin", --twin): how far fp32 rounding alone carries the trajectory. Exit status 1 when a value
is past parity/tolerances.py; 2 for bad arguments.
"""

import sys
import time

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from kdjax import config as config_lib
from kdjax import data as data_lib
from parity import compare
from parity import harness



def check(config, steps: int, student_decay: float, dtype: str = "float32", twin: bool = True,
          out=sys.stdout) -> list[compare.Row]:
  """Runs every phase of `config` for `steps` steps in both frameworks; prints and returns the table's rows."""
  harness.set_precision()
  setup = harness.make_setup(config, dtype)
  decay = float(config.ema.student_decay) or student_decay
  batches = harness.first_steps(setup, steps)
  labels = setup.dataset.val_labels
  teacher_params = setup.initial_params["teacher"]
  all_rows = []
  for phase in config.phases:
    start = time.perf_counter()
    run = harness.run_phase(setup, phase, batches, teacher_params=teacher_params, student_decay=decay, twin=twin)
    all_rows += compare.rows(run, labels)
    print(f"  {phase}: {steps} steps in each framework ({time.perf_counter() - start:.1f} s)", file=out,
          flush=True)
    if phase == "teacher":
      teacher_params = run.jax.params["teacher"]
  dataset = setup.dataset
  print(f"\nparity: {dataset.name} {dataset.image_shape[0]}x{dataset.image_shape[1]}, "
        f"{len(dataset.train_labels)} train / {len(labels)} validation, batch {config.batch_size}, "
        f"optimizer {config.optimizer.name} lr {config.optimizer.learning_rate:g} "
        f"wd {config.optimizer.weight_decay:g}, T {config.kd.temperature:g}, ema.decay {config.ema.decay:g}, "
        f"student-weights EMA decay {decay:g}, {dtype}\n", file=out)
  print(compare.table(all_rows), file=out)
  failures = [f"{row.model}: {failure}" for row in all_rows for failure in row.failures]
  print("\n" + ("\n".join(f"FAIL {line}" for line in failures) if failures
                else "all within tolerances (parity/tolerances.py)"), file=out, flush=True)
  return all_rows


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)
  if _STEPS.value < 1:
    print(f"parity.check: error: --steps must be >= 1, got {_STEPS.value}", file=sys.stderr)
    sys.exit(2)
  if not 0 <= _STUDENT_DECAY.value < 1:
    print(f"parity.check: error: --student_decay must be in [0, 1), got {_STUDENT_DECAY.value}", file=sys.stderr)
    sys.exit(2)
  try:
    rows = check(_CONFIG.value, _STEPS.value, _STUDENT_DECAY.value, _DTYPE.value, _TWIN.value)
  except (config_lib.ConfigError, data_lib.DataError) as error:
    print(f"parity.check: error: {error}", file=sys.stderr)
    sys.exit(2)
  sys.exit(0 if all(row.ok for row in rows) else 1)


if __name__ == "__main__":
  # Flags are defined only when run as a program, so tests can import this module beside other CLIs.
  _CONFIG = config_flags.DEFINE_config_file("config", None, "A kdjax config file, e.g. configs/ema.py.",
                                            lock_config=True)
  _STEPS = flags.DEFINE_integer("steps", 20, "Training steps per phase, in each framework.")
  _STUDENT_DECAY = flags.DEFINE_float(
      "student_decay", 0.99, "The student-weights EMA decay checked when the config's ema.student_decay is 0.")
  _DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "float64"],
                             "Both frameworks' compute dtype; float64 separates rounding from semantics.")
  _TWIN = flags.DEFINE_bool("twin", True, "Also run kdjax with other roundings (one ulp away, batches reversed): the floor.")
  flags.mark_flags_as_required(["config"])
  app.run(main)
