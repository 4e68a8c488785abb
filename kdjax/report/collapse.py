"""Why the original's EMA collapses: what the EMA-updated teacher becomes, measured while it happens (the
measuring is study/probe.py's; this module holds the schedule, the probe's size, the quantities and the sentences).

Each kd_ema phase is measured at its start, at `schedule`'s log-spaced steps (ema.diagnostics_per_decade a factor
of 10: steps 1, 2, 3, 4, 6, 7, 10, 13, ... at 8) and at every epoch's end. A point holds
  distance   ‖θ_ema − θ_T‖ / ‖θ_T‖ over the teacher tensors the original's EMA updates
  entropy    mean over the probe of H(softmax(t/T)) / log K (0 one-hot, 1 flat); kd_loss (an epoch's end: its mean)
  probe_teacher_top1, probe_student_top1; teacher_top1, student_top1 (whole split: start and epoch ends only)
  seconds, compile_seconds
The probe (`probe_indices`) is the first P of a seed-0 permutation of the validation split, with
(points) · P <= BUDGET · (images the phase trains on) and PROBE_MIN <= P <= PROBE_MAX; what that bound holds and
what it does not: docs/ema.md#what-the-collapse-diagnostics-measure. `findings` states a change as a bracket
between two points ("between step a and step b") and the points' time as a share of the phase's training time.
"""

import math

import numpy as np
from scipy import special as scipy_special

from kdjax.report import figures

BUDGET = 0.05      # probe images over the phase's training images
PROBE_MIN = 32
PROBE_MAX = 1000
CHANCE_LEVEL = 0.05   # "at chance": an exact binomial test cannot tell the top-1 from 1/K at this level


def schedule(total_steps: int, per_decade: int) -> list[int]:
  """The log-spaced steps 1 <= s < total_steps: round(10^(k / per_decade)) for k = 0, 1, ..., without
  repeats; [] when per_decade is 0."""
  if per_decade <= 0:
    return []
  steps, k = set(), 0
  while (value := round(10 ** (k / per_decade))) < total_steps:
    steps.add(int(value))
    k += 1
  return sorted(steps)


def mid_epoch_steps(total_steps: int, steps_per_epoch: int, per_decade: int) -> set[int]:
  """The scheduled steps that are not an epoch's end (an epoch's end is measured anyway)."""
  return {step for step in schedule(total_steps, per_decade) if step % steps_per_epoch}


def probe_size(num_val: int, train_images: int, num_points: int) -> int:
  """P = floor(BUDGET · train_images / num_points), clipped to [PROBE_MIN, PROBE_MAX] and to num_val."""
  budget = math.floor(BUDGET * train_images / max(num_points, 1))
  return int(min(num_val, PROBE_MAX, max(PROBE_MIN, budget)))


def probe_indices(num_val: int, size: int) -> np.ndarray:
  """The probe: the first `size` of a seed-0 permutation of the validation split, sorted."""
  return np.sort(np.random.default_rng(0).permutation(num_val)[:size])


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


def _series(point: dict, who: str) -> float:
  """A point's top-1 of `who` ("teacher"/"student") on the probe; points saved before the probe existed
  carry the whole validation split's."""
  value = point.get(f"probe_{who}_top1")
  return point[f"{who}_top1"] if value is None else value


def _bracket(points: list[dict], index: int) -> str:
  """"between step a and step b (epoch e)": the last point before `index` and the point itself."""
  before, after = points[index - 1], points[index]
  return f"between step {before['step']} and step {after['step']} (epoch {after['epoch']})"


def format_p(p: float) -> str:
  return "< 0.0001" if p < 1e-4 else f"= {p:.2g}"


def chance_p(top1: float, examples: int, num_classes: int) -> float:
  """One-sided exact binomial p of `top1` % of `examples` against accuracy 1/K (H1: above chance)."""
  return chance_p_of_count(round(top1 * examples / 100.0), examples, num_classes)


def chance_p_of_count(correct: int, examples: int, num_classes: int) -> float:
  """P(X >= correct), X ~ Binomial(examples, 1/K): the one-sided exact test of `correct` right against chance.
  P(X >= k) = I_{1/K}(k, n - k + 1), the regularised incomplete beta (scipy.stats.binomtest's p, without the
  import of scipy.stats that every run would wait a second for)."""
  if correct <= 0:
    return 1.0
  return float(scipy_special.betainc(correct, examples - correct + 1, 1.0 / num_classes))


