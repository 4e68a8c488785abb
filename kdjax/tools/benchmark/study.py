"""`--study`: one run of a study's config in kdjax.study.experiment and in the original's loops, wall times side by
side."""

import contextlib
import sys
import tempfile
import time

from kdjax import errors
from kdjax import phases
from kdjax.config import defaults as config_lib
from kdjax.config import validation as config_validation
from kdjax.tools.benchmark import steps as steps_lib
from kdjax.tools.benchmark import timing
from kdjax.tools.benchmark import torch_peer


def study_config():
  """--study's default: every phase, one epoch, of Tiny ImageNet; --config.data.manual_dir names the folder that
  holds its archive (no default: a path is the user's, never a developer's)."""
  config = config_lib.default_config()
  config.phases = phases.PHASE_NAMES
  config.epochs = 1
  config.progress = False
  config.log_every_epoch = False
  config.data.name = "tiny_imagenet"
  # kd_ema's collapse diagnostics evaluate both nets at log-spaced steps inside the epoch's timed loop:
  # kdjax-only work that the original's loop does not do (--config.ema.diagnostics_per_decade=8 to include it).
  config.ema.diagnostics_per_decade = 0
  return config


def probe_threads(peer: torch_peer.Peer, batch_size: int, dataset: dict) -> tuple[int, dict]:
  """(the faster of 1 and core_count() threads for PyTorch's teacher-CE step, channels_last, on a random batch of
  the data set's shape, {"N thread(s)": images/s}), timed alternating in `peer`."""
  size, classes = dataset["image_shape"][0], dataset["num_classes"]
  batch = steps_lib.random_batch(min(batch_size, dataset["train_examples"]), size, classes)
  mean, std = steps_lib.normalization(config_lib.default_config(), batch, classes)
  runners = {count: peer.runner("teacher", batch, mean, std, classes, count, True)
             for count in sorted({1, timing.core_count()})}
  timings = timing.time_alternating(runners, 2, 3, warmup=1)
  probe = {f"{count} thread(s)": round(timing.rate(entry, len(batch["label"])), 1) for count, entry in timings.items()}
  return min(timings, key=lambda count: timings[count]["step_s"]), probe


def study(config, torch_threads: int = 0, allocators=("tuned", "plain")) -> dict:
  """One run of `config` (every phase, config.epochs epochs) in kdjax.study.experiment and in parity's seed loops
  (channels_last), on the same batches: wall times and their ratio. PyTorch runs in a child process per allocator
  (torch_peer.ALLOCATORS), one after the other, and the faster is compared: its allocator is a stated choice, never
  this process's (whose glibc kdjax's speed.host_malloc may have tuned). torch_threads 0: each child's faster of 1
  and core_count() threads on a short probe (probe_threads)."""
  from kdjax.study import experiment

  config_validation.validate(config)
  if config.teacher.checkpoint:
    raise errors.ConfigError("teacher.checkpoint must be empty for --study: both sides train their teacher")
  if config.num_seeds != 1:
    raise errors.ConfigError(f"num_seeds must be 1 for --study, got {config.num_seeds}")
  names = experiment.phases_to_run(config, None)  # kdjax's order, EMA-sweep variants included
  load_before = timing.load_average()
  with tempfile.TemporaryDirectory(prefix="kdjax-study-") as workdir:
    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # the study's own log lines; stdout is this tool's table/JSON
      kdjax_report = experiment.train_and_evaluate(config, workdir)
    kdjax_wall = time.perf_counter() - start
  kdjax_train = {phase: kdjax_report["models"][phase]["train_seconds"] for phase in names}
  runs = {}
  for allocator in allocators:
    peer = torch_peer.Peer(allocator)
    try:
      threads, probe = (torch_threads, {}) if torch_threads else probe_threads(peer, config.batch_size,
                                                                               kdjax_report["dataset"])
      runs[allocator] = dict(peer.study(config, names, threads), thread_probe=probe)
    finally:
      peer.close()
  totals = {name: sum(run["train_seconds"].values()) for name, run in runs.items()}
  allocator = min(totals, key=totals.get)
  torch_side = dict(runs[allocator], allocator=allocator, allocators=totals)
  kdjax_total, torch_total = sum(kdjax_train.values()), sum(torch_side["train_seconds"].values())
  rows = {phase: {"kdjax_train_s": kdjax_train[phase], "torch_train_s": torch_side["train_seconds"][phase],
                  "speedup": torch_side["train_seconds"][phase] / kdjax_train[phase]}
          for phase in names}
  return {"mode": "study", "data": config.data.name, "train_examples": kdjax_report["dataset"]["train_examples"],
          "batch_size": config.batch_size, "epochs": config.epochs, "phases": rows,
          "train": {"kdjax_s": kdjax_total, "torch_s": torch_total, "speedup": torch_total / kdjax_total},
          "wall": {"kdjax_s": kdjax_wall, "torch_s": torch_side["wall_seconds"],
                   "speedup": torch_side["wall_seconds"] / kdjax_wall},
          "torch": {key: value for key, value in torch_side.items() if key != "train_seconds"},
          "speed_config": config.speed.to_dict(), "load_average_before": load_before,
          "load_average_after": timing.load_average(), "environment": timing.environment()}


def show(figures: dict) -> None:
  torch_side = figures["torch"]
  probe = (f" (teacher-CE probe, images/s: {torch_side['thread_probe']})" if torch_side["thread_probe"] else "")
  print(f"study, {figures['epochs']} epoch(s) of phases {', '.join(figures['phases'])} on {figures['data']} "
        f"({figures['train_examples']} train images, batch {figures['batch_size']}); kdjax config.speed (as "
        f"kdjax.study.experiment applies it) "
        f"{figures['speed_config']}; PyTorch channels_last at {torch_side['threads']} thread(s){probe}, glibc "
        f"{torch_side['allocator']} (the faster of {', '.join(torch_side['allocators'])}: train s "
        f"{', '.join(f'{seconds:.1f}' for seconds in torch_side['allocators'].values())}); load "
        f"average {figures['load_average_before']} -> {figures['load_average_after']}")
  print(f"{'phase':<16}{'kdjax train s':>14}{'torch train s':>14}{'torch/kdjax':>12}")
  for phase, row in figures["phases"].items():
    print(f"{phase:<16}{row['kdjax_train_s']:>14.1f}{row['torch_train_s']:>14.1f}{row['speedup']:>12.2f}")
  for label, row in (("all steps", figures["train"]), ("wall", figures["wall"])):
    print(f"{label:<16}{row['kdjax_s']:>14.1f}{row['torch_s']:>14.1f}{row['speedup']:>12.2f}")
  print("train s: the phases' steps (kdjax's include each step's compile); wall: kdjax = the whole "
        "train_and_evaluate (load, compiles, evaluation, checkpoints, report), PyTorch = load, normalise, the "
        "loops, validation")
