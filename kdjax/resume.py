"""What a run reads back from disk: the workdir it resumes, a teacher from elsewhere, a finished run.

Resuming (train_and_evaluate on a workdir that holds a run): its config must match config.json and the config
in every checkpoint's meta (fields in config.RESULT_NEUTRAL aside, or checkpoint.allow_config_change), and the
data must match the fingerprint in every checkpoint's meta. Every phase's latest checkpoint is read and verified
(content hashes, checkpoints.verify) before anything in the workdir is written; a corrupt latest save gives way to
the phase's latest intact one, with a warning. Phases saved at their last epoch are loaded instead of trained
(once their recorded validation metrics are reproduced), and the phase that was interrupted continues after its
last saved epoch. The data order is a function of (seed, epoch) and the saved state is the whole TrainState, so
the resumed run computes what the uninterrupted one would.

The checkpoint meta is built by `phase_meta` and read by `read_saved_phases` / `read_teacher` / `load_run`:

  phase, model, net, layer_names, epoch, epochs_total, finished, step, steps_per_epoch,
  data_order {seed, next_epoch, rule}, data (data_fingerprint), epochs (the model's metric rows),
  config (config.json's content);
  the phase's own model also: records (every metrics.jsonl row of the phase so far) and
  results {model: {epochs, train_seconds, train_images}} for each model of the phase;
  integrity (added by checkpoints.ModelCheckpoints.save: the sha256 of every array and of the meta).
"""

import hashlib

import dataclasses
import json
import pathlib
import sys
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from kdjax import checkpoints as ckpt_lib
from kdjax import config as config_lib
from kdjax import data as data_lib
from kdjax import models as models_lib
from kdjax import phases
from kdjax.config import ConfigError
from kdjax.rundir import RunDir


def config_json(config) -> dict:
  """The config as config.json holds it."""
  return json.loads(config.to_json_best_effort())


def check_config(run: RunDir, current: dict, allow_change: bool) -> list[str]:
  """The differences between the workdir's config.json and `current`; ConfigError unless none or allowed.
  (A missing config.json switches nothing off: read_saved_phases checks each checkpoint's own config.)"""
  path = run.file("config.json")
  if not path.exists():
    return []
  try:
    saved = json.loads(path.read_text())
  except (OSError, ValueError) as error:
    raise ConfigError(f"workdir: cannot read {path}: {error}") from None
  if not isinstance(saved, dict):
    raise ConfigError(f"workdir: {path} holds a JSON {type(saved).__name__}, not a kdjax config (an object); "
                      f"use a new workdir")
  changes = config_lib.differences(saved, current)
  if changes and not allow_change:
    raise ConfigError(f"workdir {run.path} holds a run with another config: {'; '.join(changes)} "
                      f"(use a new workdir, or --config.checkpoint.allow_config_change=True to resume "
                      f"it with this config)")
  if changes:
    print(f"kdjax: warning: resuming {run.path} with a changed config: {'; '.join(changes)}",
          file=sys.stderr, flush=True)
  return changes


# --- the data a checkpoint was trained on ---------------------------------------------------------------------

FINGERPRINT_SAMPLE = 256   # images per split whose bytes are hashed: evenly spaced, first and last included


def _sha256(array) -> str:
  return hashlib.sha256(np.ascontiguousarray(array).reshape(-1).view(np.uint8)).hexdigest()


def data_fingerprint(dataset: data_lib.Dataset) -> dict:
  """What identifies the data a model was trained and evaluated on, whatever path it was read from: the split
  sizes, image shape, class names, a hash of all labels and of a fixed sample of images per split."""
  fingerprint = {"name": dataset.name, "image_shape": list(dataset.image_shape),
                 "num_classes": dataset.num_classes,
                 "class_names_sha256": hashlib.sha256(json.dumps(list(dataset.class_names)).encode()).hexdigest()}
  for split in ("train", "validation"):
    images, labels = dataset.split(split)
    sample = np.unique(np.linspace(0, len(labels) - 1, min(len(labels), FINGERPRINT_SAMPLE)).round().astype(int))
    fingerprint[f"{split}_examples"] = int(len(labels))
    fingerprint[f"{split}_labels_sha256"] = _sha256(np.asarray(labels, np.int64))
    fingerprint[f"{split}_images_sample_sha256"] = _sha256(images[sample])
  return fingerprint


