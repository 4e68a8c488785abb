"""A study spread over tasks: a share of its units per process or host, one merged report.

    python -m kdjax.main --config ema_sweep.py --workdir W --config.num_seeds=3 --config.task=K/N   # each K
    python -m kdjax.main --config ema_sweep.py --workdir W --config.num_seeds=3 --config.task=merge # if needed

The units are the study's (seed, sweep point) pairs: every seed's "main" point first (config.phases), then each
ema.sweep variant for every seed. Unit i runs in task i mod N, in that order. A variant's unit waits for its seed's
teacher, which the seed's main unit trains (or runs that unit itself when no task holds it); unit i only waits on
a unit before it, so tasks never wait in a circle. The rules and recipes: docs/scaling.md.

Files: a unit runs in SEED/units/<point>/ (SEED = WORKDIR/seed_<s>, or WORKDIR itself for one seed) under its own
lock (SEED/units/<point>/.lock), with its metrics.jsonl and TensorBoard there and its phases' checkpoints in
SEED/checkpoints/<phase>/, the folders a one-process run uses; done.json says it finished and what it ran on.
A unit that another live task holds is skipped (the line names it and the PID); a killed task's unit is resumed
by the next run of a task that reaches it (study/resume.py, per phase, as always). Every task holds
WORKDIR/.lock shared, so a one-process run of the workdir and the tasks exclude each other.

The merge, by the task that finishes the last unit (or --config.task=merge), is the one-process run of the finished
workdir (every phase loaded and checked, nothing trained), plus report.json's "grid". `share_cores` (before JAX
starts) pins task K to cores K*C .. K*C+C-1 for task_cores = C and sets KDJAX_ONEDNN_THREADS unless set.
"""

import dataclasses
import json
import os
import pathlib
import socket
import time

from kdjax import progress
from kdjax.config import defaults as config_lib
from kdjax.errors import CheckpointError
from kdjax.errors import ConfigError
from kdjax.store import checkpoints as ckpt_lib
from kdjax.store import resume
from kdjax.store.rundir import BusyError
from kdjax.store.rundir import RunDir
from kdjax.store.rundir import seed_dir
from kdjax.store.rundir import unit_dir
from kdjax.study import builder
from kdjax.study import seeds as seeds_lib

MAIN = "main"                       # a seed's point that trains config.phases (its teacher among them)
COUNT_ENV = "KDJAX_TASK_COUNT"      # the task count beside JOB_COMPLETION_INDEX (a Kubernetes indexed Job)
DONE = "done.json"
MERGE_LOCK = ".merge.lock"
POLL_SECONDS = 2.0
ASSIGNMENT = "unit i -> task i mod N (units point-major: every seed's 'main', then each ema.sweep variant's)"


class IncompleteError(CheckpointError):
  """A merge asked for before every unit finished (exit 1, naming the missing units)."""


@dataclasses.dataclass(frozen=True)
class Unit:
  index: int
  seed: int
  point: str                  # MAIN or an ema.sweep variant's phase name
  trains: tuple[str, ...]     # the phases it trains: a variant its own; main config.phases (less a given teacher)
  folder: pathlib.Path        # the seed's folder: the workdir's seed_<s>/, or the workdir itself for one seed

  @property
  def name(self) -> str:
    return f"{self.folder.name}/{self.point}" if self.folder.name.startswith("seed_") else self.point

  @property
  def directory(self) -> pathlib.Path:
    return unit_dir(self.folder, self.point)

  @property
  def only(self) -> tuple[str, ...]:
    """The phases the unit's run goes through: the ones it trains and the teacher, trained or loaded (a variant's
    from its seed's main unit, a given one from teacher.checkpoint), that its KD phases distil from."""
    return self.trains if "teacher" in self.trains else ("teacher", *self.trains)


def seed_folder(config, workdir, seed: int) -> pathlib.Path:
  return pathlib.Path(workdir) if config.num_seeds == 1 else seed_dir(workdir, seed)