def findings(points: list[dict], teacher: str, student: str, *, num_classes: int | None = None,
             val_examples: int | None = None, temperature: float | None = None,
             train_seconds: float | None = None) -> list[str]:
  """Sentences from the points of one kd_ema phase (its EMA-updated teacher `teacher`, its student): between
  which two points the teacher falls below the student and has lost half its top-1 (on the probe), whether
  it ends at chance on the whole validation split (exact binomial test against 1/K; K = num_classes,
  val_examples its size), what happens to the distance, the soft targets and the KD loss, and what the
  points cost (train_seconds: the phase's training time)."""
  if len(points) < 2:
    return []
  first, last = points[0], points[-1]
  probe = last.get("probe_size")
  where = f"on the {probe}-image probe" if probe else "on the validation split"
  sentences = []
  below = next((i for i in range(1, len(points))
                if _series(points[i], "teacher") < _series(points[i], "student")), None)
  if below is None:
    sentences.append(f"{teacher} stays at or above {student} at every measured point {where} "
                     f"(last: {_series(last, 'teacher'):.2f} % vs {_series(last, 'student'):.2f} %).")
  else:
    point = points[below]
    sentences.append(f"{teacher} falls below {student} {where} {_bracket(points, below)}: "
                     f"{_series(point, 'teacher'):.2f} % vs {_series(point, 'student'):.2f} % at step "
                     f"{point['step']}, from {_series(first, 'teacher'):.2f} % at the start.")
  start_top1 = _series(first, "teacher")
  halved = next((i for i in range(1, len(points)) if _series(points[i], "teacher") <= start_top1 / 2), None)
  if halved is not None and start_top1 > 0:
    before, after = points[halved - 1], points[halved]
    sentences.append(f"It has lost half its top-1 {where} {_bracket(points, halved)} "
                     f"({_series(before, 'teacher'):.2f} % then {_series(after, 'teacher'):.2f} %; moved "
                     f"{before['distance']:.1%} then {after['distance']:.1%} of its norm).")
  ends = [p for p in points if p.get("teacher_top1") is not None]
  if num_classes and val_examples and ends and ends[-1]["epoch"] == last["epoch"]:
    final, chance = ends[-1], 100.0 / num_classes
    p_final = chance_p(final["teacher_top1"], val_examples, num_classes)
    started_above = chance_p(ends[0]["teacher_top1"], val_examples, num_classes) < CHANCE_LEVEL
    if started_above and p_final >= CHANCE_LEVEL:
      since = next(i for i in range(len(ends)) if all(
          chance_p(p["teacher_top1"], val_examples, num_classes) >= CHANCE_LEVEL for p in ends[i:]))
      sentences.append(f"On the whole validation split ({val_examples} images) it ends at "
                       f"{final['teacher_top1']:.2f} %, not distinguishable from chance (1/K = {chance:.2f} %; "
                       f"exact binomial p {format_p(p_final)}) at every epoch's end from epoch "
                       f"{ends[since]['epoch']} on.")
    elif started_above:
      sentences.append(f"On the whole validation split ({val_examples} images) it ends at "
                       f"{final['teacher_top1']:.2f} %, above chance (1/K = {chance:.2f} %; exact binomial "
                       f"p {format_p(p_final)}).")
  at = f" at T = {temperature:g}" if temperature else ""
  sentences.append(f"Pulled {last['distance']:.1%} of its norm away from the trained teacher by the end; its soft "
                   f"targets' entropy{at} {where} goes from {first['entropy']:.2f} to {last['entropy']:.2f} "
                   f"of the maximum (log K).")
  losses = [p["kd_loss"] for p in points if p["kd_loss"] is not None]
  if len(losses) >= 2:
    sentences.append(f"The KD loss goes from {losses[0]:.3g} to {losses[-1]:.3g} (peak {max(losses):.3g}).")
  cost = [p["seconds"] for p in points if p.get("seconds") is not None]
  if cost and probe:
    sentences.append(_cost_sentence(points, sum(cost), probe, train_seconds))
  return sentences


def _cost_sentence(points: list[dict], seconds: float, probe: int, train_seconds: float | None) -> str:
  """What the points took, and, past BUDGET of the phase's training time, why (the module docstring's bound)."""
  first, last = points[0], points[-1]
  compiled = sum(p.get("compile_seconds") or 0.0 for p in points)
  compile_part = f" ({compiled:.1f} s of it compiling the probe's forwards, once a process)" if compiled >= 0.05 else ""
  share = f", {100 * seconds / train_seconds:.1f} % of the phase's {train_seconds:.0f} s of training" if (
      train_seconds) else ""
  sentence = (f"Measured at {len(points)} points (step {first['step']} to {last['step']}, log-spaced, and each "
              f"epoch's end); they took {seconds:.1f} s{compile_part}{share}.")
  if not train_seconds or seconds <= BUDGET * train_seconds:
    return sentence
  reasons = []
  if probe <= PROBE_MIN:
    needed = math.ceil(len(points) * PROBE_MIN / BUDGET)
    reasons.append(f"the probe is at its floor of {PROBE_MIN} images, within {BUDGET * 100:g} % of the training images "
                   f"only for a phase of {needed:,} or more")
  if compiled >= 0.05 and seconds - compiled <= BUDGET * train_seconds:
    reasons.append("without the compile they are within it")
  elif probe > PROBE_MIN:
    reasons.append(f"its {probe}-image batches cost more per image than training batches")
  return sentence[:-1] + f": above the {BUDGET * 100:g} % budget, as {'; '.join(reasons)}."


