"""The study's configuration: every field with its default, and what an older run's config.json means today.

The shipped configs (kdjax/config/shipped/) start from `default_config()` and change a few fields;
`kdjax.config.validation.validate` checks every value. `differences` compares two configs as config.json holds
them, reading a field that an older run lacks at the value that run computed with (ABSENT_MEANS).
"""

import json

import ml_collections



def default_config() -> ml_collections.ConfigDict:
  """Every field of a study, with the original's values where it has them (see configs/default.py)."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.num_seeds = 1                  # > 1: the study once per seed seed, seed+1, ... (seeds.py)
  config.epochs = 10                    # per phase (the seed)
  config.batch_size = 64
  # Evaluation batch. 100 holds ~0.2 GB of XLA buffers on Tiny ImageNet; 500 held 0.2-1.0 GB and grew the
  # tuned heap epoch by epoch (docs/tiny-imagenet-full.md). oneDNN's logits: the same bits at 64-500 on Zen 3.
  config.eval_batch_size = 100
  config.phases = ("teacher", "student_ce", "student_kd")
  config.progress = True                # a progress bar per epoch (on a terminal; else a line every ~30 s)
  config.log_every_epoch = True         # the one-line summary per epoch
  config.log_every_steps = 10           # TensorBoard: the train loss of every N-th step (0 = none)

  config.data = ml_collections.ConfigDict()
  config.data.name = "digits"           # the embedded set; "tiny_imagenet" for the real study (docs/data.md)
  config.data.manual_dir = ""           # where a manually downloaded archive lies; image_folder: its root
  config.data.data_dir = ""             # where prepared data sets are cached ("" = the library's default)
  config.data.image_size = 64           # the original's input size (digits, image_folder are resized to it;
                                        # tiny_imagenet 64 and cifar 32 keep their own)
  config.data.normalization = "standardize"   # (x/255 - mean)/std per channel; or "unit": x/255
  config.data.drop_remainder = False    # keep the last short batch, as PyTorch's DataLoader does
  config.data.max_train_examples = 0    # 0 = all; else a fixed subset (quick runs and tests)
  config.data.max_val_examples = 0

  config.model = ml_collections.ConfigDict()
  config.model.activation = "none"      # the seed; or "relu"
  config.model.init = "pytorch"         # the seed: U(+-1/sqrt(fan_in)); or "lecun_normal", "he_normal"

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
  config.ema.decay = 0.999              # the original's alpha: teacher = alpha*teacher + (1-alpha)*student
  config.ema.student_decay = 0.0        # > 0: also keep an EMA of the student's weights, reported apart
  config.ema.warmup = False             # mean-teacher warm-up: alpha_t = min(1 - 1/(t+1), alpha)
  # The EMA sweep: one more student_kd_ema phase per (alpha, warm-up) pair, rows "student_kd_ema@<alpha>[+warmup]"
  # and "teacher_ema@<alpha>[+warmup]", all distilled from the same trained teacher (configs/ema_sweep.py).
  config.ema.sweep = ()                 # alphas, e.g. (0.9, 0.99, 0.999, 0.9999); () = none
  config.ema.sweep_warmup = (False,)    # warm-up settings swept with each alpha, e.g. (False, True)
  # Why the original's EMA collapses (report/collapse.py): distances, soft-target entropy, KD loss and top-1 of
  # every EMA-updated teacher at the start, at N log-spaced steps per factor of 10 through the whole phase (on a
  # validation probe sized to cost <= 5 % of the phase's training) and at each epoch's end (0: epoch ends only).
  config.ema.diagnostics_per_decade = 8

  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.every_epochs = 1    # save each phase's state every N epochs (and at its end)
  config.checkpoint.keep = 3            # keep the last N saves per model
  # An existing workdir is resumed only with the config it was started with (fields in RESULT_NEUTRAL aside);
  # True resumes it anyway with this config, reusing what is saved (see docs/checkpoints.md).
  config.checkpoint.allow_config_change = False

  config.teacher = ml_collections.ConfigDict()
  config.teacher.checkpoint = ""        # a workdir or teacher checkpoint folder: distill from it, no training

  # Where it runs (kdjax/training/mesh.py): data parallel over D devices, batch_size the global batch (divisible by D).
  config.mesh = ml_collections.ConfigDict()
  config.mesh.num_devices = 0           # 0 = every device jax.devices() lists (all hosts'); 1 = one device
  # Several hosts: jax.distributed.initialize(coordinator_address, num_processes, process_id) before anything
  # else; "auto" reads the variables of a managed cluster (SLURM, Open MPI, Cloud TPU, ...); "" = one process.
  config.distributed = ml_collections.ConfigDict()
  config.distributed.coordinator_address = ""   # "host:port" of process 0, or "auto"
  config.distributed.num_processes = 1
  config.distributed.process_id = 0
  # A study spread over tasks (kdjax/study/grid.py, docs/scaling.md): its units are the (seed, sweep point)
  # pairs; unit i (every seed's "main", then each ema.sweep variant's, seeds in order) runs in task i mod N.
  config.task = ""                      # "" = every unit in this process (one study, as before); "K/N" = task K
                                        # (0-based) of N; "auto" = K, N from SLURM_ARRAY_TASK_ID/_MIN/_STEP/_COUNT
                                        # or JOB_COMPLETION_INDEX with KDJAX_TASK_COUNT (Kubernetes); "merge" =
                                        # report.json/md from the finished units (exit 1 naming any missing)
  config.task_cores = 0                 # > 0: pin the task to that many of the cores it may use (task K takes
                                        # cores K*C, K*C+1, ... mod their count) before JAX starts: XLA's pool and
                                        # oneDNN's team; 0 = SLURM_CPUS_PER_TASK if set, else as launched (taskset)

  # How fast, not what: each switch turns one speed-up off so that a user can compare (kdjax.tools.benchmark).
  config.speed = ml_collections.ConfigDict()
  config.speed.pool = "fast"            # kdjax.nets.pooling's 2x2 max-pool (after a oneDNN conv kdjax.nets.onednn_pool's);
                                        # "reduce_window" = nn.max_pool; all the same bits
  config.speed.cached_teacher_logits = True   # student_kd: the frozen teacher's logits once per split (same bits)
  config.speed.xla_cpu_options = True   # kdjax.training.xla.CPU_OPTIONS per compile on CPU (weight grads move ~1 ulp)
  config.speed.teacher_conv = "blocks"  # "blocks": kdjax.nets.block_conv, on 2x2 pixel blocks; "xla": nn.Conv (sums move
                                        # ~1 ulp); XLA:CPU: teacher CE step 1.13x faster on blocks
  config.speed.student_conv = "xla"     # as speed.teacher_conv; "xla" as the student's step is 0.89x on blocks
  # Who computes the convs (kdjax/nets/onednn_conv.py): "auto" = oneDNN for float32 on an x86_64 CPU with the
  # extension built and one data-parallel device, else XLA as speed.{net}_conv; "xla" = XLA as speed.{net}_conv
  # (what kdjax computed before this field); "blocks" = XLA on blocks for both nets; "onednn" = oneDNN (sums move
  # ~1 ulp)
  config.speed.conv = "auto"
  # The host allocator under XLA:CPU's step buffers (kdjax/training/host_memory.py): "tuned" = glibc keeps freed
  # memory for the next step instead of an mmap per step (student steps 1.5-1.9x faster here); "system" = as is
  config.speed.host_malloc = "tuned"

  return config


# Fields that do not change what a run computes: they may differ when an existing workdir is resumed.
RESULT_NEUTRAL = ("progress", "log_every_epoch", "log_every_steps", "checkpoint.keep", "checkpoint.every_epochs",
                  "checkpoint.allow_config_change", "data.data_dir", "data.manual_dir",
                  # bit-identical either way (tests/training/test_xla.py)
                  "speed.pool", "speed.cached_teacher_logits", "speed.host_malloc",
                  # where it runs; D > 1 equals D = 1 up to float32 reduction order (tests/training/test_mesh.py)
                  "mesh.num_devices", "distributed.coordinator_address", "distributed.num_processes",
                  "distributed.process_id",
                  # how a study is spread over tasks and cores (kdjax/study/grid.py): units compute the same bits
                  "task", "task_cores",
                  # a field of older runs' config.json, since replaced by ema.diagnostics_per_decade: it set when
                  # the collapse diagnostics measured, never what trains (tests/report/test_collapse.py)
                  "ema.diagnostics_every")


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


def as_json(config) -> dict:
  """The config as config.json holds it (and every checkpoint's meta under "config")."""
  return json.loads(config.to_json_best_effort())


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
