"""Several studies side by side: the table that leads the README's answer.

A study is the per-seed reports of one several-seed workdir (its seed_<s>/report.json), given as (seeds,
reports). The models table has a column per study and a row per model any of them reports (phase order, each
model's "(EMA weights)" row after it); a cell is the mean ± std of top-1 over that study's seeds. Studies are never
merged by model name: the same name can be another model in another config (mean_teacher.py's student_kd learns
from CE + KD). The differences table lists each study's paired comparisons (report/over_seeds.COMPARISONS that it
holds), with ONE Holm family over all of them, since a reader takes the whole table in at once.
"""

from kdjax import phases
from kdjax.report import over_seeds
from kdjax.report import significance


def model_order(names) -> list[str]:
  """`names` in phase order, each "(EMA weights)" row after its model, anything else (sweep variants) last."""
  names = list(names)
  order = [row for name in phases.MODEL_ORDER for row in (name, name + phases.EMA_WEIGHTS_SUFFIX) if row in names]
  return order + [name for name in names if name not in order]


def build(studies: dict[str, tuple[list[int], list[dict]]]) -> dict:
  """{"studies": {study: {"seeds", "models": over_seeds.summarize's models}},
  "comparisons": [each study's paired comparisons, with "study"], "comparison_family": Holm over all of them}."""
  answer = {"studies": {}, "comparisons": []}
  for study, (seeds, reports) in studies.items():
    summary = over_seeds.summarize(reports, seeds)
    answer["studies"][study] = {"seeds": list(seeds), "models": summary["models"]}
    answer["comparisons"] += [dict(comparison, study=study) for comparison in summary["comparisons"]]
  answer["comparison_family"] = significance.family(answer["comparisons"])   # Holm over every study's rows
  return answer


def _interval(low_high) -> str:
  return "" if low_high is None else f"{low_high[0]:+.2f} to {low_high[1]:+.2f}"


def markdown(answer: dict) -> str:
  """The models table and the differences table (top-1 points: mean, raw 95 % t-interval over seeds, Holm's p
  over every row of the table, and the seeds × validation-images bootstrap interval)."""
  studies = answer["studies"]
  names = model_order({name for study in studies.values() for name in study["models"]})
  header = " | ".join(f"{study} ({len(entry['seeds'])} seeds)" for study, entry in studies.items())
  lines = [f"| model | {header} |", "|---|" + "---:|" * len(studies)]
  for name in names:
    cells = " | ".join(over_seeds.plus_minus(entry["models"][name], "val_top1") if name in entry["models"] else ""
                       for entry in studies.values())
    lines.append(f"| {name} | {cells} |")
  family = answer["comparison_family"]
  lines += ["", f"Paired differences, top-1 points (Holm over the {family['size']} tested rows below):", "",
            "| study | difference | per seed | mean | 95 % CI over seeds | Holm p | seeds × images |",
            "|---|---|---|---:|---|---:|---|"]
  for row in answer["comparisons"]:
    models = studies[row["study"]]["models"]
    per_seed = ", ".join(f"{a['val_top1'] - b['val_top1']:+.2f}"
                         for a, b in zip(models[row["a"]]["per_seed"], models[row["b"]]["per_seed"]))
    holm = "" if row["holm_p"] is None else f"{row['holm_p']:.2g}"
    lines.append(f"| {row['study']} | {row['a']} − {row['b']} | {per_seed} | {row['mean']:+.2f} "
                 f"| {_interval(row['ci95'])} | {holm} | {_interval(row.get('ci95_bootstrap'))} |")
  return "\n".join(lines) + "\n"