def fingerprint_differences(saved: dict, current: dict) -> list[str]:
  """What differs between two data fingerprints, e.g. "train_examples (256 -> 300)", "validation labels"."""
  changes = []
  for key in sorted(set(saved) | set(current)):
    old, new = saved.get(key), current.get(key)
    if old == new:
      continue
    if key.endswith("_sha256"):
      changes.append(key.removesuffix("_sha256").replace("_", " "))
    else:
      changes.append(f"{key} ({json.dumps(old)} -> {json.dumps(new)})")
  return changes


def phase_meta(setup, phase: str, model: phases.Model, epoch: int, step: int, epochs: list,
               config_dict: dict) -> dict:
  """The meta saved with `model`'s checkpoint of `phase` at `epoch` (the phase's own model adds `records`
  and `results`, see experiment.save_phase)."""
  config = setup.config
  return {"phase": phase, "model": model.name, "net": model.net,
          "layer_names": list(setup.nets[model.net].layer_names),
          "epoch": epoch, "epochs_total": config.epochs, "finished": epoch == config.epochs,
          "step": step, "steps_per_epoch": setup.steps_per_epoch,
          # epoch_order(n, seed, epoch) depends on nothing else: the next epoch's order is known.
          "data_order": {"seed": config.seed, "next_epoch": epoch + 1,
                         "rule": "numpy default_rng([seed, epoch]).permutation(train_examples)"},
          "data": data_fingerprint(setup.dataset), "epochs": epochs, "config": config_dict}


@dataclasses.dataclass
class SavedPhase:
  """The latest intact save of a phase in this workdir: the state tree and its meta; for a phase finished
  earlier also `evaluated`: model name -> (metrics, validation logits), reproduced from the saved state."""

  tree: dict
  meta: dict
  where: pathlib.Path
  evaluated: dict | None = None

  @property
  def epoch(self) -> int:
    return self.meta["epoch"]


def _restore_latest_intact(folder: pathlib.Path, target: dict) -> tuple[dict, dict, int]:
  """The latest step of `folder` that restores and verifies; when a later one is corrupt, one warning line
  says which and what is used instead. The latest step's error when none is intact."""
  failures = []
  for epoch in reversed(ckpt_lib.saved_epochs(folder)):
    reader = ckpt_lib.ModelCheckpoints(folder, read_only=True)
    try:
      tree, meta, epoch = reader.restore(epoch, target=target)
    except ckpt_lib.CorruptCheckpointError as error:
      failures.append(error)
      continue
    finally:
      reader.close()
    if failures:
      print(f"kdjax: warning: {failures[0]}"
            f"{f' (and {len(failures) - 1} earlier save(s))' if len(failures) > 1 else ''}; "
            f"using the latest intact save, {folder / str(epoch)}", file=sys.stderr, flush=True)
    return tree, meta, epoch
  raise failures[0]


def _check_against_meta(where: pathlib.Path, meta: dict, current_config: dict, fingerprint: dict,
                        allow_change: bool) -> list[str]:
  """The checkpoint's own config and data fingerprint against this run's: the differences, allowed only with
  checkpoint.allow_config_change (ConfigError otherwise, one line naming the checkpoint)."""
  changes = config_lib.differences(meta["config"], current_config)
  data_changes = fingerprint_differences(meta["data"], fingerprint)
  if data_changes and not allow_change:
    raise ConfigError(f"checkpoint {where} was trained on other data than this run reads: "
                      f"{'; '.join(data_changes)} (data.manual_dir/data_dir point at other data?) (use a new "
                      f"workdir, or --config.checkpoint.allow_config_change=True to resume it anyway)")
  if changes and not allow_change:
    raise ConfigError(f"checkpoint {where} was saved with another config: {'; '.join(changes)} (use a new "
                      f"workdir, or --config.checkpoint.allow_config_change=True to resume it with this config)")
  return changes + [f"data: {change}" for change in data_changes]


