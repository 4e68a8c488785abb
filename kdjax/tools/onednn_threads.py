"""oneDNN's OpenMP thread count against kdjax's steps: which is faster, timed side by side in one process.

    python -m kdjax.tools.onednn_threads [--kinds teacher_ce,student_ce] [--threads 1,2] [--steps 3] [--repeats 5]
    taskset -c 0 python -m kdjax.tools.onednn_threads --threads 1      # XLA's own pool at 1 thread as well

Each kind's step (batch 128, 64x64, as kdjax.tools.benchmark builds it) runs with its convs in oneDNN at each OpenMP
thread count (kdjax.nets.onednn_conv.set_threads, between rounds of the same compiled step) and in XLA (speed.conv
"xla"), alternating rounds; XLA's intra-op pool has one thread per core this process may use, so `taskset`
sets it (and oneDNN's default) from outside. Prints img/s per variant with the load average.
"""

import json
import os
import sys

from absl import flags

from kdjax import errors
from kdjax.cli import exits as cli
from kdjax.cli import help as help_lib
from kdjax.nets import onednn_conv
from kdjax.tools.benchmark import steps as steps_lib
from kdjax.tools.benchmark import timing

PROG = "kdjax.tools.onednn_threads"
FLAG_NAMES = ("kinds", "threads", "steps", "repeats", "json")
EXAMPLES = ["python -m kdjax.tools.onednn_threads --kinds teacher_ce --threads 1,2 --steps 2 --repeats 3"]


def measure(kinds, thread_counts, batch_size=128, image_size=64, num_classes=200, steps=3, repeats=5) -> dict:
  batch = steps_lib.random_batch(batch_size, image_size, num_classes)
  load_before = timing.load_average()
  results = {}
  for kind in kinds:
    on_onednn = steps_lib.kdjax_step(kind, batch, num_classes, conv="onednn")
    runners = {"xla": steps_lib.kdjax_step(kind, batch, num_classes, conv="xla")}
    for count in thread_counts:
      def run(steps, count=count):
        onednn_conv.set_threads(count)
        on_onednn.run(steps)
      runners[f"onednn_{count}t"] = timing.Runner(run)
    timings = timing.time_alternating(runners, steps, repeats)
    results[kind] = {name: round(batch_size / entry["step_s"], 1) for name, entry in timings.items()}
  onednn_conv.set_threads(onednn_conv.default_threads())
  return {"results": results, "cores": timing.core_count(), "load_average_before": load_before,
          "load_average_after": timing.load_average(), "batch_size": batch_size, "image_size": image_size}


def define_flags(values) -> None:
  """The command's flags, in `values` (kdjax.cli.exits.flag_values)."""
  flags.DEFINE_list("kinds", list(steps_lib.KINDS), "The steps to time.", flag_values=values)
  flags.DEFINE_list("threads", ["1", "2"], "oneDNN's OpenMP thread counts to time.", flag_values=values)
  flags.DEFINE_integer("steps", 3, "Consecutive steps per timed round.", lower_bound=1, flag_values=values)
  flags.DEFINE_integer("repeats", 5, "Timed rounds (medians are taken over them).", lower_bound=1,
                       flag_values=values)
  flags.DEFINE_bool("json", False, "Print JSON instead of a table.", flag_values=values)


def main(argv=None) -> int:
  """The command; argv without the program (default: sys.argv[1:]). Returns the exit code (kdjax.cli.exits)."""
  argv = [f"python -m {PROG}", *(sys.argv[1:] if argv is None else argv)]
  values = cli.flag_values(define_flags)
  help_lib.answer(argv, __doc__, FLAG_NAMES, EXAMPLES, values)
  rest = cli.parse_flags(PROG, argv, config_flag=None, values=values)
  if len(rest) > 1:
    cli.usage_error(PROG, f"unexpected arguments: {' '.join(rest[1:])}")
  unknown = [kind for kind in values.kinds if kind not in steps_lib.KINDS]
  if unknown:
    cli.usage_error(PROG, f"--kinds: unknown {', '.join(unknown)}; known: {', '.join(steps_lib.KINDS)}")
  if not all(count.isdigit() and int(count) >= 1 for count in values.threads):
    cli.usage_error(PROG, f"--threads must be whole numbers >= 1, got {','.join(values.threads)}")

  def body() -> None:
    try:
      reason = onednn_conv.unavailable_reason()
    except errors.ConfigError as error:   # a bad KDJAX_ONEDNN_THREADS / OMP_NUM_THREADS / KDJAX_ONEDNN
      reason = str(error)
    if reason:
      raise cli.UsageError(reason)
    figures = measure(values.kinds, [int(count) for count in values.threads], steps=values.steps,
                      repeats=values.repeats)
    if values.json:
      print(json.dumps(figures))
      return
    print(f"img/s, batch {figures['batch_size']}, {figures['image_size']}x{figures['image_size']}; this process "
          f"may use {figures['cores']} core(s) (XLA's pool size; affinity {sorted(os.sched_getaffinity(0))}); load "
          f"average {figures['load_average_before']} -> {figures['load_average_after']}")
    for kind, row in figures["results"].items():
      print(f"  {kind:<16}" + "  ".join(f"{name} {rate:.0f}" for name, rate in row.items()))
  return cli.run_main(PROG, body, resumable=False)


if __name__ == "__main__":
  sys.exit(main())
