"""Several seeds in one run: the study once per seed config.seed, config.seed + 1, ..., and its summary.

    python -m kdjax.main --config configs/ema.py --workdir runs/ema5 --config.num_seeds=5

With num_seeds = N > 1, seed s runs as an ordinary one-seed study in WORKDIR/seed_<s>/ (its own initial
weights and data order; its teacher distils its students; its own checkpoints, so an interrupted run resumes
seed by seed and a seed's numbers equal a one-seed run with config.seed = s). WORKDIR/report.json then holds,
per model, the mean over seeds in the usual fields (val_top1, ...), `<field>_std` beside each, and `per_seed`;
and `comparisons`: the paired differences that answer the question (statistics.py), each with its raw 95 %
interval over seeds, the per-seed exact test over validation examples and Holm's verdict over the report's family
(`comparison_family`).

The seeds run one after another. On this project's 2-core CPU a vmap of three students' params into one step
measured 0.56x the throughput of three separate steps (XLA:CPU lowers it to grouped convolutions), and
sequential seeds keep each seed's numbers bit-identical to a one-seed run.
"""

import pathlib
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)

from kdjax import progress  # noqa: E402
from kdjax import report as report_lib  # noqa: E402
from kdjax import statistics  # noqa: E402
from kdjax import sweep  # noqa: E402

# Per-model metrics summarised over seeds (those a model has).
SEED_METRICS = ("val_top1", "val_top5", "val_loss", "agreement_with_teacher", "kl_to_teacher",
                "agreement_with_teacher_ema")
# The paired differences a - b that answer "student vs teacher, with and without EMA" (val_top1, points): the
# question's own two first, then what KD and the seed's EMA each change. Holm's family: those a report has.
COMPARISONS = (("student_kd_ema", "teacher"), ("student_kd", "teacher"), ("student_kd", "student_ce"),
               ("student_kd_ema", "student_ce"), ("student_kd_ema", "student_kd"), ("teacher_ema", "teacher"))


def seed_values(config) -> list[int]:
  return [config.seed + offset for offset in range(config.num_seeds)]


def seed_dir(workdir, seed: int) -> pathlib.Path:
  return pathlib.Path(workdir) / f"seed_{seed}"


def seed_config(config, seed: int):
  """The one-seed config of `seed`. A teacher.checkpoint that is itself a several-seed workdir gives each seed
  the teacher of the same seed."""
  one = config.copy_and_resolve_references()
  with one.unlocked():
    one.seed = seed
    one.num_seeds = 1
    if config.teacher.checkpoint and seed_dir(config.teacher.checkpoint, seed).is_dir():
      one.teacher.checkpoint = str(seed_dir(config.teacher.checkpoint, seed))
  return one


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
        summary[field] = statistics.mean(values)
        summary[f"{field}_std"] = statistics.std(values)
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
      comparisons.append(statistics.compare(
          a, b, [report["models"][a]["val_top1"] for report in reports],
          [report["models"][b]["val_top1"] for report in reports],
          [vectors[a] for vectors in correct] if bits else None,
          [vectors[b] for vectors in correct] if bits else None, seeds))
  return {"models": models, "comparisons": comparisons, "comparison_family": statistics.family(comparisons)}


def mean_curve(per_seed: list[dict], field: str) -> list[dict]:
  """[{epoch, mean, std}] of `field` over the seeds' per-epoch rows (epochs every seed has)."""
  epochs = sorted(set.intersection(*({row["epoch"] for row in seed["epochs"]} for seed in per_seed)))
  curve = []
  for epoch in epochs:
    values = [row[field] for seed in per_seed for row in seed["epochs"] if row["epoch"] == epoch]
    if any(value is None for value in values):
      continue
    curve.append({"epoch": epoch, "mean": statistics.mean(values), "std": statistics.std(values)})
  return curve


