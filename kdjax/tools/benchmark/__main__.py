"""`python -m kdjax.tools.benchmark`: the command line (its flags, one mode each run, the table or JSON)."""

import json

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from kdjax.cli import exits as cli
from kdjax.cli import help as help_lib
from kdjax.tools import benchmark
from kdjax.tools.benchmark import compare_torch
from kdjax.tools.benchmark import data_parallel
from kdjax.tools.benchmark import plain
from kdjax.tools.benchmark import profile
from kdjax.tools.benchmark import study
from kdjax.training import host_memory

PROG = "kdjax.tools.benchmark"

_COMPARE = flags.DEFINE_bool("compare-torch", False, "kdjax (now and before) against PyTorch, side by side.")
_PROFILE = flags.DEFINE_bool("profile", False, "A CE step's time, op by op (--profile_kind).")
_PROFILE_KIND = flags.DEFINE_enum("profile_kind", "teacher_ce", list(profile.PROFILE_KINDS), "--profile's step.")
_MESH = flags.DEFINE_bool("data_parallel", False, "The steps over every device jax.devices() lists "
                          "(kdjax/training/mesh.py), fed three ways; forced host devices: "
                          "XLA_FLAGS=--xla_force_host_platform_device_count=N.")
_STUDY = flags.DEFINE_bool("study", False, "One epoch of every phase: kdjax against the original's loops.")
_BATCH = flags.DEFINE_integer("batch_size", 128, "Training batch size.", lower_bound=2)
_IMAGE = flags.DEFINE_integer("image_size", 64, "Input height and width (a multiple of 16).", lower_bound=16)
_CLASSES = flags.DEFINE_integer("num_classes", 200, "Classes (the head's width).", lower_bound=2)
_STEPS = flags.DEFINE_integer("steps", 3, "Consecutive steps per timed round.", lower_bound=1)
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed rounds (medians are taken over them).", lower_bound=1)
_EVAL_BATCH = flags.DEFINE_integer("eval_batch_size", study.study_config().eval_batch_size,
                                   "Evaluation batch size (plain mode; the study's default).", lower_bound=1)
_PEAK = flags.DEFINE_float("peak_gflops", 0.0, "The fp32 peak to divide by; 0 = measure a matmul in this run.",
                           lower_bound=0.0)
_TORCH_THREADS = flags.DEFINE_integer("torch_threads", 0, "--study: PyTorch's threads; 0 = the faster of 1 and "
                                      "the core count on a short probe.", lower_bound=0)
_TORCH_ALLOCATORS = flags.DEFINE_multi_enum("torch_allocator", ["tuned", "plain"], ["tuned", "plain"],
                                            "--compare-torch, --study: PyTorch's glibc settings, a child process each "
                                            "(torch_peer.ALLOCATORS); the faster is compared. One halves the time.")
_JSON = flags.DEFINE_bool("json", False, "Print JSON instead of tables.")
_HOST_MALLOC = flags.DEFINE_enum("host_malloc", "tuned", list(host_memory.SETTINGS),
                                 "kdjax's host allocator, as config speed.host_malloc (kdjax/training/host_memory.py); "
                                 "process-wide, so every kdjax row of a run has the same. PyTorch's child processes "
                                 "choose their own (--compare-torch, --study).")
_CONFIG = config_flags.DEFINE_config_dict("config", study.study_config(), "--study's config: the default config with "
                                          "every phase, one epoch, data.name=tiny_imagenet.",
                                          lock_config=True)

FLAG_NAMES = ("compare-torch", "profile", "profile_kind", "study", "data_parallel", "batch_size", "image_size",
              "num_classes", "steps", "repeats", "eval_batch_size", "peak_gflops", "torch_threads", "torch_allocator",
              "host_malloc", "json", "config")
EXAMPLES = [
    "python -m kdjax.tools.benchmark --steps 2 --repeats 3                  # kdjax's steps, fewer rounds",
    "python -m kdjax.tools.benchmark --compare-torch --json > speed.json",
    "python -m kdjax.tools.benchmark --study --config.data.manual_dir=DIR   # DIR holds tiny-imagenet-200.zip",
]


def parse(argv: list[str]) -> list[str]:
  """--help and --helpfull first (kdjax.cli.help, exit 0); then kdjax's flag parsing (a bad flag: one line on
  stderr, exit 2)."""
  help_lib.answer(argv, benchmark.__doc__, FLAG_NAMES, EXAMPLES)
  return cli.parse_flags(PROG, argv, config_required=False)


def _torch_allocators() -> tuple[str, ...]:
  """--torch_allocator's settings, each once, in the order given."""
  return tuple(dict.fromkeys(_TORCH_ALLOCATORS.value))


def measure() -> tuple[dict, object]:
  """(figures, the function that prints them) of the mode the flags chose."""
  shapes = (_BATCH.value, _IMAGE.value, _CLASSES.value, _STEPS.value, _REPEATS.value)
  if _COMPARE.value:
    return compare_torch.compare_torch(*shapes, peak_gflops=_PEAK.value, xla_beside=True,
                                       allocators=_torch_allocators()), compare_torch.show
  if _PROFILE.value:
    return profile.profile(*shapes, kind=_PROFILE_KIND.value), profile.show
  if _MESH.value:
    return data_parallel.data_parallel(*shapes), data_parallel.show
  if _STUDY.value:
    return study.study(_CONFIG.value, _TORCH_THREADS.value, _torch_allocators()), study.show
  return plain.plain(*shapes, _EVAL_BATCH.value), plain.show


def main(argv):
  if len(argv) > 1:
    cli.usage_error(PROG, f"unexpected arguments: {' '.join(argv[1:])}")
  modes = [name for name, flag in (("--compare-torch", _COMPARE), ("--profile", _PROFILE), ("--study", _STUDY),
                                   ("--data_parallel", _MESH)) if flag.value]
  if len(modes) > 1:
    cli.usage_error(PROG, f"choose one of {', '.join(modes)}")
  if _IMAGE.value % 16:
    cli.usage_error(PROG, f"--image_size must be a multiple of 16, got {_IMAGE.value}")
  logging.set_verbosity(logging.WARNING)  # no INFO line about absent TPU backends
  if _HOST_MALLOC.value == "tuned":
    host_memory.tune()

  def body() -> None:   # a bad setting (KDJAX_ONEDNN_THREADS=abc, a study's config value): one line, exit 2
    figures, show = measure()
    if _JSON.value:
      print(json.dumps(figures, indent=2, default=float))
    else:
      show(figures)
  cli.exit_now(cli.run_main(PROG, body, resumable=False))


if __name__ == "__main__":
  app.run(main, flags_parser=parse)
