"""The study's answer: report.json (numbers), report.md (a table and a plain-language answer computed from
the numbers), curves.png (train losses, CE and KD apart; validation top-1; the EMA-updated teacher beside its
student).

A ModelResult per report row is filled in while the phases run; `compare_to_teachers` adds each student's
agreement with and KL to the teacher once every phase is done; `build` makes report.json's content.
"""

import dataclasses
import platform
from typing import Any

import flax
import jax

from kdjax.report import collapse
from kdjax.report import figures
from kdjax.training import evaluate
from kdjax import phases
from kdjax import progress
from kdjax.report import sweep
from kdjax.phases import EMA_WEIGHTS_SUFFIX, TEACHER_EMA

TEACHER, BASELINE, KD, KD_EMA = ("teacher", "student_ce", "student_kd", "student_kd_ema")


@dataclasses.dataclass
class ModelResult:
  """What the report needs of one evaluated model (a row)."""

  name: str
  net: str
  phase: str
  params: int
  flops_per_image: int
  epochs: list = dataclasses.field(default_factory=list)
  final: dict = dataclasses.field(default_factory=dict)
  val_logits: Any = None
  train_seconds: float = 0.0
  train_images: int = 0
  source: dict | None = None   # provenance of a model loaded from teacher.checkpoint instead of trained
  diagnostics: list = dataclasses.field(default_factory=list)  # an EMA-updated teacher's collapse.measure points


def compare_to_teachers(results: dict[str, ModelResult]) -> None:
  """Adds agreement_with_teacher and kl_to_teacher (T = 1) to every student's final metrics, and the
  EMA student's agreement with the EMA-updated teacher it was distilled from."""
  teacher = results.get(TEACHER)
  if teacher is None:
    return
  for result in results.values():
    if result.net == "student":
      result.final.update(evaluate.teacher_comparison(result.val_logits, teacher.val_logits))
  if TEACHER_EMA in results:
    student = results[KD_EMA]
    student.final["agreement_with_teacher_ema"] = evaluate.teacher_comparison(
        student.val_logits, results[TEACHER_EMA].val_logits)["agreement_with_teacher"]


def _model_entry(result) -> dict:
  entry = {key: result.final[key] for key in ("val_top1", "val_top5", "val_loss")}
  entry.update(
      val_correct=result.final["val_correct"], params=result.params, flops_per_image=result.flops_per_image,
      phase=result.phase, train_seconds=result.train_seconds,
      train_images_per_second=(result.train_images / result.train_seconds if result.train_seconds else None),
      epochs=result.epochs)
  for key in ("agreement_with_teacher", "kl_to_teacher", "agreement_with_teacher_ema"):
    if key in result.final:
      entry[key] = result.final[key]
  if result.source:
    entry["source"] = result.source  # loaded from teacher.checkpoint, not trained in this run
  if result.diagnostics:
    entry["collapse"] = result.diagnostics
  return entry


def environment(data_parallel: int = 1) -> dict:
  """Where the run ran; mesh.data: the data-parallel device count D (kdjax/training/mesh.py), processes: the hosts'."""
  return {"mesh": {"data": data_parallel}, "processes": jax.process_count(), "jax": jax.__version__,
          "flax": flax.__version__, "backend": jax.default_backend(),
          "devices": [str(device) for device in jax.devices()], "python": platform.python_version(),
          "machine": platform.machine(), "processor": platform.processor() or platform.machine()}


def build(config, dataset, results, checkpoints: dict, wall_seconds: float, data_parallel: int = 1) -> dict:
  """report.json's content: dataset, models (in phase order), config, environment, what was loaded or
  resumed from checkpoints, and the run's wall time."""
  return {
      "dataset": {"name": dataset.name, "train_examples": int(len(dataset.train_labels)),
                  "val_examples": int(len(dataset.val_labels)), "num_classes": dataset.num_classes,
                  "image_shape": list(dataset.image_shape)},
      "models": {name: _model_entry(result) for name, result in results.items()},
      "config": config.to_dict(),
      "environment": environment(data_parallel),
      "checkpoints": checkpoints,
      "ema_sweep": sweep.points(config, {name: _model_entry(result) for name, result in results.items()}),
      "wall_seconds": wall_seconds,
  }


def _delta(models: dict, name: str, reference: str) -> str:
  if reference not in models or name == reference:
    return ""
  return f"{models[name]['val_top1'] - models[reference]['val_top1']:+.2f}"


def _compare(value: float, reference: float) -> str:
  difference = value - reference
  if abs(difference) < 0.05:
    return "the same as"
  return f"{abs(difference):.2f} points {'above' if difference > 0 else 'below'}"


