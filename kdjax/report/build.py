"""The study's answer: report.json (numbers), report.md (a table and a plain-language answer computed from
the numbers), curves.png (train losses, CE and KD apart; validation top-1; the EMA-updated teacher beside its
student).

A ModelResult per report row is filled in while the phases run; `compare_to_teachers` adds each student's
agreement with and KL to the teacher once every phase is done; `build` makes report.json's content.
"""

import base64
import dataclasses
import math
from typing import Any

import numpy as np

from kdjax.report import collapse
from kdjax.report import environment as run_environment
from kdjax.report import figures
from kdjax.training import evaluate
from kdjax import phases
from kdjax import progress
from kdjax.report import significance
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
  diagnostics: list = dataclasses.field(default_factory=list)  # an EMA-updated teacher's study/probe.measure points


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


PER_EXAMPLE_ENCODING = ("base64 of numpy.packbits(correct) (bit order big, padded with zeros to a whole byte): "
                        "correct[i] = 1 when the model's top-1 on validation example i is its label")


def per_example(labels: np.ndarray, results: dict) -> dict:
  """report.json's `per_example`: each model's final per-example correctness on the validation split (top-1
  == label), one bit an example, so that paired tests over examples (significance.mcnemar) can be run from
  the report alone. 10,000 examples cost 1,668 characters a model."""
  return {"encoding": PER_EXAMPLE_ENCODING, "examples": int(len(labels)),
          "val_correct": {name: base64.b64encode(np.packbits(result.val_logits.argmax(axis=-1) == labels))
                          .decode("ascii") for name, result in results.items() if result.val_logits is not None}}


def correct_vectors(report: dict) -> dict[str, np.ndarray]:
  """{model: bool [N]} from report.json's `per_example` ({} when the report has none: an older run)."""
  block = report.get("per_example") or {}
  count = block.get("examples", 0)
  return {name: np.unpackbits(np.frombuffer(base64.b64decode(text), np.uint8))[:count].astype(bool)
          for name, text in block.get("val_correct", {}).items()}


# A model whose final validation loss is this many times ln K (the cross-entropy of a uniform guess over K classes,
# where a freshly initialised net starts) ran away from where it started: two orders of magnitude. Overfitting
# alone stays far below (digits' nets end near 0.1-0.5, ln 10 = 2.3); Adam at learning rate 10 ended at 1.7e30.
RAN_AWAY_FACTOR = 100


def ran_away(report: dict) -> list[str]:
  """A sentence per model whose final val_loss exceeds RAN_AWAY_FACTOR · ln K (K = the data set's classes)."""
  num_classes = report.get("dataset", {}).get("num_classes") or 0
  if num_classes < 2:
    return []
  start = math.log(num_classes)
  rate = report.get("config", {}).get("optimizer", {}).get("learning_rate")
  sentences = []
  for name, entry in report["models"].items():
    loss = entry.get("val_loss")
    if loss is not None and math.isfinite(loss) and loss > RAN_AWAY_FACTOR * start:
      sentences.append(
          f"{name} ended far from where it started: its validation loss is {loss:.3g}, "
          f"{math.floor(math.log10(loss / start))} orders of magnitude above ln {num_classes} = {start:.2f} (a "
          f"uniform guess, where an untrained net starts): training ran away (likely cause: "
          f"optimizer.learning_rate={rate} too large), and its top-1 is no result.")
  return sentences


def teacher_chance(report: dict) -> dict | None:
  """The one-sided binomial test of the teacher's validation top-1 against chance: under "the teacher guesses",
  its correct count k of the n validation images is Binomial(n, 1/K), and

    p = P(X >= k) = binomtest(k, n, 1/K, alternative="greater")

  {"correct", "examples", "chance", "p_value", "distinguishable"}; None without a teacher or its count."""
  teacher = report["models"].get(TEACHER) or {}
  examples = report.get("dataset", {}).get("val_examples")
  num_classes = report.get("dataset", {}).get("num_classes")
  if teacher.get("val_correct") is None or not examples or not num_classes:
    return None
  correct = int(teacher["val_correct"])
  p_value = collapse.chance_p_of_count(correct, examples, num_classes)
  return {"correct": correct, "examples": int(examples), "chance": 1 / num_classes, "p_value": p_value,
          "distinguishable": p_value <= collapse.CHANCE_LEVEL}