def _metrics_reproduced(recorded: dict, now: dict, exact: bool) -> bool:
  """On CPU evaluation is deterministic: the recorded numbers come back bit for bit. Elsewhere (GPU kernels may
  be chosen differently per process) within 1e-4 relative on the loss and one example on top-1."""
  if exact:
    return all(recorded[key] == now[key] for key in ("val_loss", "val_top1"))
  return (abs(recorded["val_loss"] - now["val_loss"]) <= 1e-4 * max(1.0, abs(recorded["val_loss"]))
          and abs(recorded["val_top1"] - now["val_top1"]) <= 100.0 / max(1, now.get("val_examples", 1)) + 1e-9)


def evaluate_saved(setup, saved: SavedPhase, check: bool) -> dict:
  """model name -> (metrics, logits) of every model of a finished phase, from its saved state; with `check`,
  CheckpointError unless each reproduces the validation metrics recorded with the checkpoint."""
  evaluated = {}
  for model in phases.models_of(saved.meta["phase"], setup.config.ema.student_decay):
    metrics, logits = setup.evaluate(model.net, saved.tree[model.state_field])
    recorded_rows = saved.meta["results"].get(model.name, {}).get("epochs", [])
    recorded = recorded_rows[-1] if recorded_rows else None
    now = dict(metrics, val_examples=len(logits))
    if check and recorded is not None and not _metrics_reproduced(recorded, now, jax.default_backend() == "cpu"):
      raise ckpt_lib.CheckpointError(
          f"{saved.where}: {model.name} re-evaluated gives val_loss {metrics['val_loss']!r}, val_top1 "
          f"{metrics['val_top1']!r}, but the checkpoint recorded {recorded['val_loss']!r}, "
          f"{recorded['val_top1']!r} (the checkpoint, the data or the code changed)")
    evaluated[model.name] = (metrics, logits)
  return evaluated


def read_saved_phases(run: RunDir, setup, phase_names, current_config: dict,
                      allow_change: bool = False) -> tuple[dict[str, SavedPhase], list[str]]:
  """(phase -> its latest intact save in this workdir, for the phases in `phase_names` that have one;
  the differences between their configs/data and this run's, allowed by `allow_change`)."""
  saved, changes = {}, []
  fingerprint = data_fingerprint(setup.dataset)
  for phase in phase_names:
    folder = run.checkpoints / phase
    if not ckpt_lib.saved_epochs(folder):
      continue
    target = ckpt_lib.state_tree(setup.fresh_state(phase, setup.optimizer()))
    tree, meta, epoch = _restore_latest_intact(folder, target)
    where = folder / str(epoch)
    if meta.get("phase") != phase or meta.get("epoch") != epoch or \
        not {"records", "config", "data"} <= set(meta):
      raise ckpt_lib.CheckpointError(f"{where}: not a checkpoint of phase {phase!r} written by this "
                                     f"version of kdjax")
    if int(tree["step"]) != meta["step"]:
      raise ckpt_lib.CheckpointError(f"{where}: step {int(tree['step'])} in the state but {meta['step']} in "
                                     f"the meta")
    differences = _check_against_meta(where, meta, current_config, fingerprint, allow_change)
    changes += [change for change in differences if change not in changes]
    saved[phase] = SavedPhase(tree, meta, where)
    if epoch >= setup.config.epochs:   # finished: loaded, not trained; its metrics must come back
      saved[phase].evaluated = evaluate_saved(setup, saved[phase], check=not differences)
  return saved, changes