def units(config, workdir) -> list[Unit]:
  """Every unit of the study, in the assignment order."""
  variants = [variant.name for variant in builder.sweep_phases(config)]
  main = tuple(name for name in config.phases if not (name == "teacher" and config.teacher.checkpoint))
  found = []
  for point, trains in [(MAIN, main)] + [(variant, (variant,)) for variant in variants]:
    for seed in seeds_lib.seed_values(config):
      found.append(Unit(len(found), seed, point, trains, seed_folder(config, workdir, seed)))
  return found


def task_of(config, environ=os.environ) -> tuple[int, int]:
  """(K, N) of config.task "K/N" or "auto" (SLURM's array variables, or JOB_COMPLETION_INDEX with
  KDJAX_TASK_COUNT); (0, 1) for "" and "merge". ConfigError naming `task` and the variable otherwise."""
  task = config.task
  if task in ("", "merge"):
    return 0, 1
  if task == "auto":
    def number(name: str, default: int | None = None) -> int:
      text = environ.get(name, "").strip()
      if not text and default is not None:
        return default
      if not text.isdigit():
        raise ConfigError(f"task auto: {name} must be an integer >= 0, got {text!r}")
      return int(text)
    if "SLURM_ARRAY_TASK_ID" in environ:   # --array=MIN-MAX[:STEP]: IDs need not start at 0
      index = (number("SLURM_ARRAY_TASK_ID") - number("SLURM_ARRAY_TASK_MIN", 0)) // max(
          1, number("SLURM_ARRAY_TASK_STEP", 1))
      count = number("SLURM_ARRAY_TASK_COUNT")
    elif "JOB_COMPLETION_INDEX" in environ:
      if COUNT_ENV not in environ:
        raise ConfigError(f"task auto: JOB_COMPLETION_INDEX is set but {COUNT_ENV} is not: set it to the Job's "
                          f"completions (docs/scaling.md)")
      index, count = number("JOB_COMPLETION_INDEX"), number(COUNT_ENV)
    else:
      raise ConfigError("task auto: neither SLURM_ARRAY_TASK_ID (a SLURM job array) nor JOB_COMPLETION_INDEX (a "
                        "Kubernetes indexed Job) is set; give --config.task=K/N")
  else:
    number, _, count = task.partition("/")
    if not (number.isdigit() and count.isdigit()):
      raise ConfigError(f"task must be '' (every unit here), 'K/N' (task K of N, 0 <= K < N), 'auto' or 'merge', "
                        f"got {task!r}")
    index, count = int(number), int(count)
  if not 0 <= index < count:
    raise ConfigError(f"task {task}: task {index} of {count} is not in [0, {count - 1}]")
  return index, count


def share_cores(config, environ=os.environ) -> list[int] | None:
  """Pins this process to its share of the cores before JAX starts (XLA's pool and oneDNN's team size
  themselves from it): config.task_cores, else SLURM_CPUS_PER_TASK when fewer than the process may use; task K
  takes cores K*C ... K*C + C - 1 (mod their count) of them. Returns the cores pinned (None: left as launched)."""
  cores = config.get("task_cores", 0)
  if not isinstance(cores, int) or isinstance(cores, bool) or cores < 0:
    raise ConfigError(f"task_cores must be an integer >= 0 (0 = as launched), got {cores!r}")
  if not hasattr(os, "sched_setaffinity"):
    return None
  if not cores and environ.get("SLURM_CPUS_PER_TASK", "").strip().isdigit():
    cores = int(environ["SLURM_CPUS_PER_TASK"])
  allowed = sorted(os.sched_getaffinity(0))
  if not cores or cores >= len(allowed):
    return None
  index = task_of(config, environ)[0] if config.get("task") else 0
  chosen = [allowed[(index * cores + offset) % len(allowed)] for offset in range(cores)]
  if _backend_started():
    progress.warn(f"task_cores {cores}: JAX's backend started before the pinning, so XLA keeps its pool; pin "
                  f"the process from outside (taskset -c, SLURM --cpus-per-task)")
  os.sched_setaffinity(0, chosen)
  if not environ.get("KDJAX_ONEDNN_THREADS", "").strip():
    os.environ["KDJAX_ONEDNN_THREADS"] = str(cores)
    from kdjax.nets import onednn_conv
    if onednn_conv._load.cache_info().currsize:   # loaded already: its team was sized at load
      onednn_conv.set_threads(cores)
  return chosen


