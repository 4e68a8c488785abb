"""The study's configuration: every field with its default, and the checks that stop a bad value.

The configs in kdjax/configs/ start from `default_config()` and change a few fields; `validate` raises
ConfigError with one line naming the field.
"""

import json
import math

import ml_collections

from kdjax.phases import PHASE_NAMES


def default_config() -> ml_collections.ConfigDict:
  """Every field of a study, with the seed's values where it has them (see configs/default.py)."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.num_seeds = 1                  # > 1: the study once per seed seed, seed+1, ... (seeds.py)
  config.epochs = 10                    # per phase (the seed)
  config.batch_size = 64
  config.eval_batch_size = 500
  config.phases = ("teacher", "student_ce", "student_kd")
  config.progress = True                # a progress bar per epoch (on a terminal; else a line every ~30 s)
  config.log_every_epoch = True         # the one-line summary per epoch
  config.log_every_steps = 10           # TensorBoard: the train loss of every N-th step (0 = none)

  config.data = ml_collections.ConfigDict()
  config.data.name = "digits"           # the embedded set; "tiny_imagenet" for the real study (docs/data.md)
  config.data.manual_dir = ""           # where a manually downloaded archive lies; image_folder: its root
  config.data.data_dir = ""             # where prepared data sets are cached ("" = the library's default)
  config.data.image_size = 64           # the seed's input size (digits, image_folder are resized to it;
                                        # tiny_imagenet 64 and cifar 32 keep their own)
  config.data.normalization = "standardize"   # (x/255 - mean)/std per channel; or "unit": x/255
  config.data.drop_remainder = False    # keep the last short batch, as PyTorch's DataLoader does
  config.data.max_train_examples = 0    # 0 = all; else a fixed subset (quick runs and tests)
  config.data.max_val_examples = 0

  config.model = ml_collections.ConfigDict()
  config.model.activation = "none"      # the seed; or "relu"
  config.model.init = "pytorch"         # the seed: U(+-1/sqrt(fan_in)); or "lecun_normal"

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "adam"        # "sgd" | "adam" | "adamw"
  config.optimizer.learning_rate = 1e-3
  config.optimizer.schedule = "constant"  # or "cosine"
  config.optimizer.momentum = 0.9       # sgd
  config.optimizer.nesterov = False     # sgd
  config.optimizer.weight_decay = 0.0   # sgd/adam: L2 added to the gradient; adamw: decoupled
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.999
  config.optimizer.eps = 1e-8

  config.kd = ml_collections.ConfigDict()
  config.kd.temperature = 4.0           # T in KL(softmax(t/T) || softmax(s/T)) * T^2
  config.kd.kd_weight = 1.0             # the seed: KD loss alone
  config.kd.ce_weight = 0.0

  config.ema = ml_collections.ConfigDict()
  config.ema.decay = 0.999              # the seed's alpha: teacher = alpha*teacher + (1-alpha)*student
  config.ema.student_decay = 0.0        # > 0: also keep an EMA of the student's weights, reported apart
  config.ema.warmup = False             # mean-teacher warm-up: alpha_t = min(1 - 1/(t+1), alpha)
  # The EMA sweep: one more student_kd_ema phase per (alpha, warm-up) pair, rows "student_kd_ema@<alpha>[+warmup]"
  # and "teacher_ema@<alpha>[+warmup]", all distilled from the same trained teacher (configs/ema_sweep.py).
  config.ema.sweep = ()                 # alphas, e.g. (0.9, 0.99, 0.999, 0.9999); () = none
  config.ema.sweep_warmup = (False,)    # warm-up settings swept with each alpha, e.g. (False, True)
  # Why the seed's EMA collapses (collapse.py): distances, soft-target entropy, KD loss and top-1 of every
  # EMA-updated teacher at the end of each epoch and every N steps of the first epoch (0: per epoch only).
  config.ema.diagnostics_every = 25

  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.every_epochs = 1    # save each phase's state every N epochs (and at its end)
  config.checkpoint.keep = 3            # keep the last N saves per model
  # An existing workdir is resumed only with the config it was started with (fields in RESULT_NEUTRAL aside);
  # True resumes it anyway with this config, reusing what is saved (see docs/checkpoints.md).
  config.checkpoint.allow_config_change = False

  config.teacher = ml_collections.ConfigDict()
  config.teacher.checkpoint = ""        # a workdir or teacher checkpoint folder: distill from it, no training

  # Where it runs (kdjax/mesh.py): data parallel over D devices, batch_size the global batch (divisible by D).
  config.mesh = ml_collections.ConfigDict()
  config.mesh.num_devices = 0           # 0 = every device jax.devices() lists (all hosts'); 1 = one device
  # Several hosts: jax.distributed.initialize(coordinator_address, num_processes, process_id) before anything
  # else; "auto" reads the variables of a managed cluster (SLURM, Open MPI, Cloud TPU, ...); "" = one process.
  config.distributed = ml_collections.ConfigDict()
  config.distributed.coordinator_address = ""   # "host:port" of process 0, or "auto"
  config.distributed.num_processes = 1
  config.distributed.process_id = 0

  # How fast, not what: each switch turns one speed-up off so that a user can compare (kdjax.benchmark).
  config.speed = ml_collections.ConfigDict()
  config.speed.pool = "fast"            # kdjax.pooling's 2x2 max-pool; "reduce_window" = nn.max_pool (same bits)
  config.speed.cached_teacher_logits = True   # student_kd: the frozen teacher's logits once per split (same bits)
  config.speed.xla_cpu_options = True   # kdjax.xla.CPU_OPTIONS per compile on CPU (weight grads move ~1 ulp)
  config.speed.teacher_conv = "blocks"  # "blocks": kdjax.block_conv, on 2x2 pixel blocks; "xla": nn.Conv (sums move
                                        # ~1 ulp); XLA:CPU: teacher CE step 1.13x faster on blocks
  config.speed.student_conv = "xla"     # as speed.teacher_conv; "xla" as the student's step is 0.89x on blocks
  # Who computes the convs (kdjax/onednn_conv.py): "auto" = oneDNN for float32 on an x86_64 CPU with the extension
  # built and one data-parallel device, else XLA as speed.{net}_conv; "xla" = XLA as speed.{net}_conv (what kdjax
  # computed before this field); "blocks" = XLA on blocks for both nets; "onednn" = oneDNN (sums move ~1 ulp)
  config.speed.conv = "auto"

  return config


# Fields that do not change what a run computes: they may differ when an existing workdir is resumed.
RESULT_NEUTRAL = ("progress", "log_every_epoch", "log_every_steps", "checkpoint.keep", "checkpoint.every_epochs",
                  "checkpoint.allow_config_change", "data.data_dir", "data.manual_dir",
                  # bit-identical either way (tests/test_speed.py)
                  "speed.pool", "speed.cached_teacher_logits",
                  # where it runs; D > 1 equals D = 1 up to float32 reduction order (tests/test_mesh.py)
                  "mesh.num_devices", "distributed.coordinator_address", "distributed.num_processes",
                  "distributed.process_id")


# What a field meant in a run written before the field existed, where that is not today's default.
ABSENT_MEANS = {"speed.teacher_conv": "xla", "speed.student_conv": "xla", "speed.conv": "xla"}


def flatten(tree: dict, prefix: str = "") -> dict:
  """A nested config dict as {"a.b.c": value}; lists and tuples compare as lists."""
  flat = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      flat.update(flatten(value, name + "."))
    else:
      flat[name] = list(value) if isinstance(value, tuple) else value
  return flat


def differences(saved: dict, current: dict, ignore=RESULT_NEUTRAL) -> list[str]:
  """`field (saved -> current)` for each field that differs between two config dicts (as in config.json).

  A field that `saved` lacks but today's default_config has was added to kdjax after that run was started:
  it compares at the value the older run computed with (its default, or ABSENT_MEANS where the default has
  moved since), so older workdirs still resume, and resume as they were computed.
  """
  defaults = {**flatten(json.loads(default_config().to_json_best_effort())), **ABSENT_MEANS}
  old, new = flatten(saved), flatten(current)
  old = {**{name: defaults[name] for name in new if name not in old and name in defaults}, **old}
  missing = object()
  changes = []
  for name in sorted(set(old) | set(new)):
    if name in ignore or old.get(name, missing) == new.get(name, missing):
      continue
    show = lambda value: "(absent)" if value is missing else json.dumps(value)
    changes.append(f"{name} ({show(old.get(name, missing))} -> {show(new.get(name, missing))})")
  return changes


class ConfigError(ValueError):
  """A config value that cannot run; the message is one line that names the field."""


def _check(condition: bool, field: str, requirement: str, value) -> None:
  if not condition:
    raise ConfigError(f"{field} {requirement}, got {value!r}")


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first field whose value cannot run."""
  from kdjax import data as data_lib  # the data registry; imported here to keep config import-light
  from kdjax import models, optim

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
    _check(phase in PHASE_NAMES, "phases", f"must only hold {PHASE_NAMES}", phase)
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

  # Bounds where the float32 KD loss still means distillation: above 1e3 it drifts from its float64 value
  # (0.2 % at T=1e3, 7 % at 1e4: softmax(z/T) is uniform to float32 rounding); below 1e-2 softmax(t/T) is the
  # teacher's one-hot argmax and the T^2 factor shrinks the gradients 100-fold or more.
  _check(_is_number(config.kd.temperature) and config.kd.temperature > 0, "kd.temperature",
         "must be > 0", config.kd.temperature)
  _check(1e-2 <= config.kd.temperature <= 1e3, "kd.temperature",
         "must be in [0.01, 1000] (float32 KD loses its meaning outside)", config.kd.temperature)
  for field in ("kd_weight", "ce_weight"):
    _check(_is_number(config.kd[field]) and config.kd[field] >= 0, f"kd.{field}", "must be >= 0",
           config.kd[field])
  _check(config.kd.kd_weight + config.kd.ce_weight > 0, "kd.kd_weight",
         "and kd.ce_weight must not both be 0", config.kd.kd_weight)
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
  _check(isinstance(config.ema.diagnostics_every, int) and config.ema.diagnostics_every >= 0,
         "ema.diagnostics_every", "must be an integer >= 0 (0 = per epoch only)", config.ema.diagnostics_every)
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
  from kdjax import onednn_conv
  speed_conv_error = onednn_conv.validation_error(config)
  if speed_conv_error:
    raise ConfigError(speed_conv_error)
  for field in ("cached_teacher_logits", "xla_cpu_options"):
    _check(isinstance(config.speed[field], bool), f"speed.{field}", "must be True or False", config.speed[field])
