"""How the benchmark times: alternating rounds of every variant, medians, the cores, the load, the fp32 peak.

After a warm-up (compile and 2 steps), `repeats` rounds each time `steps` consecutive steps of every variant in turn
(alternating, so that a change in machine load hits all of them alike); a figure is the median over rounds.
"""

import dataclasses
import os
import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from kdjax.report import environment as run_environment
from kdjax.training import host_memory
from kdjax.training import xla


def core_count() -> int:
  """The threads XLA:CPU's intra-op pool uses: one per core this process may run on."""
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def load_average() -> list[float] | None:
  return [round(value, 2) for value in os.getloadavg()] if hasattr(os, "getloadavg") else None


@dataclasses.dataclass
class Runner:
  """One way to run one kind of step: run(steps) performs `steps` consecutive steps and waits for them."""

  run: Callable[[int], None]
  flops_per_image: int = 0
  compile_seconds: float | None = None
  extra: dict = dataclasses.field(default_factory=dict)


def time_alternating(runners: dict[str, Runner], steps: int, repeats: int, warmup: int = 2) -> dict[str, dict]:
  """{name: {"step_s": median seconds per step, "min_step_s", "rounds"}}: rounds alternate over the runners."""
  for runner in runners.values():
    runner.run(warmup)
  rounds = {name: [] for name in runners}
  for _ in range(repeats):
    for name, runner in runners.items():
      start = time.perf_counter()
      runner.run(steps)
      rounds[name].append((time.perf_counter() - start) / steps)
  return {name: {"step_s": statistics.median(values), "min_step_s": min(values), "rounds": values}
          for name, values in rounds.items()}


def rate(timing: dict, batch_size: int) -> float:
  """Images per second of a time_alternating entry."""
  return batch_size / timing["step_s"]


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
  """Median wall seconds of `fn()` (waited for: jax.block_until_ready) over `repeats` calls, after one warm call."""
  fn()  # warm
  values = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    values.append(time.perf_counter() - start)
  return statistics.median(values)


def measured_peak_gflops(threads: int, size: int = 2048, repeats: int = 5) -> dict:
  """Best fp32 matmul GFLOP/s of JAX and of PyTorch (at `threads`) on size x size: the attainable peak."""
  a = jnp.asarray(np.random.default_rng(0).standard_normal((size, size), np.float32))
  matmul = jax.jit(lambda x: x @ x)
  flops = 2 * size**3
  result = {"size": size, "jax_gflops": flops / median_seconds(lambda: matmul(a), repeats) / 1e9}
  try:
    import torch
  except ImportError:
    torch = None
  if torch is not None:
    torch.set_num_threads(threads)
    t = torch.from_numpy(np.array(a))  # a writable copy
    result["torch_gflops"] = flops / median_seconds(lambda: torch.mm(t, t), repeats) / 1e9
    result["torch_threads"] = threads
  result["peak_gflops"] = max(value for key, value in result.items() if key.endswith("_gflops"))
  return result


def shapes(batch_size, image_size, num_classes, steps, repeats) -> dict:
  """The shapes and rounds every mode's figures start with."""
  return {"batch_size": batch_size, "image_shape": [image_size, image_size, 3], "num_classes": num_classes,
          "steps_per_round": steps, "rounds": repeats}


def environment() -> dict:
  """report.json's environment, with the cores, XLA:CPU's options and the host allocator."""
  return dict(run_environment.environment(), cores=core_count(), xla_cpu_options=xla.compiler_options(True),
              host_malloc=host_memory.describe())