def _backend_started() -> bool:
  try:
    from jax._src import xla_bridge
    return bool(xla_bridge._backends)
  except (ImportError, AttributeError):
    return False


def threads_used() -> dict:
  """What this process computes on: its cores, XLA:CPU's intra-op threads (counted by name), oneDNN's team."""
  xla = None
  with_names = pathlib.Path("/proc/self/task")
  if with_names.is_dir():
    names = []
    for thread in with_names.iterdir():
      try:
        names.append((thread / "comm").read_text().strip())
      except OSError:
        continue
    xla = sum(name == "tf_XLAEigen" for name in names)
  from kdjax.nets import onednn_conv
  onednn = onednn_conv.threads() if onednn_conv.available() else None
  cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
  return {"cores": cores, "xla_threads": xla, "onednn_threads": onednn}


def is_done(unit: Unit, epochs: int) -> bool:
  """done.json written and every phase it trains saved at its last epoch."""
  return (unit.directory / DONE).is_file() and all(
      epochs in ckpt_lib.saved_epochs(unit.folder / "checkpoints" / phase) for phase in unit.trains)


def _teacher_ready(config, unit: Unit) -> bool:
  saved = ckpt_lib.saved_epochs(unit.folder / "checkpoints" / "teacher")
  return bool(saved) if config.teacher.checkpoint else config.epochs in saved


def run(config, run_dir: RunDir, run_unit, merge_all) -> dict:
  """config.task's share of the study in `run_dir` (held shared): `run_unit(seed_config, unit_run, only)` runs a
  unit's phases, `merge_all(sequential_config)` is the one-process run that loads every unit; then the merge when
  this task finished the study's last unit. Returns the merged report, or {"task": ..., "ran": [...], ...}."""
  every = units(config, run_dir.path)
  if config.task == "merge":
    return merge(config, run_dir, every, merge_all, requested=True)
  index, count = task_of(config)
  config_dict = config_lib.as_json(config)
  resume.check_config(run_dir, config_dict, config.checkpoint.allow_config_change)
  run_dir.write_json("config.json", config_dict)
  mine = [unit for unit in every if unit.index % count == index]
  if not mine:
    progress.say(f"task {index} of {count}: no units (the study has {len(every)}; {ASSIGNMENT}): nothing to do")
  else:
    progress.say(f"task {index} of {count}: units {', '.join(unit.name for unit in mine)} "
                 f"({len(mine)} of {len(every)}; {ASSIGNMENT})")
  ran, skipped = [], []
  for unit in mine:
    if is_done(unit, config.epochs):
      progress.say(f"unit {unit.name}: finished earlier, skipped")
      continue
    if unit.point != MAIN:
      _wait_for_teacher(config, run_dir, every, unit, count, ran, run_unit)
    outcome = _run_if_free(config, run_dir, unit, count, run_unit)
    (ran if outcome else skipped).append(unit.name)
  report = merge(config, run_dir, every, merge_all, requested=False)
  return report if report is not None else {"task": config.task, "ran": ran, "skipped": skipped}


def _run_if_free(config, run_dir: RunDir, unit: Unit, count: int, run_unit) -> bool:
  """Runs `unit` under its own lock; False (one line naming the holder) when another task holds it."""
  unit_run = RunDir(unit.directory, writer=run_dir.writer, checkpoints=unit.folder / "checkpoints")
  try:
    with unit_run.locked():
      if is_done(unit, config.epochs):   # finished by another task between the check and the lock
        progress.say(f"unit {unit.name}: finished by another task, skipped")
        return False
      _run_locked_unit(config, unit, unit_run, count, run_unit)
      return True
  except BusyError:
    progress.say(f"unit {unit.name}: being run by another task (PID {unit_run.lock_holder()}): skipped, "
                 f"that task finishes it")
    return False


