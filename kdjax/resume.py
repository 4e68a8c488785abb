"""What a run reads back from disk: the workdir it resumes, a teacher from elsewhere, a finished run.

Resuming (train_and_evaluate on a workdir that holds a run): its config must match (fields in
config.RESULT_NEUTRAL aside, or checkpoint.allow_config_change), every phase's latest checkpoint is read before
anything in the workdir is written, phases saved at their last epoch are loaded instead of trained, and the phase
that was interrupted continues after its last saved epoch. The data order is a function of (seed, epoch) and the
saved state is the whole TrainState, so the resumed run computes what the uninterrupted one would.

The checkpoint meta is built by `phase_meta` and read by `read_saved_phases` / `read_teacher` / `load_run`:

  phase, model, net, layer_names, epoch, epochs_total, finished, step, steps_per_epoch,
  data_order {seed, next_epoch, rule}, epochs (the model's metric rows), config (config.json's content);
  the phase's own model also: records (every metrics.jsonl row of the phase so far) and
  results {model: {epochs, train_seconds, train_images}} for each model of the phase.
"""

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
  """The differences between the workdir's config.json and `current`; ConfigError unless none or allowed."""
  path = run.file("config.json")
  if not path.exists():
    return []
  try:
    saved = json.loads(path.read_text())
  except (OSError, ValueError) as error:
    raise ConfigError(f"workdir: cannot read {path}: {error}") from None
  changes = config_lib.differences(saved, current)
  if changes and not allow_change:
    raise ConfigError(f"workdir {run.path} holds a run with another config: {'; '.join(changes)} "
                      f"(use a new workdir, or --config.checkpoint.allow_config_change=True to resume "
                      f"it with this config)")
  if changes:
    print(f"kdjax: warning: resuming {run.path} with a changed config: {'; '.join(changes)}",
          file=sys.stderr, flush=True)
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
          "epochs": epochs, "config": config_dict}


@dataclasses.dataclass
class SavedPhase:
  """The latest save of a phase in this workdir: the state tree and its meta."""

  tree: dict
  meta: dict
  where: pathlib.Path

  @property
  def epoch(self) -> int:
    return self.meta["epoch"]


def read_saved_phases(run: RunDir, setup, phase_names) -> dict[str, SavedPhase]:
  """phase -> its latest save in this workdir, for the phases in `phase_names` that have one."""
  saved = {}
  for phase in phase_names:
    folder = run.checkpoints / phase
    if not ckpt_lib.saved_epochs(folder):
      continue
    reader = ckpt_lib.ModelCheckpoints(folder, read_only=True)
    target = ckpt_lib.state_tree(setup.fresh_state(phase, setup.optimizer()))
    tree, meta, epoch = reader.restore(target=target)
    reader.close()
    where = folder / str(epoch)
    if meta.get("phase") != phase or meta.get("epoch") != epoch or "records" not in meta:
      raise ckpt_lib.CheckpointError(f"{where}: not a checkpoint of phase {phase!r} written by this "
                                     f"version of kdjax")
    if int(tree["step"]) != meta["step"]:
      raise ckpt_lib.CheckpointError(f"{where}: step {int(tree['step'])} in the state but {meta['step']} in "
                                     f"the meta")
    saved[phase] = SavedPhase(tree, meta, where)
  return saved


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
  """Reads teacher.checkpoint (a workdir, a model folder or a step folder); one-line errors name the path."""
  folder, epoch = ckpt_lib.resolve(path, "teacher")
  reader = ckpt_lib.ModelCheckpoints(folder, read_only=True)
  tree, meta, epoch = reader.restore(epoch)
  reader.close()
  epoch = meta.get("epoch", epoch)
  where = folder / str(epoch)
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
  data_changes = [change for change in config_lib.differences(source_config.get("data", {}),
                                                              current_config["data"])
                  if not change.startswith(("data_dir", "manual_dir"))] if source_config else []
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
    return models_lib.MODEL_FACTORIES[phases.model(name).net](num_classes, self.config.model.activation,
                                                             self.config.model.init)

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
  try:
    config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
  except (OSError, ValueError, TypeError, AttributeError) as error:
    raise ckpt_lib.CheckpointError(f"{config_path}: unreadable config ({error})") from None
  return Run(workdir, config)
