"""One training state, one pure step function per kind of step, and the epoch loop.

Kinds of step (all `(state, batch) -> (state, metrics)`, jit-compiled with the state donated):
  ce      the student (or teacher) on labels: cross_entropy(model(x), y)
  kd      the original's KD loop: kd_weight*distill_kl(student(x), teacher(x), T) + ce_weight*CE, teacher frozen;
          with StepConfig.cached_teacher_logits, teacher(x) comes from batch["teacher_logits"] instead
          (see `teacher_logits`: the same numbers, computed once per split instead of once per step)
  kd_ema  the original's EMA loop, in the original's order: teacher logits from the teacher's current params ->
          the original's EMA of the teacher from the student's *pre-step* params -> the student's gradient step
  mean_teacher  the mean teacher (Tarvainen & Valpola 2017): kd's loss toward a teacher of the student's own
          architecture whose every tensor is an EMA of the student's, updated *after* the student's step from its
          new params (as their code does). kd_ema's order would make the teacher seen at step t the mean
          teacher's of step t - 1 (one update behind), hence a kind of its own rather than kd_ema with other pairs
Every kind also keeps the student-weights EMA when ema.student_decay > 0 (updated after the step).

The step is pure, so a caller can shard the batch or vmap over seeds without touching the loop.

Cached teacher logits (kd only): the frozen teacher's logits of the whole training split, computed once by
`teacher_logits` (the step's own program) and gathered per batch by `run_epoch`; equal to the inline forward to
float32 rounding, bit for bit where the CPU gives a row the same bits at every batch size >= 2 (docs/speed.md#the-switches).
"""

import dataclasses
import functools
import math
import time
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from kdjax import data as data_lib
from kdjax.errors import DivergenceError  # noqa: F401  (train.DivergenceError)
from kdjax.training import ema
from kdjax.training import losses
from kdjax import progress as progress_lib

STEP_KINDS = ("ce", "kd", "kd_ema", "mean_teacher")


class TrainState(flax.struct.PyTreeNode):
  """Everything a step changes. teacher_params: the frozen (kd) or EMA-updated (kd_ema) teacher, else None;
  ema_params: the student-weights average when ema.student_decay > 0, else None."""

  step: jax.Array
  params: Any
  opt_state: Any
  teacher_params: Any = None
  ema_params: Any = None


def create_state(params, optimizer: optax.GradientTransformation, teacher_params=None,
                 keep_student_ema: bool = False) -> TrainState:
  # Copies, so that donating the state never invalidates the caller's arrays (e.g. a shared initialisation).
  copy = lambda tree: jax.tree_util.tree_map(jnp.array, tree)
  return TrainState(step=jnp.zeros((), jnp.int32), params=copy(params), opt_state=optimizer.init(params),
                    teacher_params=None if teacher_params is None else copy(teacher_params),
                    ema_params=copy(params) if keep_student_ema else None)


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """What a step needs besides the state and the batch (static: a new value means a new compile)."""

  kind: str
  temperature: float = 4.0
  kd_weight: float = 1.0
  ce_weight: float = 0.0
  teacher_decay: float = 0.999    # the original's alpha
  student_decay: float = 0.0      # 0 = no student-weights EMA
  warmup: bool = False            # mean-teacher warm-up of both decays
  cached_teacher_logits: bool = False  # kd only: take teacher(x) from batch["teacher_logits"]


