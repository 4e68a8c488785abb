"""Looks inside a run's checkpoints without writing code.

    python -m kdjax.cli.inspection WORKDIR                          # every model of the run
    python -m kdjax.cli.inspection WORKDIR/checkpoints/teacher [--epoch N] [--json]
    python -m kdjax.cli.inspection WORKDIR --evaluate MODEL [--epoch N]
    python -m kdjax.cli.inspection WORKDIR --compare OTHER_WORKDIR  # which numbers and environment fields differ

Per model: the saved epochs, a parameter table in layer order (conv1, conv2, ..., fc;
kernel before bias, as PyTorch registers them) with shape, dtype, count, L2 norm, min and max, the totals,
what else the state holds (optimizer state, the teacher copy, the student-weights average), the metrics
stored with the checkpoint, and the config. --json prints the same as one JSON document.
--evaluate re-evaluates a checkpoint (default: the latest) on the run's validation split, as the report does;
MODEL may be a row of the report such as "student_kd (EMA weights)". --compare sets two runs' report.json side by
side: the numbers that differ and by how much, and the config and environment fields (CPU, instruction sets, threads,
conv paths) that differ (kdjax/report/compare.py). Reads only; writes nothing.

Every checkpoint read is verified as a run verifies it (content hashes, state/_METADATA present; see
kdjax/store/checkpoints.py). A workdir with a bad model checkpoint shows the others and marks that one. Exit status
(kdjax/cli/exits.py): 0 all shown; 1 shown, but a model's checkpoint or report.json is bad (each named on stderr in
one line); 2 nothing could be shown (a bad path, epoch or model: what was given is wrong; the one line says why).
"""

import json
import pathlib
import re
import sys

import numpy as np
from absl import flags
from absl import logging

from kdjax.config import defaults as config_defaults
from kdjax.store import checkpoints as ckpt_lib
from kdjax.cli import exits as cli
from kdjax.cli import help as help_lib
from kdjax.training import ema
from kdjax import phases
from kdjax.store import meta as run_meta
from kdjax.store import run as run_lib
from kdjax.store.rundir import read_report
from kdjax.report import compare

PROG = "kdjax.cli.inspection"


def _natural_key(name: str):
  return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def ordered_leaves(params: dict, layer_names=None) -> list[tuple[str, np.ndarray]]:
  """(layer.name, array) in layer order: `layer_names` (the model's definition order) when known, else the
  natural order of the names (conv2 before conv10, never the sorted-key order); kernel before bias."""
  layers = [name for name in (layer_names or []) if name in params]
  layers += sorted((name for name in params if name not in layers), key=_natural_key)
  leaves = []
  for layer in layers:
    tensors = params[layer]
    if not isinstance(tensors, dict):
      leaves.append((layer, np.asarray(tensors)))
      continue
    names = [n for n in ema.PARAM_ORDER if n in tensors] + sorted(n for n in tensors
                                                                   if n not in ema.PARAM_ORDER)
    leaves += [(f"{layer}.{name}", np.asarray(tensors[name])) for name in names]
  return leaves


def _leaf_count(tree) -> int:
  if isinstance(tree, dict):
    return sum(_leaf_count(value) for value in tree.values())
  if isinstance(tree, (list, tuple)):
    return sum(_leaf_count(value) for value in tree)
  return int(np.size(tree)) if tree is not None else 0


def parameter_table(params: dict, layer_names=None) -> dict:
  rows = []
  for name, array in ordered_leaves(params, layer_names):
    values = array.astype(np.float64)
    rows.append({"name": name, "shape": list(array.shape), "dtype": str(array.dtype),
                 "count": int(array.size), "l2_norm": float(np.sqrt(np.sum(values ** 2))),
                 "min": float(values.min()) if array.size else None,
                 "max": float(values.max()) if array.size else None})
  total = {"count": sum(row["count"] for row in rows),
           "l2_norm": float(np.sqrt(sum(row["l2_norm"] ** 2 for row in rows)))}
  return {"parameters": rows, "total": total}


