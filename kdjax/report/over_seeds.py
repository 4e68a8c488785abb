"""Several seeds' reports as one: mean ± std per model, the paired comparisons, the report over seeds.

With num_seeds = N > 1 each seed runs as an ordinary one-seed study in WORKDIR/seed_<s>/ (kdjax.study.seeds).
`build` makes WORKDIR/report.json from their reports: per model, the mean over seeds in the usual fields
(val_top1, ...), `<field>_std` beside each, and `per_seed`; and `comparisons`: the paired differences that
answer the question (significance.py), each with a 95 % interval. `markdown` and `plot` show it.
Each comparison carries its raw 95 % interval over seeds, the per-seed exact test over validation examples and
Holm's verdict over the report's family (`comparison_family`).
"""

from kdjax.report import build as report_lib
from kdjax.report import figures
from kdjax.report import significance
from kdjax.report import sweep
from kdjax.store.rundir import seed_dir

# Per-model metrics summarised over seeds (those a model has).
SEED_METRICS = ("val_top1", "val_top5", "val_loss", "agreement_with_teacher", "kl_to_teacher",
                "agreement_with_teacher_ema")
# The paired differences a - b that answer "student vs teacher, with and without EMA" (val_top1, points): the
# question's own two first, then what KD and the seed's EMA each change. Holm's family: those a report has.
COMPARISONS = (("student_kd_ema", "teacher"), ("student_kd", "teacher"), ("student_kd", "student_ce"),
               ("student_kd_ema", "student_ce"), ("student_kd_ema", "student_kd"), ("teacher_ema", "teacher"),
               # mean_teacher.py's rows (absent from the original's study, whose family stays its six):
               ("student_mean_teacher", "student_ce"), ("student_mean_teacher", "student_kd"),
               ("mean_teacher", "student_ce"))


def summarize(reports: list[dict], seeds: list[int]) -> dict:
  """{"models": {name: summary}, "comparisons": [...]} from one report per seed (same models in each).

  A model's summary: the mean of each SEED_METRICS field it has, `<field>_std` (None for one seed),
  `per_seed` [{seed, fields..., epochs}], and the mean per-epoch curve with its std (`epochs`).
  """
  models = {}
  for name, first in reports[0]["models"].items():
    entries = [report["models"][name] for report in reports]
    summary = {}
    for field in SEED_METRICS:
      if field in first:
        values = [entry[field] for entry in entries]
        summary[field] = significance.mean(values)
        summary[f"{field}_std"] = significance.std(values)
    summary["per_seed"] = [dict({field: entry[field] for field in SEED_METRICS if field in entry}, seed=seed,
                                epochs=entry["epochs"], train_seconds=entry.get("train_seconds"),
                                **({"collapse": entry["collapse"]} if "collapse" in entry else {}))
                           for seed, entry in zip(seeds, entries)]
    models[name] = summary
  correct = [report_lib.correct_vectors(report) for report in reports]
  comparisons = []
  for a, b in COMPARISONS:
    if a in models and b in models:
      bits = all(a in vectors and b in vectors for vectors in correct)
      comparisons.append(significance.compare(
          a, b, [report["models"][a]["val_top1"] for report in reports],
          [report["models"][b]["val_top1"] for report in reports],
          [vectors[a] for vectors in correct] if bits else None,
          [vectors[b] for vectors in correct] if bits else None, seeds))
  return {"models": models, "comparisons": comparisons, "comparison_family": significance.family(comparisons)}


def mean_curve(per_seed: list[dict], field: str) -> list[dict]:
  """[{epoch, mean, std}] of `field` over the seeds' per-epoch rows (epochs every seed has)."""
  epochs = sorted(set.intersection(*({row["epoch"] for row in seed["epochs"]} for seed in per_seed)))
  curve = []
  for epoch in epochs:
    values = [row[field] for seed in per_seed for row in seed["epochs"] if row["epoch"] == epoch]
    if any(value is None for value in values):
      continue
    curve.append({"epoch": epoch, "mean": significance.mean(values), "std": significance.std(values)})
  return curve


