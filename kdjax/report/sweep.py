"""The EMA sweep: the original's EMA at several alphas (and with the mean-teacher warm-up), side by side.

config.ema.sweep adds one student_kd_ema variant per (alpha, warm-up) pair (phases.sweep_phase), each distilled
from the same trained teacher; the study hands them over as a `Sweep`. alpha = 1 never moves the teacher: it is plain KD (student_kd), shown at
alpha = 1 in the plot. `points` reads the report's rows; `plot` draws ema_sweep.png: the student's and the
EMA-updated teacher's top-1 against 1 − alpha (log axis), with ±1 std bars over seeds when there are several.
"""

import dataclasses

from kdjax import phases
from kdjax.report import figures


@dataclasses.dataclass(frozen=True)
class Sweep:
  """The sweep's variants (study/builder.sweep_phases(config)) and the plain EMA phase's alpha and warm-up
  (config.ema.decay, config.ema.warmup)."""

  variants: tuple = ()
  decay: float = 0.0
  warmup: bool = False


def points(sweep: Sweep, models: dict) -> list[dict]:
  """[{alpha, warmup, student, student_std, teacher, teacher_std}] for every EMA phase of the report, plus
  plain KD at alpha = 1 (teacher = the trained teacher), sorted by warm-up then alpha; [] without ema.sweep."""
  variants = sweep.variants
  if not variants:   # no sweep configured: the plain EMA phase alone is no curve
    return []
  rows = []
  names = ["student_kd_ema"] + [variant.name for variant in variants]
  for name in names:
    spec = phases.phase(name)
    student, teacher = models.get(name), models.get(phases.TEACHER_EMA + spec.variant)
    if student is None or teacher is None:
      continue
    alpha = sweep.decay if spec.teacher_decay is None else spec.teacher_decay
    warmup = sweep.warmup if spec.warmup is None else spec.warmup
    rows.append({"alpha": float(alpha), "warmup": bool(warmup), "student": student["val_top1"],
                 "student_std": student.get("val_top1_std"), "teacher": teacher["val_top1"],
                 "teacher_std": teacher.get("val_top1_std")})
  if rows and "student_kd" in models and "teacher" in models:
    for warmup in sorted({row["warmup"] for row in rows}):
      rows.append({"alpha": 1.0, "warmup": warmup, "student": models["student_kd"]["val_top1"],
                   "student_std": models["student_kd"].get("val_top1_std"),
                   "teacher": models["teacher"]["val_top1"], "teacher_std": models["teacher"].get("val_top1_std")})
  return sorted(rows, key=lambda row: (row["warmup"], row["alpha"]))


def markdown(rows: list[dict]) -> list[str]:
  """A table of the sweep (alpha = 1 is plain KD)."""
  if len(rows) < 2:
    return []
  show = lambda value, spread: f"{value:.2f}" + (f" ± {spread:.2f}" if spread is not None else "")
  lines = ["| alpha | warm-up | student top-1 % | EMA-updated teacher top-1 % |", "|---:|---|---:|---:|"]
  for row in rows:
    alpha = f"{row['alpha']:g}" + (" (plain KD)" if row["alpha"] == 1.0 else "")
    lines.append(f"| {alpha} | {'yes' if row['warmup'] else 'no'} | {show(row['student'], row['student_std'])} "
                 f"| {show(row['teacher'], row['teacher_std'])} |")
  return lines


def plot(rows: list[dict], path, suptitle: str | None = None) -> None:
  figure = figures.new(figsize=(7.5, 5.5))
  axis = figure.subplots()
  for warmup in sorted({row["warmup"] for row in rows}):
    chosen = [row for row in rows if row["warmup"] == warmup]
    # 1 - alpha on a log axis; plain KD (alpha = 1) drawn at a tenth of the smallest 1 - alpha.
    smallest = min((1 - row["alpha"] for row in chosen if row["alpha"] < 1), default=1e-4)
    xs = [1 - row["alpha"] if row["alpha"] < 1 else smallest / 10 for row in chosen]
    suffix = " (warm-up)" if warmup else ""
    axis.errorbar(xs, [row["student"] for row in chosen], yerr=[row["student_std"] or 0 for row in chosen],
                  marker="o", capsize=3, label=f"student{suffix}")
    axis.errorbar(xs, [row["teacher"] for row in chosen], yerr=[row["teacher_std"] or 0 for row in chosen],
                  marker="s", linestyle="--", capsize=3, label=f"EMA-updated teacher{suffix}")
  axis.set(xscale="log", xlabel="1 − alpha (leftmost point: alpha = 1, plain KD)", ylabel="validation top-1 %",
           title="the original's EMA against alpha")
  axis.grid(alpha=0.3)
  figures.finish(figure, [axis], suptitle)
  figures.save(figure, path)
