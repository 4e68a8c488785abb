"""Runs N steps of every phase of a config in kdjax and in the PyTorch reference, in float32 and in float64, and
prints one table per dtype.

    python -m parity.check --config configs/ema.py --steps 20 [--config.optimizer.name=sgd ...]
                           [--dtype=both|float64|float32] [--floors=false]

Both frameworks start each phase from the same weights and see the same batches in the same order (the study's
data.epoch_order) and bit-identical inputs. The KD phases distil from the teacher that kdjax trained in the teacher
phase's N steps (in that dtype), given to both. The student-weights EMA is kept in every student phase with
ema.student_decay, or --student_decay when that is 0, so that it is always checked.

--dtype=both (the default) runs each phase in float32, then in float64 from the same weights and teacher, and
passes only if both do: float64 decides semantics, float32 is reported beside the rounding measured in the same run
and decides only what holds on any machine (parity/tolerances.py; docs/parity.md#how-parity-is-decided).
--floors=false skips the mirrored runs. Exit status 1 when a decided value is past its bound; 2 for bad arguments.
"""

from __future__ import annotations

import sys
import time

from absl import flags
from absl import logging
from ml_collections import config_flags

from kdjax import progress
from kdjax.cli import exits as cli
from kdjax.cli import help as help_lib

DTYPE_CHOICES = {"both": ("float32", "float64"), "float32": ("float32",), "float64": ("float64",)}


PROG = "parity.check"


def check(config, steps: int, student_decay: float, dtypes=("float32", "float64"), floors: bool = True,
          out=sys.stdout) -> list[compare.Row]:
  """Runs every phase of `config` for `steps` steps in both frameworks, in each dtype; prints and returns the rows
  (float32's first, then float64's). With both dtypes, each phase's float64 run starts from the same weights and
  distils from the same teacher as its float32 run (kdjax's teacher trained in the first dtype's teacher phase,
  exact in float64), so that it is the float32 run's reference (compare: "rounding"). floors: float32 also runs
  the mirrored problem (compare: "mirror")."""
  from parity import compare   # PyTorch and JAX load here: --help and a bad flag answer without them
  from parity import harness
  from parity import precision
  precision.set_precision()
  decay = float(config.ema.student_decay) or student_decay
  print(f"parity.check: {steps} steps of {', '.join(config.phases)} in kdjax and PyTorch, in "
        f"{' then '.join(dtypes)}{' (and the mirrored problem in float32)' if floors and 'float32' in dtypes else ''}"
        f"\n{precision.summary()}", file=out, flush=True)
  setups, dataset = {}, None
  for dtype in dtypes:
    setups[dtype] = harness.make_setup(config, dtype, dataset)
    dataset = setups[dtype].dataset
  batches = harness.first_steps(setups[dtypes[0]], steps)
  teacher_params = setups[dtypes[0]].initial_params["teacher"]
  rows = {dtype: [] for dtype in dtypes}
  for phase in config.phases:
    runs = {}
    for dtype in dtypes:
      start = time.perf_counter()
      with_floors = floors and dtype == "float32"
      runs[dtype] = harness.run_phase(setups[dtype], phase, batches, teacher_params=teacher_params,
                                      student_decay=decay, floors=with_floors)
      mirrored = " and mirrored" if with_floors else ""
      print(f"  {dtype} {phase}: {steps} steps in each framework{mirrored} ({time.perf_counter() - start:.1f} s)",
            file=out, flush=True)
    if "float32" in runs and "float64" in runs:
      runs["float32"].reference = runs["float64"]
    for dtype in dtypes:
      rows[dtype] += compare.rows(runs[dtype], dataset.val_labels)
    if phase == "teacher":
      teacher_params = runs[dtypes[0]].jax.params["teacher"]
  print(f"\nparity: {dataset.name} {dataset.image_shape[0]}x{dataset.image_shape[1]}, "
        f"{len(dataset.train_labels)} train / {len(dataset.val_labels)} validation, batch {config.batch_size}, "
        f"optimizer {config.optimizer.name} lr {config.optimizer.learning_rate:g} "
        f"wd {config.optimizer.weight_decay:g}, T {config.kd.temperature:g}, ema.decay {config.ema.decay:g}, "
        f"student-weights EMA decay {decay:g}\n{precision.summary()}", file=out)
  for dtype in dtypes:
    print(f"\n{dtype}: {_role(dtype, 'float64' in dtypes)}\n\n{compare.table(rows[dtype])}", file=out)
  all_rows = [row for dtype in dtypes for row in rows[dtype]]
  failures = [f"{row.dtype} {row.model}: {failure}" for row in all_rows for failure in row.failures]
  print("\n" + ("\n".join(f"FAIL {line}" for line in failures) if failures
                else "all within tolerances (parity/tolerances.py)"), file=out, flush=True)
  return all_rows


