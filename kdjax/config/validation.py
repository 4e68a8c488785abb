"""The checks that stop a bad config value before anything runs: `validate` raises ConfigError with one line
naming the first field whose value cannot run. The allowed values come from the tables of the modules that use
them (nets, data, training), so a new option is allowed where it is implemented."""

import math
import os

import ml_collections

from kdjax import data as data_lib
from kdjax.config import nets as config_nets
from kdjax.errors import ConfigError
from kdjax.nets import models
from kdjax.phases import ALL_PHASE_NAMES
from kdjax.training import host_memory
from kdjax.training import optim


def _check(condition: bool, field: str, requirement: str, value) -> None:
  if not condition:
    raise ConfigError(f"{field} {requirement}, got {value!r}")


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first field whose value cannot run."""
  # numpy's default_rng([seed, epoch]) (the data order) needs seed >= 0; 32 bits suit every RNG that takes it
  # (jax.random.PRNGKey, numpy, torch.manual_seed in parity/).
  _check(isinstance(config.seed, int) and not isinstance(config.seed, bool) and 0 <= config.seed < 2**31,
         "seed", "must be an integer in [0, 2**31 - 1]", config.seed)
  _check(isinstance(config.num_seeds, int) and config.num_seeds >= 1, "num_seeds", "must be an integer >= 1",
         config.num_seeds)
  _check(config.seed + config.num_seeds <= 2**31, "num_seeds",
         f"must keep the last seed (seed + num_seeds - 1) <= 2**31 - 1 (seed is {config.seed})", config.num_seeds)
  _check(isinstance(config.epochs, int) and config.epochs >= 1, "epochs", "must be an integer >= 1",
         config.epochs)
  for field in ("batch_size", "eval_batch_size"):
    _check(isinstance(config[field], int) and config[field] >= 1, field, "must be an integer >= 1",
           config[field])
  phases = tuple(config.phases)
  _check(len(phases) > 0, "phases", "must name at least one phase", config.phases)
  for phase in phases:
    _check(phase in ALL_PHASE_NAMES, "phases", f"must only hold {ALL_PHASE_NAMES}", phase)
  _check(len(set(phases)) == len(phases), "phases", "must not repeat a phase", config.phases)
  _check(isinstance(config.teacher.checkpoint, str), "teacher.checkpoint", "must be a path string",
         config.teacher.checkpoint)
  if any(phase.startswith("student_kd") for phase in phases) and not config.teacher.checkpoint:
    _check("teacher" in phases, "phases", "needs 'teacher' (or teacher.checkpoint) before a KD phase",
           config.phases)

  _check(config.data.name in data_lib.SOURCES, "data.name",
         f"must be one of {sorted(data_lib.SOURCES)}", config.data.name)
  _check(config.data.normalization in data_lib.NORMALIZATIONS, "data.normalization",
         f"must be one of {data_lib.NORMALIZATIONS}", config.data.normalization)
  _check(isinstance(config.data.image_size, int) and config.data.image_size >= 16, "data.image_size",
         "must be an integer >= 16 (four 2x2 pools)", config.data.image_size)
  for field in ("max_train_examples", "max_val_examples"):
    _check(isinstance(config.data[field], int) and config.data[field] >= 0, f"data.{field}",
           "must be an integer >= 0 (0 = all)", config.data[field])

  _check(config.model.activation in models.ACTIVATIONS, "model.activation",
         f"must be one of {tuple(models.ACTIVATIONS)}", config.model.activation)
  _check(config.model.init in models.INITS, "model.init", f"must be one of {models.INITS}",
         config.model.init)

  opt = config.optimizer
  _check(opt.name in optim.OPTIMIZERS, "optimizer.name", f"must be one of {optim.OPTIMIZERS}", opt.name)
  _check(opt.schedule in optim.SCHEDULES, "optimizer.schedule", f"must be one of {optim.SCHEDULES}",
         opt.schedule)
  _check(_is_number(opt.learning_rate) and opt.learning_rate > 0, "optimizer.learning_rate",
         "must be > 0", opt.learning_rate)
  _check(_is_number(opt.weight_decay) and opt.weight_decay >= 0, "optimizer.weight_decay",
         "must be >= 0", opt.weight_decay)
  for field in ("momentum", "b1", "b2"):
    _check(_is_number(opt[field]) and 0 <= opt[field] < 1, f"optimizer.{field}", "must be in [0, 1)",
           opt[field])
  _check(_is_number(opt.eps) and opt.eps > 0, "optimizer.eps", "must be > 0", opt.eps)

  # Bounds where the float32 KD loss still means distillation: above 1e3 the plain float32 form drifts from its
  # float64 value (0.2 % at T=1e3, 7 % at 1e4: softmax(z/T) is uniform to float32 rounding; distill_kl takes an
  # exact form where the KL is that small, training/losses.py, checked to T=1e3 only); below 1e-2 softmax(t/T) is
  # the teacher's one-hot argmax and the T^2 factor shrinks the gradients 100-fold or more.
  _check(_is_number(config.kd.temperature) and config.kd.temperature > 0, "kd.temperature",
         "must be > 0", config.kd.temperature)
  _check(1e-2 <= config.kd.temperature <= 1e3, "kd.temperature",
         "must be in [0.01, 1000] (float32 KD loses its meaning outside)", config.kd.temperature)
  for field in ("kd_weight", "ce_weight"):
    _check(_is_number(config.kd[field]) and config.kd[field] >= 0, f"kd.{field}", "must be >= 0",
           config.kd[field])
  _check(config.kd.kd_weight + config.kd.ce_weight > 0, "kd.kd_weight",
         "and kd.ce_weight must not both be 0", config.kd.kd_weight)
  # The mean teacher starts as the student's own initial weights: with KD alone the student distils its own
  # average and no label ever enters (configs/mean_teacher.py).
  if "student_mean_teacher" in phases:
    _check(config.kd.ce_weight > 0, "kd.ce_weight",
           "must be > 0 with the phase student_mean_teacher (its teacher is an EMA of the student itself: "
           "without labels nothing is learned)", config.kd.ce_weight)
  for field in ("decay", "student_decay"):
    _check(_is_number(config.ema[field]) and 0 <= config.ema[field] <= 1, f"ema.{field}",
           "must be in [0, 1]", config.ema[field])
  for decay in config.ema.sweep:
    _check(_is_number(decay) and 0 <= decay <= 1, "ema.sweep", "must hold decays in [0, 1]", decay)
  _check(len(set(config.ema.sweep)) == len(config.ema.sweep), "ema.sweep", "must not repeat a decay",
         config.ema.sweep)
  for warmup in config.ema.sweep_warmup:
    _check(isinstance(warmup, bool), "ema.sweep_warmup", "must hold True/False", warmup)
  _check(len(config.ema.sweep_warmup) >= 1 and len(set(config.ema.sweep_warmup)) == len(config.ema.sweep_warmup),
         "ema.sweep_warmup", "must hold False and/or True once each", config.ema.sweep_warmup)
  _check(isinstance(config.ema.diagnostics_per_decade, int) and not isinstance(config.ema.diagnostics_per_decade, bool)
         and 0 <= config.ema.diagnostics_per_decade <= 100, "ema.diagnostics_per_decade",
         "must be an integer in [0, 100] (0 = epoch ends only)", config.ema.diagnostics_per_decade)
  if config.ema.sweep and not config.teacher.checkpoint:
    _check("teacher" in phases, "ema.sweep", "needs the 'teacher' phase (or teacher.checkpoint) to distil from",
           config.phases)

  for field in ("every_epochs", "keep"):
    _check(isinstance(config.checkpoint[field], int) and config.checkpoint[field] >= 1,
           f"checkpoint.{field}", "must be an integer >= 1", config.checkpoint[field])
  _check(isinstance(config.checkpoint.allow_config_change, bool), "checkpoint.allow_config_change",
         "must be True or False", config.checkpoint.allow_config_change)

  _check(config.speed.pool in models.POOLS, "speed.pool", f"must be one of {tuple(models.POOLS)}",
         config.speed.pool)
  for net in ("teacher", "student"):
    _check(config.speed[f"{net}_conv"] in models.CONVS, f"speed.{net}_conv", f"must be one of {models.CONVS}",
           config.speed[f"{net}_conv"])
  _check(isinstance(config.mesh.num_devices, int) and not isinstance(config.mesh.num_devices, bool)
         and config.mesh.num_devices >= 0, "mesh.num_devices", "must be an integer >= 0 (0 = all devices)",
         config.mesh.num_devices)
  dist = config.distributed
  _check(isinstance(dist.coordinator_address, str), "distributed.coordinator_address",
         "must be '' (one process), 'auto' or 'host:port'", dist.coordinator_address)
  _check(dist.coordinator_address in ("", "auto") or dist.coordinator_address.rpartition(":")[2].isdigit(),
         "distributed.coordinator_address", "must be '' (one process), 'auto' or 'host:port'",
         dist.coordinator_address)
  _check(isinstance(dist.num_processes, int) and dist.num_processes >= 1, "distributed.num_processes",
         "must be an integer >= 1", dist.num_processes)
  _check(isinstance(dist.process_id, int) and 0 <= dist.process_id < dist.num_processes,
         "distributed.process_id", f"must be an integer in [0, {dist.num_processes - 1}]", dist.process_id)
  # A study spread over tasks (kdjax/study/grid.py): "", "auto", "merge" or "K/N" with 0 <= K < N.
  task = config.get("task", "")
  number, _, count = task.partition("/") if isinstance(task, str) else ("", "", "")
  _check(isinstance(task, str) and (task in ("", "auto", "merge") or (number.isdigit() and count.isdigit()
                                                                      and int(number) < int(count))),
         "task", "must be '' (every unit here), 'K/N' (task K of N, 0 <= K < N), 'auto' or 'merge'", task)
  _check(not task or not dist.coordinator_address, "task",
         "runs a share of the study's units in one process: it needs distributed.coordinator_address ''", task)
  cores = config.get("task_cores", 0)
  _check(isinstance(cores, int) and not isinstance(cores, bool) and cores >= 0, "task_cores",
         "must be an integer >= 0 (0 = as launched)", cores)
  speed_conv_error = config_nets.validation_error(config)
  if speed_conv_error:
    raise ConfigError(speed_conv_error)
  _check(config.speed.host_malloc in host_memory.SETTINGS, "speed.host_malloc",
         f"must be {' or '.join(map(repr, host_memory.SETTINGS))}", config.speed.host_malloc)
  for field in ("cached_teacher_logits", "xla_cpu_options"):
    _check(isinstance(config.speed[field], bool), f"speed.{field}", "must be True or False", config.speed[field])
  check_memory(config)


# The memory check: every size field (data.image_size, batch_size, eval_batch_size, data.max_train_examples,
# data.max_val_examples; the nets' widths are fixed) against the memory it implies, before anything runs, so that
# data.image_size=100000 is one line rather than the kernel's OOM killer (which may take another process).
#
# Each set's split sizes and side where they are fixed (None: data.image_size; an image_folder's count is not
# known before its folders are read, so only its batches are counted unless data.max_*_examples bounds it).
DATA_SIZES = {"digits": (1437, 360, None), "tiny_imagenet": (100_000, 10_000, 64), "cifar10": (50_000, 10_000, 32),
              "cifar100": (50_000, 10_000, 32), "image_folder": (None, None, None)}
IMAGE_COPIES = 1          # uint8 images, held once: the device array is the loaded one (data.held_once)
TRAIN_FACTOR = 2          # a training step: the forward's saved activations, then as much again for their gradients
RUNTIME_BYTES = 1 << 28   # Python, JAX, XLA's compiled programs (~0.27 GB on Tiny ImageNet, trimmed)
# What a size field is compared with to name the one to lower: its default (memory grows with image_size squared).
USUAL = {"data.image_size": 64, "batch_size": 64, "eval_batch_size": 100, "data.max_train_examples": 100_000}
# The real study on Tiny ImageNet (100,000 + 10,000 images of 64x64x3, batch 64, eval batch 100) is estimated at
# 1.7 GB (its measured peak RSS: docs/tiny-imagenet-full.md). The estimate is meant to be low: it refuses what
# cannot fit, and leaves what may fit to run.


def activation_bytes_per_pixel() -> tuple[float, float]:
  """(all, peak): float32 bytes that one input pixel costs the larger net (the teacher). all: its input and every
  conv's output, each max-pool quartering the pixels, as a training step keeps them for the backward pass:
  12 + 12·4·(3 + 3/4 + 3/16 + 3/64) ≈ 203 for 12 convs of 12 channels pooled after conv 3, 6, 9, 12. peak: a
  forward pass alone, which holds its input and one conv's input and output at a time: 12 + 2·12·4 = 108."""
  net = models.teacher_net(num_classes=1)
  total, scale, widest = 3 * 4.0, 1.0, 0.0
  for index, features in enumerate(net.conv_features, start=1):
    total += features * 4 * scale
    widest = max(widest, features * 4 * scale)
    if index in net.pool_after:
      scale /= 4
  return total, 3 * 4.0 + 2 * widest


