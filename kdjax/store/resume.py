"""Resuming a workdir: what its saves hold, read and checked as plain values (the decisions: study/resume.py).

Resuming (train_and_evaluate on a workdir that holds a run): its config must match config.json and the config
in every checkpoint's meta (fields in config.defaults.RESULT_NEUTRAL aside, or checkpoint.allow_config_change), and the
data must match the fingerprint in every checkpoint's meta. Every phase's latest checkpoint is read and verified
(content hashes, checkpoints.verify) before anything in the workdir is written; a corrupt latest save gives way to
the phase's latest intact one, with a warning. Phases saved at their last epoch are loaded instead of trained
(once their recorded validation metrics are reproduced), and the phase that was interrupted continues after its
last saved epoch. The data order is a function of (seed, epoch) and the saved state is the whole TrainState, so
the resumed run computes what the uninterrupted one would.

The checkpoint meta these checks read is described in store/meta.py. `read_phase_save` reads one phase's save
against a restore target the caller builds; study/resume.py decides what to read and re-evaluates finished phases.
"""

import dataclasses
import json
import math
import pathlib

from kdjax import phases
from kdjax import progress
from kdjax.config import defaults as config_lib
from kdjax.errors import ConfigError
from kdjax.store import checkpoints as ckpt_lib
from kdjax.store.meta import fingerprint_differences
from kdjax.store.rundir import RunDir


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
    progress.warn(f"resuming {run.path} with a changed config: {'; '.join(changes)}")
  return changes


@dataclasses.dataclass
class SavedPhase:
  """The latest intact save of a phase in this workdir: the state tree and its meta; for a phase finished
  earlier also `evaluated`: model name -> (metrics, validation logits), reproduced from the saved state."""

  tree: dict
  meta: dict
  where: pathlib.Path
  evaluated: dict | None = None
  rewrite: list = dataclasses.field(default_factory=list)   # phases.Model whose own save of this epoch is broken
  differences: list = dataclasses.field(default_factory=list)   # its config/data against this run's (allowed)
  # {net: {phase, epoch, path, why}} of the nets whose convs another path computed than this run's (or "unknown":
  # saved by an older kdjax); report.json's environment.conv lists them (study/resume.py fills it)
  conv_saved: dict = dataclasses.field(default_factory=dict)

  @property
  def epoch(self) -> int:
    return self.meta["epoch"]


def _restore_latest_intact(folder: pathlib.Path, target: dict) -> tuple[dict, dict, int]:
  """The latest step of `folder` that restores and verifies; when a later one is corrupt, one warning line
  says which and what is used instead. When none is intact: one CorruptCheckpointError line that names every
  save tried and the way out (ckpt_lib.none_intact)."""
  failures = []
  for epoch in reversed(ckpt_lib.saved_epochs(folder)):
    reader = ckpt_lib.ModelCheckpoints(folder, read_only=True)
    try:
      tree, meta, epoch = reader.restore(epoch, target=target)
    except ckpt_lib.CorruptCheckpointError as error:
      failures.append((epoch, error))
      continue
    finally:
      reader.close()
    if failures:
      progress.warn(f"{failures[0][1]}"
                    f"{f' (and {len(failures) - 1} earlier save(s))' if len(failures) > 1 else ''}; "
                    f"using the latest intact save, {folder / str(epoch)}")
    return tree, meta, epoch
  raise ckpt_lib.none_intact(folder, failures, f"no save of phase {folder.name} to resume from is intact; delete "
                                       f"{folder} to train phase {folder.name} again (the rerun saves it anew), "
                                       f"or use a new workdir")


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


def metrics_reproduced(recorded: dict, now: dict, exact: bool) -> bool:
  """On CPU evaluation is deterministic: the recorded numbers come back bit for bit. Elsewhere (GPU kernels may
  be chosen differently per process) within 1e-4 relative on the loss and one example on top-1."""
  if exact:
    return all(recorded[key] == now[key] for key in ("val_loss", "val_top1"))
  return (abs(recorded["val_loss"] - now["val_loss"]) <= 1e-4 * max(1.0, abs(recorded["val_loss"]))
          and abs(recorded["val_top1"] - now["val_top1"]) <= 100.0 / max(1, now.get("val_examples", 1)) + 1e-9)


def _refuse_non_finite(saved: SavedPhase, model: str, rows: list[dict]) -> None:
  """CheckpointError naming the epoch and metric when a recorded metric is not finite (a save of a diverged
  phase, written before study/acceptance.py refused them): NaN never equals NaN, so it cannot be "reproduced",
  and it is no result to resume from."""
  for row in rows:
    for key in ("train_loss", "val_loss", "val_top1", "val_top5"):
      value = row.get(key)
      if isinstance(value, float) and not math.isfinite(value):
        raise ckpt_lib.CheckpointError(
            f"{saved.where}: {model} recorded a non-finite {key} ({value}) at epoch {row.get('epoch')}: the "
            f"phase diverged when it was trained, and such a save is no result (use a new workdir, or delete "
            f"{saved.where.parent} to train phase {saved.meta['phase']} again)")


def _broken_companions(run: RunDir, phase: str, tree: dict, epoch: int, student_decay: float) -> list:
  """The phase's other models with a folder of their own (teacher_ema) whose save of `epoch` is missing or
  corrupt. The phase's own save holds their weights too, so the run rewrites them from it (one warning line
  each) rather than leave a checkpoint that inspect and export refuse."""
  broken = []
  for model in phases.models_of(phase, student_decay):
    if model.name == phase or not model.own_checkpoint:
      continue
    folder = run.checkpoints / model.name
    try:
      reader = ckpt_lib.ModelCheckpoints(folder, read_only=True)
      try:
        reader.restore(epoch, target={"params": tree[model.state_field]})
      finally:
        reader.close()
    except ckpt_lib.CheckpointError as error:
      progress.warn(f"{error}; rewriting {folder / str(epoch)} from {run.checkpoints / phase / str(epoch)}, "
                    f"which holds the same weights")
      broken.append(model)
  return broken


def read_phase_save(run: RunDir, phase: str, target: dict, current_config: dict, fingerprint: dict,
                    allow_change: bool, student_decay: float) -> SavedPhase | None:
  """The latest intact save of `phase` in this workdir (None when it has none), restored onto `target` (the
  state tree of a fresh state of the phase) and checked: its meta is this phase's, its step matches, its config
  and data match this run's `current_config` and data `fingerprint` (differences allowed by `allow_change`, kept
  in `differences`), its recorded metrics are finite; the phase's other models whose save of that epoch is
  broken are listed in `rewrite` (ema.student_decay: `student_decay`)."""
  folder = run.checkpoints / phase
  if not ckpt_lib.saved_epochs(folder):
    return None
  tree, meta, epoch = _restore_latest_intact(folder, target)
  where = folder / str(epoch)
  if meta.get("phase") != phase or meta.get("epoch") != epoch or \
      not {"records", "config", "data"} <= set(meta):
    raise ckpt_lib.CheckpointError(f"{where}: not a checkpoint of phase {phase!r} written by this "
                                   f"version of kdjax")
  if int(tree["step"]) != meta["step"]:
    raise ckpt_lib.CheckpointError(f"{where}: step {int(tree['step'])} in the state but {meta['step']} in "
                                   f"the meta")
  saved = SavedPhase(tree, meta, where,
                     differences=_check_against_meta(where, meta, current_config, fingerprint, allow_change))
  saved.rewrite = _broken_companions(run, phase, tree, epoch, student_decay)
  for model, recorded in meta.get("results", {}).items():
    _refuse_non_finite(saved, model, recorded.get("epochs", []))
  return saved
