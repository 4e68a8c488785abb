"""Several finished studies side by side: python -m kdjax.cli.answer NAME=WORKDIR [NAME=WORKDIR ...].

Each WORKDIR is a finished study (one seed, or several in seed_<s>/), shown under NAME. Prints a table with a column
per study and a row per model (mean ± std of validation top-1 over the study's seeds; a name is never merged across
studies, where it can be another model), then each study's paired differences (same seed: same initial weights and
data order) with their 95 % interval over seeds, one Holm family over all of them, and the bootstrap over seeds and
validation images. Reads report.json files only: nothing trains, no checkpoint is read.

Exit status: 0 done; 2 a command line, workdir or report that cannot be used (one line naming it).
"""

import sys

from absl import flags

from kdjax.cli import exits as cli
from kdjax.cli import help as help_lib

PROG = "kdjax.cli.answer"


def define_flags(values: flags.FlagValues) -> None:
  """The tool's flags in its own FlagValues (exits.flag_values)."""
  flags.DEFINE_string("out", None, "Also write the table to this Markdown file.", flag_values=values)


def parse_studies(args: list[str]) -> dict[str, str]:
  """{NAME: WORKDIR} from NAME=WORKDIR arguments, in order (a usage error names a malformed or repeated one)."""
  studies = {}
  for arg in args:
    name, sep, workdir = arg.partition("=")
    if not sep or not name.strip() or not workdir.strip():
      cli.usage_error(PROG, f"{arg!r}: each study is NAME=WORKDIR (see --help)")
    if name in studies:
      cli.usage_error(PROG, f"{arg!r}: the name {name!r} is given twice")
    studies[name] = workdir
  if not studies:
    cli.usage_error(PROG, "no study given: NAME=WORKDIR [NAME=WORKDIR ...] (see --help)")
  return studies


def main(argv=None) -> int:
  """`python -m kdjax.cli.answer NAME=WORKDIR ... [--out FILE]`; argv without the program (default: sys.argv[1:]).
  Returns the exit code (kdjax.cli.exits); a usage mistake exits 2 (SystemExit)."""
  argv = [f"python -m {PROG}", *(sys.argv[1:] if argv is None else argv)]
  values = cli.flag_values(define_flags)
  help_lib.answer(argv, __doc__, FLAG_NAMES, EXAMPLES, values)
  rest = cli.parse_flags(PROG, argv, config_flag=None, values=values)
  studies = parse_studies(rest[1:])
  text = []

  def body():
    from kdjax.report import answer
    from kdjax.store import rundir
    text.append(answer.markdown(answer.build({name: rundir.read_seed_reports(workdir)
                                               for name, workdir in studies.items()})))
    if values.out:
      rundir.write_text_file(values.out, text[-1])

  code = cli.run_main(PROG, body, resumable=False)
  if code:
    return code
  print(text[-1], end="", flush=True)
  return cli.OK


EXAMPLES = [
    "python -m kdjax.cli.answer original=runs/tin_full relu=runs/tin_full_relu mean_teacher.py=runs/tin_full_mt",
    "python -m kdjax.cli.answer original=runs/ema --out answer.md",
]

FLAG_NAMES = ("out",)


if __name__ == "__main__":
  sys.exit(main())