def make_train_step(step_config: StepConfig, student, optimizer: optax.GradientTransformation,
                    mean, std, teacher=None, teacher_pairs=()) -> Callable:
  """The pure step `(state, batch) -> (state, metrics)` for one kind; batch = {"image": uint8, "label"}, plus
  "teacher_logits" float32 [N, K] when step_config.cached_teacher_logits (then `teacher` is not used).

  teacher_pairs: the (student path, teacher path) EMA pairs from `ema.torch_zip_pairs` (kd_ema: the original's;
  mean_teacher: the student's with itself, every tensor).
  """
  cfg = step_config
  if cfg.kind not in STEP_KINDS:
    raise ValueError(f"unknown step kind {cfg.kind!r}; known: {STEP_KINDS}")
  if cfg.cached_teacher_logits and cfg.kind != "kd":
    raise ValueError(f"cached_teacher_logits needs a frozen teacher (kind 'kd'), not {cfg.kind!r}")
  if cfg.kind != "ce" and teacher is None and not cfg.cached_teacher_logits:
    raise ValueError(f"step kind {cfg.kind!r} needs the teacher model")

  def decay_at(decay, update_count):
    return ema.warmup_decay(decay, update_count) if cfg.warmup else decay

  def loss_fn(params, images, labels, teacher_logits, mask):
    logits = student.apply({"params": params}, images)
    if cfg.kind == "ce":
      loss = losses.cross_entropy(logits, labels, mask)
    else:
      loss = losses.student_objective(logits, teacher_logits, labels, cfg.temperature,
                                      cfg.kd_weight, cfg.ce_weight, mask)
    return loss, logits

  def step(state: TrainState, batch) -> tuple[TrainState, dict]:
    images = data_lib.normalize(batch["image"], mean, std)
    labels = batch["label"]
    mask = batch.get("mask")   # several devices: 0 on the rows that pad a short last batch (kdjax/training/mesh.py)
    # In the params' dtype: a float64 run's warm-up decay min(1 - 1/(t + 1), alpha) carries no float32 rounding.
    update_count = (state.step + 1).astype(jax.tree_util.tree_leaves(state.params)[0].dtype)
    teacher_params, teacher_logits = state.teacher_params, None
    if cfg.cached_teacher_logits:
      teacher_logits = jax.lax.stop_gradient(batch["teacher_logits"])
    elif cfg.kind != "ce":
      teacher_logits = jax.lax.stop_gradient(teacher.apply({"params": teacher_params}, images))
    if cfg.kind == "kd_ema":
      teacher_params = ema.pull_teacher_toward_student(teacher_params, state.params, teacher_pairs,
                                               decay_at(cfg.teacher_decay, update_count))
    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, images, labels, teacher_logits, mask)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if cfg.kind == "mean_teacher":   # after the step, from the student's new params
      teacher_params = ema.pull_teacher_toward_student(teacher_params, params, teacher_pairs,
                                                       decay_at(cfg.teacher_decay, update_count))
    ema_params = state.ema_params
    if ema_params is not None:
      ema_params = ema.polyak_update(ema_params, params, decay_at(cfg.student_decay, update_count))
    metrics = {"loss": loss, "accuracy": losses.batch_mean(jnp.argmax(logits, -1) == labels, mask)}
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              teacher_params=teacher_params, ema_params=ema_params)
    return new_state, metrics

  return step


def teacher_logits(teacher, teacher_params, images, mean, std, batch_size: int,
                   compiler_options: dict | None = None) -> jax.Array:
  """teacher(normalize(images)) for a whole split, float32 [N, K] on the device, for cached-logit KD.

  images: uint8 [N, H, W, C] (host or device). One jitted forward per `batch_size` rows, the last batch padded
  with zero images (whose rows are dropped), so one compiled shape serves the split. compiler_options: those
  the train step is compiled with (kdjax.training.xla.compiler_options), so that the teacher's program is the step's.
  Rows equal the inline teacher's to rounding, bit for bit on CPUs whose kernels are batch-invariant (module
  docstring; 1 is run as 2).
  """
  exact = lambda values: tuple(np.asarray(values).reshape(-1).tolist())  # concrete: data.normalize's table
  forward = _teacher_forward(teacher, exact(mean), exact(std), _freeze(compiler_options))
  batch_size = max(batch_size, 2)  # a 1-row batch's fc dot sums in another order (module docstring)
  count = len(images)
  rows = []
  for start in range(0, count, batch_size):
    chunk = jnp.asarray(images[start:start + batch_size])
    if len(chunk) < batch_size:
      chunk = jnp.concatenate([chunk, jnp.zeros((batch_size - len(chunk), *chunk.shape[1:]), chunk.dtype)])
    rows.append(forward(teacher_params, chunk))
  return jnp.concatenate(rows)[:count]


def _freeze(options: dict | None):
  return None if options is None else tuple(sorted(options.items()))


@functools.lru_cache(maxsize=None)
def _teacher_forward(teacher, mean: tuple, std: tuple, frozen_options) -> Callable:
  """The same program as the step's inline teacher: data.normalize (mean, std closed over, as in the step),
  then teacher.apply."""
  mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)

  def forward(params, images):
    return teacher.apply({"params": params}, data_lib.normalize(images, mean, std))
  return jax.jit(forward, compiler_options=None if frozen_options is None else dict(frozen_options))


@jax.jit
def gather_batch(arrays: dict, indices) -> dict:
  """One batch: each array of `arrays` ({"image", "label"[, "teacher_logits"]}) at `indices`."""
  return {name: array[indices] for name, array in arrays.items()}