def answer(models: dict) -> str:
  """Two sentences answering "how does the student perform against the teacher, with and without EMA?"."""
  sentences = []
  if TEACHER in models and KD in models:
    teacher, kd = models[TEACHER]["val_top1"], models[KD]["val_top1"]
    sentence = (f"Distilled from the teacher ({teacher:.2f} % top-1), the student reaches {kd:.2f} %, "
                f"{_compare(kd, teacher)} the teacher")
    if BASELINE in models:
      sentence += (f" and {_compare(kd, models[BASELINE]['val_top1'])} the same student trained on labels "
                   f"alone ({models[BASELINE]['val_top1']:.2f} %)")
    sentences.append(sentence + ".")
  if KD_EMA in models and TEACHER in models:
    kd_ema, teacher = models[KD_EMA]["val_top1"], models[TEACHER]["val_top1"]
    sentence = (f"With the original's EMA updates the student reaches {kd_ema:.2f} %, "
                f"{_compare(kd_ema, teacher)} the teacher")
    if KD in models:
      sentence += f" and {_compare(kd_ema, models[KD]['val_top1'])} plain KD"
    if TEACHER_EMA in models:
      ema_teacher = models[TEACHER_EMA]["val_top1"]
      sentence += (f", while the EMA-updated teacher itself ends at {ema_teacher:.2f} % "
                   f"({_compare(ema_teacher, teacher)} the trained teacher)")
    sentences.append(sentence + ".")
  if not sentences:
    trained = ", ".join(f"{name} {entry['val_top1']:.2f} %" for name, entry in models.items())
    sentences.append(f"This run trained no teacher/student pair to compare; validation top-1: {trained}.")
  return " ".join(sentences)


