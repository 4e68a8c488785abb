"""`python -m kdjax.tools.benchmark`: the command line (its flags, one mode each run, the table or JSON)."""

import json
import sys

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

def define_flags(values: flags.FlagValues, argv: list[str]) -> None:
  """The tool's flags, defined in `values` (its own FlagValues: exits.flag_values), not on import, so that tests
  can import this module beside other CLIs and call main more than once; --config.FIELD overrides are read from
  `argv` (ml_collections defines a flag for each)."""
  flags.DEFINE_bool("compare-torch", False, "kdjax (now and before) against PyTorch, side by side.",
                    flag_values=values)
  flags.DEFINE_bool("profile", False, "A CE step's time, op by op (--profile_kind).", flag_values=values)
  flags.DEFINE_enum("profile_kind", "teacher_ce", list(profile.PROFILE_KINDS), "--profile's step.",
                    flag_values=values)
  flags.DEFINE_bool("data_parallel", False, "The steps over every device jax.devices() lists "
                    "(kdjax/training/mesh.py), fed three ways; forced host devices: "
                    "XLA_FLAGS=--xla_force_host_platform_device_count=N.", flag_values=values)
  flags.DEFINE_bool("study", False, "One epoch of every phase: kdjax against the original's loops.",
                    flag_values=values)
  flags.DEFINE_integer("batch_size", 128, "Training batch size.", lower_bound=2, flag_values=values)
  flags.DEFINE_integer("image_size", 64, "Input height and width (a multiple of 16).", lower_bound=16,
                       flag_values=values)
  flags.DEFINE_integer("num_classes", 200, "Classes (the head's width).", lower_bound=2, flag_values=values)
  flags.DEFINE_integer("steps", 3, "Consecutive steps per timed round.", lower_bound=1, flag_values=values)
  flags.DEFINE_integer("repeats", 5, "Timed rounds (medians are taken over them).", lower_bound=1,
                       flag_values=values)
  flags.DEFINE_integer("eval_batch_size", study.study_config().eval_batch_size,
                       "Evaluation batch size (plain mode; the study's default).", lower_bound=1, flag_values=values)
  flags.DEFINE_float("peak_gflops", 0.0, "The fp32 peak to divide by; 0 = measure a matmul in this run.",
                     lower_bound=0.0, flag_values=values)
  flags.DEFINE_integer("torch_threads", 0, "--study: PyTorch's threads; 0 = the faster of 1 and the core count on "
                       "a short probe.", lower_bound=0, flag_values=values)
  flags.DEFINE_multi_enum("torch_allocator", ["tuned", "plain"], ["tuned", "plain"],
                          "--compare-torch, --study: PyTorch's glibc settings, a child process each "
                          "(torch_peer.ALLOCATORS); the faster is compared. One halves the time.", flag_values=values)
  flags.DEFINE_bool("json", False, "Print JSON instead of tables.", flag_values=values)
  flags.DEFINE_enum("host_malloc", "tuned", list(host_memory.SETTINGS),
                    "kdjax's host allocator, as config speed.host_malloc (kdjax/training/host_memory.py); "
                    "process-wide, so every kdjax row of a run has the same. PyTorch's child processes choose their "
                    "own (--compare-torch, --study).", flag_values=values)
  config_flags.DEFINE_config_dict("config", study.study_config(), "--study's config: the default config with every "
                                  "phase, one epoch, data.name=tiny_imagenet.", flag_values=values, lock_config=True,
                                  sys_argv=argv)


FLAG_NAMES = ("compare-torch", "profile", "profile_kind", "study", "data_parallel", "batch_size", "image_size",
              "num_classes", "steps", "repeats", "eval_batch_size", "peak_gflops", "torch_threads", "torch_allocator",
              "host_malloc", "json", "config")
EXAMPLES = [
    "python -m kdjax.tools.benchmark --steps 2 --repeats 3                  # kdjax's steps, fewer rounds",
    "python -m kdjax.tools.benchmark --compare-torch --json > speed.json",
    "python -m kdjax.tools.benchmark --study --config.data.manual_dir=DIR   # DIR holds tiny-imagenet-200.zip",
]


def _torch_allocators(values: flags.FlagValues) -> tuple[str, ...]:
  """--torch_allocator's settings, each once, in the order given."""
  return tuple(dict.fromkeys(values.torch_allocator))


def measure(values: flags.FlagValues) -> tuple[dict, object]:
  """(figures, the function that prints them) of the mode the flags chose."""
  shapes = (values.batch_size, values.image_size, values.num_classes, values.steps, values.repeats)
  if values["compare-torch"].value:
    return compare_torch.compare_torch(*shapes, peak_gflops=values.peak_gflops, xla_beside=True,
                                       allocators=_torch_allocators(values)), compare_torch.show
  if values.profile:
    return profile.profile(*shapes, kind=values.profile_kind), profile.show
  if values.data_parallel:
    return data_parallel.data_parallel(*shapes), data_parallel.show
  if values.study:
    return study.study(values.config, values.torch_threads, _torch_allocators(values)), study.show
  return plain.plain(*shapes, values.eval_batch_size), plain.show


def main(argv=None) -> int:
  """`python -m kdjax.tools.benchmark [flags]`; argv without the program (default: sys.argv[1:]). --help and
  --helpfull first (kdjax.cli.help, exit 0); then kdjax's flag parsing (a bad flag: one line on stderr, exit 2).
  Returns the exit code (kdjax.cli.exits); a usage mistake exits 2 (SystemExit)."""
  argv = [f"python -m {PROG}", *(sys.argv[1:] if argv is None else argv)]
  values = cli.flag_values(lambda values: define_flags(values, argv))
  help_lib.answer(argv, benchmark.__doc__, FLAG_NAMES, EXAMPLES, values)
  rest = cli.parse_flags(PROG, argv, config_required=False, values=values)
  if len(rest) > 1:
    cli.usage_error(PROG, f"unexpected arguments: {' '.join(rest[1:])}")
  modes = [name for name in ("compare-torch", "profile", "study", "data_parallel") if values[name].value]
  if len(modes) > 1:
    cli.usage_error(PROG, f"choose one of {', '.join(f'--{name}' for name in modes)}")
  if values.image_size % 16:
    cli.usage_error(PROG, f"--image_size must be a multiple of 16, got {values.image_size}")
  logging.set_verbosity(logging.WARNING)  # no INFO line about absent TPU backends
  if values.host_malloc == "tuned":
    host_memory.tune()

  def body() -> None:   # a bad setting (KDJAX_ONEDNN_THREADS=abc, a study's config value): one line, exit 2
    figures, show = measure(values)
    if values.json:
      print(json.dumps(figures, indent=2, default=float))
    else:
      show(figures)
  return cli.run_main(PROG, body, resumable=False)


if __name__ == "__main__":
  cli.exit_now(main())
