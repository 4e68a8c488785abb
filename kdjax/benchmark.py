"""Throughput of the jitted train steps and of evaluation, on random uint8 batches (no data set needed).

    python -m kdjax.benchmark [--batch_size 64] [--image_size 64] [--num_classes 200] [--steps 20] [--json]

Prints images/s per kind of step (teacher CE, student CE, KD, KD + seed EMA) and for batched evaluation,
after a compile-and-warm-up step that is timed separately. Speed claims in the README come from here.
"""

import json
import time

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from kdjax import config as config_lib
from kdjax import ema
from kdjax import evaluate
from kdjax import models
from kdjax import optim
from kdjax import report
from kdjax import train

_BATCH = flags.DEFINE_integer("batch_size", 64, "Training batch size.")
_IMAGE = flags.DEFINE_integer("image_size", 64, "Input height and width.")
_CLASSES = flags.DEFINE_integer("num_classes", 200, "Classes (the head's width).")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps per kind, after one warm-up step.")
_EVAL_BATCH = flags.DEFINE_integer("eval_batch_size", 500, "Evaluation batch size.")
_JSON = flags.DEFINE_bool("json", False, "Print JSON instead of a table.")


def _time_steps(step_fn, state, batch, steps: int) -> tuple[float, float]:
  """(compile + first step seconds, mean seconds per step after it)."""
  start = time.perf_counter()
  state, metrics = step_fn(state, batch)
  jax.block_until_ready(metrics)
  first = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = step_fn(state, batch)
  jax.block_until_ready((state, metrics))
  return first, (time.perf_counter() - start) / steps


def run(batch_size: int, image_size: int, num_classes: int, steps: int, eval_batch_size: int) -> dict:
  config = config_lib.default_config()
  shape = (image_size, image_size, 3)
  teacher, student = models.teacher_net(num_classes), models.student_net(num_classes)
  teacher_params = models.init_params(teacher, jax.random.PRNGKey(0), shape)
  student_params = models.init_params(student, jax.random.PRNGKey(1), shape)
  mean, std = jnp.full(3, 0.5), jnp.full(3, 0.25)
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.integers(0, 256, (batch_size, *shape), np.uint8)),
           "label": jnp.asarray(rng.integers(0, num_classes, batch_size, np.int32))}
  pairs = ema.seed_pairs(student_params, student.layer_names, teacher_params, teacher.layer_names)
  kinds = {
      "teacher_ce": (teacher, teacher_params, "ce", None),
      "student_ce": (student, student_params, "ce", None),
      "student_kd": (student, student_params, "kd", teacher_params),
      "student_kd_ema": (student, student_params, "kd_ema", teacher_params),
  }
  results = {}
  for name, (model, params, kind, frozen_teacher) in kinds.items():
    optimizer = optim.make_optimizer(config.optimizer, steps + 1)
    step_fn = jax.jit(train.make_train_step(train.StepConfig(kind), model, optimizer, mean, std,
                                            teacher=teacher if frozen_teacher is not None else None,
                                            teacher_pairs=pairs if kind == "kd_ema" else ()),
                      donate_argnums=0)
    state = train.create_state(params, optimizer, teacher_params=frozen_teacher)
    first, per_step = _time_steps(step_fn, state, batch, steps)
    results[name] = {"compile_and_first_step_s": first, "step_ms": 1e3 * per_step,
                     "images_per_second": batch_size / per_step}
  eval_images = rng.integers(0, 256, (2 * eval_batch_size, *shape), np.uint8)
  for name, model, params in (("eval_teacher", teacher, teacher_params), ("eval_student", student,
                                                                           student_params)):
    evaluate.predict(model, params, eval_images[:eval_batch_size], mean, std, eval_batch_size)  # compile
    start = time.perf_counter()
    evaluate.predict(model, params, eval_images, mean, std, eval_batch_size)
    seconds = time.perf_counter() - start
    results[name] = {"images_per_second": len(eval_images) / seconds}
  return {"batch_size": batch_size, "image_shape": list(shape), "num_classes": num_classes, "steps": steps,
          "results": results, "environment": report.environment()}


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # no INFO line about absent TPU backends
  figures = run(_BATCH.value, _IMAGE.value, _CLASSES.value, _STEPS.value, _EVAL_BATCH.value)
  if _JSON.value:
    print(json.dumps(figures, indent=2))
    return
  env = figures["environment"]
  print(f"kdjax benchmark: batch {figures['batch_size']}, input {figures['image_shape']}, "
        f"{figures['num_classes']} classes, {figures['steps']} timed steps; "
        f"backend {env['backend']} ({', '.join(env['devices'])}), jax {env['jax']}")
  print(f"{'kind':<16}{'images/s':>12}{'ms/step':>10}{'compile+1st s':>15}")
  for name, row in figures["results"].items():
    step_ms = f"{row['step_ms']:.1f}" if "step_ms" in row else ""
    first = f"{row['compile_and_first_step_s']:.2f}" if "compile_and_first_step_s" in row else ""
    print(f"{name:<16}{row['images_per_second']:>12.0f}{step_ms:>10}{first:>15}")


if __name__ == "__main__":
  app.run(main)