def seed_table(per_seed: list[dict], teacher: str, student: str, *, num_classes: int | None = None,
               val_examples: int | None = None) -> list[str]:
  """report.md's table of the collapse diagnostics seed by seed (an over-seeds report): the steps between which
  `teacher` (the EMA-updated teacher) falls below `student` and has lost half its top-1 on the probe, how far it
  moved, and its final top-1 with the one-sided binomial p against chance (1/K). [] without diagnostics."""
  rows = []
  for entry in per_seed:
    points = entry.get("collapse") or []
    if len(points) < 2:
      continue
    below = next((i for i in range(1, len(points))
                  if _series(points[i], "teacher") < _series(points[i], "student")), None)
    start = _series(points[0], "teacher")
    halved = next((i for i in range(1, len(points)) if _series(points[i], "teacher") <= start / 2), None)
    steps = lambda i: "never" if i is None else f"{points[i - 1]['step']}–{points[i]['step']}"
    final = entry.get("val_top1")
    chance = ""
    if final is not None and num_classes and val_examples:
      chance = f"{chance_p(final, val_examples, num_classes):.2g}"
    rows.append(f"| {entry.get('seed', '')} | {steps(below)} | {steps(halved)} | {points[-1]['distance']:.1%} "
                f"| {'' if final is None else f'{final:.2f}'} | {chance} |")
  if not rows:
    return []
  return [f"| seed | {teacher} below {student} (steps) | half its top-1 lost (steps) | moved (of its norm) "
          f"| final top-1 % | p above chance |", "|---:|---|---|---:|---:|---:|", *rows]


def plot(diagnostics: dict[str, list[dict]], path, suptitle: str | None = None) -> None:
  """Four panels against the training step (symmetric-log axis: the points are log-spaced), each model in its
  colour of every figure (figures.color): distance from the trained teacher, soft-target entropy / log K, its
  student's KD loss (log axis), and top-1 on the probe (teacher solid, student dashed), with the whole validation
  split's at epoch ends as open circles. Every panel spans the same steps, from 0; `suptitle`:
  figures.title(report)."""

  figure = figures.new(figsize=(11, 8.5))
  axes = figure.subplots(2, 2)
  (distance_axis, entropy_axis), (loss_axis, top1_axis) = axes
  for name, points in diagnostics.items():
    steps = [p["step"] for p in points]
    student = _student_of(name)
    color, student_color = figures.color(name), figures.color(student)
    distance_axis.plot(steps, [p["distance"] for p in points], marker=".", color=color, label=name)
    entropy_axis.plot(steps, [p["entropy"] for p in points], marker=".", color=color, label=name)
    loss_points = [(p["step"], p["kd_loss"]) for p in points if p["kd_loss"] is not None]
    if loss_points:   # the loss the student trains on (none at step 0: no step taken yet)
      loss_axis.plot(*zip(*loss_points), marker=".", color=student_color, label=f"{student} (against {name})")
    top1_axis.plot(steps, [_series(p, "teacher") for p in points], marker=".", color=color, label=name)
    top1_axis.plot(steps, [_series(p, "student") for p in points], linestyle="--", color=student_color,
                   label=student)
    full = [(p["step"], p["teacher_top1"]) for p in points if p.get("teacher_top1") is not None]
    if full and any("probe_size" in p for p in points):
      top1_axis.plot(*zip(*full), linestyle="none", marker="o", fillstyle="none", color=color,
                     label=f"{name}, whole validation")
  distance_axis.set(title="‖θ_ema − θ_teacher‖ / ‖θ_teacher‖", xlabel="step")
  entropy_axis.set(title="soft-target entropy / log K (1 = flat)", xlabel="step", ylim=(0, 1.02))
  loss_axis.set(title="the student's KD loss", xlabel="step", yscale="log")
  top1_axis.set(title="top-1 % on the probe (student dashed)", xlabel="step")
  last_step = max((p["step"] for points in diagnostics.values() for p in points), default=1)
  # Log-spaced points on a symmetric-log axis (linear below 1, so step 0 shows): ticks at 0, 1, 10, 100, ... and
  # the last step, written as whole numbers.
  ticks = sorted({0, *(10 ** k for k in range(len(str(max(last_step, 1))))), last_step})
  for axis in axes.flat:
    axis.set_xscale("symlog", linthresh=1)
    axis.set_xticks(ticks, [f"{tick:,}" for tick in ticks])
    axis.set_xticks([], minor=True)
    axis.set_xlabel("step")
    axis.grid(alpha=0.3)
  figures.same_x_range(axes.flat, 0, last_step * 1.05)
  figures.finish(figure, list(axes.flat), suptitle)
  figures.save(figure, path)


def _student_of(teacher_ema: str) -> str:
  """The student an EMA-updated teacher trains (teacher_ema@0.9 -> student_kd_ema@0.9)."""
  prefix = "teacher_ema"
  return "student_kd_ema" + teacher_ema[len(prefix):] if teacher_ema.startswith(prefix) else f"{teacher_ema}'s student"