def describe_model(folder: pathlib.Path, epoch: int | None = None) -> dict:
  """Everything `inspect` shows about one model's checkpoint folder, as JSON-ready data."""
  reader = ckpt_lib.ModelCheckpoints(folder, read_only=True)
  tree, meta, shown = reader.restore(epoch)
  saved = reader.epochs()
  reader.close()
  layer_names = meta.get("layer_names")
  description = {
      "model": meta.get("model", folder.name), "path": str(folder), "saved_epochs": saved, "epoch": shown,
      "step": meta.get("step"), "phase": meta.get("phase"), "net": meta.get("net"),
      "finished": meta.get("finished"),
  }
  if "params" in tree:
    description.update(parameter_table(tree["params"], layer_names))
  description["other_state"] = {key: {"values": _leaf_count(value)} for key, value in tree.items()
                                if key != "params"}
  for key in ("teacher_params", "ema_params"):
    if key in tree:
      table = parameter_table(tree[key])
      description["other_state"][key].update(l2_norm=table["total"]["l2_norm"])
  if "step" in tree:
    description["other_state"]["step"]["value"] = int(np.asarray(tree["step"]))
  description["metrics"] = meta.get("epochs", [])
  if meta.get("source"):
    description["source"] = meta["source"]
  description["config"] = meta.get("config")
  return description


def describe_or_mark(folder: pathlib.Path, epoch: int | None = None) -> dict:
  """describe_model, or, when the checkpoint is bad, the model's name and path with the one-line `error`."""
  try:
    return describe_model(folder, epoch)
  except ckpt_lib.CheckpointError as error:
    return {"model": folder.name, "path": str(folder), "error": str(error)}


def inspect_path(path, epoch: int | None = None) -> dict:
  """A workdir (every model under checkpoints/; a bad one is marked, see describe_or_mark) or one model's
  checkpoint folder."""
  path = pathlib.Path(path).absolute()
  if not path.exists():
    raise ckpt_lib.CheckpointError(f"{path}: no such file or directory")
  if (path / "checkpoints").is_dir() or (path / "config.json").is_file():
    config = run_lib.read_config_json(path / "config.json") if (path / "config.json").is_file() else None
    folders = ckpt_lib.model_folders(path / "checkpoints")
    if not folders:
      raise ckpt_lib.CheckpointError(f"{path}: a workdir without checkpoints (no model folder in "
                                     f"{path / 'checkpoints'})")
    models = [describe_or_mark(folder, epoch) for folder in folders]
    for model in models:  # shown once for the run, unless a checkpoint was saved with another config
      if "config" in model and model["config"] == config:
        model["config"] = "(the run's config)"
    report_path = path / "report.json"
    inspection = {"workdir": str(path), "config": config, "models": models,
                  "report": str(report_path) if report_path.is_file() else None}
    if report_path.is_file():
      report, error = read_report(report_path)
      if error is not None:
        inspection["report_error"] = error
    return inspection
  if not ckpt_lib.saved_epochs(path) and not ckpt_lib.saved_epochs(path.parent):
    raise ckpt_lib.CheckpointError(f"{path}: neither a kdjax workdir nor an Orbax checkpoint folder")
  folder, epoch_in_path = ckpt_lib.resolve(path, "teacher")
  return {"workdir": None, "config": None, "models": [describe_model(folder, epoch if epoch is not None
                                                                      else epoch_in_path)]}


# --- evaluation ------------------------------------------------------------------------------------------

def evaluate_model(workdir, model: str, epoch: int | None = None) -> dict:
  """Re-evaluates `model` (a report row) on the run's validation split with the run's config.json."""
  from kdjax import data as data_lib
  from kdjax.training import evaluate

  run = run_lib.load_run(workdir)
  params, meta, epoch = run.params(model, epoch)   # verified against its content hashes
  dataset = run.dataset()
  mean, std = data_lib.normalization_constants(dataset, run.config.data.normalization)
  logits = evaluate.predict(run.net(model, dataset.num_classes), params, dataset.val_images, mean, std,
                            run.config.eval_batch_size)
  metrics = evaluate.classification_metrics(logits, dataset.val_labels)
  folder = run.workdir / "checkpoints" / model.removesuffix(phases.EMA_WEIGHTS_SUFFIX)
  result = {"model": model, "checkpoint": str(folder / str(epoch)), "epoch": epoch,
            "val_examples": int(len(dataset.val_labels)), **metrics}
  if "data" in meta:   # the data config.json now reads against the data the checkpoint was trained on
    result["data_differences"] = run_meta.fingerprint_differences(meta["data"], run_meta.data_fingerprint(dataset))
  rows = (meta.get("results", {}).get(model, {}).get("epochs")
          or (meta.get("epochs", []) if meta.get("model") == model else []))
  recorded = next((row for row in rows if row.get("epoch") == epoch), None)
  if recorded is not None:   # the metrics saved with the checkpoint (the second check a resume makes)
    result["recorded"] = {key: recorded[key] for key in ("val_top1", "val_loss")}
    result["equals_recorded"] = all(recorded[key] == metrics[key] for key in ("val_top1", "val_loss"))
  report_path = run.workdir / "report.json"
  if report_path.is_file():
    report, error = read_report(report_path)
    if error is not None:
      result["report_error"] = error
    reported = report["models"].get(model) if report is not None else None
    if reported is not None:
      keys = ("val_top1", "val_top5", "val_loss")
      result["report"] = {key: reported[key] for key in keys}
      result["equals_report"] = all(reported[key] == metrics[key] for key in keys)
  return result


