"""`--data_parallel`: kdjax's steps over every device jax.devices() lists (kdjax/training/mesh.py), fed three ways.

Forced host devices: XLA_FLAGS=--xla_force_host_platform_device_count=N.
"""

import jax
import jax.numpy as jnp
import numpy as np

from kdjax.tools.benchmark import steps as steps_lib
from kdjax.tools.benchmark import timing
from kdjax.training import jit_step
from kdjax.training import train


def data_parallel(batch_size: int, image_size: int, num_classes: int, steps: int, repeats: int,
                  kinds=("teacher_ce", "student_kd_ema")) -> dict:
  """kdjax's steps over D = len(jax.devices()) devices (D = 1: the single-device path, which has no mesh), each
  step fed from a training split of 4 batches in random order:
    host_fed       the host gathers the rows and puts each device's slice (DataParallel.batch: what kdjax runs)
    device_gather  the split replicated on every device, train.gather_batch with its output sharded along `data`
    on_device      the batch already sharded on the devices (the step alone: the floor of both)
  With D = 1 all three are the single-device path's device gather (train.gather_batch)."""
  layout = steps_lib.step_config(batch_size=batch_size)   # ConfigError when batch_size does not split (Setup.build)
  split = steps_lib.random_batch(4 * batch_size, image_size, num_classes)
  order = np.random.default_rng(1).permutation(4 * batch_size)
  batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
  results, devices = {}, 1
  for kind in kinds:
    setup = steps_lib.study_setup(layout, split, num_classes)
    parallel, phase = setup.parallel, steps_lib.KINDS[kind]
    devices = parallel.size
    optimizer = setup.optimizer()
    state = setup.fresh_state(phase, optimizer)   # replicated over the mesh
    compiled = jit_step.jit_step(setup.step_function(phase, optimizer), layout.speed.xla_cpu_options, parallel)
    arrays = {"image": setup.train_images, "label": setup.train_labels}   # host arrays over several devices
    if parallel.mesh is None:
      feeds = {"device_gather": lambda i: train.gather_batch(arrays, jnp.asarray(batches[i]))}
    else:
      replicated = parallel.replicate(arrays)
      gather = jax.jit(train.gather_batch, out_shardings=parallel.rows)
      mask = parallel.put_rows(np.ones(batch_size, np.float32))
      ready = [parallel.batch(arrays, indices, batch_size) for indices in batches]
      feeds = {"host_fed": lambda i: parallel.batch(arrays, batches[i], batch_size),
               "device_gather": lambda i: dict(gather(replicated, parallel.replicate(batches[i])), mask=mask),
               "on_device": lambda i: ready[i]}
    holder = [state]

    def runner(feed):
      def run(count: int) -> None:
        state = holder[0]
        for i in range(count):
          state, metrics = compiled(state, feed(i % len(batches)))
        jax.block_until_ready((state, metrics))
        holder[0] = state
      return timing.Runner(run, 0, 0.0, {})
    timings = timing.time_alternating({name: runner(feed) for name, feed in feeds.items()}, steps, repeats)
    results[kind] = {name: {"images_per_second": timing.rate(entry, batch_size), "step_ms": 1e3 * entry["step_s"]}
                     for name, entry in timings.items()}
  return {"mode": "data_parallel", "devices": devices,
          **timing.shapes(batch_size, image_size, num_classes, steps, repeats), "results": results,
          "load_average": timing.load_average(), "environment": timing.environment()}


def show(figures: dict) -> None:
  print(f"{figures['devices']} device(s), global batch {figures['batch_size']}, "
        f"{'x'.join(map(str, figures['image_shape']))}, {figures['num_classes']} classes; img/s (step ms); "
        f"load average {figures['load_average']}")
  for kind, feeds in figures["results"].items():
    print(f"  {kind:16s} " + "  ".join(f"{feed} {entry['images_per_second']:.0f} ({entry['step_ms']:.0f} ms)"
                                        for feed, entry in feeds.items()))
