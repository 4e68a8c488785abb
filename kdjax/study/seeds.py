"""Several seeds in one run: the study once per seed config.seed, config.seed + 1, ...

    python -m kdjax.main --config ema.py --workdir runs/ema5 --config.num_seeds=5

With num_seeds = N > 1, seed s runs as an ordinary one-seed study in WORKDIR/seed_<s>/ (its own initial weights
and data order; its teacher distils its students; its own checkpoints, so an interrupted run resumes seed by seed
and a seed's numbers equal a one-seed run with config.seed = s). kdjax.report.over_seeds summarises them.

The seeds run one after another. On this project's 2-core CPU a vmap of three students' params into one step
measured 0.56x the throughput of three separate steps (XLA:CPU lowers it to grouped convolutions), and
sequential seeds keep each seed's numbers bit-identical to a one-seed run. To run them side by side, in
processes or on hosts of their own, spread the study over tasks (--config.task=K/N, kdjax/study/grid.py): each
task runs some (seed, sweep point) units into the same seed_<s>/ folders, and the merge is `run` over the saves.
"""

import time
from typing import Callable

from kdjax import progress
from kdjax.config import defaults as config_lib
from kdjax.report import build as report_lib
from kdjax.report import over_seeds
from kdjax.store import resume
from kdjax.store.rundir import RunDir
from kdjax.store.rundir import seed_dir
from kdjax.study import builder


def seed_values(config) -> list[int]:
  return [config.seed + offset for offset in range(config.num_seeds)]


def seed_config(config, seed: int):
  """The one-seed config of `seed`. A teacher.checkpoint that is itself a several-seed workdir gives each seed
  the teacher of the same seed."""
  one = config.copy_and_resolve_references()
  with one.unlocked():
    one.seed = seed
    one.num_seeds = 1
    if config.teacher.checkpoint and seed_dir(config.teacher.checkpoint, seed).is_dir():
      one.teacher.checkpoint = str(seed_dir(config.teacher.checkpoint, seed))
  return one


def run(config, run_dir: RunDir, run_one: Callable[[object, object], dict]) -> dict:
  """Runs `run_one(seed_config, seed_workdir)` (the one-seed study) once per seed in seed_<s>/ and writes the
  summary into `run_dir`; returns the summary report."""
  start = time.perf_counter()
  config_dict = config_lib.as_json(config)
  resume.check_config(run_dir, config_dict, config.checkpoint.allow_config_change)
  run_dir.write_json("config.json", config_dict)
  seeds = seed_values(config)
  reports = []
  for index, seed in enumerate(seeds):
    progress.say(f"== seed {seed} ({index + 1} of {len(seeds)}) -> {seed_dir(run_dir.path, seed)}")
    reports.append(run_one(seed_config(config, seed), seed_dir(run_dir.path, seed)))
  report = over_seeds.build(config.to_dict(), reports, seeds, time.perf_counter() - start,
                           builder.ema_sweep(config))
  if run_dir.writer:   # a multi-host run: process 0 writes the summary
    report_lib.write(run_dir, report, over_seeds.markdown(report), lambda path: over_seeds.plot(report, path))
  return report