# --- text ------------------------------------------------------------------------------------------------

def _number(value) -> str:
  return "" if value is None else f"{value:.4g}"


def _config_lines(config: dict) -> list[str]:
  return [f"  {name} = {json.dumps(value)}" for name, value in config_defaults.flatten(config).items()]


def format_model(model: dict) -> str:
  if "error" in model:
    return f"== {model['model']}  ({model['path']})\nBAD CHECKPOINT, not shown: {model['error']}"
  status = "finished" if model.get("finished") else ("not finished" if model.get("finished") is False else "")
  lines = [f"== {model['model']}  ({model['path']})",
           f"saved epochs: {', '.join(map(str, model['saved_epochs']))};  showing epoch {model['epoch']}"
           + (f", step {model['step']}" if model.get("step") is not None else "")
           + (f", phase {model['phase']}" if model.get("phase") else "") + (f", {status}" if status else "")]
  if model.get("source"):
    lines.append(f"loaded from {model['source']['checkpoint']}, not trained in this run")
  if "parameters" in model:
    header = f"  {'name':<14} {'shape':<12} {'dtype':<8} {'count':>8} {'L2 norm':>10} {'min':>10} {'max':>10}"
    lines += ["params, in layer order:", header]
    for row in model["parameters"]:
      shape = "x".join(map(str, row["shape"])) or "scalar"
      lines.append(f"  {row['name']:<14} {shape:<12} {row['dtype']:<8} {row['count']:>8,} "
                   f"{_number(row['l2_norm']):>10} {_number(row['min']):>10} {_number(row['max']):>10}")
    total = model["total"]
    lines.append(f"  {'total':<14} {'':<12} {'':<8} {total['count']:>8,} {_number(total['l2_norm']):>10}")
  others = []
  for key, info in model.get("other_state", {}).items():
    detail = f"value {info['value']}" if "value" in info else f"{info['values']:,} values"
    if "l2_norm" in info:
      detail += f", L2 norm {_number(info['l2_norm'])}"
    others.append(f"{key} ({detail})")
  if others:
    lines.append("also saved: " + "; ".join(others))
  if model.get("metrics"):
    lines.append("metrics stored with the checkpoint:")
    lines.append(f"  {'epoch':>5} {'train_loss':>10} {'val_loss':>10} {'val_top1 %':>10}")
    for row in model["metrics"]:
      lines.append(f"  {row['epoch']:>5} {_number(row.get('train_loss')):>10} {_number(row['val_loss']):>10} "
                   f"{row['val_top1']:>10.2f}")
  if isinstance(model.get("config"), dict):
    lines += ["config stored with the checkpoint:", *_config_lines(model["config"])]
  elif model.get("config"):
    lines.append(f"config: {model['config']}")
  return "\n".join(lines)


def format_inspection(inspection: dict) -> str:
  parts = []
  if inspection.get("workdir"):
    parts.append(f"run {inspection['workdir']}: {len(inspection['models'])} model(s)"
                 + (f"; report {inspection['report']}" if inspection.get("report") else "; no report yet"))
  parts += [format_model(model) for model in inspection["models"]]
  if inspection.get("config"):
    parts.append("\n".join(["the run's config (config.json):", *_config_lines(inspection["config"])]))
  return "\n\n".join(parts)


def format_evaluation(result: dict) -> str:
  text = (f"{result['model']} ({result['checkpoint']}), {result['val_examples']} validation examples: "
          f"top-1 {result['val_top1']:.2f} %  top-5 {result['val_top5']:.2f} %  loss {result['val_loss']:.6f}")
  if result.get("data_differences"):
    text += (f"\nWARNING: config.json's data settings now read other data than the checkpoint was trained on: "
             f"{'; '.join(result['data_differences'])}")
  if "recorded" in result:
    verdict = "equal to" if result["equals_recorded"] else "DIFFERENT from"
    text += (f"\nsaved with the checkpoint: top-1 {result['recorded']['val_top1']:.2f} %  loss "
             f"{result['recorded']['val_loss']:.6f}  ({verdict} the checkpoint's record)")
  if "report" in result:
    verdict = "equal to" if result["equals_report"] else "DIFFERENT from"
    text += (f"\nreport.json: top-1 {result['report']['val_top1']:.2f} %  top-5 {result['report']['val_top5']:.2f} %"
             f"  loss {result['report']['val_loss']:.6f}  ({verdict} the report)")
  return text


