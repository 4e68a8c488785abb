"""kdjax: the original's teacher/student knowledge-distillation study, in JAX/Flax.

How does a student perform against its teacher, with and without the original's EMA updates? A run trains the
teacher, a student on labels (the baseline), a student by KD from the frozen teacher and (ema.py) a student by KD
from a copy of the teacher that the original's EMA pulls toward the student every step. It evaluates every model on
the whole validation split after every epoch and writes to WORKDIR: report.md (the table and the answer),
report.json, curves.png, metrics.jsonl, checkpoints/ (a rerun resumes) and tensorboard/.

usage:
  python -m kdjax.main --config ema.py --workdir runs/ema [--config.FIELD=VALUE ...]
  python -m kdjax.main --config ema.py --show_config [--config.FIELD=VALUE ...]
"""

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from kdjax.cli import exits as cli
from kdjax.config import lookup as configs
from kdjax import progress
from kdjax.errors import ConfigError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A shipped config (ema.py, ema, configs/ema.py) or a config file's path.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the run writes its files (an existing run is resumed).")
_SHOW_CONFIG = flags.DEFINE_bool("show_config", False,
                                 "Print every field of the config, overrides applied, and exit (no --workdir).")

_HELP_ARGS = {"-h", "-help", "--help", "-helpshort", "--helpshort", "-?"}
_HELPFULL_ARGS = {"-helpfull", "--helpfull"}


def usage() -> str:
  """--help: what the study is, the shipped configs, how to see and change every field, the flags."""
  available = configs.available()
  width = max(len(name) for name in available) + len(".py") + 2   # a name never runs into its purpose
  shipped = "\n".join(f"  {name + '.py':<{width}}{purpose}" for name, purpose in available.items())
  flag_lines = "\n".join(f"  --{holder.name}: {flags.FLAGS[holder.name].help}"
                         for holder in (_CONFIG, _WORKDIR, _SHOW_CONFIG))
  return (f"{__doc__.strip()}\n\n"
          f"configs (--config NAME.py, NAME or configs/NAME.py; or the path of your own config file):\n"
          f"{shipped}\n\n"
          f"Every config field can be changed on the command line, e.g. --config.epochs=2 "
          f"--config.kd.temperature=2;\n"
          f"--config ema.py --show_config lists every field with its value (and what it means).\n\n"
          f"flags:\n{flag_lines}")


def parse_flags(argv: list[str]) -> list[str]:
  """app.run's flags parser (cli.parse_flags: the config named or found, its overridden fields checked; any
  mistake on the command line is `kdjax: error: ONE LINE` and exit 2). --help prints `usage()`, exit 0."""
  if any(arg in _HELP_ARGS for arg in argv[1:]):
    print(usage())
    sys.exit(0)
  if any(arg in _HELPFULL_ARGS for arg in argv[1:]):   # absl's own would first insist on --config
    print(f"{usage()}\n\nevery flag, absl's included:\n{flags.FLAGS.get_help()}")
    sys.exit(0)
  rest = cli.parse_flags("kdjax", argv)
  if len(rest) > 1:
    cli.usage_error("kdjax", f"unexpected arguments: {' '.join(rest[1:])}")
  if not _SHOW_CONFIG.value and not _WORKDIR.value:
    cli.usage_error("kdjax", "--workdir is required: the folder the run writes to (or --show_config)")
  return rest


def main(argv):
  del argv  # parse_flags refused anything but flags
  config = _CONFIG.value
  if _SHOW_CONFIG.value:
    from kdjax.config import validation   # the values a run would refuse, refused here too (exit 2)
    try:
      validation.validate(config)
    except ConfigError as error:
      cli.usage_error("kdjax", error)
    changed = list(flags.FLAGS["config"].override_values)
    source = flags.FLAGS["config"].config_filename + (f"; changed: {', '.join(changed)}" if changed else "")
    try:
      print(configs.describe(config, source), flush=True)
    except BrokenPipeError:  # e.g. `--show_config | head`
      cli.exit_now(0)
    return
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
  cli.quiet_stderr()
  if config.get("speed", {}).get("host_malloc") == "tuned":
    from kdjax.training import host_memory
    host_memory.tune()   # before JAX starts its CPU backend, whose worker threads then share the tuned heap
  from kdjax.study import experiment  # here, so that --help and --show_config do not wait for JAX
  with progress.printing(sys.stdout):
    code = cli.run_main("kdjax", lambda: experiment.train_and_evaluate(config, _WORKDIR.value))
  sys.exit(code)


def run() -> None:
  cli.tolerant_output()   # before anything prints: --show_config, an error line naming a path
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
