"""kdjax's steps as the study builds them, on random uint8 batches: the benchmark's one way to make a step.

Everything comes from the study's own code: a random data set goes through `Setup.build` (the nets of the config,
the initial weights of config.seed, the normalisation), the step is `Setup.step_function`, jitted by
`training/jit_step.py`, its state is `Setup.fresh_state`, its batch `train.gather_batch`, and the kd step's cached
teacher logits `Setup.cached_teacher_logits`. The speed.* switches of the config decide the rest: the fast pool
(speed.pool), the per-compile XLA:CPU options (speed.xla_cpu_options), cached teacher logits for student_kd
(speed.cached_teacher_logits; the cache's one-off teacher forward is timed apart), the teacher's convs on 2x2 pixel
blocks (speed.teacher_conv) and who computes the convs (speed.conv: oneDNN where it runs). student_kd_ema keeps the
original's inline teacher and EMA order. "before" is the same step with all of them off: nn.max_pool, XLA's
defaults, the inline teacher, nn.Conv.
"""

import dataclasses
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from kdjax import data as data_lib
from kdjax import phases
from kdjax.config import defaults as config_lib
from kdjax.nets import models
from kdjax.study.builder import Setup
from kdjax.tools.benchmark import timing
from kdjax.training import jit_step
from kdjax.training import train

# The steps timed, named by the phase that runs them (kdjax/phases.py; the teacher's step is "teacher_ce").
KINDS = {("teacher_ce" if name == "teacher" else name): name for name in phases.PHASE_NAMES}


def net_and_kind(kind: str) -> tuple[str, str]:
  """(net, step kind) of a benchmark kind, from the phase table."""
  spec = phases.phase(KINDS[kind])
  return spec.net, spec.step_kind


def random_batch(batch_size: int, image_size: int, num_classes: int, seed: int = 0) -> dict:
  """{"image": uint8 [N, S, S, 3], "label": int32 [N]}, uniform: speed does not depend on the values."""
  rng = np.random.default_rng(seed)
  return {"image": rng.integers(0, 256, (batch_size, image_size, image_size, 3), np.uint8),
          "label": rng.integers(0, num_classes, batch_size).astype(np.int32)}


def random_dataset(train: dict, num_classes: int, val_images: np.ndarray | None = None) -> data_lib.Dataset:
  """A data set whose train split is the batch `train` (its validation split: val_images, else the same images)."""
  val = train["image"] if val_images is None else val_images
  return data_lib.Dataset(name="random", train_images=train["image"], train_labels=train["label"],
                          val_images=val, val_labels=np.zeros(len(val), np.int32),
                          class_names=tuple(str(label) for label in range(num_classes)))


def normalization(config, batch: dict, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
  """The (mean, std) the study's Setup derives from the data set `batch` (data.normalization_constants)."""
  return data_lib.normalization_constants(random_dataset(batch, num_classes), config.data.normalization)


def study_setup(config, batch: dict, num_classes: int, val_images: np.ndarray | None = None) -> Setup:
  """The study's Setup (Setup.build) of `config` on the random data set of `batch`."""
  return Setup.build(config, random_dataset(batch, num_classes, val_images))


def train_flops_per_image(model: models.ConvNet, image_shape) -> int:
  """FLOPs of one image's training step of `model`: the forward, each layer's weight gradient (as many FLOPs as
  its forward) and input gradient (the same again), except the first conv's input gradient (the images need
  none). 2 FLOPs per multiply-add."""
  height, width, channels = image_shape
  kh, kw = models.KERNEL_SIZE
  first_conv = 2 * height * width * channels * model.conv_features[0] * kh * kw
  return 3 * models.flops_per_image(model, image_shape) - first_conv


def step_flops(kind: str, image_shape, num_classes: int, cached_teacher_logits: bool = False) -> int:
  """FLOPs per image that a step of `kind` executes: the trained net's training step, plus a KD step's inline
  teacher forward (none with cached teacher logits)."""
  net, step_kind = net_and_kind(kind)
  flops = train_flops_per_image(models.MODEL_FACTORIES[net](num_classes), image_shape)
  if step_kind != "ce" and not cached_teacher_logits:
    flops += models.flops_per_image(models.MODEL_FACTORIES["teacher"](num_classes), image_shape)
  return flops


def step_config(fast: bool = True, conv: str | None = None, batch_size: int | None = None):
  """default_config with the speed switches of a kdjax variant (module docstring)."""
  config = config_lib.default_config()
  if batch_size is not None:
    config.batch_size = config.eval_batch_size = batch_size
  if conv is not None:
    config.speed.conv = conv
  if not fast:
    config.speed.update(pool="reduce_window", teacher_conv="xla", student_conv="xla", xla_cpu_options=False,
                        cached_teacher_logits=False, conv="xla")
  return config


@dataclasses.dataclass
class Prepared:
  """A kind's step as the study runs it: its Setup, phase, starting state, batch and jitted step."""

  setup: Setup
  phase: str
  state: train.TrainState
  batch: dict
  step: Callable
  cache: Callable | None = None   # the kd step's cached teacher logits, computed again (timed apart)


def prepare(kind: str, batch: dict, num_classes: int, fast: bool = True, conv: str | None = None) -> Prepared:
  """kdjax's step of `kind` on `batch` (module docstring): fast=True every config.speed switch on, fast=False as it
  was before them; conv: config speed.conv ("xla": XLA's convs; None: the default, oneDNN where it runs)."""
  config = step_config(fast, conv, batch_size=len(batch["label"]))
  setup = study_setup(config, batch, num_classes)
  phase = KINDS[kind]
  optimizer = setup.optimizer()
  arrays = {"image": setup.train_images, "label": setup.train_labels}
  cache = None
  if setup.cached_teacher_logits(phase, setup.initial_params["teacher"]) is not None:
    cache = lambda: setup.cached_teacher_logits(phase, setup.initial_params["teacher"])
    arrays["teacher_logits"] = cache()
  return Prepared(setup, phase, setup.fresh_state(phase, optimizer),
                  train.gather_batch(arrays, jnp.arange(len(batch["label"]))),   # the whole split: one batch
                  jit_step.jit_step(setup.step_function(phase, optimizer), config.speed.xla_cpu_options), cache)


def kdjax_step(kind: str, batch: dict, num_classes: int, fast: bool = True, conv: str | None = None) -> timing.Runner:
  """prepare(...)'s step as a timing.Runner, compiled ahead of time (compile_seconds is the compile alone); a kd
  step with cached teacher logits also reports the cache's rate (extra["cache_images_per_second"]: one teacher
  forward per training image per phase, not per epoch)."""
  prepared = prepare(kind, batch, num_classes, fast, conv)
  extra = {}
  if prepared.cache is not None:
    extra["cache_images_per_second"] = len(batch["label"]) / timing.median_seconds(prepared.cache, 3)
  start = time.perf_counter()
  compiled = prepared.step.lower(prepared.state, prepared.batch).compile()
  compile_seconds = time.perf_counter() - start
  holder = [prepared.state]

  def run(steps: int) -> None:
    state = holder[0]
    for _ in range(steps):
      state, metrics = compiled(state, prepared.batch)
    jax.block_until_ready((state, metrics))
    holder[0] = state

  flops = step_flops(kind, batch["image"].shape[1:], num_classes, prepared.cache is not None)
  return timing.Runner(run, flops, compile_seconds, extra)