def compare_workdirs(path_a, path_b, as_json: bool = False) -> int:
  """Prints what differs between two workdirs' report.json; 0, or 2 when a report cannot be read."""
  reports = []
  for path in (path_a, path_b):
    report_path = pathlib.Path(path) / "report.json"
    if pathlib.Path(path).is_file():
      report_path = pathlib.Path(path)
    report, error = read_report(report_path) if report_path.exists() else (
        None, f"{report_path}: no report.json (the run has not finished)")
    if error:
      cli.say_error(PROG, error)
      return cli.USAGE
    reports.append(report)
  result = compare.compare(*reports)
  print(json.dumps(result, indent=2) if as_json else compare.format_comparison(result, str(path_a), str(path_b)),
        flush=True)
  return 0


EXAMPLES = [
    "python -m kdjax.cli.inspection runs/ema                        # every model of the run",
    "python -m kdjax.cli.inspection runs/ema/checkpoints/teacher --epoch 2 --json",
    "python -m kdjax.cli.inspection runs/ema --evaluate \"student_kd (EMA weights)\"",
    "python -m kdjax.cli.inspection runs/ema --compare runs/ema_xla",
]
FLAG_NAMES = ("epoch", "json", "evaluate", "compare")


def define_flags(values) -> None:
  """The command's flags, in `values` (kdjax.cli.exits.flag_values); PATH is its one positional argument."""
  flags.DEFINE_integer("epoch", None, "The saved epoch to show (default: the latest).", flag_values=values)
  flags.DEFINE_bool("json", False, "Print JSON instead of text.", flag_values=values)
  flags.DEFINE_string("evaluate", None, "MODEL: re-evaluate MODEL of the workdir on its validation split.",
                      flag_values=values)
  flags.DEFINE_string("compare", None, "OTHER_WORKDIR: compare the two workdirs' report.json: numbers, config and "
                      "environment that differ.", flag_values=values)


def show(path: str, epoch: int | None, as_json: bool, evaluate: str | None, other: str | None) -> int:
  """What the command shows; 0, or 1 when a model's checkpoint or report.json is bad (each named in one line).
  A CheckpointError means nothing could be shown (main: exit 2)."""
  if other is not None:
    return compare_workdirs(path, other, as_json)
  if evaluate is not None:
    result = evaluate_model(path, evaluate, epoch)
    print(json.dumps(result, indent=2) if as_json else format_evaluation(result), flush=True)
    if "report_error" in result:
      cli.say_error(PROG, result["report_error"])
      return cli.BROKE
    return cli.OK
  inspection = inspect_path(path, epoch)
  print(json.dumps(inspection, indent=2) if as_json else format_inspection(inspection), flush=True)
  bad = [model["error"] for model in inspection["models"] if "error" in model]
  bad += [inspection["report_error"]] if "report_error" in inspection else []
  for error in bad:
    cli.say_error(PROG, error)
  return cli.BROKE if bad else cli.OK


def main(argv=None) -> int:
  """`python -m kdjax.cli.inspection PATH [flags]`; argv without the program (default: sys.argv[1:]). Returns the
  exit code (kdjax.cli.exits): 0 shown, 1 shown but a model's checkpoint or report.json is bad, 2 nothing could be
  shown (a path, epoch or model the user named that holds no readable checkpoint: what the user gave is wrong)."""
  argv = [f"python -m {PROG}", *(sys.argv[1:] if argv is None else argv)]
  values = cli.flag_values(define_flags)
  help_lib.answer(argv, __doc__, FLAG_NAMES, EXAMPLES, values)
  rest = cli.parse_flags(PROG, argv, config_flag=None, values=values)
  if len(rest) != 2:
    cli.usage_error(PROG, f"expected one PATH (a workdir, or a model's checkpoint folder WORKDIR/checkpoints/MODEL), "
                          f"got {len(rest) - 1}: usage: python -m {PROG} PATH [--epoch N] [--json] "
                          f"[--evaluate MODEL | --compare OTHER_WORKDIR]")
  logging.set_verbosity(logging.ERROR)  # Orbax warns about what the one-line error says anyway
  cli.quiet_stderr()

  def body() -> int:
    try:
      return show(rest[1], values.epoch, values.json, values.evaluate, values.compare)
    except BrokenPipeError:  # the reader went away (| head): it has what it wanted
      return cli.OK
  return cli.run_main(PROG, body, given=(ckpt_lib.CheckpointError,), resumable=False)


if __name__ == "__main__":
  cli.exit_now(main())
