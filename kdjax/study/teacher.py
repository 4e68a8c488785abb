"""A teacher from elsewhere (config teacher.checkpoint) checked against this run: its nets, its activation, the
data it was trained on, the conv path that computed it. store/teacher.py reads it from disk and keeps the copy."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from kdjax import progress
from kdjax.config import defaults as config_lib
from kdjax.config import nets as config_nets
from kdjax.errors import ConfigError
from kdjax.errors import TeacherCheckpointError
from kdjax.store import checkpoints as ckpt_lib
from kdjax.store import teacher as store_teacher
from kdjax.store.meta import data_fingerprint
from kdjax.store.meta import fingerprint_differences
from kdjax.store.teacher import TeacherSource


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
  tree, meta, epoch, folder = store_teacher.read(path)
  where = folder / str(epoch)
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
  conv_saved = _say_conv_path(config_nets.conv_path(config, "teacher"), where, meta)
  epochs = meta.get("epochs", [])
  provenance = {"checkpoint": str(where), "epoch": epoch, "step": meta.get("step"),
                "finished": meta.get("finished"),
                "source_workdir": str(folder.parent.parent) if folder.parent.name == "checkpoints" else None,
                "source_val_top1": epochs[-1]["val_top1"] if epochs else None,
                "data_differences": data_changes}
  params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), tree["params"])
  return TeacherSource(params, meta, provenance, conv_saved=conv_saved)


def _say_conv_path(now: dict, where: pathlib.Path, meta: dict) -> dict:
  """A note line when the teacher's save says another conv path trained it than this run evaluates it with
  (`now`: config.nets.conv_path's {path, why}), or does not say (saved by an older kdjax); returns {"teacher":
  {phase, epoch, path, why}} for report.json's environment.conv (config.nets.describe), {} when the same."""
  then = meta.get("conv", {}).get("teacher") if isinstance(meta.get("conv"), dict) else None
  path = then.get("path", "unknown") if isinstance(then, dict) else "unknown"
  if path == now["path"]:
    return {}
  trained = ("does not say who computed its convs (saved by an older kdjax)" if path == "unknown"
             else f"was trained with teacher convs {path}")
  progress.say(f"kdjax: note: the teacher from {where} {trained}; this run computes them with {now['path']} "
               f"({now['why']})")
  return {"teacher": {"phase": "teacher", "epoch": meta.get("epoch"), "path": path,
                      "why": then.get("why") if isinstance(then, dict) else None}}