def chance_sentence(report: dict) -> str:
  """report.md's first sentence when the teacher is not distinguishable from chance, else ""."""
  test = teacher_chance(report)
  if test is None or test["distinguishable"]:
    return ""
  return (f"The teacher is not distinguishable from chance: {test['correct']} of {test['examples']} validation "
          f"images right ({100 * test['correct'] / test['examples']:.2f} %) against {100 * test['chance']:.2f} % "
          f"for a guess among {round(1 / test['chance'])} classes (one-sided binomial p {_p(test['p_value'], '=')}), "
          f"so no comparison below is with a teacher that learned anything.")


def cautions(report: dict) -> list[str]:
  """What report.md says before its answer: a teacher no better than chance, then every model that ran away."""
  return [sentence for sentence in (chance_sentence(report), *ran_away(report)) if sentence]


def build(config_values: dict, dataset, results, checkpoints: dict, wall_seconds: float, *, conv: dict,
          ema_sweep: sweep.Sweep, batch_size: int, data_parallel: int = 1) -> dict:
  """report.json's content: dataset, models (in phase order), config (`config_values`: config.to_dict()),
  environment (`conv`: who computed the convs, config.nets.describe), what was loaded or resumed from
  checkpoints, and the run's wall time. Each of `cautions` is also a warning on the log."""
  report = {
      "dataset": {"name": dataset.name, "train_examples": int(len(dataset.train_labels)),
                  "val_examples": int(len(dataset.val_labels)), "num_classes": dataset.num_classes,
                  "image_shape": list(dataset.image_shape)},
      "models": {name: _model_entry(result) for name, result in results.items()},
      "config": config_values,
      # what decides the bits (CPU, instruction sets, threads: report/environment.py) and which conv path ran, and
      # why (kdjax.config.nets.conv_engine)
      "environment": dict(run_environment.environment(data_parallel, batch_size, dataset.image_shape), conv=conv),
      "checkpoints": checkpoints,
      "ema_sweep": sweep.points(ema_sweep, {name: _model_entry(result) for name, result in results.items()}),
      "per_example": per_example(np.asarray(dataset.val_labels), results),
      "wall_seconds": wall_seconds,
  }
  for sentence in cautions(report):
    progress.warn(sentence)
  return report


def _loss(value: float) -> str:
  """A loss to 4 decimals; one that ran away (>= 1e6) in 4 significant digits, not 30 of them."""
  return f"{value:.4f}" if abs(value) < 1e6 else f"{value:.4g}"


def _delta(models: dict, name: str, reference: str) -> str:
  if reference not in models or name == reference:
    return ""
  return f"{models[name]['val_top1'] - models[reference]['val_top1']:+.2f}"


def _compare(value: float, reference: float) -> str:
  difference = value - reference
  if abs(difference) < 0.05:
    return "the same as"
  return f"{abs(difference):.2f} points {'above' if difference > 0 else 'below'}"


def _find(comparisons, a: str, b: str) -> dict | None:
  return next((c for c in comparisons or [] if (c["a"], c["b"]) == (a, b)), None)


def short_verdict(comparison: dict | None) -> str:
  """" (…: verdict)" for the answer's sentences, from a comparison's test and Holm p ("" without a test)."""
  if comparison is None or comparison.get("holm_p") is None:
    return ""
  holm = f"Holm p {_p(comparison['holm_p'], '=')}"
  if comparison["test"] == significance.T_TEST:
    low, high = comparison["ci95"]
    verdict = ("distinguishable from zero" if comparison["distinguishable_from_zero"]
               else "not distinguishable from zero")
    return f" (95 % CI {low:+.2f} to {high:+.2f} over {comparison['n']} seeds, {holm}: {verdict})"
  verdict = ("more than the validation set's noise" if comparison["distinguishable_from_zero"]
             else "within the validation set's noise")
  same = "the same on every seed; " if comparison.get("same_on_every_seed") else ""
  return f" ({same}exact McNemar over validation examples, {holm}: {verdict})"


