"""oneDNN's OpenMP thread count against kdjax's steps: which is faster, timed side by side in one process.

    python -m kdjax.tools.onednn_threads [--kinds teacher_ce,student_ce] [--threads 1,2] [--steps 3] [--repeats 5]
    taskset -c 0 python -m kdjax.tools.onednn_threads --threads 1      # XLA's own pool at 1 thread as well

Each kind's step (batch 128, 64x64, as kdjax.benchmark builds it) runs with its convs in oneDNN at each OpenMP
thread count (kdjax.nets.onednn_conv.set_threads, between rounds of the same compiled step) and in XLA (speed.conv
"xla"), alternating rounds; XLA's intra-op pool has one thread per core this process may use, so `taskset`
sets it (and oneDNN's default) from outside. Prints img/s per variant with the load average.
"""

import argparse
import json
import os

from kdjax import errors
from kdjax.tools import benchmark
from kdjax.nets import onednn_conv


def measure(kinds, thread_counts, batch_size=128, image_size=64, num_classes=200, steps=3, repeats=5) -> dict:
  batch = benchmark.random_batch(batch_size, image_size, num_classes)
  load_before = benchmark.load_average()
  results = {}
  for kind in kinds:
    on_onednn = benchmark.kdjax_step(kind, batch, num_classes, conv="onednn")
    runners = {"xla": benchmark.kdjax_step(kind, batch, num_classes, conv="xla")}
    for count in thread_counts:
      def run(steps, count=count):
        onednn_conv.set_threads(count)
        on_onednn.run(steps)
      runners[f"onednn_{count}t"] = benchmark.Runner(run)
    timings = benchmark.time_alternating(runners, steps, repeats)
    results[kind] = {name: round(batch_size / timing["step_s"], 1) for name, timing in timings.items()}
  onednn_conv.set_threads(onednn_conv.default_threads())
  return {"results": results, "cores": benchmark.core_count(), "load_average_before": load_before,
          "load_average_after": benchmark.load_average(), "batch_size": batch_size, "image_size": image_size}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--kinds", default=",".join(benchmark.KINDS))
  parser.add_argument("--threads", default="1,2")
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--json", action="store_true")
  args = parser.parse_args()
  try:
    reason = onednn_conv.unavailable_reason()
  except errors.ConfigError as error:   # a bad KDJAX_ONEDNN_THREADS / OMP_NUM_THREADS / KDJAX_ONEDNN
    reason = str(error)
  if reason:
    parser.exit(2, f"kdjax.tools.onednn_threads: error: {reason}\n")
  figures = measure(args.kinds.split(","), [int(count) for count in args.threads.split(",")], steps=args.steps,
                    repeats=args.repeats)
  if args.json:
    print(json.dumps(figures))
    return
  print(f"img/s, batch {figures['batch_size']}, {figures['image_size']}x{figures['image_size']}; this process "
        f"may use {figures['cores']} core(s) (XLA's pool size; affinity {sorted(os.sched_getaffinity(0))}); load "
        f"average {figures['load_average_before']} -> {figures['load_average_after']}")
  for kind, row in figures["results"].items():
    print(f"  {kind:<16}" + "  ".join(f"{name} {rate:.0f}" for name, rate in row.items()))


if __name__ == "__main__":
  main()