def build(config, reports: list[dict], seeds: list[int], wall_seconds: float) -> dict:
  """The several-seed report.json: the first seed's dataset/environment, the summary, per-seed workdirs."""
  summary = summarize(reports, seeds)
  for name, entry in summary["models"].items():
    first = reports[0]["models"][name]
    entry.update(params=first["params"], flops_per_image=first["flops_per_image"], phase=first["phase"],
                 train_seconds=sum(report["models"][name]["train_seconds"] for report in reports))
  return {"dataset": reports[0]["dataset"], "seeds": seeds, "num_seeds": len(seeds),
          "models": summary["models"], "comparisons": summary["comparisons"],
          "comparison_family": summary["comparison_family"],
          "ema_sweep": sweep.points(config, summary["models"]),
          "seed_workdirs": [str(seed_dir(".", seed)) for seed in seeds],
          "config": config.to_dict(), "environment": reports[0]["environment"], "wall_seconds": wall_seconds}


def _pm(entry: dict, field: str, digits: int = 2) -> str:
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
    agreement = _pm(entry, "agreement_with_teacher") if "agreement_with_teacher" in entry else ""
    lines.append(f"| {name} | {entry['params']:,} | {_pm(entry, 'val_top1')} | {_pm(entry, 'val_top5')} "
                 f"| {_pm(entry, 'val_loss', 4)} | {agreement} | {entry['train_seconds']:.1f} |")
  lines += ["", report_lib.answer(report["models"], report["comparisons"], n)]
  lines += ["", "Paired differences in top-1 (same seed: same initial weights and data order):", ""]
  lines += [f"- {report_lib.comparison_sentence(comparison, report.get('comparison_family'))}"
            for comparison in report["comparisons"]]
  lines += ["", report_lib.coverage_note(report)]
  lines += [*report_lib.ema_sections(report), "", "![curves](curves.png)", ""]
  return "\n".join(lines)


def plot(report: dict, path) -> None:
  """Validation top-1 per epoch: the mean over seeds with a ±1 std band, one line per model."""
  figure, axis = plt.subplots(figsize=(7.5, 4.5))
  for name, entry in report["models"].items():
    curve = mean_curve(entry["per_seed"], "val_top1")
    epochs = [row["epoch"] for row in curve]
    means = [row["mean"] for row in curve]
    spreads = [row["std"] or 0.0 for row in curve]
    line, = axis.plot(epochs, means, marker="o", label=name)
    axis.fill_between(epochs, [m - s for m, s in zip(means, spreads)], [m + s for m, s in zip(means, spreads)],
                      color=line.get_color(), alpha=0.2)
  axis.set(title=f"validation top-1, mean ± std over {report['num_seeds']} seeds", xlabel="epoch", ylabel="%")
  axis.xaxis.get_major_locator().set_params(integer=True)
  axis.grid(alpha=0.3)
  axis.legend(fontsize=8)
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  plt.close(figure)


def run(config, workdir) -> dict:
  """Runs the study once per seed (train_and_evaluate in seed_<s>/) and writes the summary into workdir."""
  from kdjax import experiment  # experiment dispatches here: imported late to keep the modules acyclic
  from kdjax import mesh as mesh_lib
  from kdjax import resume
  from kdjax.rundir import RunDir

  start = time.perf_counter()
  run_dir = RunDir(workdir, writer=mesh_lib.is_writer())
  config_dict = resume.config_json(config)
  resume.check_config(run_dir, config_dict, config.checkpoint.allow_config_change)
  run_dir.write_json("config.json", config_dict)
  seeds = seed_values(config)
  reports = []
  for seed in seeds:
    progress.say(f"== seed {seed} ({seeds.index(seed) + 1} of {len(seeds)}) -> {seed_dir(workdir, seed)}")
    reports.append(experiment.train_and_evaluate(seed_config(config, seed), seed_dir(workdir, seed)))
  report = build(config, reports, seeds, time.perf_counter() - start)
  if not run_dir.writer:   # a multi-host run: process 0 writes the summary
    return report
  run_dir.write_json("report.json", report)
  text = markdown(report)
  run_dir.file("report.md").write_text(text)
  plot(report, run_dir.file("curves.png"))
  report_lib.extra_plots(report, run_dir)
  progress.say(text)
  return report

