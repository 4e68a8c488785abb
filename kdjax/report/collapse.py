"""Why the original's EMA collapses: what the EMA-updated teacher becomes, measured while it happens.

The seed pulls the trained teacher θ_T toward the student every step (teacher = α·teacher + (1−α)·student on
the tensors that pair by shape, ema.py), then distils the student from it. At each point (the start, every
ema.diagnostics_every steps of the first epoch, and each epoch's end) of every kd_ema phase:

  distance      ‖θ_ema − θ_T‖ / ‖θ_T‖ over the teacher tensors the original's EMA updates
  entropy       mean over a fixed probe batch of H(softmax(t/T)) / log K: 0 = one-hot, 1 = flat soft targets
  kd_loss       the step's KD loss (at an epoch's end: the epoch's mean, as the train loss)
  teacher_top1  the EMA-updated teacher's validation top-1; student_top1 the student's

`findings` turns the points into sentences: when (if) the teacher falls below its student, what happens to the
soft targets, how far the teacher moved. Nothing in them is written by hand.
"""

import math

import numpy as np

from kdjax.report import figures
from kdjax.training import evaluate

PROBE_SIZE = 256   # the first validation images: the same probe for every phase and seed of a data set
FLAT = 0.9         # entropy / log K above which the soft targets carry almost no class information


def relative_distance(params, reference, pairs) -> float:
  """‖params − reference‖ / ‖reference‖ over the teacher tensors of `pairs` (ema.torch_zip_pairs), in float64."""
  moved = total = 0.0
  for _, (layer, name) in pairs:
    ref = np.asarray(reference[layer][name], np.float64)
    moved += float(np.sum((np.asarray(params[layer][name], np.float64) - ref) ** 2))
    total += float(np.sum(ref ** 2))
  return math.sqrt(moved / total) if total else 0.0


def soft_target_entropy(logits: np.ndarray, temperature: float) -> float:
  """Mean over examples of H(softmax(logits / T)), divided by log K (so in [0, 1])."""
  scaled = np.asarray(logits, np.float64) / temperature
  scaled -= scaled.max(axis=-1, keepdims=True)
  log_probs = scaled - np.log(np.exp(scaled).sum(axis=-1, keepdims=True))
  entropy = -(np.exp(log_probs) * log_probs).sum(axis=-1)
  return float(entropy.mean() / math.log(logits.shape[-1]))


def measure(setup, teacher_params, trained_teacher, *, epoch: int, step: int, kd_loss: float | None,
            teacher_top1: float, student_top1: float) -> dict:
  """One point of the diagnostics (see the module docstring)."""
  probe = setup.dataset.val_images[:PROBE_SIZE]
  logits = evaluate.predict(setup.nets["teacher"], teacher_params, probe, setup.mean, setup.std,
                            setup.config.eval_batch_size, setup.parallel)
  return {"epoch": epoch, "step": step,
          "distance": relative_distance(teacher_params, trained_teacher, setup.ema_pairs()),
          "entropy": soft_target_entropy(logits, float(setup.config.kd.temperature)),
          "kd_loss": kd_loss, "teacher_top1": teacher_top1, "student_top1": student_top1}