def _run_locked_unit(config, unit: Unit, unit_run: RunDir, count: int, run_unit) -> None:
  start = time.perf_counter()
  progress.say(f"== unit {unit.name} (seed {unit.seed}, {unit.point}: {', '.join(unit.trains)}) -> "
               f"{unit.directory}")
  outcome = run_unit(seeds_lib.seed_config(config, unit.seed), unit_run, unit.only)
  record = {"unit": unit.name, "index": unit.index, "seed": unit.seed, "point": unit.point,
            "phases": list(unit.trains), "task": config.task, "tasks": count, "host": socket.gethostname(),
            "pid": os.getpid(), **threads_used(), "loaded": outcome.get("loaded", {}),
            "resumed": outcome.get("resumed", {}), "wall_seconds": time.perf_counter() - start,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
  unit_run.write_json(DONE, record)


def _wait_for_teacher(config, run_dir, every: list[Unit], unit: Unit, count: int, ran: list, run_unit) -> None:
  """Until the seed's teacher is saved at its last epoch: runs the seed's main unit here when no task holds it,
  else waits for the task that does (one line), polling."""
  main = next(other for other in every if other.seed == unit.seed and other.point == MAIN)
  said = False
  while not _teacher_ready(config, unit):
    if not is_done(main, config.epochs):
      main_run = RunDir(main.directory, writer=run_dir.writer, checkpoints=main.folder / "checkpoints")
      try:
        with main_run.locked():
          if not _teacher_ready(config, unit):
            progress.say(f"unit {unit.name} needs seed {unit.seed}'s teacher, and no task is running unit "
                         f"{main.name}: running it here first")
            _run_locked_unit(config, main, main_run, count, run_unit)
            ran.append(main.name)
          continue
      except BusyError:
        if not said:
          progress.say(f"unit {unit.name}: waiting for seed {unit.seed}'s teacher (unit {main.name}, PID "
                       f"{main_run.lock_holder()})")
          said = True
    elif not _teacher_ready(config, unit):   # main finished, yet no teacher saved at its last epoch
      raise CheckpointError(f"unit {main.name} finished but {unit.folder / 'checkpoints' / 'teacher'} holds no "
                            f"save of epoch {config.epochs}")
    time.sleep(POLL_SECONDS)


def missing_units(config, every: list[Unit]) -> list[Unit]:
  return [unit for unit in every if not is_done(unit, config.epochs)]


def merge(config, run_dir: RunDir, every: list[Unit], merge_all, requested: bool) -> dict | None:
  """The report of every unit (the one-process run over the finished workdir) with report.json's "grid".
  requested (task=merge): IncompleteError naming the missing units. Otherwise (a task's end): None and one line
  when units are missing or report.json is already merged from these units."""
  with run_dir.locked(MERGE_LOCK, wait=True):
    missing = missing_units(config, every)
    if missing:
      names = ", ".join(unit.name for unit in missing)
      if requested:
        raise IncompleteError(f"cannot merge {run_dir.path}: {len(missing)} of {len(every)} units not finished "
                              f"({names}); run their tasks (--config.task=K/N), then merge")
      progress.say(f"merge: {len(missing)} of {len(every)} units not finished yet ({names}); the task that "
                   f"finishes the last one merges")
      return None
    done = [unit.directory / DONE for unit in every]
    merged = run_dir.file("report.json")
    if not requested and merged.exists() and "grid" in _read_json(merged) and \
        merged.stat().st_mtime_ns >= max(path.stat().st_mtime_ns for path in done):
      progress.say(f"merge: {merged} is already merged from these {len(every)} units")
      return None
    progress.say(f"merge: every unit finished ({len(every)}); building the study's report from their saves")
    sequential = config.copy_and_resolve_references()
    with sequential.unlocked():
      sequential.task = ""
    report = merge_all(sequential)
    report["grid"] = {"assignment": ASSIGNMENT, "units": [_read_json(path) for path in done]}
    run_dir.write_json("report.json", report)
    return report


def _read_json(path: pathlib.Path) -> dict:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError) as error:
    raise CheckpointError(f"cannot read {path}: {error}") from None
