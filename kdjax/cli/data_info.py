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

from absl import app
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


def main(argv):
  if len(argv) != 2 or argv[1] not in COMMANDS:
    cli.usage_error(PROG, f"usage: python -m kdjax.data {{{'|'.join(COMMANDS)}}} --config NAME_OR_FILE [--json]")
  logging.set_verbosity(logging.WARNING)
  summary = {}

  def body():
    # TFDS prints its progress on stdout, and kdjax's lines (read times, warnings) go to stderr: stdout is the answer
    with contextlib.redirect_stdout(sys.stderr), progress.printing(sys.stderr):
      summary.update(info(_CONFIG.value))
  code = cli.run_main(PROG, body)
  if code:
    sys.exit(code)
  print(json.dumps(summary, indent=2) if _JSON.value else format_text(summary))


def run() -> None:
  """The program: its flags are defined here, not on import, so tests can import this module beside other CLIs."""
  global _CONFIG, _JSON
  _CONFIG = config_flags.DEFINE_config_file("config", None, "A shipped config (ema.py, ema, configs/ema.py) or a "
                                            "config file's path: its data.* fields name the set.",
                                            lock_config=True)
  _JSON = flags.DEFINE_bool("json", False, "Print one JSON object (its keys above) instead of text.")
  app.run(main, flags_parser=parse_flags)


EXAMPLES = [
    "python -m kdjax.data info --config ema.py                       # the digits set the default study uses",
    "python -m kdjax.data info --config ema.py --config.data.name=tiny_imagenet "
    "--config.data.manual_dir=DIR --json",
]


def parse_flags(argv: list[str]) -> list[str]:
  """--help and --helpfull first (kdjax.cli.help, exit 0), then kdjax's flag parsing (a mistake: exit 2)."""
  help_lib.answer(argv, __doc__, ("config", "json"), EXAMPLES)
  return cli.parse_flags(PROG, argv)


if __name__ == "__main__":
  run()