def machine_memory() -> tuple[int, str]:
  """(bytes, what they are): the machine's physical memory, or its cgroup's limit where that is lower (a container)."""
  limit, source = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "physical memory"
  for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
    try:
      with open(path, encoding="ascii") as file:
        text = file.read().strip()
    except (OSError, UnicodeDecodeError):
      continue
    if text.isdigit() and int(text) < limit:
      limit, source = int(text), f"the limit in {path}"
  return limit, source


def _bytes(count: float) -> str:
  """1234567 -> "1.2 MB" (powers of 1000), up to "...e+03 PB"."""
  for unit in ("B", "KB", "MB", "GB", "TB"):
    if count < 1000:
      return f"{count:.1f} {unit}"
    count /= 1000
  return f"{count:.3g} PB"


def memory_estimate(config) -> tuple[int, list[tuple[str, int, tuple[str, ...]]]]:
  """(bytes, parts): a low estimate of the memory a run of `config` needs, and its parts (what, bytes, the size
  fields that set it). With all, peak = activation_bytes_per_pixel() and side the images' side:

    images      (train + val) · side² · 3 bytes · IMAGE_COPIES
    training    min(batch_size, train) · side² · all · TRAIN_FACTOR
    forward     max(eval_batch_size, batch_size) · side² · peak   (evaluation, the cached teacher logits: their
                last batch is padded to the full size, so neither batch is capped by the split)
    need        RUNTIME_BYTES + images + max(training, forward)   (a step's buffers are freed before the next
                program runs)"""
  num_train, num_val, fixed_side = DATA_SIZES.get(config.data.name, (None, None, None))
  side = fixed_side or config.data.image_size
  counts = []
  for count, limit in ((num_train, config.data.max_train_examples), (num_val, config.data.max_val_examples)):
    counts.append(limit if count is None else (min(count, limit) if limit else count))
  num_train, num_val = counts
  pixels = side * side
  every_layer, peak = activation_bytes_per_pixel()
  sized = ("data.image_size",) if fixed_side is None else ()
  train_rows = min(config.batch_size, num_train) if num_train else config.batch_size
  forward_rows = max(config.eval_batch_size, config.batch_size)
  forward_field = "eval_batch_size" if config.eval_batch_size >= config.batch_size else "batch_size"
  parts = [
      (f"{num_train + num_val:,} images of {side}x{side}x3 held {IMAGE_COPIES}x",
       (num_train + num_val) * pixels * 3 * IMAGE_COPIES, sized + ("data.max_train_examples",)),
      (f"a training batch of {train_rows}", int(train_rows * pixels * every_layer * TRAIN_FACTOR),
       ("batch_size",) + sized),
      (f"a forward batch of {forward_rows}", int(forward_rows * pixels * peak), (forward_field,) + sized),
  ]
  return RUNTIME_BYTES + parts[0][1] + max(parts[1][1], parts[2][1]), parts


def _field_value(config, field: str):
  return config.data[field.removeprefix("data.")] if field.startswith("data.") else config[field]


def check_memory(config) -> None:
  """ConfigError (exit 2) when memory_estimate exceeds machine_memory, naming the size field to lower: of the
  largest part's fields, the one furthest above its usual value (USUAL; image_size counted squared)."""
  need, parts = memory_estimate(config)
  limit, source = machine_memory()
  if need <= limit:
    return
  fields = max(parts, key=lambda part: part[1])[2]
  excess = lambda field: ((_field_value(config, field) / USUAL[field]) ** (2 if field == "data.image_size" else 1)
                          if field in USUAL else 0.0)
  field = max(fields, key=excess)
  raise ConfigError(
      f"{field}={_field_value(config, field)} needs an estimated {_bytes(need)} of memory ("
      + "; ".join(f"{what}: {_bytes(count)}" for what, count, _ in parts)
      + f"), more than this machine's {_bytes(limit)} ({source}); lower {field}")
