"""Resuming a workdir.

Resuming (train_and_evaluate on a workdir that holds a run): its config must match config.json and the config
in every checkpoint's meta (fields in config.defaults.RESULT_NEUTRAL aside, or checkpoint.allow_config_change), and the
data must match the fingerprint in every checkpoint's meta. Every phase's latest checkpoint is read and verified
(content hashes, checkpoints.verify) before anything in the workdir is written; a corrupt latest save gives way to
the phase's latest intact one, with a warning. Phases saved at their last epoch are loaded instead of trained
(once their recorded validation metrics are reproduced), and the phase that was interrupted continues after its
last saved epoch. The data order is a function of (seed, epoch) and the saved state is the whole TrainState, so
the resumed run computes what the uninterrupted one would.

The checkpoint meta these checks read is described in store/meta.py.
"""

import dataclasses
import json
import math
import pathlib

import jax

from kdjax import phases
from kdjax import progress
from kdjax.config import defaults as config_lib
from kdjax.config import nets as config_nets
from kdjax.errors import ConfigError
from kdjax.store import checkpoints as ckpt_lib
from kdjax.store import meta as run_meta
from kdjax.store.meta import data_fingerprint
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


def _metrics_reproduced(recorded: dict, now: dict, exact: bool) -> bool:
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


def conv_path_changes(config, phase: str, meta: dict) -> tuple[list[str], list[str]]:
  """(the nets of `phase` whose convs its save records another path for than this run computes them with, the
  nets whose save does not say: written before kdjax recorded it); each is noted for report.json's conv entry
  (config.nets.note_saved_path)."""
  changed, unknown = [], []
  for net in run_meta.phase_nets(phase):
    now = config_nets.conv_path(config, net)
    then = (meta.get("conv") or {}).get(net)
    path = then.get("path", "unknown") if isinstance(then, dict) else "unknown"
    if path != now["path"]:
      config_nets.note_saved_path(config, net, phase, meta["epoch"], path,
                                  then.get("why") if isinstance(then, dict) else None)
      (unknown if path == "unknown" else changed).append(net)
  return changed, unknown


def _say_conv_path_changes(config, saved: dict[str, "SavedPhase"]) -> set[str]:
  """One note line per resumed phase whose convs another path computed (float32 sums move in their last bits
  between oneDNN and XLA, so the resumed run is not the bits of an uninterrupted one), one for the saves that do not
  say; returns the phases whose path is known to have changed."""
  now = {net: config_nets.conv_path(config, net) for net in ("teacher", "student")}
  changed_phases, unknown = set(), []
  for phase, save in saved.items():
    changed, unknown_nets = conv_path_changes(config, phase, save.meta)
    if changed:
      changed_phases.add(phase)
      then = ", ".join(f"{net} convs {save.meta['conv'][net]['path']}" for net in changed)
      here = ", ".join(f"{net} convs {now[net]['path']} ({now[net]['why']})" for net in changed)
      progress.say(f"kdjax: note: [{phase}] its save {save.where} was computed with {then}; this run computes "
                   f"{here}: float32 sums differ in their last bits (report.json: environment.conv)")
    if unknown_nets:
      unknown.append(f"{phase} ({', '.join(unknown_nets)} convs)")
  if unknown:
    here = ", ".join(f"{net} convs with {now[net]['path']}" for net in ("teacher", "student"))
    progress.say(f"kdjax: note: the saves of {', '.join(unknown)} do not say who computed their convs (saved by an "
                 f"older kdjax): unknown; this run computes {here}")
  return changed_phases


def evaluate_saved(setup, saved: SavedPhase, check: bool, exact: bool | None = None) -> dict:
  """model name -> (metrics, logits) of every model of a finished phase, from its saved state; with `check`,
  CheckpointError unless each reproduces the validation metrics recorded with the checkpoint (bit for bit on CPU
  unless `exact` is False: a save whose convs another path computed)."""
  exact = jax.default_backend() == "cpu" if exact is None else exact
  evaluated = {}
  for model in phases.models_of(saved.meta["phase"], setup.config.ema.student_decay):
    metrics, logits = setup.evaluate(model.net, saved.tree[model.state_field])
    recorded_rows = saved.meta["results"].get(model.name, {}).get("epochs", [])
    recorded = recorded_rows[-1] if recorded_rows else None
    now = dict(metrics, val_examples=len(logits))
    if check and recorded is not None and not _metrics_reproduced(recorded, now, exact):
      raise ckpt_lib.CheckpointError(
          f"{saved.where}: {model.name} re-evaluated gives val_loss {metrics['val_loss']!r}, val_top1 "
          f"{metrics['val_top1']!r}, but the checkpoint recorded {recorded['val_loss']!r}, "
          f"{recorded['val_top1']!r} (the checkpoint, the data or the code changed)")
    evaluated[model.name] = (metrics, logits)
  return evaluated


def _broken_companions(run: RunDir, setup, phase: str, tree: dict, epoch: int) -> list:
  """The phase's other models with a folder of their own (teacher_ema) whose save of `epoch` is missing or
  corrupt. The phase's own save holds their weights too, so the run rewrites them from it (one warning line
  each) rather than leave a checkpoint that inspect and export refuse."""
  broken = []
  for model in phases.models_of(phase, setup.config.ema.student_decay):
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


def read_saved_phases(run: RunDir, setup, phase_names, current_config: dict,
                      allow_change: bool = False) -> tuple[dict[str, SavedPhase], list[str]]:
  """(phase -> its latest intact save in this workdir, for the phases in `phase_names` that have one;
  the differences between their configs/data and this run's, allowed by `allow_change`)."""
  saved, changes, save_differences = {}, [], {}
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
    save_differences[phase] = differences
    changes += [change for change in differences if change not in changes]
    saved[phase] = SavedPhase(tree, meta, where)
    saved[phase].rewrite = _broken_companions(run, setup, phase, tree, epoch)
    for model, recorded in meta.get("results", {}).items():
      _refuse_non_finite(saved[phase], model, recorded.get("epochs", []))
  path_changed = _say_conv_path_changes(setup.config, saved)
  for phase, save in saved.items():
    if save.epoch >= setup.config.epochs:   # finished: loaded, not trained; its metrics must come back
      save.evaluated = evaluate_saved(setup, save, check=not save_differences[phase],
                                      exact=False if phase in path_changed else None)
  return saved, changes
