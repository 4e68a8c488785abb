"""Resuming a workdir: which phases' saves to read, the conv paths they were computed with, and re-evaluating
the phases finished earlier (their recorded validation metrics must come back).

store/resume.py reads and checks each save as plain values; this module builds what it checks them against from
the study's Setup (the restore target, the data fingerprint) and decides what a save means for the run.
"""

import jax

from kdjax import phases
from kdjax import progress
from kdjax.config import nets as config_nets
from kdjax.store import checkpoints as ckpt_lib
from kdjax.store import meta as run_meta
from kdjax.store import resume as store_resume
from kdjax.store.resume import SavedPhase
from kdjax.store.rundir import RunDir


def conv_path_changes(now: dict, phase: str, meta: dict) -> dict[str, dict]:
  """{net: {phase, epoch, path, why}} for each net of `phase` whose convs its save records another path for than
  `now` ({net: {path, why}}: this run's, config.nets.conv_path) says, path "unknown" where the save does not say
  (written before kdjax recorded it). report.json's environment.conv lists them (config.nets.describe)."""
  changed = {}
  for net in run_meta.phase_nets(phase):
    then = (meta.get("conv") or {}).get(net)
    path = then.get("path", "unknown") if isinstance(then, dict) else "unknown"
    if path != now[net]["path"]:
      changed[net] = {"phase": phase, "epoch": meta["epoch"], "path": path,
                      "why": then.get("why") if isinstance(then, dict) else None}
  return changed


def _say_conv_path_changes(now: dict, saved: dict[str, SavedPhase]) -> set[str]:
  """Fills each save's conv_saved; one note line per resumed phase whose convs another path computed (float32
  sums move in their last bits between oneDNN and XLA, so the resumed run is not the bits of an uninterrupted
  one), one for the saves that do not say; returns the phases whose path is known to have changed."""
  changed_phases, unknown = set(), []
  for phase, save in saved.items():
    save.conv_saved = conv_path_changes(now, phase, save.meta)
    changed = [net for net, entry in save.conv_saved.items() if entry["path"] != "unknown"]
    unknown_nets = [net for net, entry in save.conv_saved.items() if entry["path"] == "unknown"]
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
    if check and recorded is not None and not store_resume.metrics_reproduced(recorded, now, exact):
      raise ckpt_lib.CheckpointError(
          f"{saved.where}: {model.name} re-evaluated gives val_loss {metrics['val_loss']!r}, val_top1 "
          f"{metrics['val_top1']!r}, but the checkpoint recorded {recorded['val_loss']!r}, "
          f"{recorded['val_top1']!r} (the checkpoint, the data or the code changed)")
    evaluated[model.name] = (metrics, logits)
  return evaluated


def read_saved_phases(run: RunDir, setup, phase_names, current_config: dict,
                      allow_change: bool = False) -> tuple[dict[str, SavedPhase], list[str]]:
  """(phase -> its latest intact save in this workdir, for the phases in `phase_names` that have one;
  the differences between their configs/data and this run's, allowed by `allow_change`). Each save's
  conv_saved lists the nets another conv path computed than this run's (config.nets.conv_paths)."""
  saved, changes = {}, []
  fingerprint = run_meta.data_fingerprint(setup.dataset)
  for phase in phase_names:
    if not ckpt_lib.saved_epochs(run.checkpoints / phase):
      continue
    target = ckpt_lib.state_tree(setup.fresh_state(phase, setup.optimizer()))
    save = store_resume.read_phase_save(run, phase, target, current_config, fingerprint, allow_change,
                                        setup.config.ema.student_decay)
    saved[phase] = save
    changes += [change for change in save.differences if change not in changes]
  path_changed = _say_conv_path_changes(config_nets.conv_paths(setup.config), saved)
  for phase, save in saved.items():
    if save.epoch >= setup.config.epochs:   # finished: loaded, not trained; its metrics must come back
      save.evaluated = evaluate_saved(setup, save, check=not save.differences,
                                      exact=False if phase in path_changed else None)
  return saved, changes
