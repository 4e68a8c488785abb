"""Exponential moving averages of parameters.

The original's EMA moves the *teacher* toward the *student* every step:

  for s, t in zip(student.parameters(), teacher.parameters()):
      if s.shape == t.shape: t = alpha * t + (1 - alpha) * s

PyTorch's parameters() yields each layer's weight then bias, layers in definition order, and zip stops at the
shorter list. `jax.tree_util` flattens dicts in sorted key order (conv1, conv10, conv11, conv12, conv2, ...),
which would pair the wrong tensors, so the pairing here is built from the models' `layer_names`.

`optax.incremental_update(new, old, step_size)` is step_size*new + (1-step_size)*old, so the original's update is
incremental_update(student, teacher, 1 - alpha). The student-weights EMA (Polyak averaging, as in timm and
mean-teacher) is incremental_update(student, student_ema, 1 - decay).

Mean-teacher warm-up (optional): alpha_t = min(1 - 1/(t + 1), alpha), t = 1 on the first update.

After k updates the trained teacher's weights count prod_t alpha_t (alpha^k without warm-up) in each paired
tensor, the student's weights of the k steps the rest: `student_share` = 1 - prod_t alpha_t. `interpolate_pairs`
sets the same tensors to a fixed mix (1 - w)*teacher + w*student of one student, evaluation-only: what a teacher
becomes when its paired tensors hold a share w of a student's weights, without the feedback of training.
"""

from typing import Sequence

import jax
import jax.numpy as jnp
import optax

PARAM_ORDER = ("kernel", "bias")  # PyTorch registers weight before bias.


def torch_order(params, layer_names: Sequence[str]) -> list[tuple[str, str]]:
  """Parameter paths (layer, name) in the order PyTorch's .parameters() would yield them."""
  return [(layer, name) for layer in layer_names for name in PARAM_ORDER if name in params[layer]]


def torch_zip_pairs(student_params, student_layers: Sequence[str], teacher_params,
               teacher_layers: Sequence[str]) -> list[tuple[tuple[str, str], tuple[str, str]]]:
  """(student path, teacher path) pairs the original's EMA updates: zip in torch order, equal shapes only."""
  pairs = []
  for s_path, t_path in zip(torch_order(student_params, student_layers),
                            torch_order(teacher_params, teacher_layers)):
    if student_params[s_path[0]][s_path[1]].shape == teacher_params[t_path[0]][t_path[1]].shape:
      pairs.append((s_path, t_path))
  return pairs


def warmup_decay(decay: float, update_count: jax.Array) -> jax.Array:
  """Mean-teacher warm-up: min(1 - 1/(t + 1), decay) for the t-th update (t >= 1)."""
  return jnp.minimum(1.0 - 1.0 / (update_count + 1.0), decay)


def pull_teacher_toward_student(teacher_params, student_params, pairs, decay) -> dict:
  """The original's EMA: teacher = decay*teacher + (1-decay)*student on each paired tensor; others unchanged.

  `pairs` comes from `torch_zip_pairs` (static, computed once from shapes); `decay` may be a traced scalar.
  """
  return _mix_pairs(teacher_params, student_params, pairs, 1.0 - decay)


def _mix_pairs(teacher_params, student_params, pairs, step_size) -> dict:
  """step_size*student + (1 - step_size)*teacher on each paired tensor (optax.incremental_update), the others the
  teacher's: the original's EMA step (step_size 1 - decay) and the fixed mix of `interpolate_pairs` (w)."""
  mixed = {layer: dict(tensors) for layer, tensors in teacher_params.items()}
  for (s_layer, s_name), (t_layer, t_name) in pairs:
    mixed[t_layer][t_name] = optax.incremental_update(
        student_params[s_layer][s_name], teacher_params[t_layer][t_name], step_size=step_size)
  return mixed


def polyak_update(average_params, params, decay):
  """Student-weights EMA: average = decay*average + (1-decay)*params, over the whole tree."""
  return optax.incremental_update(params, average_params, step_size=1.0 - decay)


def interpolate_pairs(teacher_params, student_params, pairs, weight: float) -> dict:
  """(1 - w)*teacher + w*student on each paired tensor of `pairs` (ema.torch_zip_pairs), the others the teacher's.

  optax.incremental_update(student, teacher, w): w = 0 gives the teacher's values and w = 1 the student's exactly
  (x*1 + y*0 == x for finite y). The student's share after k EMA updates is `student_share`.
  """
  if not 0.0 <= weight <= 1.0:
    raise ValueError(f"interpolation weight must be in [0, 1], got {weight!r}")
  return _mix_pairs(teacher_params, student_params, pairs, weight)


def student_share(decay: float, updates: int, warmup: bool = False) -> float:
  """The share of the student's weights in each paired tensor after `updates` EMA updates of the teacher:
  w = 1 - prod_{t=1..k} alpha_t, alpha_t = decay (1 - decay^k), or min(1 - 1/(t + 1), decay) with the warm-up.
  In float64 on the host."""
  if updates < 0:
    raise ValueError(f"updates must be >= 0, got {updates}")
  if not warmup:
    return 1.0 - float(decay) ** updates
  kept = 1.0
  for t in range(1, updates + 1):
    kept *= min(1.0 - 1.0 / (t + 1.0), float(decay))
  return 1.0 - kept