@jax.jit
def any_changed(before, after) -> jax.Array:
  """Whether any leaf of `after` differs from `before` anywhere (NaN counts as a change)."""
  changed = jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda old, new: jnp.any(old != new), before, after))
  return jnp.any(jnp.stack(changed)) if changed else jnp.asarray(False)   # no parameters: nothing moved


@dataclasses.dataclass
class EpochResult:
  train_loss: float      # mean of the per-step losses (each a batch mean), as the seed prints
  steps: int
  seconds: float         # wall time of the epoch's steps, evaluation and after_step diagnostics excluded
  train_top1: float = 0.0   # % of the epoch's training images classified right by the step that trained on them
  step_losses: list = dataclasses.field(default_factory=list)   # each step's loss, in order
  params_moved: bool = True   # whether any trained parameter differs from its value before the epoch


def run_epoch(step_fn, state: TrainState, images, labels, order: np.ndarray, batch_size: int,
              drop_remainder: bool, description: str, progress: bool, every: int = 0,
              after_step: Callable[[TrainState, jax.Array], None] | None = None,
              teacher_logits=None, parallel=None, compile_note: bool = False) -> tuple[TrainState, EpochResult]:
  """Runs the jitted `step_fn` over the batches of `order`; images/labels are device arrays.

  parallel: a kdjax.training.mesh.DataParallel over several devices; images/labels/teacher_logits are then host arrays
  and each batch is fed sharded along `data`, padded to batch_size with a "mask" (DataParallel.batch).

  teacher_logits: float32 [N, K] device array for a step built with cached_teacher_logits (see
  `teacher_logits`); each batch then carries its rows as batch["teacher_logits"].

  Losses are read back one step late (the host never waits on the step it just dispatched); a non-finite loss
  raises DivergenceError naming its step. `after_step(state, loss)` runs after every `every`-th step but the last
  (diagnostics: it may read the state, not keep it). compile_note: a line before and after the first step's
  compile. EpochResult.params_moved: whether any trained parameter changed (study/acceptance.py).
  """
  batches = data_lib.batch_indices(order, batch_size, drop_remainder)
  start = time.perf_counter()
  diagnostics_seconds = 0.0
  losses_seen: list[float] = []
  correct = 0
  pending = None
  step_number = int(state.step)
  meter = progress_lib.EpochProgress(description, len(batches), sum(len(batch) for batch in batches),
                                     enabled=progress)

  def read(pending_metrics, step_number, batch_images):
    nonlocal correct
    loss, accuracy = jax.device_get((pending_metrics["loss"], pending_metrics["accuracy"]))
    value = float(loss)
    if not math.isfinite(value):
      meter.close()
      raise DivergenceError(f"{description}: non-finite training loss ({value}) at step {step_number}")
    losses_seen.append(value)
    correct += round(float(accuracy) * batch_images)  # the batch mean back to a count
    meter.update(batch_images, value)

  params_before = jax.tree_util.tree_map(jnp.copy, state.params)   # the steps donate state.params
  arrays = {"image": images, "label": labels}
  if teacher_logits is not None:
    arrays["teacher_logits"] = teacher_logits
  for count, indices in enumerate(batches, start=1):
    batch = (gather_batch(arrays, jnp.asarray(indices)) if parallel is None
             else parallel.batch(arrays, indices, batch_size))
    if compile_note and count == 1:
      meter.note(f"[{description}] compiling the training step")
      compile_start = time.perf_counter()
    state, metrics = step_fn(state, batch)
    if compile_note and count == 1:
      jax.block_until_ready(metrics["loss"])
      meter.note(f"[{description}] compiled the training step and ran it once in "
                 f"{time.perf_counter() - compile_start:.1f} s")
    step_number += 1
    if pending is not None:
      read(*pending)
    pending = (metrics, step_number, len(indices))
    if after_step is not None and every and count % every == 0 and count < len(batches):
      aside = time.perf_counter()
      after_step(state, metrics["loss"])
      diagnostics_seconds += time.perf_counter() - aside
  if pending is not None:
    read(*pending)
  jax.block_until_ready(state)
  meter.close()
  seconds = time.perf_counter() - start - diagnostics_seconds   # the steps' time, not after_step's
  seen = sum(len(batch) for batch in batches)
  moved = bool(any_changed(params_before, state.params)) if batches else False
  return state, EpochResult(train_loss=float(np.mean(losses_seen)), steps=len(batches), seconds=seconds,
                            train_top1=100.0 * correct / max(seen, 1), step_losses=losses_seen, params_moved=moved)