def _role(dtype: str, with_float64: bool) -> str:
  """What a dtype's table decides (parity/tolerances.py)."""
  if dtype == "float64":
    return "decides semantics: every quantity (parity/tolerances.py FLOAT64)"
  if with_float64:
    gate = "while each framework's rounding (against its float64 run) is below a tenth of the bound"
  else:
    gate = "step 1 only (no float64 run to measure rounding against)"
  precision_check = "; each framework's forward and step-1 loss against its float64 ones" if with_float64 else ""
  return (f"decides the forward on the same weights and the first steps' losses, {gate}{precision_check}; "
          f"reports the rest beside its rounding")


def _usage_error(message: str) -> None:
  cli.usage_error(PROG, message)


FLAG_NAMES = ("config", "steps", "dtype", "floors", "student_decay")
EXAMPLES = [
    "python -m parity.check --config ema.py --steps 2 --dtype float32   # a first look: minutes",
    "python -m parity.check --config ema.py --steps 20                  # the full check: float32 and float64",
]


def define_flags(values: flags.FlagValues, argv: list[str]) -> None:
  """The tool's flags, defined in `values` (its own FlagValues: kdjax.cli.exits.flag_values), not on import, so
  that tests can import this module beside other CLIs and call main more than once; --config.FIELD overrides are
  read from `argv` (ml_collections defines a flag for each)."""
  config_flags.DEFINE_config_file("config", None, "A shipped config (ema.py, ema, configs/ema.py) or a config file's "
                                  "path.", flag_values=values, lock_config=True, sys_argv=argv)
  flags.DEFINE_integer("steps", 20, "Training steps per phase, in each framework.", flag_values=values)
  flags.DEFINE_float("student_decay", 0.99, "The student-weights EMA decay checked when the config's "
                     "ema.student_decay is 0.", flag_values=values)
  flags.DEFINE_enum("dtype", "both", list(DTYPE_CHOICES),
                    "float64 decides semantics; float32 is measured against its noise floor; both: both.",
                    flag_values=values)
  flags.DEFINE_bool("floors", True, "float32: also run each framework on the mirrored problem (a per-op rounding "
                    "model, reported beside the rounding measured against float64).", flag_values=values)
  flags.mark_flags_as_required(["config"], flag_values=values)


def main(argv=None) -> int:
  """`python -m parity.check --config NAME_OR_FILE [flags]`; argv without the program (default: sys.argv[1:]).
  kdjax's flag parsing (kdjax.cli.exits): --config by name or path, a bad flag one line and exit 2 (SystemExit);
  --help and --helpfull answered first (kdjax.cli.help), exit 0. Returns the exit code."""
  argv = [f"python -m {PROG}", *(sys.argv[1:] if argv is None else argv)]
  values = cli.flag_values(lambda values: define_flags(values, argv))
  help_lib.answer(argv, __doc__, FLAG_NAMES, EXAMPLES, values)
  rest = cli.parse_flags(PROG, argv, values=values)
  if len(rest) > 1:
    _usage_error(f"unexpected arguments: {' '.join(rest[1:])}")
  logging.set_verbosity(logging.WARNING)
  if values.steps < 1:
    _usage_error(f"--steps must be >= 1, got {values.steps}")
  if not 0 <= values.student_decay < 1:
    _usage_error(f"--student_decay must be in [0, 1), got {values.student_decay}")
  try:
    config = values.config
    config.phases  # config_flags reports a config file it could not load only when the config is first used
  except OSError:
    _usage_error(f"cannot load config file {values['config'].config_filename!r}")

  def body() -> int:   # a bad config value or data path: 2 (kdjax.cli.exits); a decided value past its bound: 1
    with progress.printing(sys.stdout):   # what each framework is doing, and its step counter, as it runs
      rows = check(config, values.steps, values.student_decay, DTYPE_CHOICES[values.dtype], values.floors)
    return cli.OK if all(row.ok for row in rows) else cli.BROKE
  return cli.run_main(PROG, body, resumable=False)


if __name__ == "__main__":
  sys.exit(main())
