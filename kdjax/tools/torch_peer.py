"""PyTorch's benchmark steps in a child process, so that its memory allocator is a stated choice.

glibc serves each PyTorch step's ~25 MB of activations from fresh mmaps unless its thresholds are raised; a plain
process then runs the seed's steps 1.5-2.4x slower (page faults every step). What a process gets depends on the
environment it started with (and, in-process, on what was imported before torch), so kdjax.benchmark runs PyTorch
in children started with one of ALLOCATORS and compares against the faster:

  plain   glibc's defaults (MALLOC_* variables removed)
  tuned   MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=268435456: blocks up to 32 MB come from the
          heap and are reused; freed memory is returned to the OS above 256 MB only

The child (kdjax/tools/torch_child.py) builds kdjax.tools.benchmark.torch_step runners on request and runs them;
the parent times each run (a round trip of one line each way, microseconds against steps of tens of
milliseconds), alternating with its other runners as before. This module is the parent's side only, so the
benchmark imports it and nothing here imports the benchmark.
"""

import json
import os
import subprocess
import sys
import types

ALLOCATORS = {
    "plain": {},
    "tuned": {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "268435456"},
}


class Peer:
  """One child process with `allocator`'s environment; `runner(...)` gives a kdjax.benchmark.Runner."""

  def __init__(self, allocator: str):
    env = {key: value for key, value in os.environ.items() if not key.startswith("MALLOC_")}
    env.update(ALLOCATORS[allocator])
    self.allocator = allocator
    self._process = subprocess.Popen([sys.executable, "-m", "kdjax.tools.torch_child"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env, bufsize=1)
    self.info = self._ask({"command": "info"})

  def _ask(self, request: dict) -> dict:
    self._process.stdin.write(json.dumps(request) + "\n")
    self._process.stdin.flush()
    line = self._process.stdout.readline()
    if not line:
      raise RuntimeError(f"the PyTorch peer ({self.allocator}) exited with {self._process.wait()}")
    answer = json.loads(line)
    if "error" in answer:
      raise RuntimeError(f"the PyTorch peer ({self.allocator}): {answer['error']}")
    return answer

  def runner(self, kind: str, batch_size: int, image_size: int, num_classes: int, threads: int,
             channels_last: bool):
    """kdjax.benchmark.torch_step(kind, random_batch(batch_size, image_size, num_classes), ...) in the child."""
    made = self._ask({"command": "make", "kind": kind, "batch_size": batch_size, "image_size": image_size,
                      "num_classes": num_classes, "threads": threads, "channels_last": channels_last})
    # kdjax.benchmark.Runner's fields (not imported: the benchmark may be running as __main__)
    return types.SimpleNamespace(run=lambda steps: self._ask({"command": "run", "id": made["id"], "steps": steps}),
                                 flops_per_image=made["flops_per_image"], compile_seconds=None, extra={})

  def op_timers(self, op: dict, num_classes: int, repeats: int) -> dict:
    """kdjax.benchmark._torch_op_timers(op, num_classes, repeats) in the child: PyTorch's own OpenMP workers, which
    spin after each op, then spin in the child, not beside kdjax's ops in the profiling process."""
    timers = self._ask({"command": "op_timers", "op": op, "num_classes": num_classes, "repeats": repeats})
    return {label: tuple(value) if isinstance(value, list) else value for label, value in timers.items()}

  def study(self, config, names, threads: int) -> dict:
    """kdjax.benchmark.reference_study(config, names, threads) in the child: the original's loops, timed there."""
    return self._ask({"command": "study", "config": config.to_json_best_effort(), "names": list(names),
                      "threads": threads})

  def close(self) -> None:
    if self._process.poll() is None:
      self._process.stdin.close()
      self._process.wait(timeout=60)
