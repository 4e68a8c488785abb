"""`python -m kdjax.tools.benchmark` (no mode flag): kdjax's steps as the study runs them, and its evaluation."""

from kdjax.tools.benchmark import steps as steps_lib
from kdjax.tools.benchmark import timing
from kdjax.training import evaluate


def plain(batch_size: int, image_size: int, num_classes: int, steps: int, repeats: int,
          eval_batch_size: int, kinds=tuple(steps_lib.KINDS)) -> dict:
  """Each kind's step (steps.kdjax_step), alternated; then each net's batched evaluation (evaluate.predict, as
  Setup.evaluate runs it) on 2 x eval_batch_size random images, from the study's initial weights."""
  batch = steps_lib.random_batch(batch_size, image_size, num_classes)
  runners = {kind: steps_lib.kdjax_step(kind, batch, num_classes) for kind in kinds}
  timings = timing.time_alternating(runners, steps, repeats)
  results = {kind: {"images_per_second": timing.rate(timings[kind], batch_size),
                    "step_ms": 1e3 * timings[kind]["step_s"], "compile_s": runners[kind].compile_seconds,
                    **runners[kind].extra} for kind in kinds}
  eval_images = steps_lib.random_batch(2 * eval_batch_size, image_size, num_classes, seed=1)["image"]
  config = steps_lib.step_config(batch_size=batch_size)
  config.eval_batch_size = eval_batch_size
  setup = steps_lib.study_setup(config, batch, num_classes, val_images=eval_images)
  for role in ("teacher", "student"):
    predict = lambda role=role: evaluate.predict(setup.nets[role], setup.initial_params[role],
                                                 setup.dataset.val_images, setup.mean, setup.std, eval_batch_size)
    results[f"eval_{role}"] = {"images_per_second": len(eval_images) / timing.median_seconds(predict, repeats)}
  return {"mode": "plain", **timing.shapes(batch_size, image_size, num_classes, steps, repeats), "results": results,
          "environment": timing.environment()}


def show(figures: dict) -> None:
  env = figures["environment"]
  print(f"kdjax steps as training runs them: batch {figures['batch_size']}, input {figures['image_shape']}, "
        f"{figures['num_classes']} classes, median of {figures['rounds']} rounds of {figures['steps_per_round']} "
        f"steps; backend {env['backend']} ({env['cores']} cores), jax {env['jax']}; host memory: "
        f"{env['host_malloc']}")
  print(f"{'kind':<16}{'images/s':>10}{'ms/step':>10}{'compile s':>11}")
  for name, row in figures["results"].items():
    step_ms = f"{row['step_ms']:.1f}" if "step_ms" in row else ""
    compile_s = f"{row['compile_s']:.2f}" if row.get("compile_s") is not None else ""
    print(f"{name:<16}{row['images_per_second']:>10.0f}{step_ms:>10}{compile_s:>11}")
