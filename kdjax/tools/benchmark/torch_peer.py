"""PyTorch's side of the benchmark in a child process, so that its memory allocator is a stated choice.

glibc serves each PyTorch step's ~25 MB of activations from fresh mmaps unless its thresholds are raised; a plain
process then runs the seed's steps 1.5-2.4x slower (page faults every step). What a process gets depends on the
environment it started with (and, in-process, on what was imported before torch), so the benchmark runs PyTorch
in children started with one of ALLOCATORS and compares against the faster:

  plain   glibc's defaults (MALLOC_* variables removed)
  tuned   MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=268435456: blocks up to 32 MB come from the
          heap and are reused; freed memory is returned to the OS above 256 MB only

The child is `python -m parity.torch_child` (parity/speed.py: the original's loops from parity/reference.py, timed
on kdjax's batches): PyTorch and the reference live in parity, which sits above kdjax, so kdjax reaches them only
as a program, never by import (tests/test_architecture.py). The parent times each run (a round trip of one line
each way, microseconds against steps of milliseconds), alternating with its other runners.
"""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from kdjax.tools.benchmark import timing

ALLOCATORS = {
    "plain": {},
    "tuned": {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "268435456"},
}
CHILD = ("-m", "parity.torch_child")   # the one place kdjax names parity: a program it starts


class Peer:
  """One child process with `allocator`'s environment; `runner(...)` gives a timing.Runner."""

  def __init__(self, allocator: str):
    env = {key: value for key, value in os.environ.items() if not key.startswith("MALLOC_")}
    env.update(ALLOCATORS[allocator])
    self.allocator = allocator
    self._batches = tempfile.TemporaryDirectory(prefix="kdjax-benchmark-")   # batches handed to the child
    self._written: dict[int, str] = {}
    self._process = subprocess.Popen([sys.executable, *CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env, bufsize=1)
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

  def _batch_file(self, batch: dict) -> str:
    """`batch` saved once for the child: it steps on the very images and labels kdjax's runners do."""
    if id(batch) not in self._written:
      path = os.path.join(self._batches.name, f"batch{len(self._written)}.npz")
      np.savez(path, image=batch["image"], label=batch["label"])
      self._written[id(batch)] = path
    return self._written[id(batch)]

  def runner(self, phase: str, batch: dict, mean, std, num_classes: int, threads: int, channels_last: bool,
             flops_per_image: int = 0) -> timing.Runner:
    """parity.speed.torch_step(phase, ...) on `batch` (normalised with kdjax's mean and std) in the child."""
    made = self._ask({"command": "make", "phase": phase, "batch": self._batch_file(batch),
                      "mean": np.asarray(mean, np.float32).tolist(), "std": np.asarray(std, np.float32).tolist(),
                      "num_classes": num_classes, "threads": threads, "channels_last": channels_last})
    return timing.Runner(lambda steps: self._ask({"command": "run", "id": made["id"], "steps": steps}),
                         flops_per_image)

  def op_timers(self, op: dict, num_classes: int, repeats: int, thread_counts) -> dict:
    """parity.speed.op_seconds(op, ...) in the child: PyTorch's own OpenMP workers, which spin after each op,
    then spin in the child, not beside kdjax's ops in the profiling process."""
    timers = self._ask({"command": "op_timers", "op": op, "num_classes": num_classes, "repeats": repeats,
                        "thread_counts": list(thread_counts)})
    return {label: tuple(value) if isinstance(value, list) else value for label, value in timers.items()}

  def study(self, config, names, threads: int) -> dict:
    """parity.speed.reference_study(config, names, threads) in the child: the original's loops, timed there."""
    return self._ask({"command": "study", "config": config.to_json_best_effort(), "names": list(names),
                      "threads": threads})

  def close(self) -> None:
    if self._process.poll() is None:
      self._process.stdin.close()
      self._process.wait(timeout=60)
    self._batches.cleanup()
