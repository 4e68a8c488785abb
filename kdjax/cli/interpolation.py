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


def define_flags(values: flags.FlagValues) -> None:
  """The tool's flags, defined in `values` (its own FlagValues: exits.flag_values), not on import, so that tests
  can import this module beside other CLIs and call main more than once."""
  flags.DEFINE_string("workdir", None, "A finished study's workdir (one seed, or several in seed_<s>/).",
                      flag_values=values)
  flags.DEFINE_string("weights", DEFAULT_WEIGHTS, "The grid of w, the student's share of each paired tensor: "
                      "comma-separated values in [0, 1].", flag_values=values)
  flags.DEFINE_string("students", DEFAULT_STUDENTS, "Where the student's weights come from, comma-separated: "
                      "student_kd, student_ce (trained), initial (the seed's initial weights, rebuilt).",
                      flag_values=values)
  flags.DEFINE_bool("overwrite", False, "Replace existing interpolation.{json,md,png} in the workdir.",
                    flag_values=values)


def main(argv=None) -> int:
  """`python -m kdjax.cli.interpolation --workdir WORKDIR [flags]`; argv without the program (default:
  sys.argv[1:]). Returns the exit code (kdjax.cli.exits); a usage mistake exits 2 (SystemExit)."""
  argv = [f"python -m {PROG}", *(sys.argv[1:] if argv is None else argv)]
  values = cli.flag_values(define_flags)
  help_lib.answer(argv, __doc__, FLAG_NAMES, EXAMPLES, values)
  rest = cli.parse_flags(PROG, argv, config_flag=None, values=values)
  if len(rest) > 1:
    cli.usage_error(PROG, f"unexpected argument {rest[1]!r}; the workdir is --workdir=WORKDIR (see --help)")
  workdir = values.workdir
  if not workdir:
    cli.usage_error(PROG, "--workdir is required: a finished study's workdir (see --help)")
  logging.set_verbosity(logging.ERROR)   # Orbax warns about what a one-line error says anyway
  cli.quiet_stderr()
  text = []

  def body():   # JAX and the study load here, after --help and the flags
    from kdjax.report import interpolation as report_lib
    from kdjax.store.rundir import RunDir
    from kdjax.study import interpolation
    try:
      weights = interpolation.check_weights(_split(values.weights))
      sources = interpolation.check_sources(_split(values.students))
      interpolation.seed_runs(workdir)   # a workdir (its config.json) before RunDir would create the folder
      json_path, md_path, png_path = interpolation.output_paths(workdir, values.overwrite)
      run_dir = RunDir(workdir)
      with run_dir.locked(shared=True):   # no study writes the workdir meanwhile (a running one: one line, exit 2)
        result = interpolation.run(workdir, weights, sources)
        run_dir.write_json(json_path.name, result)
        report_lib.plot(result, png_path)
        text.append(report_lib.markdown(result))
        run_dir.write_text(md_path.name, text[-1])   # last: it names the figure
    except interpolation.InputError as error:
      cli.usage_error(PROG, error)

  with progress.printing(sys.stderr):
    code = cli.run_main(PROG, body)
  if code:
    return code
  print(text[-1], flush=True)
  return cli.OK


EXAMPLES = [
    "python -m kdjax.cli.interpolation --workdir runs/ema                 # every seed, the default grid and students",
    "python -m kdjax.cli.interpolation --workdir runs/ema --weights=0,0.1,0.2 --students=student_kd --overwrite",
]

FLAG_NAMES = ("workdir", "weights", "students", "overwrite")


if __name__ == "__main__":
  sys.exit(main())
