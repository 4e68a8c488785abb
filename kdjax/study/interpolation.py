"""The original's EMA without training: the trained teacher with its EMA-paired tensors set to a fixed mix of a student.

For each seed of a finished workdir (WORKDIR itself, or WORKDIR/seed_<s>/ for several seeds) and each w of a grid,

    θ(w) = (1 − w)·θ_teacher + w·θ_student   on the tensors the original's EMA pairs (ema.torch_zip_pairs: PyTorch's
                                             zip order, equal shapes only), every other tensor the trained teacher's

(ema.interpolate_pairs), evaluated on the whole validation split, with θ_student one of SOURCES: the trained
student_kd, the trained student_ce, or the seed's initial student (rebuilt as the study builds it, Setup.build).
Nothing trains: the teacher is frozen and the student fixed, so the table shows what a share w of a student's
weights in the paired tensors does to the teacher by itself, without the feedback of a student distilled from it.

Beside it, the dynamic EMA of the run's kd_ema phase at each collapse-diagnostic point (report.json's
models.teacher_ema.collapse, report/collapse.py): after k updates its paired tensors hold a share
w = 1 − α^k of the student's weights (ema.student_share; with the warm-up 1 − Π α_t), of the student's
trajectory rather than of one student, and the EMA-updated teacher's top-1 measured there.

    run(workdir, weights, sources) -> the result (report/interpolation.py formats and draws it)
"""

import dataclasses
import json
import os
import pathlib
import time

import ml_collections

from kdjax import phases
from kdjax import progress
from kdjax.config import defaults as config_defaults
from kdjax.config import lookup as config_lookup
from kdjax.report import collapse
from kdjax.store import checkpoints as ckpt_lib
from kdjax.store import run as run_lib
from kdjax.store.rundir import seed_dir
from kdjax.study import builder
from kdjax.study.builder import Setup
from kdjax.training import ema

DEFAULT_WEIGHTS = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)
INITIAL = "initial"                              # the seed's initial student, rebuilt (no save needed)
SOURCES = ("student_kd", "student_ce", INITIAL)  # where θ_student comes from
OUTPUTS = ("interpolation.json", "interpolation.md", "interpolation.png")


class InputError(ValueError):
  """A workdir, flag value or output file that this command cannot use; one line naming it (exit 2)."""


@dataclasses.dataclass(frozen=True)
class SeedRun:
  seed: int
  run: run_lib.Run


