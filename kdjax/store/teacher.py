"""A teacher from elsewhere (config teacher.checkpoint): read, checked against this run's nets and data, and kept
as a copy in the run's own checkpoints."""

import dataclasses
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kdjax import progress
from kdjax.config import defaults as config_lib
from kdjax.config import nets as config_nets
from kdjax.errors import ConfigError
from kdjax.errors import TeacherCheckpointError
from kdjax.store import checkpoints as ckpt_lib
from kdjax.store.meta import data_fingerprint
from kdjax.store.meta import fingerprint_differences
from kdjax.store.rundir import RunDir


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
  unless checkpoint.allow_config_change, which makes it a warning listed under data_differences.
  Every refusal is a usage error (exit 2): the checkpoint is the user's config value, not this run's state, so
  a CheckpointError becomes a TeacherCheckpointError (a CheckpointError and a ConfigError)."""
  try:
    return _read_teacher(path, setup, current_config)
  except TeacherCheckpointError:
    raise
  except ckpt_lib.CheckpointError as error:
    raise TeacherCheckpointError(f"{error} (given as teacher.checkpoint)") from None


def _read_teacher(path, setup, current_config: dict) -> TeacherSource:
  folder, epoch = ckpt_lib.resolve(path, "teacher")
  tree, meta, epoch = _restore_or_say_the_way_out(folder, epoch)
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
    progress.warn(f"the teacher from {where} was trained on other data settings: "
                  f"{'; '.join(data_changes)}")
  _say_conv_path(setup.config, where, meta)
  epochs = meta.get("epochs", [])
  provenance = {"checkpoint": str(where), "epoch": epoch, "step": meta.get("step"),
                "finished": meta.get("finished"),
                "source_workdir": str(folder.parent.parent) if folder.parent.name == "checkpoints" else None,
                "source_val_top1": epochs[-1]["val_top1"] if epochs else None,
                "data_differences": data_changes}
  params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), tree["params"])
  return TeacherSource(params, meta, provenance)


def _say_conv_path(config, where: pathlib.Path, meta: dict) -> None:
  """A note line when the teacher's save says another conv path trained it than this run evaluates it with, or
  does not say (saved by an older kdjax); report.json's environment.conv lists it (config.nets.describe)."""
  now = config_nets.conv_path(config, "teacher")
  then = meta.get("conv", {}).get("teacher") if isinstance(meta.get("conv"), dict) else None
  path = then.get("path", "unknown") if isinstance(then, dict) else "unknown"
  if path == now["path"]:
    return
  config_nets.note_saved_path(config, "teacher", "teacher", meta.get("epoch"), path,
                              then.get("why") if isinstance(then, dict) else None)
  trained = ("does not say who computed its convs (saved by an older kdjax)" if path == "unknown"
             else f"was trained with teacher convs {path}")
  progress.say(f"kdjax: note: the teacher from {where} {trained}; this run computes them with {now['path']} "
               f"({now['why']})")


def _restore(folder: pathlib.Path, epoch: int | None):
  reader = ckpt_lib.ModelCheckpoints(folder, read_only=True)
  try:
    return reader.restore(epoch)
  finally:
    reader.close()


def _restore_or_say_the_way_out(folder: pathlib.Path, epoch: int | None):
  """(tree, meta, epoch) of the teacher's save `epoch` (None: the latest). A corrupt one is not replaced by an
  earlier epoch's teacher (another teacher than the one asked for): the error names every other save and whether
  it is intact, so the user can pass an intact one or retrain the teacher."""
  try:
    return _restore(folder, epoch)
  except ckpt_lib.CorruptCheckpointError as error:
    asked = epoch if epoch is not None else ckpt_lib.saved_epochs(folder)[-1]
    failures, intact = [(asked, error)], []
    for other in reversed(ckpt_lib.saved_epochs(folder)):
      if other == asked:
        continue
      try:
        _restore(folder, other)
        intact.append(other)
      except ckpt_lib.CorruptCheckpointError as other_error:
        failures.append((other, other_error))
    retrain = (f"retrain the teacher (delete {folder} and rerun its run)" if folder.parent.name == "checkpoints"
               else "retrain the teacher")
    if intact:
      raise ckpt_lib.CorruptCheckpointError(
          f"{error}; {folder / str(intact[0])} is intact: pass it as teacher.checkpoint to distill from that "
          f"epoch's teacher, or {retrain}") from None
    raise ckpt_lib.none_intact(folder, failures, f"no save of this teacher is intact: {retrain}, or pass "
                                                 f"another teacher.checkpoint") from None


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