def build(config_values: dict, reports: list[dict], seeds: list[int], wall_seconds: float,
          ema_sweep: sweep.Sweep) -> dict:
  """The several-seed report.json: the first seed's dataset/environment, the summary, per-seed workdirs;
  config_values: config.to_dict()."""
  summary = summarize(reports, seeds)
  for name, entry in summary["models"].items():
    first = reports[0]["models"][name]
    entry.update(params=first["params"], flops_per_image=first["flops_per_image"], phase=first["phase"],
                 train_seconds=sum(report["models"][name]["train_seconds"] for report in reports))
  return {"dataset": reports[0]["dataset"], "seeds": seeds, "num_seeds": len(seeds),
          "models": summary["models"], "comparisons": summary["comparisons"],
          "comparison_family": summary["comparison_family"],
          "ema_sweep": sweep.points(ema_sweep, summary["models"]),
          "seed_workdirs": [str(seed_dir(".", seed)) for seed in seeds],
          "config": config_values, "environment": reports[0]["environment"], "wall_seconds": wall_seconds}


def plus_minus(entry: dict, field: str, digits: int = 2) -> str:
  """`mean ± std` of a summary's `field` (the mean alone where there is no spread: one seed)."""
  spread = entry.get(f"{field}_std")
  text = f"{entry[field]:.{digits}f}"
  return text + (f" ± {spread:.{digits}f}" if spread is not None else "")


def markdown(report: dict) -> str:
  data, n = report["dataset"], report["num_seeds"]
  lines = [f"# kdjax study, {n} seeds ({', '.join(map(str, report['seeds']))}): {data['name']} "
           f"({data['train_examples']} train / {data['val_examples']} validation, {data['num_classes']} classes)",
           "", f"Mean ± std over {n} seeds (each seed: its own initial weights and data order; "
           "per-seed runs in seed_<s>/).", "",
           "| model | params | val top-1 % | val top-5 % | val loss | agreement w/ teacher % | train s (all seeds) |",
           "|---|---:|---:|---:|---:|---:|---:|"]
  for name, entry in report["models"].items():
    agreement = plus_minus(entry, "agreement_with_teacher") if "agreement_with_teacher" in entry else ""
    lines.append(f"| {name} | {entry['params']:,} | {plus_minus(entry, 'val_top1')} | {plus_minus(entry, 'val_top5')} "
                 f"| {plus_minus(entry, 'val_loss', 4)} | {agreement} | {entry['train_seconds']:.1f} |")
  lines += ["", report_lib.answer(report["models"], report["comparisons"], n)]
  lines += ["", "Paired differences in top-1 (same seed: same initial weights and data order):", ""]
  lines += [f"- {report_lib.comparison_sentence(comparison, report.get('comparison_family'))}"
            for comparison in report["comparisons"]]
  lines += ["", report_lib.coverage_note(report)]
  lines += [*report_lib.ema_sections(report), "", "![curves](curves.png)", ""]
  return "\n".join(lines)


def plot(report: dict, path) -> None:
  """Validation top-1 per epoch: the mean over seeds with a ±1 std band, one line per model."""
  figure = figures.new(figsize=(7.5, 5.5))
  axis = figure.subplots()
  for name, entry in report["models"].items():
    curve = mean_curve(entry["per_seed"], "val_top1")
    epochs = [row["epoch"] for row in curve]
    means = [row["mean"] for row in curve]
    spreads = [row["std"] or 0.0 for row in curve]
    line, = axis.plot(epochs, means, marker="o", color=figures.color(name), label=name)   # its colour everywhere
    axis.fill_between(epochs, [m - s for m, s in zip(means, spreads)], [m + s for m, s in zip(means, spreads)],
                      color=line.get_color(), alpha=0.2)
  axis.set(title=f"validation top-1, mean ± std over {report['num_seeds']} seeds", xlabel="epoch", ylabel="%")
  figures.integer_ticks(axis.xaxis)
  axis.grid(alpha=0.3)
  figures.finish(figure, [axis], figures.title(report), legend_columns=3)
  figures.save(figure, path)