@dataclasses.dataclass
class TeacherSource:
  """A teacher read from teacher.checkpoint: its params, meta, and where it came from (for the report)."""

  params: Any
  meta: dict
  provenance: dict

  @property
  def epoch(self) -> int:
    return self.provenance["epoch"]


def read_teacher(path, setup, current_config: dict) -> TeacherSource:
  """Reads teacher.checkpoint (a workdir, a model folder or a step folder); one-line errors name the path.
  A student's checkpoint is refused, and so is a teacher trained on other data (its fingerprint differs)
  unless checkpoint.allow_config_change, which makes it a warning listed under data_differences."""
  folder, epoch = ckpt_lib.resolve(path, "teacher")
  reader = ckpt_lib.ModelCheckpoints(folder, read_only=True)
  try:
    tree, meta, epoch = reader.restore(epoch)
  finally:
    reader.close()
  epoch = meta.get("epoch", epoch)
  where = folder / str(epoch)
  if meta.get("net", "teacher") != "teacher":
    raise ckpt_lib.CheckpointError(
        f"{where}: a checkpoint of {meta.get('model', folder.name)} (phase {meta.get('phase')}, the "
        f"{meta.get('net')} net), not of a teacher; teacher.checkpoint takes a run's workdir, its "
        f"checkpoints/teacher, or one of its steps")
  if "params" not in tree:
    raise ckpt_lib.CheckpointError(f"{where}: holds no params")
  config = setup.config
  got_shapes = jax.tree_util.tree_map(np.shape, tree["params"])
  want_shapes = jax.tree_util.tree_map(np.shape, setup.initial_params["teacher"])
  if got_shapes != want_shapes:
    raise ckpt_lib.CheckpointError(
        f"{where}: its teacher does not fit this run's TeacherNet ({setup.dataset.num_classes} classes, "
        f"{'x'.join(map(str, setup.dataset.image_shape))} images): fc.kernel "
        f"{got_shapes.get('fc', {}).get('kernel')} vs {want_shapes['fc']['kernel']}")
  source_config = meta.get("config", {})
  source_activation = source_config.get("model", {}).get("activation", config.model.activation)
  if source_activation != config.model.activation:
    raise ckpt_lib.CheckpointError(
        f"{where}: its teacher was trained with model.activation={source_activation!r}, this run uses "
        f"{config.model.activation!r}")
  # Whole configs compared (differences fills fields an older run lacks from today's defaults), data.* kept;
  # data.data_dir and data.manual_dir are result-neutral: the fingerprint below checks the data behind them.
  data_changes = [change for change in config_lib.differences(source_config, current_config)
                  if change.startswith("data.")] if source_config else []
  if "data" not in meta:
    raise ckpt_lib.CheckpointError(f"{where}: its meta has no data fingerprint (saved by an older kdjax), so "
                                   f"the data it was trained on cannot be checked")
  fingerprint_changes = fingerprint_differences(meta["data"], data_fingerprint(setup.dataset))
  if fingerprint_changes and not config.checkpoint.allow_config_change:
    raise ConfigError(f"teacher.checkpoint {where} was trained on other data than this run reads: "
                      f"{'; '.join(fingerprint_changes)} (use that run's data, or "
                      f"--config.checkpoint.allow_config_change=True to distill from it anyway)")
  data_changes += [f"data: {change}" for change in fingerprint_changes]
  if data_changes:
    print(f"kdjax: warning: the teacher from {where} was trained on other data settings: "
          f"{'; '.join(data_changes)}", file=sys.stderr, flush=True)
  epochs = meta.get("epochs", [])
  provenance = {"checkpoint": str(where), "epoch": epoch, "step": meta.get("step"),
                "finished": meta.get("finished"),
                "source_workdir": str(folder.parent.parent) if folder.parent.name == "checkpoints" else None,
                "source_val_top1": epochs[-1]["val_top1"] if epochs else None,
                "data_differences": data_changes}
  params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), tree["params"])
  return TeacherSource(params, meta, provenance)