def check_weights(weights) -> tuple[float, ...]:
  """The grid as floats, each in [0, 1], none repeated, ascending; InputError naming --weights otherwise."""
  values = []
  for weight in weights:
    try:
      value = float(weight)
    except (TypeError, ValueError):
      raise InputError(f"--weights: {weight!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
      raise InputError(f"--weights: {weight!r} is outside [0, 1] (w is the student's share of each paired tensor)")
    values.append(value)
  if not values:
    raise InputError("--weights: empty; give at least one w in [0, 1]")
  if len(set(values)) != len(values):
    raise InputError(f"--weights: {', '.join(map(str, weights))} repeats a value")
  return tuple(sorted(values))


def check_sources(sources) -> tuple[str, ...]:
  """The student sources in SOURCES' order; InputError naming --students for an unknown or repeated one."""
  unknown = [source for source in sources if source not in SOURCES]
  if unknown:
    raise InputError(f"--students: {', '.join(unknown)} unknown; known: {', '.join(SOURCES)}")
  if not sources or len(set(sources)) != len(sources):
    raise InputError(f"--students: give each of {', '.join(SOURCES)} at most once, at least one")
  return tuple(source for source in SOURCES if source in sources)


def output_paths(workdir, overwrite: bool) -> list[pathlib.Path]:
  """WORKDIR/interpolation.{json,md,png}; InputError naming the first that exists unless `overwrite`."""
  paths = [pathlib.Path(workdir) / name for name in OUTPUTS]
  if not overwrite:
    for path in paths:
      if path.exists():
        raise InputError(f"{path}: exists; --overwrite replaces it")
  return paths


def run_config(run: run_lib.Run) -> ml_collections.ConfigDict:
  """The run's config.json over today's defaults: a field the run lacks takes the value that run computed with
  (config/defaults.ABSENT_MEANS, else the default), so Setup.build rebuilds the run's nets and initial weights."""
  config = config_defaults.default_config()
  saved = config_defaults.flatten(json.loads(json.dumps(run.config.to_dict())))
  for field in config_defaults.flatten(config.to_dict()):
    value = saved.get(field, config_defaults.ABSENT_MEANS.get(field))
    if value is not None:
      config_lookup.override(config, field, tuple(value) if isinstance(value, list) else value)
  return config


def seed_runs(workdir) -> list[SeedRun]:
  """The one-seed runs of `workdir`: itself, or each seed_<s>/ of a several-seed run (InputError naming a missing
  one or a path that is no workdir)."""
  try:
    top = run_lib.load_run(workdir)
  except ckpt_lib.CheckpointError as error:
    raise InputError(str(error)) from None
  num_seeds = int(top.config.get("num_seeds", 1) or 1)
  if num_seeds <= 1:
    return [SeedRun(int(top.config.get("seed", 0)), top)]
  runs = []
  for seed in range(int(top.config.seed), int(top.config.seed) + num_seeds):
    folder = seed_dir(top.workdir, seed)
    try:
      runs.append(SeedRun(seed, run_lib.load_run(folder)))
    except ckpt_lib.CheckpointError as error:
      raise InputError(f"seed {seed} of a {num_seeds}-seed run: {error}") from None
  return runs


def needed_models(sources) -> list[str]:
  """The saved models a table needs: the teacher and the trained students among `sources`."""
  return ["teacher"] + [source for source in sources if source != INITIAL]


def check_saves(seed_run: SeedRun, sources) -> None:
  """InputError naming the missing or unfinished phase of a seed's run, before anything is evaluated."""
  folders = ckpt_lib.model_folders(seed_run.run.workdir / "checkpoints") if (
      seed_run.run.workdir / "checkpoints").is_dir() else []
  saved = [folder.name for folder in folders]
  epochs = int(seed_run.run.config.get("epochs", 0) or 0)
  for model in needed_models(sources):
    folder = seed_run.run.workdir / "checkpoints" / model
    hint = "" if model == "teacher" else f", or leave {model} out of --students"
    if model not in saved or not ckpt_lib.saved_epochs(folder):
      raise InputError(f"{seed_run.run.workdir}: no saved phase {model} (saved: {', '.join(saved) or 'none'}); run "
                       f"the study with that phase first{hint}")
    from_elsewhere = model == "teacher" and seed_run.run.config.get("teacher", {}).get("checkpoint")
    last = max(ckpt_lib.saved_epochs(folder))
    if not from_elsewhere and last < epochs:
      raise InputError(f"{seed_run.run.workdir}: phase {model} is not finished (saved epoch {last} of {epochs}); "
                       f"rerun the study's command to finish it{hint}")


def collapse_points(seed_run: SeedRun) -> tuple[list[dict], str | None]:
  """The kd_ema phase's collapse-diagnostic points (report.json's models.teacher_ema.collapse) and, when there are
  none, why."""
  path = seed_run.run.workdir / "report.json"
  if not path.is_file():
    return [], f"{path}: none (the run has not written its report)"
  try:
    report = json.loads(path.read_text())
  except (OSError, ValueError) as error:
    return [], f"{path}: unreadable ({error})"
  entry = (report.get("models") or {}).get(phases.TEACHER_EMA) or {}
  points = entry.get("collapse") or []
  return points, None if points else f"{path}: no {phases.TEACHER_EMA} collapse diagnostics (no kd_ema phase)"


def dynamic_ema(seed_run: SeedRun, config) -> dict:
  """The original's EMA of the seed's kd_ema phase at each diagnostic point: step k, w = 1 − α^k, the EMA-updated
  teacher's top-1 on the probe and (epoch ends) on the whole validation split, its distance moved."""
  points, missing = collapse_points(seed_run)
  decay, warmup = float(config.ema.decay), bool(config.ema.warmup)
  rows = [{"step": int(p["step"]), "epoch": p.get("epoch"), "w": ema.student_share(decay, int(p["step"]), warmup),
           "probe_top1": p.get("probe_teacher_top1"), "probe_size": p.get("probe_size"),
           "top1": p.get("teacher_top1"), "distance": p.get("distance")} for p in points]
  return {"decay": decay, "warmup": warmup, "points": rows, "missing": missing}


def initial_student(setup: Setup) -> dict:
  """The seed's initial student, as the study builds it (Setup.build: PRNGKey(seed) split into teacher, student)."""
  return setup.initial_params["student"]


def evaluate_seed(seed_run: SeedRun, weights, sources, data: builder.LoadedOnce) -> dict:
  """One seed's table: top-1 on the whole validation split (and the distance moved) at each w for each source;
  data: the run's data set, loaded once for all its seeds."""
  config = run_config(seed_run.run)
  setup = Setup.build(config, data())
  pairs = setup.ema_pairs()
  teacher, teacher_meta, teacher_epoch = seed_run.run.params("teacher")
  students = {}
  for source in sources:
    if source == INITIAL:
      students[source] = initial_student(setup)
      continue
    params, meta, epoch = seed_run.run.params(source)
    if not meta.get("finished", True):
      raise InputError(f"{seed_run.run.workdir}: phase {source} is not finished (saved epoch {epoch} of "
                       f"{meta.get('epochs_total')}); rerun the study's command to finish it")
    students[source] = params
  if not teacher_meta.get("finished", True) and not teacher_meta.get("source"):
    raise InputError(f"{seed_run.run.workdir}: phase teacher is not finished (saved epoch {teacher_epoch} of "
                     f"{teacher_meta.get('epochs_total')}); rerun the study's command to finish it")
  top1, distance = {}, {}
  for source, student in students.items():
    top1[source], distance[source] = [], []
    for weight in weights:
      mixed = ema.interpolate_pairs(teacher, student, pairs, weight)
      metrics, _ = setup.evaluate("teacher", mixed)
      top1[source].append(metrics["val_top1"])
      distance[source].append(collapse.relative_distance(mixed, teacher, pairs))
    progress.say(f"[seed {seed_run.seed}] {source}: top-1 " + ", ".join(
        f"{value:.2f}" for value in top1[source]) + f" % at w = {', '.join(f'{w:g}' for w in weights)}")
  reported = _reported_teacher_top1(seed_run)
  return {"seed": seed_run.seed, "workdir": str(seed_run.run.workdir), "teacher_epoch": teacher_epoch,
          "teacher_top1_report": reported, "top1": top1, "distance": distance,
          "ema": dynamic_ema(seed_run, config),
          "data": {"name": setup.dataset.name, "val_examples": int(len(setup.dataset.val_labels)),
                   "num_classes": int(setup.dataset.num_classes)},
          "pairs": [[".".join(s_path), ".".join(t_path)] for s_path, t_path in pairs]}


def _reported_teacher_top1(seed_run: SeedRun) -> float | None:
  path = seed_run.run.workdir / "report.json"
  try:
    return json.loads(path.read_text())["models"]["teacher"]["val_top1"]
  except (OSError, ValueError, KeyError, TypeError):
    return None


def run(workdir, weights=DEFAULT_WEIGHTS, sources=SOURCES) -> dict:
  """Every seed's table (see the module docstring), checked before anything is evaluated: the weights, the
  sources, the seeds' runs and their saves (InputError naming what is wrong)."""
  weights, sources = check_weights(weights), check_sources(sources)
  runs = seed_runs(workdir)
  for seed_run in runs:
    check_saves(seed_run, sources)
  start, load = time.perf_counter(), os.getloadavg()[0]
  data = builder.LoadedOnce(run_config(runs[0].run).data)   # the seeds of one run read the same data
  seeds = [evaluate_seed(seed_run, weights, sources, data) for seed_run in runs]
  return {"workdir": str(pathlib.Path(workdir).absolute()), "weights": list(weights), "sources": list(sources),
          "seeds": seeds, "seconds": time.perf_counter() - start,
          "load_average": {"start": load, "end": os.getloadavg()[0]}}