def markdown(report: dict) -> str:
  models = report["models"]
  data = report["dataset"]
  lines = [
      f"# kdjax study: {data['name']} ({data['train_examples']} train / {data['val_examples']} validation, "
      f"{data['num_classes']} classes, {'x'.join(map(str, data['image_shape']))})", "",
      "| model | params | val top-1 % | val top-5 % | val loss | Δ top-1 vs teacher | Δ top-1 vs student_ce "
      "| agreement w/ teacher % | KL(teacher‖model) | train s |",
      "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for name, entry in models.items():
    agreement = entry.get("agreement_with_teacher")
    kl = entry.get("kl_to_teacher")
    lines.append(
        f"| {name} | {entry['params']:,} | {entry['val_top1']:.2f} | {entry['val_top5']:.2f} "
        f"| {entry['val_loss']:.4f} | {_delta(models, name, TEACHER)} | {_delta(models, name, BASELINE)} "
        f"| {'' if agreement is None else f'{agreement:.2f}'} | {'' if kl is None else f'{kl:.4f}'} "
        f"| {entry['train_seconds']:.1f} |")
  env = report["environment"]
  sources = [f"{name} was loaded from {entry['source']['checkpoint']}, not trained in this run."
             for name, entry in models.items() if entry.get("source")]
  comparisons = [f"- {comparison_sentence(comparison)}" for comparison in report.get("comparisons", [])]
  if comparisons:
    comparisons = ["", "Paired differences in top-1:", "", *comparisons]
  lines += ["", answer(models), *(["", *sources] if sources else []), *comparisons, *ema_sections(report), "",
            "![curves](curves.png)", "",
            f"Environment: jax {env['jax']}, flax {env['flax']}, backend {env['backend']}, "
            f"devices {', '.join(env['devices'])}"
            f"{', data parallel over %d' % env['mesh']['data'] if env.get('mesh', {}).get('data', 1) > 1 else ''}.",
            ""]
  return "\n".join(lines)


def comparison_sentence(comparison: dict) -> str:
  """`a − b: +m points (95 % CI lo to hi, n seeds): distinguishable / not distinguishable from zero`."""
  text = f"{comparison['a']} − {comparison['b']}: {comparison['mean']:+.2f} points"
  if comparison["ci95"] is None:
    return text + f" ({comparison['n']} seed: no interval; run several seeds to tell it from seed noise)"
  low, high = comparison["ci95"]
  verdict = ("distinguishable from zero" if comparison["distinguishable_from_zero"]
             else "not distinguishable from zero")
  return text + f" (95 % CI {low:+.2f} to {high:+.2f}, {comparison['n']} seeds): {verdict}"


def ema_sections(report: dict) -> list[str]:
  """report.md's part on the original's EMA: the sweep's table and, per EMA-updated teacher, what the collapse
  diagnostics measured (collapse.findings; for several seeds, those of the first seed)."""
  lines = []
  table = sweep.markdown(report.get("ema_sweep", []))
  if table:
    lines += ["", "The original's EMA against alpha (ema_sweep.png):", "", *table]
  for name, entry in report["models"].items():
    points = entry.get("collapse") or (entry.get("per_seed") or [{}])[0].get("collapse")
    student = "student_kd_ema" + name[len(TEACHER_EMA):]
    sentences = collapse.findings(points or [], name, student, report.get("dataset", {}).get("num_classes"))
    if sentences:
      seed_note = "" if entry.get("collapse") else f" (seed {entry['per_seed'][0]['seed']})"
      lines += ["", f"**{name}**{seed_note} (ema_collapse.png): " + " ".join(sentences)]
  return lines


def extra_plots(report: dict, run) -> None:
  """ema_sweep.png when the report holds a sweep; ema_collapse.png when it holds collapse diagnostics."""
  if len(report.get("ema_sweep", [])) >= 2:
    sweep.plot(report["ema_sweep"], run.file("ema_sweep.png"), figures.title(report))
  diagnostics = {name: entry.get("collapse") or (entry.get("per_seed") or [{}])[0].get("collapse")
                 for name, entry in report["models"].items()}
  diagnostics = {name: points for name, points in diagnostics.items() if points}
  if diagnostics:
    collapse.plot(diagnostics, run.file("ema_collapse.png"), figures.title(report))


def _loss_kind(result) -> str | None:
  """"ce" or "kd" for a model with train losses (its phase's own model), else None."""
  if result.name != result.phase or not result.epochs:
    return None
  if any(row.get("train_loss") is None for row in result.epochs):
    return None
  return "ce" if phases.phase(result.phase).step_kind == "ce" else "kd"


def curves_figure(results, suptitle: str | None = None):
  """curves.png's figure: the train losses, cross-entropy and KD apart (their scales differ by orders of
  magnitude), validation top-1 of every model, and the original's EMA loop: the EMA-updated teacher beside its
  student. Epochs are whole numbers on every x axis."""
  # A model's "(EMA weights)" row: its model's colour, dashed.
  base = {name: name.removesuffix(EMA_WEIGHTS_SUFFIX) for name in results}
  colors = {name: f"C{index % 10}" for index, name in enumerate(dict.fromkeys(base.values()))}
  panels = []
  for kind, title in (("ce", "train loss: cross-entropy on labels"),
                      ("kd", "train loss: KD objective")):
    names = [name for name, result in results.items() if _loss_kind(result) == kind]
    if names:
      panels.append((title, "mean loss", [(name, "train_loss", "-") for name in names], None))
  panels.append(("validation top-1", "%", [(name, "val_top1", "-" if base[name] == name else "--")
                                           for name in results], None))
  if TEACHER_EMA in results and KD_EMA in results:
    reference = results[TEACHER].final.get("val_top1") if TEACHER in results else None
    panels.append(("the original's EMA loop: validation top-1", "%",
                   [(KD_EMA, "val_top1", "-"), (TEACHER_EMA, "val_top1", "--")], reference))

  columns = 2 if len(panels) > 2 else len(panels)
  grid_rows = -(-len(panels) // columns)
  figure = figures.new(figsize=(5.5 * columns, 4.6 * grid_rows + 0.6))
  axes = figure.subplots(grid_rows, columns, squeeze=False)
  last_epoch = max((row["epoch"] for result in results.values() for row in result.epochs), default=1)
  for axis, (title, ylabel, lines, reference) in zip(axes.flat, panels):
    for name, key, style in lines:
      epochs = results[name].epochs
      axis.plot([row["epoch"] for row in epochs], [row[key] for row in epochs], style, marker="o",
                color=colors[base[name]], label=name)
    if reference is not None:
      axis.axhline(reference, color=colors[TEACHER], linestyle=":", label=f"{TEACHER} (trained, final)")
    axis.set(title=title, xlabel="epoch", ylabel=ylabel, xlim=(0.5, last_epoch + 0.5))
    figures.integer_ticks(axis.xaxis)
    axis.grid(alpha=0.3)
  for axis in list(axes.flat)[len(panels):]:
    axis.set_visible(False)
  figures.finish(figure, list(axes.flat), suptitle)
  return figure


def plot_curves(results, path, suptitle: str | None = None) -> None:
  """curves.png; `suptitle`: figures.title(report)."""
  figure = curves_figure(results, suptitle)
  figures.save(figure, path)


def write(run, report: dict, text: str, draw_curves) -> None:
  """The one writer of a report (one seed or several): report.json, curves.png (`draw_curves(path)`), the EMA
  figures, then report.md (`text`) into the run directory; then says the table."""
  run.write_json("report.json", report)
  draw_curves(run.file("curves.png"))
  extra_plots(report, run)
  run.write_text("report.md", text)   # after its figures: it never links a PNG that could not be written
  progress.say(text)