def keep_teacher_copy(run: RunDir, source: TeacherSource, keep: int) -> None:
  """Saves a reused teacher into this workdir (for inspect and parity.export), unless it is already here."""
  own = run.checkpoints / "teacher"
  if pathlib.Path(source.provenance["checkpoint"]).parent == own.absolute() or \
      source.epoch in ckpt_lib.saved_epochs(own):
    return
  writer = ckpt_lib.ModelCheckpoints(own, keep)
  meta = {key: value for key, value in source.meta.items() if key != "records"}
  writer.save(source.epoch, {"params": source.params}, dict(meta, source=source.provenance))
  writer.close()


# --- a finished run ------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Run:
  """A workdir read back: its config and a way to build its nets and read any model's params."""

  workdir: pathlib.Path
  config: ml_collections.ConfigDict

  def net(self, name: str, num_classes: int):
    """The Flax net of a model (report row name) of this run."""
    return models_lib.from_config(phases.model(name).net, num_classes, self.config)

  def params(self, name: str, epoch: int | None = None) -> tuple[dict, dict, int]:
    """(params, meta, epoch) of model `name` (a report row, e.g. "student_kd (EMA weights)") at its saved
    `epoch` (default: the latest)."""
    try:
      spec = phases.model(name)
    except KeyError:
      raise ckpt_lib.CheckpointError(f"unknown model {name!r}; known: {', '.join(phases.MODEL_ORDER)} and "
                                     f"'<student phase>{phases.EMA_WEIGHTS_SUFFIX}'") from None
    folder = self.workdir / "checkpoints" / (spec.name if spec.own_checkpoint else spec.phase)
    if not ckpt_lib.saved_epochs(folder):
      known = [f.name for f in ckpt_lib.model_folders(self.workdir / "checkpoints")]
      raise ckpt_lib.CheckpointError(f"{folder}: no such model checkpoint (saved models: "
                                     f"{', '.join(known) or 'none'})")
    reader = ckpt_lib.ModelCheckpoints(folder, read_only=True)
    tree, meta, epoch = reader.restore(epoch)
    reader.close()
    field = "params" if spec.own_checkpoint else spec.state_field
    if field not in tree:
      raise ckpt_lib.CheckpointError(f"{folder / str(epoch)}: holds no {field} for {name!r}")
    return tree[field], meta, epoch

  def dataset(self) -> data_lib.Dataset:
    return data_lib.load(self.config.data)


def load_run(workdir) -> Run:
  """A workdir's config.json as a Run; CheckpointError naming the path when it is not a kdjax workdir."""
  workdir = pathlib.Path(workdir).absolute()
  if not workdir.is_dir():
    raise ckpt_lib.CheckpointError(f"{workdir}: no such workdir")
  config_path = workdir / "config.json"
  if not config_path.is_file():
    raise ckpt_lib.CheckpointError(f"{workdir}: not a kdjax workdir (no config.json)")
  content = read_config_json(config_path)
  try:
    config = ml_collections.ConfigDict(content)
  except (ValueError, TypeError, AttributeError) as error:
    raise ckpt_lib.CheckpointError(f"{config_path}: unreadable config ({error})") from None
  return Run(workdir, config)


def read_config_json(path: pathlib.Path) -> dict:
  """A workdir's config.json as a dict; CheckpointError naming the path when it is unreadable or not an
  object (a JSON list, say)."""
  try:
    content = json.loads(path.read_text())
  except (OSError, ValueError) as error:
    raise ckpt_lib.CheckpointError(f"{path}: unreadable config ({error})") from None
  if not isinstance(content, dict):
    raise ckpt_lib.CheckpointError(f"{path}: unreadable config (a JSON {type(content).__name__}, not an "
                                   f"object)")
  return content