def answer(models: dict, comparisons: list | None = None, num_seeds: int = 1) -> str:
  """Sentences answering "how does the student perform against the teacher, with and without EMA?": first
  student_kd_ema − teacher, then student_kd − teacher (and against the label-trained student), each with its
  comparison's verdict (significance.compare / family) where the report has one."""
  sentences = []
  lead = f"Mean top-1 over {num_seeds} seeds: " if num_seeds > 1 else ""
  if KD_EMA in models and TEACHER in models:
    kd_ema, teacher = models[KD_EMA]["val_top1"], models[TEACHER]["val_top1"]
    sentence = (f"With the original's EMA updates the student reaches {kd_ema:.2f} %, "
                f"{_compare(kd_ema, teacher)} the teacher's {teacher:.2f} %"
                f"{short_verdict(_find(comparisons, KD_EMA, TEACHER))}")
    if TEACHER_EMA in models:
      ema_teacher = models[TEACHER_EMA]["val_top1"]
      sentence += (f", while the EMA-updated teacher itself ends at {ema_teacher:.2f} % "
                   f"({_compare(ema_teacher, teacher)} the trained teacher)")
    sentences.append(sentence + ".")
  if TEACHER in models and KD in models:
    teacher, kd = models[TEACHER]["val_top1"], models[KD]["val_top1"]
    sentence = (f"Distilled from the frozen teacher without EMA, the student reaches {kd:.2f} %, "
                f"{_compare(kd, teacher)} the teacher{short_verdict(_find(comparisons, KD, TEACHER))}")
    if BASELINE in models:
      sentence += (f" and {_compare(kd, models[BASELINE]['val_top1'])} the same student trained on labels "
                   f"alone ({models[BASELINE]['val_top1']:.2f} %)")
    sentences.append(sentence + ".")
  if not sentences:
    trained = ", ".join(f"{name} {entry['val_top1']:.2f} %" for name, entry in models.items())
    sentences.append(f"This run trained no teacher/student pair to compare; validation top-1: {trained}.")
  if sentences:
    sentences[0] = lead + sentences[0]
  return " ".join(sentences)


def _p(value: float, sign: str = "") -> str:
  """A p-value to two digits; one that underflowed float64 (exact McNemar with thousands of discordant images)
  reads "< 1e-300", not 0. With `sign`, the relation comes first: "= 0.012", "< 1e-300"."""
  if value == 0:
    return "< 1e-300"
  return f"{sign} {value:.2g}" if sign else f"{value:.2g}"


def comparison_sentence(comparison: dict, family: dict | None = None) -> str:
  """`a − b: +m points (what it rests on): verdict` — the raw 95 % t-interval over seeds (or "the same on
  every seed", or one seed), the per-example exact test(s), the bootstrap interval, and the Holm verdict over
  the report's family."""
  a, b, n = comparison["a"], comparison["b"], comparison["n"]
  text = f"{a} − {b}: {comparison['mean']:+.2f} points"
  parts = []
  if comparison.get("same_on_every_seed"):
    parts.append(f"the same on every seed ({n} seeds): no seed-to-seed interval")
  elif comparison["ci95"] is not None:
    low, high = comparison["ci95"]
    p = comparison.get("p_value")
    parts.append(f"raw 95 % CI {low:+.2f} to {high:+.2f} over {n} seeds"
                 + (f", paired t p {_p(p, '=')}" if p is not None else ""))
  else:
    parts.append(f"{n} seed")
  per_example = comparison.get("per_example")
  if per_example:
    examples = per_example["examples"]
    if n == 1 or comparison.get("same_on_every_seed"):
      pooled = per_example["pooled"]
      over = "" if n == 1 else ", pooled over seeds"
      parts.append(f"exact McNemar over {examples} validation examples{over}: {pooled['a_only']} right only by "
                   f"{a}, {pooled['b_only']} only by {b}, p {_p(pooled['p_value'], '=')}")
    else:
      parts.append("per seed exact McNemar p " + ", ".join(_p(t["p_value"]) for t in per_example["per_seed"]))
    if n > 1 and comparison.get("ci95_bootstrap"):
      low, high = comparison["ci95_bootstrap"]
      parts.append(f"bootstrap over seeds and validation examples {low:+.2f} to {high:+.2f}")
  text += f" ({'; '.join(parts)})"
  if comparison.get("holm_p") is None:
    return text + (": no test (one seed, and the report has no per-example record); run several seeds"
                   if comparison.get("test_p") is None else "")
  size = f" over {family['size']}" if family else ""
  exact = comparison["test"] != significance.T_TEST
  yes, no = (("more than the validation set's noise", "within the validation set's noise") if exact
             else ("distinguishable from zero", "not distinguishable from zero"))
  verdict = yes if comparison["distinguishable_from_zero"] else no
  raw = ""
  if comparison["distinguishable_raw"] and not comparison["distinguishable_from_zero"]:
    raw = " (at 5 % on its own it would be; not after the correction)"
  return text + f": Holm{size} p {_p(comparison['holm_p'], '=')}, {verdict}{raw}"


