"""Runs N steps of every phase of a config in kdjax and in the PyTorch reference, in float32 and in float64, and
prints one table per dtype.

    python -m parity.check --config configs/ema.py --steps 20 [--config.optimizer.name=sgd ...]
                           [--dtype=both|float64|float32] [--floors=false]

Both frameworks start each phase from the same weights and see the same batches in the same order (the study's
data.epoch_order) and bit-identical inputs. The KD phases distil from the teacher that kdjax trained in the teacher
phase's N steps (in that dtype), given to both. The student-weights EMA is kept in every student phase with
ema.student_decay, or --student_decay when that is 0, so that it is always checked.

--dtype=both (the default) runs float32, then float64, and passes only if both do:
  float64 decides semantics: every step's loss, the parameters and logits after N steps, to ~1e-9 of what
          training moved them, where rounding is ~1e-16 (parity/tolerances.py FLOAT64);
  float32 is reported against a noise floor measured in the same run (each framework against itself on the
          mirrored problem, parity/mirror.py; --floors=false skips it) and decides what is robust on any
          machine: the forward on the same weights and the first steps' losses. Accuracy counts are reported
          with the examples close enough to flip (they follow from the logits).
Matmuls and convs run at full float32 precision on both sides (no TF32 on a GPU: parity/precision.py); the
header says where each framework ran. Exit status 1 when a decided value is past its bound; 2 for bad arguments.
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
from parity import precision

DTYPE_CHOICES = {"both": ("float32", "float64"), "float32": ("float32",), "float64": ("float64",)}


def check(config, steps: int, student_decay: float, dtypes=("float32", "float64"), floors: bool = True,
          out=sys.stdout) -> list[compare.Row]:
  """Runs every phase of `config` for `steps` steps in both frameworks, once per dtype; prints and returns the
  rows (float32 with its mirrored runs when `floors`)."""
  precision.set_precision()
  decay = float(config.ema.student_decay) or student_decay
  all_rows, tables, dataset = [], [], None
  for dtype in dtypes:
    setup = harness.make_setup(config, dtype, dataset)
    dataset = setup.dataset
    batches = harness.first_steps(setup, steps)
    teacher_params = setup.initial_params["teacher"]
    with_floors = floors and dtype == "float32"
    rows = []
    for phase in config.phases:
      start = time.perf_counter()
      run = harness.run_phase(setup, phase, batches, teacher_params=teacher_params, student_decay=decay,
                              floors=with_floors)
      rows += compare.rows(run, dataset.val_labels)
      runs = "in each framework" + (" and mirrored" if with_floors else "")
      print(f"  {dtype} {phase}: {steps} steps {runs} ({time.perf_counter() - start:.1f} s)", file=out, flush=True)
      if phase == "teacher":
        teacher_params = run.jax.params["teacher"]
    role = {"float64": "decides semantics: every quantity (parity/tolerances.py FLOAT64)",
            "float32": ("reported against its noise floor (kdjax and PyTorch each against the mirrored problem); "
                        "decides the forward on the same weights and the first steps' losses"
                        if with_floors else "no floor measured: decides the forward on the same weights and "
                        "step 1's loss")}[dtype]
    tables.append(f"\n{dtype}: {role}\n\n{compare.table(rows)}")
    all_rows += rows
  print(f"\nparity: {dataset.name} {dataset.image_shape[0]}x{dataset.image_shape[1]}, "
        f"{len(dataset.train_labels)} train / {len(dataset.val_labels)} validation, batch {config.batch_size}, "
        f"optimizer {config.optimizer.name} lr {config.optimizer.learning_rate:g} "
        f"wd {config.optimizer.weight_decay:g}, T {config.kd.temperature:g}, ema.decay {config.ema.decay:g}, "
        f"student-weights EMA decay {decay:g}\n{precision.summary()}", file=out)
  print("\n".join(tables), file=out)
  failures = [f"{row.dtype} {row.model}: {failure}" for row in all_rows for failure in row.failures]
  print("\n" + ("\n".join(f"FAIL {line}" for line in failures) if failures
                else "all within tolerances (parity/tolerances.py)"), file=out, flush=True)
  return all_rows


def _usage_error(message: str) -> None:
  """Bad arguments: one line on stderr, exit status 2."""
  print(f"parity.check: error: {' '.join(message.split())}", file=sys.stderr)
  sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing, with a bad flag reported as one line and exit 2 (absl's own prints a usage hint, exits 1)."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:
    _usage_error(str(error))


def main(argv):
  if len(argv) > 1:
    _usage_error(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)
  if _STEPS.value < 1:
    _usage_error(f"--steps must be >= 1, got {_STEPS.value}")
  if not 0 <= _STUDENT_DECAY.value < 1:
    _usage_error(f"--student_decay must be in [0, 1), got {_STUDENT_DECAY.value}")
  try:
    config = _CONFIG.value
    config.phases  # config_flags reports a config file it could not load only when the config is first used
  except OSError:
    _usage_error(f"cannot load config file {flags.FLAGS['config'].config_filename!r}")
  try:
    rows = check(config, _STEPS.value, _STUDENT_DECAY.value, DTYPE_CHOICES[_DTYPE.value], _FLOORS.value)
  except (config_lib.ConfigError, data_lib.DataError) as error:
    _usage_error(str(error))
  sys.exit(0 if all(row.ok for row in rows) else 1)


if __name__ == "__main__":
  # Flags are defined only when run as a program, so tests can import this module beside other CLIs.
  _CONFIG = config_flags.DEFINE_config_file("config", None, "A kdjax config file, e.g. configs/ema.py.",
                                            lock_config=True)
  _STEPS = flags.DEFINE_integer("steps", 20, "Training steps per phase, in each framework.")
  _STUDENT_DECAY = flags.DEFINE_float(
      "student_decay", 0.99, "The student-weights EMA decay checked when the config's ema.student_decay is 0.")
  _DTYPE = flags.DEFINE_enum("dtype", "both", list(DTYPE_CHOICES),
                             "float64 decides semantics; float32 is measured against its noise floor; both: both.")
  _FLOORS = flags.DEFINE_bool("floors", True, "float32: also run each framework on the mirrored problem (the "
                              "noise floor), which decides how many first steps' losses are held to the bound.")
  flags.mark_flags_as_required(["config"])
  app.run(main, flags_parser=parse_flags)
