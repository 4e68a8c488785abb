"""Tests the original's EMA without training: python -m kdjax.cli.interpolation --workdir WORKDIR.

For each seed of a finished study (WORKDIR, or its seed_<s>/ folders) it sets the trained teacher's tensors that the
original's EMA pairs with the student's (PyTorch's zip order, equal shapes only) to (1 - w)*teacher + w*student for
each w of --weights, the student being the trained student_kd, the trained student_ce or the seed's initial student
(--students), and reports the teacher's top-1 on the whole validation split; beside it, the run's own EMA at each
collapse-diagnostic point of its kd_ema phase, where its paired tensors hold a share w = 1 - alpha^k of the student
after k updates. Nothing trains. Writes WORKDIR/interpolation.json, interpolation.md and interpolation.png (never
over an existing one unless --overwrite) and prints the table.

Exit status: 0 done; 2 a flag, workdir, missing or unfinished phase or existing output that cannot be used (one line
naming it); 1 a checkpoint that cannot be read.
"""

import sys

from absl import app
from absl import flags
from absl import logging

from kdjax import progress
from kdjax.cli import exits as cli
from kdjax.cli import help as help_lib

PROG = "kdjax.cli.interpolation"
DEFAULT_WEIGHTS = "0,0.02,0.05,0.1,0.15,0.2,0.3,0.5,1"   # study/interpolation.DEFAULT_WEIGHTS (that module loads JAX)
DEFAULT_STUDENTS = "student_kd,student_ce,initial"


def _split(text: str) -> list[str]:
  return [part.strip() for part in text.split(",") if part.strip()]


def main(argv) -> None:
  if len(argv) > 1:
    cli.usage_error(PROG, f"unexpected argument {argv[1]!r}; the workdir is --workdir=WORKDIR (see --help)")
  if not _WORKDIR.value:
    cli.usage_error(PROG, "--workdir is required: a finished study's workdir (see --help)")
  logging.set_verbosity(logging.ERROR)   # Orbax warns about what a one-line error says anyway
  cli.quiet_stderr()
  text = []

  def body():   # JAX and the study load here, after --help and the flags
    from kdjax.report import interpolation as report_lib
    from kdjax.store.rundir import RunDir
    from kdjax.study import interpolation
    try:
      weights = interpolation.check_weights(_split(_WEIGHTS.value))
      sources = interpolation.check_sources(_split(_STUDENTS.value))
      interpolation.seed_runs(_WORKDIR.value)   # a workdir (its config.json) before RunDir would create the folder
      json_path, md_path, png_path = interpolation.output_paths(_WORKDIR.value, _OVERWRITE.value)
      run_dir = RunDir(_WORKDIR.value)
      with run_dir.locked(shared=True):   # no study writes the workdir meanwhile (a running one: one line, exit 2)
        result = interpolation.run(_WORKDIR.value, weights, sources)
        run_dir.write_json(json_path.name, result)
        report_lib.plot(result, png_path)
        text.append(report_lib.markdown(result))
        run_dir.write_text(md_path.name, text[-1])   # last: it names the figure
    except interpolation.InputError as error:
      cli.usage_error(PROG, error)

  with progress.printing(sys.stderr):
    code = cli.run_main(PROG, body)
  if code:
    sys.exit(code)
  print(text[-1], flush=True)


def run() -> None:
  """The program: its flags are defined here, not on import, so tests can import this module beside other CLIs."""
  global _WORKDIR, _WEIGHTS, _STUDENTS, _OVERWRITE
  _WORKDIR = flags.DEFINE_string("workdir", None, "A finished study's workdir (one seed, or several in seed_<s>/).")
  _WEIGHTS = flags.DEFINE_string("weights", DEFAULT_WEIGHTS, "The grid of w, the student's share of each paired "
                                 "tensor: comma-separated values in [0, 1].")
  _STUDENTS = flags.DEFINE_string("students", DEFAULT_STUDENTS, "Where the student's weights come from, "
                                  "comma-separated: student_kd, student_ce (trained), initial (the seed's initial "
                                  "weights, rebuilt).")
  _OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace existing interpolation.{json,md,png} in the workdir.")
  app.run(main, flags_parser=parse_flags)


EXAMPLES = [
    "python -m kdjax.cli.interpolation --workdir runs/ema                 # every seed, the default grid and students",
    "python -m kdjax.cli.interpolation --workdir runs/ema --weights=0,0.1,0.2 --students=student_kd --overwrite",
]


def parse_flags(argv: list[str]) -> list[str]:
  """--help and --helpfull first (kdjax.cli.help, exit 0), then kdjax's flag parsing (a mistake: exit 2)."""
  help_lib.answer(argv, __doc__, ("workdir", "weights", "students", "overwrite"), EXAMPLES)
  return cli.parse_flags(PROG, argv, config_flag=None)


if __name__ == "__main__":
  run()