def coverage_note(report: dict) -> str:
  """What the comparisons' tests cover, for report.md."""
  examples = report.get("dataset", {}).get("val_examples")
  image = f" (one image = {100 / examples:.2f} points)" if examples else ""
  n = report.get("num_seeds", 1)
  if n > 1:
    return (f"What these cover: the raw 95 % intervals and the paired t tests vary the seed (initial weights and "
            f"data order) over {n} seeds, all scored on the same {examples} validation images{image}; they do not "
            f"cover which images the validation set holds. The per-seed exact McNemar tests test each seed's gap "
            f"against that set's noise; the bootstrap interval resamples seeds and images together. Holm's "
            f"correction is over the comparisons listed (report.json `comparison_family`).")
  return (f"One seed: each gap is tested only against the validation set's noise (exact McNemar over its "
          f"{examples} images{image}), Holm-corrected over the comparisons listed; seed-to-seed variation "
          f"(initial weights, data order) is not measured here: --config.num_seeds=5 measures it.")


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
        f"| {_loss(entry['val_loss'])} | {_delta(models, name, TEACHER)} | {_delta(models, name, BASELINE)} "
        f"| {'' if agreement is None else f'{agreement:.2f}'} | {'' if kl is None else f'{kl:.4f}'} "
        f"| {entry['train_seconds']:.1f} |")
  env = report["environment"]
  sources = [f"{name} was loaded from {entry['source']['checkpoint']}, not trained in this run."
             for name, entry in models.items() if entry.get("source")]
  comparisons = [f"- {comparison_sentence(comparison, report.get('comparison_family'))}"
                 for comparison in report.get("comparisons", [])]
  if comparisons:
    comparisons = ["", "Paired differences in top-1:", "", *comparisons, "", coverage_note(report)]
  lines += ["", " ".join([*cautions(report), answer(models, report.get("comparisons"))]),
            *(["", *sources] if sources else []), *comparisons,
            *ema_sections(report), "",
            "![curves](curves.png)", "",
            f"Environment: jax {env['jax']}, flax {env['flax']}, backend {env['backend']}, "
            f"devices {', '.join(env['devices'])}"
            f"{', data parallel over %d' % env['mesh']['data'] if env.get('mesh', {}).get('data', 1) > 1 else ''}"
            f"{_cpu(env)}{_conv_paths(env)}{'; host memory: ' + env['host_malloc'] if 'host_malloc' in env else ''}.",
            ""]
  return "\n".join(lines)


def _cpu(env: dict) -> str:
  """"; CPU AMD EPYC (avx2; oneDNN avx2, XLA host (no cap))" from the environment (absent in older reports)."""
  if "cpu" not in env:
    return ""
  onednn = env.get("onednn", {})
  kernels = f"oneDNN {onednn['effective_isa']}, " if onednn.get("loaded") else ""
  return (f"; CPU {env['cpu']['model']} ({env['cpu']['isa_class']}; {kernels}XLA {env['xla']['max_isa']}"
          f"{', float64 on' if env['xla']['x64'] else ''})")


def _conv_paths(env: dict) -> str:
  """"; teacher convs: onednn (why); ..." from the environment's conv entry (absent in older reports)."""
  return "".join(f"; {net} convs: {entry['path']} ({entry['why']})" for net, entry in env.get("conv", {}).items())


def ema_sections(report: dict) -> list[str]:
  """report.md's part on the original's EMA: the sweep's table and, per EMA-updated teacher, what the collapse
  diagnostics measured (collapse.findings; for several seeds, those of the first seed)."""
  lines = []
  table = sweep.markdown(report.get("ema_sweep", []))
  if table:
    lines += ["", "The original's EMA against alpha (ema_sweep.png):", "", *table]
  data = report.get("dataset", {})
  for name, entry in report["models"].items():
    source = entry if entry.get("collapse") else (entry.get("per_seed") or [{}])[0]
    student = "student_kd_ema" + name[len(TEACHER_EMA):]
    sentences = collapse.findings(source.get("collapse") or [], name, student,
                                  num_classes=data.get("num_classes"), val_examples=data.get("val_examples"),
                                  temperature=report.get("config", {}).get("kd", {}).get("temperature"),
                                  train_seconds=source.get("train_seconds"))
    if sentences:
      seed_note = "" if entry.get("collapse") else f" (seed {entry['per_seed'][0]['seed']})"
      lines += ["", f"**{name}**{seed_note} (ema_collapse.png): " + " ".join(sentences)]
    if len(entry.get("per_seed") or []) > 1:   # several seeds: each one's brackets, so none is quoted unshown
      table = collapse.seed_table(entry["per_seed"], name, student, num_classes=data.get("num_classes"),
                                  val_examples=data.get("val_examples"))
      if table:
        lines += ["", f"{name}, seed by seed (the collapse diagnostics' probe; top-1 on the whole validation split):",
                  "", *table]
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
  colors = {name: figures.color(name) for name in base.values()}   # each model's colour of every figure
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
