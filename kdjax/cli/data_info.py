"""See what a data set holds: python -m kdjax.data info --config ema.py [--config.data.x=...] [--json].

Prepares the set if needed (as a run would), loads it as a run would (data.max_*_examples apply) and prints,
per split: examples, classes, image shape and dtype, the smallest and largest class counts; then the first
class names. --json prints one JSON object instead:
  {"dataset", "num_classes", "class_names" (first 10), "load_seconds",
   "splits": {"train": {"examples", "num_classes", "image_shape", "dtype", "min_class_count",
                        "max_class_count", "classes_present"}, "validation": {...}}}
"""

import contextlib
import json
import sys
import time

import numpy as np

from absl import flags
from absl import logging
from ml_collections import config_flags

from kdjax import data as data_lib
from kdjax import progress
from kdjax.cli import exits as cli
from kdjax.cli import help as help_lib
from kdjax.config import validation as config_validation

PROG = "kdjax.data"
COMMANDS = ("info",)
SHOWN_CLASS_NAMES = 10


def split_summary(images, labels, num_classes: int) -> dict:
  counts = [int(c) for c in np.bincount(labels, minlength=num_classes)]
  return {"examples": int(len(labels)), "num_classes": num_classes,
          "image_shape": [int(d) for d in images.shape[1:]], "dtype": str(images.dtype),
          "min_class_count": min(counts), "max_class_count": max(counts),
          "classes_present": sum(c > 0 for c in counts)}


def info(config) -> dict:
  config_validation.validate(config)
  start = time.perf_counter()
  dataset = data_lib.load(config.data)
  seconds = time.perf_counter() - start
  return {"dataset": dataset.name, "num_classes": dataset.num_classes,
          "class_names": list(dataset.class_names[:SHOWN_CLASS_NAMES]), "load_seconds": round(seconds, 2),
          "splits": {split: split_summary(*dataset.split(split), dataset.num_classes)
                     for split in ("train", "validation")}}


def format_text(summary: dict) -> str:
  lines = [f"{summary['dataset']}: {summary['num_classes']} classes (loaded in {summary['load_seconds']} s)"]
  for split, s in summary["splits"].items():
    shape = "x".join(str(d) for d in s["image_shape"])
    lines.append(f"  {split:<10} {s['examples']:>7,} examples  {s['classes_present']} classes present  "
                 f"images {shape} {s['dtype']}  per class {s['min_class_count']}..{s['max_class_count']}")
  names = "; ".join(summary["class_names"])
  more = summary["num_classes"] - len(summary["class_names"])
  lines.append(f"  classes: {names}" + (f"; ... ({more} more)" if more > 0 else ""))
  return "\n".join(lines)


def define_flags(values: flags.FlagValues, argv: list[str]) -> None:
  """The tool's flags, defined in `values` (its own FlagValues: exits.flag_values), not on import, so that tests
  can import this module beside other CLIs and call main more than once; the config's --config.FIELD overrides
  are read from `argv` (ml_collections defines a flag for each)."""
  config_flags.DEFINE_config_file("config", None, "A shipped config (ema.py, ema, configs/ema.py) or a config "
                                  "file's path: its data.* fields name the set.", flag_values=values,
                                  lock_config=True, sys_argv=argv)
  flags.DEFINE_bool("json", False, "Print one JSON object (its keys above) instead of text.", flag_values=values)


def main(argv=None) -> int:
  """`python -m kdjax.data info --config NAME_OR_FILE [--json]`; argv without the program (default: sys.argv[1:]).
  Returns the exit code (kdjax.cli.exits); a usage mistake exits 2 (SystemExit)."""
  argv = [f"python -m {PROG}", *(sys.argv[1:] if argv is None else argv)]
  values = cli.flag_values(lambda values: define_flags(values, argv))
  help_lib.answer(argv, __doc__, ("config", "json"), EXAMPLES, values)
  rest = cli.parse_flags(PROG, argv, values=values)
  if len(rest) != 2 or rest[1] not in COMMANDS:
    cli.usage_error(PROG, f"usage: python -m kdjax.data {{{'|'.join(COMMANDS)}}} --config NAME_OR_FILE [--json]")
  logging.set_verbosity(logging.WARNING)
  summary = {}

  def body():
    # TFDS prints its progress on stdout, and kdjax's lines (read times, warnings) go to stderr: stdout is the answer
    with contextlib.redirect_stdout(sys.stderr), progress.printing(sys.stderr):
      summary.update(info(values.config))
  code = cli.run_main(PROG, body)
  if code:
    return code
  print(json.dumps(summary, indent=2) if values.json else format_text(summary))
  return cli.OK


EXAMPLES = [
    "python -m kdjax.data info --config ema.py                       # the digits set the default study uses",
    "python -m kdjax.data info --config ema.py --config.data.name=tiny_imagenet "
    "--config.data.manual_dir=DIR --json",
]


if __name__ == "__main__":
  sys.exit(main())