def findings(points: list[dict], teacher: str, student: str, num_classes: int | None = None) -> list[str]:
  """Sentences from the points of one kd_ema phase (its EMA-updated teacher `teacher`, its student): when the
  teacher falls below the student, when it has lost half its top-1, when it sits at chance (<= 1.5 x 100/K %
  from then on; K = num_classes), and what happens to the distance, the soft targets and the KD loss."""
  if len(points) < 2:
    return []
  first, last = points[0], points[-1]
  sentences = []
  below = next((p for p in points[1:] if p["teacher_top1"] < p["student_top1"]), None)
  if below is None:
    sentences.append(f"{teacher} stays at or above {student} at every measured point "
                     f"(last: {last['teacher_top1']:.2f} % vs {last['student_top1']:.2f} %).")
  else:
    sentences.append(f"{teacher} falls below {student} at step {below['step']} (epoch {below['epoch']}): "
                     f"{below['teacher_top1']:.2f} % vs {below['student_top1']:.2f} %, from "
                     f"{first['teacher_top1']:.2f} % at the start; it ends at {last['teacher_top1']:.2f} %.")
  course = []
  halved = next((p for p in points[1:] if p["teacher_top1"] <= first["teacher_top1"] / 2), None)
  if halved is not None and first["teacher_top1"] > 0:
    course.append(f"it has lost half its top-1 by step {halved['step']} (epoch {halved['epoch']}: "
                  f"{halved['teacher_top1']:.2f} %)")
  if num_classes:
    chance = 100.0 / num_classes
    at_chance = next((i for i, p in enumerate(points)
                      if all(q["teacher_top1"] <= 1.5 * chance for q in points[i:])), None)
    if at_chance is not None and first["teacher_top1"] > 1.5 * chance:
      p = points[at_chance]
      course.append(f"it is at chance level (100/K = {chance:.2f} %) from step {p['step']} (epoch {p['epoch']}) on")
  if course:
    text = " and ".join(course)
    sentences.append(text[0].upper() + text[1:] + ".")
  entropy_change = (f"its soft targets' entropy goes from {first['entropy']:.2f} to {last['entropy']:.2f} of "
                    f"the maximum (log K)")
  flat = next((p for p in points if p["entropy"] > FLAT), None)
  if flat is not None:
    entropy_change += (f", past {FLAT:.1f} (almost flat: little class information left to distil) from step "
                       f"{flat['step']}")
  sentences.append(f"Pulled {last['distance']:.1%} of its norm away from the trained teacher, "
                   f"{entropy_change}.")
  losses = [p["kd_loss"] for p in points if p["kd_loss"] is not None]
  if len(losses) >= 2:
    peak = max(losses)
    sentences.append(f"The KD loss goes from {losses[0]:.3g} to {losses[-1]:.3g} (peak {peak:.3g}).")
  return sentences


def plot(diagnostics: dict[str, list[dict]], path, suptitle: str | None = None) -> None:
  """Four panels against the training step, one colour per EMA-updated teacher: distance from the trained
  teacher, soft-target entropy / log K, its student's KD loss (log axis), and validation top-1 (teacher solid,
  student dashed). Every panel spans the same steps, from 0; `suptitle`: figures.title(report)."""

  figure = figures.new(figsize=(11, 8.5))
  axes = figure.subplots(2, 2)
  (distance_axis, entropy_axis), (loss_axis, top1_axis) = axes
  for name, points in diagnostics.items():
    steps = [p["step"] for p in points]
    student = _student_of(name)
    line, = distance_axis.plot(steps, [p["distance"] for p in points], marker=".", label=name)
    color = line.get_color()
    entropy_axis.plot(steps, [p["entropy"] for p in points], marker=".", color=color, label=name)
    loss_points = [(p["step"], p["kd_loss"]) for p in points if p["kd_loss"] is not None]
    if loss_points:   # the loss the student trains on (none at step 0: no step taken yet)
      loss_axis.plot(*zip(*loss_points), marker=".", color=color, label=f"{student} (against {name})")
    top1_axis.plot(steps, [p["teacher_top1"] for p in points], marker=".", color=color, label=name)
    top1_axis.plot(steps, [p["student_top1"] for p in points], linestyle="--", color=color, label=student)
  distance_axis.set(title="‖θ_ema − θ_teacher‖ / ‖θ_teacher‖", xlabel="step")
  entropy_axis.set(title="soft-target entropy / log K (1 = flat)", xlabel="step", ylim=(0, 1.02))
  loss_axis.set(title="the student's KD loss", xlabel="step", yscale="log")
  top1_axis.set(title="validation top-1 % (student dashed)", xlabel="step")
  last_step = max((p["step"] for points in diagnostics.values() for p in points), default=1)
  figures.same_x_range(axes.flat, -0.02 * last_step, 1.02 * last_step)
  for axis in axes.flat:
    axis.grid(alpha=0.3)
    figures.integer_ticks(axis.xaxis)
  figures.finish(figure, list(axes.flat), suptitle)
  figures.save(figure, path)


def _student_of(teacher_ema: str) -> str:
  """The student an EMA-updated teacher trains (teacher_ema@0.9 -> student_kd_ema@0.9)."""
  prefix = "teacher_ema"
  return "student_kd_ema" + teacher_ema[len(prefix):] if teacher_ema.startswith(prefix) else f"{teacher_ema}'s student"
