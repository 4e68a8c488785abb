"""How fast kdjax trains, beside the original's PyTorch, and where the time goes.

    python -m kdjax.tools.benchmark [--json]                  kdjax's steps and evaluation, random uint8 batches
    python -m kdjax.tools.benchmark --compare-torch [--json]  kdjax against PyTorch NCHW and channels_last, and against
                                                        kdjax's path before the speed work, alternated in one run
    python -m kdjax.tools.benchmark --profile [--json]        the teacher-CE step, op by op (--profile_kind=student_ce:
                                                        the student's)
    python -m kdjax.tools.benchmark --study [--config.x=..]   one epoch of every phase of a study: kdjax.study.experiment
                                                        against parity/reference.py's seed loops (channels_last, in
                                                        child processes: glibc plain and tuned, the faster)

Shapes: --batch_size (128), --image_size (64), --num_classes (200); Adam (config.optimizer's defaults).

kdjax's steps are built as the training path builds them (`kdjax_step`, from default_config's speed.*): the
fast pool (speed.pool), the per-compile XLA:CPU options (speed.xla_cpu_options), cached teacher logits for
student_kd (speed.cached_teacher_logits; the cache's one-off teacher forward is timed apart), and the teacher's
convs on 2x2 pixel blocks (speed.teacher_conv). student_kd_ema keeps the original's inline teacher and EMA order.
"before" is the same step with all four off: nn.max_pool, XLA's defaults, the inline teacher, nn.Conv.
PyTorch is parity/reference.py's nets and loops (the seed as written: its DistillKL, its EMA,
loss.item() every step), on pre-normalised float32 inputs, eager, NCHW or channels_last.

Threads. XLA:CPU runs one intra-op thread per core here (len(os.sched_getaffinity(0)); it has no per-process
setting short of XLA_FLAGS), and PyTorch is timed at that count and at 1 thread. On a shared machine PyTorch's
OpenMP pool can collapse under oversubscription (a spinning pool whose threads wait for cores: teacher CE,
channels_last, 127 img/s with 2 threads against 420 with 1 at load average ~3), so every ratio is taken against the FASTER of PyTorch's thread counts: never
against a collapsed baseline. The table says which count that was.

Timing. After a warm-up (compile and 2 steps), `repeats` rounds each time `steps` consecutive steps of every
variant in turn (alternating, so that a change in machine load hits all of them alike); a figure is the median
over rounds. FLOPs count 2 per multiply-add of the convs and the dense layer the step actually executes (forward,
input gradients except the first conv's, weight gradients; a KD step's inline teacher forward); the peak is the
best fp32 GFLOP/s of a 2048x2048 matmul measured in the same run (JAX and PyTorch), or --peak_gflops.
"""

import contextlib
import copy
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Callable

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

from kdjax.cli import exits as cli
from kdjax.cli import help as help_lib
from kdjax.config import nets as config_nets
from kdjax.nets import block_conv
from kdjax.config import validation as config_validation
from kdjax import errors
from kdjax.config import defaults as config_lib
from kdjax import data as data_lib
from kdjax.training import evaluate
from kdjax.training import host_memory
from kdjax.training import losses
from kdjax.training import mesh as mesh_lib
from kdjax.nets import models
from kdjax.nets import onednn_pool
from kdjax.training import optim
from kdjax import phases
from kdjax.nets import pooling
from kdjax.report import build as report
from kdjax.report import environment as run_environment
from kdjax.training import train
from kdjax.training import xla
from kdjax.study.builder import Setup

# The steps timed, named by the phase that runs them (kdjax/phases.py; the teacher's step is "teacher_ce").
KINDS = {("teacher_ce" if name == "teacher" else name): name for name in phases.PHASE_NAMES}
# --profile's steps: a CE step, by the net it trains.
PROFILE_KINDS = {"teacher_ce": "teacher", "student_ce": "student"}


def net_and_kind(kind: str) -> tuple[str, str]:
  """(net, step kind) of a benchmark kind, from the phase table."""
  spec = phases.phase(KINDS[kind])
  return spec.net, spec.step_kind
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)  # any fixed constants: speed does not depend on them


PROG = "kdjax.tools.benchmark"

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


_COMPARE = flags.DEFINE_bool("compare-torch", False, "kdjax (now and before) against PyTorch, side by side.")
_PROFILE = flags.DEFINE_bool("profile", False, "A CE step's time, op by op (--profile_kind).")
_PROFILE_KIND = flags.DEFINE_enum("profile_kind", "teacher_ce", list(PROFILE_KINDS), "--profile's step.")
_MESH = flags.DEFINE_bool("data_parallel", False, "The steps over every device jax.devices() lists (kdjax/training/mesh.py), "
                          "fed three ways; forced host devices: XLA_FLAGS=--xla_force_host_platform_device_count=N.")
_STUDY = flags.DEFINE_bool("study", False, "One epoch of every phase: kdjax against the original's loops.")
_BATCH = flags.DEFINE_integer("batch_size", 128, "Training batch size.", lower_bound=2)
_IMAGE = flags.DEFINE_integer("image_size", 64, "Input height and width (a multiple of 16).", lower_bound=16)
_CLASSES = flags.DEFINE_integer("num_classes", 200, "Classes (the head's width).", lower_bound=2)
_STEPS = flags.DEFINE_integer("steps", 3, "Consecutive steps per timed round.", lower_bound=1)
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed rounds (medians are taken over them).", lower_bound=1)
_EVAL_BATCH = flags.DEFINE_integer("eval_batch_size", 500, "Evaluation batch size (plain mode).", lower_bound=1)
_PEAK = flags.DEFINE_float("peak_gflops", 0.0, "The fp32 peak to divide by; 0 = measure a matmul in this run.",
                           lower_bound=0.0)
_TORCH_THREADS = flags.DEFINE_integer("torch_threads", 0, "--study: PyTorch's threads; 0 = the faster of 1 and "
                                      "the core count on a short probe.", lower_bound=0)
_JSON = flags.DEFINE_bool("json", False, "Print JSON instead of tables.")
_HOST_MALLOC = flags.DEFINE_enum("host_malloc", "tuned", list(host_memory.SETTINGS),
                                 "kdjax's host allocator, as config speed.host_malloc (kdjax/training/host_memory.py); "
                                 "process-wide, so every kdjax row of a run has the same. PyTorch's child processes "
                                 "choose their own (--compare-torch, --study).")
_CONFIG = config_flags.DEFINE_config_dict("config", study_config(), "--study's config: the default config with "
                                          "every phase, one epoch, data.name=tiny_imagenet.",
                                          lock_config=True)


# ------------------------------------------------------------------------------------------------- timing

def core_count() -> int:
  """The threads XLA:CPU's intra-op pool uses: one per core this process may run on."""
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def load_average() -> list[float] | None:
  return [round(value, 2) for value in os.getloadavg()] if hasattr(os, "getloadavg") else None


@dataclasses.dataclass
class Runner:
  """One way to run one kind of step: run(steps) performs `steps` consecutive steps and waits for them."""

  run: Callable[[int], None]
  flops_per_image: int = 0
  compile_seconds: float | None = None
  extra: dict = dataclasses.field(default_factory=dict)


def time_alternating(runners: dict[str, Runner], steps: int, repeats: int, warmup: int = 2) -> dict[str, dict]:
  """{name: {"step_s": median seconds per step, "min_step_s", "rounds"}}: rounds alternate over the runners."""
  for runner in runners.values():
    runner.run(warmup)
  rounds = {name: [] for name in runners}
  for _ in range(repeats):
    for name, runner in runners.items():
      start = time.perf_counter()
      runner.run(steps)
      rounds[name].append((time.perf_counter() - start) / steps)
  return {name: {"step_s": statistics.median(values), "min_step_s": min(values), "rounds": values}
          for name, values in rounds.items()}


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
  fn()  # warm
  values = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    values.append(time.perf_counter() - start)
  return statistics.median(values)


def measured_peak_gflops(threads: int, size: int = 2048, repeats: int = 5) -> dict:
  """Best fp32 matmul GFLOP/s of JAX and of PyTorch (at `threads`) on size x size: the attainable peak."""
  a = jnp.asarray(np.random.default_rng(0).standard_normal((size, size), np.float32))
  matmul = jax.jit(lambda x: x @ x)
  flops = 2 * size**3
  result = {"size": size, "jax_gflops": flops / _median_seconds(lambda: matmul(a), repeats) / 1e9}
  try:
    import torch
  except ImportError:
    torch = None
  if torch is not None:
    torch.set_num_threads(threads)
    t = torch.from_numpy(np.array(a))  # a writable copy
    result["torch_gflops"] = flops / _median_seconds(lambda: torch.mm(t, t), repeats) / 1e9
    result["torch_threads"] = threads
  result["peak_gflops"] = max(value for key, value in result.items() if key.endswith("_gflops"))
  return result


# -------------------------------------------------------------------------------------------- FLOP counts

def train_flops_per_image(model: models.ConvNet, image_shape) -> int:
  """FLOPs of one image's training step of `model`: the forward, each layer's weight gradient (as many FLOPs as
  its forward) and input gradient (the same again), except the first conv's input gradient (the images need
  none)."""
  height, width, channels = image_shape
  kh, kw = models.KERNEL_SIZE
  first_conv = 2 * height * width * channels * model.conv_features[0] * kh * kw
  return 3 * models.flops_per_image(model, image_shape) - first_conv


# -------------------------------------------------------------------------------------------- kdjax steps

def random_batch(batch_size: int, image_size: int, num_classes: int, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  return {"image": rng.integers(0, 256, (batch_size, image_size, image_size, 3), np.uint8),
          "label": rng.integers(0, num_classes, batch_size).astype(np.int32)}


def study_setup(config, num_classes: int, image_shape) -> Setup:
  """The study's Setup made from parts (no data set): nets from `config`, initial weights from keys 0 and 1, the
  benchmark's fixed normalisation. Every step timed here is the study's own (Setup.step_function)."""
  nets = {role: config_nets.from_config(role, num_classes, config) for role in models.MODEL_FACTORIES}
  initial = {"teacher": models.init_params(nets["teacher"], jax.random.PRNGKey(0), image_shape),
             "student": models.init_params(nets["student"], jax.random.PRNGKey(1), image_shape)}
  return Setup(config=config, dataset=None, mean=jnp.asarray(MEAN), std=jnp.asarray(STD), train_images=None,
               train_labels=None, nets=nets, initial_params=initial, steps_per_epoch=0)


def kdjax_step(kind: str, batch: dict, num_classes: int, fast: bool = True, conv: str | None = None) -> Runner:
  """kdjax's step of `kind` on `batch`, as the training path builds it (the study's Setup.step_function;
  fast=True: every config.speed switch on) or as it was before them (fast=False: XLA's nn.Conv). conv: config
  speed.conv ("xla": XLA's convs as the training path compiled them before oneDNN; None: the default, oneDNN where
  it runs). Compiled ahead of time, so compile_seconds is the compile alone."""
  net, step_kind = net_and_kind(kind)
  image_shape = batch["image"].shape[1:]
  config = config_lib.default_config()
  if conv is not None:
    config.speed.conv = conv
  if not fast:
    config.speed.update(pool="reduce_window", teacher_conv="xla", student_conv="xla", xla_cpu_options=False,
                        cached_teacher_logits=False, conv="xla")
  study = study_setup(config, num_classes, image_shape)
  nets, initial = study.nets, study.initial_params
  mean, std = study.mean, study.std
  teacher_params, params = initial["teacher"], initial[net]
  options = xla.compiler_options(config.speed.xla_cpu_options)
  cached = config.speed.cached_teacher_logits and step_kind == "kd"
  optimizer = optim.make_optimizer(config.optimizer, 1000)
  step = study.step_function(KINDS[kind], optimizer)
  state = train.create_state(params, optimizer, teacher_params=teacher_params if step_kind != "ce" else None)
  device_batch = {name: jnp.asarray(value) for name, value in batch.items()}
  extra = {}
  if cached:
    # The cache's cost: one teacher forward per training image per phase (not per epoch), timed apart.
    cache = lambda: train.teacher_logits(nets["teacher"], teacher_params, device_batch["image"], mean, std,
                                         len(batch["label"]), options)
    device_batch["teacher_logits"] = jax.block_until_ready(cache())
    extra["cache_images_per_second"] = len(batch["label"]) / _median_seconds(cache, 3)
  start = time.perf_counter()
  compiled = jax.jit(step, donate_argnums=0, compiler_options=options).lower(state, device_batch).compile()
  compile_seconds = time.perf_counter() - start
  holder = [state]

  def run(steps: int) -> None:
    state = holder[0]
    for _ in range(steps):
      state, metrics = compiled(state, device_batch)
    jax.block_until_ready((state, metrics))
    holder[0] = state

  flops = train_flops_per_image(nets[net], image_shape)
  if step_kind != "ce" and not cached:
    flops += models.flops_per_image(nets["teacher"], image_shape)
  return Runner(run, flops, compile_seconds, extra)


# ------------------------------------------------------------------------------------------- PyTorch steps

def torch_step(kind: str, batch: dict, num_classes: int, threads: int, to_channels_last: bool) -> Runner:
  """parity/reference.py's loop for `kind` (the original's code), run `steps` steps at a time on one batch."""
  import torch
  from parity import reference

  net, step_kind = net_and_kind(kind)
  image_size = batch["image"].shape[1]
  torch.manual_seed(0)
  model = reference.NETS[net](num_classes, image_size)
  teacher = reference.TeacherNet(num_classes, image_size) if step_kind != "ce" else None
  inputs = (batch["image"].astype(np.float32) / 255.0 - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)
  images = torch.from_numpy(np.ascontiguousarray(inputs.transpose(0, 3, 1, 2)))
  labels = torch.from_numpy(batch["label"].astype(np.int64))
  if to_channels_last:
    model = channels_last(model)
    teacher = channels_last(teacher) if teacher is not None else None
    images = images.contiguous(memory_format=torch.channels_last)
  optimizer, _ = reference.make_optimizer(model.parameters(), config_lib.default_config().optimizer, 1000)
  loop = {"ce": reference.train_ce, "kd": reference.train_kd, "kd_ema": reference.train_kd_ema}[step_kind]
  models_args = (model,) if teacher is None else (model, teacher)

  def run(steps: int) -> None:
    torch.set_num_threads(threads)
    loop(*models_args, optimizer, [[(images, labels)] * steps])

  image_shape = batch["image"].shape[1:]
  flax_nets = {"teacher": models.teacher_net(num_classes), "student": models.student_net(num_classes)}
  flops = train_flops_per_image(flax_nets[net], image_shape)
  if step_kind != "ce":
    flops += models.flops_per_image(flax_nets["teacher"], image_shape)
  return Runner(run, flops)


def channels_last(net):
  """`net` (a parity.reference net) in channels_last. The original's forward flattens with x.view(-1, 12*s*s), which
  needs a contiguous NCHW tensor: the last pool's output is made so (a forward hook), the one change a
  channels_last port of the seed needs; every conv and pool before it runs channels_last."""
  import torch

  def contiguous_at_the_end(module, inputs, output):
    return output.contiguous() if output.shape[-1] == net.side else output

  net = net.to(memory_format=torch.channels_last)
  net.pool.register_forward_hook(contiguous_at_the_end)
  return net


# ---------------------------------------------------------------------------------------------- the modes

def _rate(timing: dict, batch_size: int) -> float:
  return batch_size / timing["step_s"]


def plain(batch_size: int, image_size: int, num_classes: int, steps: int, repeats: int,
          eval_batch_size: int, kinds=tuple(KINDS)) -> dict:
  """kdjax's steps as the training path builds them, and batched evaluation."""
  batch = random_batch(batch_size, image_size, num_classes)
  runners = {kind: kdjax_step(kind, batch, num_classes) for kind in kinds}
  timings = time_alternating(runners, steps, repeats)
  results = {kind: {"images_per_second": _rate(timings[kind], batch_size), "step_ms": 1e3 * timings[kind]["step_s"],
                    "compile_s": runners[kind].compile_seconds, **runners[kind].extra} for kind in kinds}
  shape = (image_size, image_size, 3)
  eval_images = random_batch(2 * eval_batch_size, image_size, num_classes, seed=1)["image"]
  mean, std = jnp.asarray(MEAN), jnp.asarray(STD)
  for role, factory in (("teacher", models.teacher_net), ("student", models.student_net)):
    model = factory(num_classes)
    params = models.init_params(model, jax.random.PRNGKey(0), shape)
    seconds = _median_seconds(lambda: evaluate.predict(model, params, eval_images, mean, std, eval_batch_size),
                              repeats)
    results[f"eval_{role}"] = {"images_per_second": len(eval_images) / seconds}
  return {"mode": "plain", **_shapes(batch_size, image_size, num_classes, steps, repeats), "results": results,
          "environment": _environment()}


def data_parallel(batch_size: int, image_size: int, num_classes: int, steps: int, repeats: int,
                  kinds=("teacher_ce", "student_kd_ema")) -> dict:
  """kdjax's steps over D = len(jax.devices()) devices (the data-parallel path of kdjax/training/mesh.py; D = 1: the
  single-device path, which has no mesh), each step fed from a training split of 4 batches in random order:
    host_fed       the host gathers the rows and puts each device's slice (DataParallel.batch: what kdjax runs)
    device_gather  the split replicated on every device, a jitted gather with its output sharded along `data`
    on_device      the batch already sharded on the devices (the step alone: the floor of both)
  With D = 1 all three are the single-device path's device gather (train.gather_batch)."""
  layout = config_lib.default_config()
  layout.batch_size = layout.eval_batch_size = batch_size
  parallel = mesh_lib.data_parallel(layout)   # every device; ConfigError when batch_size does not split
  split = random_batch(4 * batch_size, image_size, num_classes)
  order = np.random.default_rng(1).permutation(4 * batch_size)
  batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
  results = {}
  for kind in kinds:
    net, step_kind = net_and_kind(kind)
    study = study_setup(layout, num_classes, (image_size, image_size, 3))
    teacher_params, params = study.initial_params["teacher"], study.initial_params[net]
    optimizer = optim.make_optimizer(layout.optimizer, 1000)
    step = study.step_function(KINDS[kind], optimizer)
    state = train.create_state(params, optimizer, teacher_params=teacher_params if step_kind != "ce" else None)
    options = xla.compiler_options(True)
    if parallel.mesh is None:
      compiled = jax.jit(step, donate_argnums=0, compiler_options=options)
      device_split = {name: jnp.asarray(value) for name, value in split.items()}
      feeds = {"device_gather": lambda i: train.gather_batch(device_split, jnp.asarray(batches[i]))}
    else:
      compiled = jax.jit(step, donate_argnums=0, compiler_options=options, out_shardings=parallel.replicated)
      state = parallel.replicate(state)
      replicated_split = parallel.replicate(split)
      gather = jax.jit(lambda arrays, indices: {name: array[indices] for name, array in arrays.items()},
                       out_shardings=parallel.rows)
      mask = parallel.put_rows(np.ones(batch_size, np.float32))
      ready = [parallel.batch(split, indices, batch_size) for indices in batches]
      feeds = {"host_fed": lambda i: parallel.batch(split, batches[i], batch_size),
               "device_gather": lambda i: dict(gather(replicated_split, parallel.replicate(batches[i])), mask=mask),
               "on_device": lambda i: ready[i]}
    holder = [state]

    def runner(feed):
      def run(count: int) -> None:
        state = holder[0]
        for i in range(count):
          state, metrics = compiled(state, feed(i % len(batches)))
        jax.block_until_ready((state, metrics))
        holder[0] = state
      return Runner(run, 0, 0.0, {})
    timings = time_alternating({name: runner(feed) for name, feed in feeds.items()}, steps, repeats)
    results[kind] = {name: {"images_per_second": _rate(timing, batch_size), "step_ms": 1e3 * timing["step_s"]}
                     for name, timing in timings.items()}
  return {"mode": "data_parallel", "devices": parallel.size,
          **_shapes(batch_size, image_size, num_classes, steps, repeats), "results": results,
          "load_average": load_average(), "environment": _environment()}


def compare_torch(batch_size: int, image_size: int, num_classes: int, steps: int, repeats: int,
                  peak_gflops: float = 0.0, kinds=tuple(KINDS), xla_beside: bool = False,
                  allocators: tuple[str, ...] = ()) -> dict:
  """kdjax now and before, PyTorch NCHW and channels_last at 1 and core_count() threads: one table.

  xla_beside: also kdjax with speed.conv "xla" ("kdjax_xla"), where kdjax's default runs the convs in oneDNN.
  allocators: run PyTorch in child processes with these kdjax.tools.torch_peer.ALLOCATORS ("plain", "tuned"): NCHW with
  the first, channels_last with each (the others' variants named torch_channels_last_{n}t_{allocator}); ratios
  use the fastest. () = PyTorch in this process, with whatever allocator it has."""
  from kdjax.tools import torch_peer

  load_before = load_average()
  peers = {allocator: torch_peer.Peer(allocator) for allocator in allocators}
  xla_beside = xla_beside and config_nets.conv_engine(config_lib.default_config(), "teacher")[0] != "xla"
  threads = core_count()
  thread_counts = sorted({1, threads})
  peak = {"peak_gflops": peak_gflops, "source": "--peak_gflops"} if peak_gflops else dict(
      measured_peak_gflops(threads), source="measured: best fp32 2048x2048 matmul of JAX and PyTorch, this run")
  batch = random_batch(batch_size, image_size, num_classes)
  rows = {}
  for kind in kinds:
    runners = {"kdjax": kdjax_step(kind, batch, num_classes, fast=True),
               "kdjax_before": kdjax_step(kind, batch, num_classes, fast=False)}
    if xla_beside:
      runners["kdjax_xla"] = kdjax_step(kind, batch, num_classes, fast=True, conv="xla")
    for layout in ("nchw", "channels_last"):
      for count in thread_counts:
        if not peers:
          runners[f"torch_{layout}_{count}t"] = torch_step(kind, batch, num_classes, count, layout != "nchw")
        for index, (allocator, peer) in enumerate(peers.items()):
          if index and layout == "nchw":
            continue
          name = f"torch_{layout}_{count}t" + (f"_{allocator}" if index else "")
          runners[name] = peer.runner(kind, batch_size, image_size, num_classes, count, layout != "nchw")
    timings = time_alternating(runners, steps, repeats)
    row = {name: {"images_per_second": _rate(timing, batch_size), "step_ms": 1e3 * timing["step_s"],
                  "min_step_ms": 1e3 * timing["min_step_s"],
                  "gflops": runners[name].flops_per_image * batch_size / timing["step_s"] / 1e9,
                  "compile_s": runners[name].compile_seconds, **runners[name].extra}
           for name, timing in timings.items()}
    for entry in row.values():
      entry["peak_fraction"] = entry["gflops"] / peak["peak_gflops"]
    kdjax = row["kdjax"]["images_per_second"]
    summary = {"vs_kdjax_before": kdjax / row["kdjax_before"]["images_per_second"]}
    for layout in ("nchw", "channels_last"):
      best = max(thread_counts, key=lambda count: row[f"torch_{layout}_{count}t"]["images_per_second"])
      summary[f"torch_{layout}_threads"] = best
      summary[f"vs_torch_{layout}"] = kdjax / row[f"torch_{layout}_{best}t"]["images_per_second"]
    if len(peers) > 1:   # the fastest channels_last over thread counts and allocators
      names = [name for name in row if name.startswith("torch_channels_last_")]
      best_name = max(names, key=lambda name: row[name]["images_per_second"])
      summary["torch_channels_last_variant"] = best_name
      summary["torch_channels_last_allocator"] = next(
          (allocator for allocator in peers if best_name.endswith(f"_{allocator}")), next(iter(peers)))
      summary["vs_torch_channels_last"] = kdjax / row[best_name]["images_per_second"]
    if "kdjax_xla" in row:
      best_cl = row[summary.get("torch_channels_last_variant",
                                f"torch_channels_last_{summary['torch_channels_last_threads']}t")]
      summary["xla_vs_torch_channels_last"] = row["kdjax_xla"]["images_per_second"] / best_cl["images_per_second"]
    rows[kind] = {"variants": row, "summary": summary}
  for peer in peers.values():
    peer.close()
  import torch
  return {"mode": "compare_torch", **_shapes(batch_size, image_size, num_classes, steps, repeats),
          "threads": {"jax": threads, "torch": thread_counts,
                      "rule": "ratios use the faster PyTorch thread count (never a collapsed baseline)"},
          "peak": peak, "kinds": rows, "load_average_before": load_before, "load_average_after": load_average(),
          "torch_allocators": {name: peer.info for name, peer in peers.items()} or "this process's", "conv": config_nets.describe(config_lib.default_config()),
          "environment": dict(_environment(), torch=torch.__version__)}


def _conv(x, kernel):
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _step_ops(kind: str, batch_size: int, image_size: int, num_classes: int) -> list[dict]:
  """The ops of the CE step `kind` (PROFILE_KINDS) with their shapes and counts: convs (forward, input grad,
  weight grad), pools (forward, backward), the dense layer, the loss, Adam. Each op names its net."""
  name = PROFILE_KINDS[kind]
  net = models.MODEL_FACTORIES[name](num_classes)
  ops, size, channels = [], image_size, 3
  convs: dict[tuple, list[int]] = {}
  for index, features in enumerate(net.conv_features, start=1):
    convs.setdefault((size, channels, features), []).append(index)
    channels = features
    if index in net.pool_after:
      ops.append({"op": "pool", "shape": (batch_size, size, size, channels), "layers": [index], "net": name})
      size //= 2
  for (side, cin, cout), layers in convs.items():
    shape = (batch_size, side, side, cin)
    flops = 2 * batch_size * side * side * cin * cout * 9
    ops.append({"op": "conv forward", "shape": shape, "cout": cout, "layers": layers, "flops": flops, "net": name})
    input_grad_layers = [layer for layer in layers if layer != 1]
    if input_grad_layers:
      ops.append({"op": "conv input grad", "shape": shape, "cout": cout, "layers": input_grad_layers,
                  "flops": flops, "net": name})
    ops.append({"op": "conv weight grad", "shape": shape, "cout": cout, "layers": layers, "flops": flops,
                "net": name})
  features = size * size * channels
  ops.append({"op": "dense (fwd + both grads)", "shape": (batch_size, features), "cout": num_classes,
              "layers": ["fc"], "flops": 3 * 2 * batch_size * features * num_classes, "net": name})
  ops.append({"op": "loss (softmax CE, fwd + grad)", "shape": (batch_size, num_classes), "layers": ["loss"],
              "net": name})
  ops.append({"op": "Adam update", "shape": None, "layers": ["all"], "net": name})
  return ops


def _op_timers(op: dict, num_classes: int, options_now, options_default, repeats: int,
               onednn: bool = False) -> list[tuple]:
  """[(variant, seconds)] for one op: kdjax's way, and XLA's default / nn.max_pool's way where they differ.
  onednn: kdjax runs its convs in oneDNN (kdjax.nets.onednn_conv) and their pools too (kdjax.nets.onednn_pool):
  that is kdjax's way, XLA's ways beside it."""
  if onednn and op["op"].startswith("conv"):
    from kdjax.nets import onednn_conv

    xla_ways = _op_timers(op, num_classes, options_now, options_default, repeats)
    bias = jnp.zeros(op["cout"], jnp.float32)
    on_onednn = lambda x, k: onednn_conv.conv(x, k, bias)
    seconds = _conv_op_seconds(op, on_onednn, options_now, repeats)
    # XLA's ways: "xla_path" is what speed.conv "xla" runs (blocks or nn.Conv), then nn.Conv, XLA's defaults
    return [("kdjax", seconds), *(("xla_path" if label == "kdjax" else f"xla:{label}", value)
                                  for label, value in xla_ways)]
  rng = np.random.default_rng(0)
  normal = lambda *shape: jnp.asarray(rng.standard_normal(shape).astype(np.float32))
  compile_with = lambda fn, options: jax.jit(fn, compiler_options=options)
  name = op["op"]
  if name.startswith("conv"):
    n, h, w, cin = op["shape"]
    x, kernel, grad = normal(n, h, w, cin), normal(3, 3, cin, op["cout"]), normal(n, h, w, op["cout"])
    way = {"conv forward": lambda conv: lambda x, k, g: conv(x, k),
           "conv input grad": lambda conv: lambda x, k, g: jax.vjp(lambda x_: conv(x_, k), x)[1](g)[0],
           "conv weight grad": lambda conv: lambda x, k, g: jax.vjp(lambda k_: conv(x, k_), k)[1](g)[0]}[name]
    time_it = lambda fn, options, *args: _median_seconds(lambda f=compile_with(fn, options): f(*args), repeats)
    plain = [(label, time_it(way(_conv), options, x, kernel, grad))
             for label, options in (("nn.Conv", options_now), ("xla_default", options_default))]
    per_net = config_lib.default_config().speed.get(f"{op.get('net', 'teacher')}_conv")
    if not (per_net == "blocks" and block_conv.supported(h, w)):
      return [("kdjax", plain[0][1]), plain[1]]
    # One layer as the blocked teacher runs it: aligned blocks in, offset blocks out (pad, 2x2 conv, mask).
    bias = jnp.zeros(op["cout"], jnp.float32)
    blocked = lambda x_, k_: block_conv.conv(x_, k_, bias, "aligned")[0]
    offset_grad = normal(n, h // 2 + 1, w // 2 + 1, 4 * op["cout"])
    return [("kdjax", time_it(way(blocked), options_now, block_conv.to_aligned(x), kernel, offset_grad)), *plain]
  if name == "pool":
    x = normal(*op["shape"])
    n, h, w, c = op["shape"]
    grad = normal(n, h // 2, w // 2, c)
    pooled = pooling.max_pool_2x2(x)
    # kdjax's backward from its residuals (x, pooled), as the step runs it; nn.max_pool's from x alone (its
    # gradient, select-and-scatter over x, needs no forward values).
    backward = {"kdjax": (compile_with(pooling._backward, options_now), ((x, pooled), grad)),
                "nn.max_pool": (compile_with(lambda x, g: jax.vjp(models.POOLS["reduce_window"], x)[1](g)[0],
                                             options_now), (x, grad))}
    ways = [("kdjax", pooling.max_pool_2x2), ("nn.max_pool", models.POOLS["reduce_window"])]
    if onednn:  # after a oneDNN conv kdjax pools in oneDNN too (kdjax.nets.onednn_pool); XLA's pool beside it
      ways = [("kdjax", onednn_pool.max_pool_2x2), ("xla_path", pooling.max_pool_2x2), ways[1]]
      backward["xla_path"] = backward.pop("kdjax")
      workspace = jax.jit(onednn_pool.forward_with_workspace)(x)[1]   # the backward's residual
      backward["kdjax"] = (jax.jit(onednn_pool.backward_from_workspace), (workspace, grad))
    timings = []
    for label, pool in ways:
      forward = compile_with(pool, options_now)
      fn, args = backward[label]
      timings.append((label, _median_seconds(lambda: forward(x), repeats),
                      _median_seconds(lambda fn=fn, args=args: fn(*args), repeats)))
    return timings
  if name.startswith("dense"):
    n, features = op["shape"]
    x, kernel, grad = normal(n, features), normal(features, num_classes), normal(n, num_classes)
    fn = lambda x, k, g: (x @ k, g @ k.T, x.T @ g)
    return [(label, _median_seconds(lambda f=compile_with(fn, options): f(x, kernel, grad), repeats))
            for label, options in (("kdjax", options_now), ("xla_default", options_default))]
  if name.startswith("loss"):
    logits, labels = normal(*op["shape"]), jnp.asarray(rng.integers(0, num_classes, op["shape"][0]))
    fn = compile_with(jax.value_and_grad(losses.cross_entropy), options_now)
    return [("kdjax", _median_seconds(lambda: fn(logits, labels), repeats))]
  if name == "Adam update":
    params = models.init_params(models.MODEL_FACTORIES[op.get("net", "teacher")](num_classes), jax.random.PRNGKey(0),
                                (64, 64, 3))
    optimizer = optim.make_optimizer(config_lib.default_config().optimizer, 1000)
    opt_state = optimizer.init(params)

    def update(grads, opt_state, params):
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return jax.tree_util.tree_map(lambda p, u: p + u, params, updates), opt_state

    fn = compile_with(update, options_now)
    return [("kdjax", _median_seconds(lambda: fn(params, opt_state, params), repeats))]
  raise ValueError(name)


def _conv_op_seconds(op: dict, conv: Callable, options, repeats: int) -> float:
  """Median seconds of one conv op ("conv forward" / "conv input grad" / "conv weight grad") of `conv(x, k)`."""
  rng = np.random.default_rng(0)
  normal = lambda *shape: jnp.asarray(rng.standard_normal(shape).astype(np.float32))
  n, h, w, cin = op["shape"]
  x, kernel, grad = normal(n, h, w, cin), normal(3, 3, cin, op["cout"]), normal(n, h, w, op["cout"])
  fn = {"conv forward": lambda x, k, g: conv(x, k),
        "conv input grad": lambda x, k, g: jax.vjp(lambda x_: conv(x_, k), x)[1](g)[0],
        "conv weight grad": lambda x, k, g: jax.vjp(lambda k_: conv(x, k_), k)[1](g)[0]}[op["op"]]
  compiled = jax.jit(fn, compiler_options=options)
  return _median_seconds(lambda: compiled(x, kernel, grad), repeats)


def _torch_op_timers(op: dict, num_classes: int, repeats: int) -> dict:
  """PyTorch channels_last (oneDNN) on the same op, at the faster of 1 and core_count() threads:
  {"torch_cl": seconds} (pools: {"torch_cl": (forward, backward)}); {} for the ops it is not shown for. profile()
  runs it in a kdjax.tools.torch_peer child."""
  import torch
  import torch.nn.functional as F

  name = op["op"]
  generator = torch.Generator().manual_seed(0)
  cl = lambda tensor: tensor.contiguous(memory_format=torch.channels_last)
  normal = lambda *shape: torch.randn(*shape, generator=generator)
  if name.startswith("conv"):
    n, h, w, cin = op["shape"]
    x, kernel, grad = cl(normal(n, cin, h, w)), cl(normal(op["cout"], cin, 3, 3)), cl(normal(n, op["cout"], h, w))
    fns = [{"conv forward": lambda: F.conv2d(x, kernel, padding=1),
            "conv input grad": lambda: torch.nn.grad.conv2d_input(x.shape, kernel, grad, padding=1),
            "conv weight grad": lambda: torch.nn.grad.conv2d_weight(x, kernel.shape, grad, padding=1)}[name]]
  elif name == "pool":
    n, h, w, c = op["shape"]
    x, grad = cl(normal(n, c, h, w)), cl(normal(n, c, h // 2, w // 2))
    _, indices = F.max_pool2d(x, 2, return_indices=True)
    fns = [lambda: F.max_pool2d(x, 2),
           lambda: torch.ops.aten.max_pool2d_with_indices_backward(grad, x, [2, 2], [2, 2], [0, 0], [1, 1], False,
                                                                    indices)]
  elif name.startswith("dense"):
    n, features = op["shape"]
    x, kernel, grad = normal(n, features), normal(features, num_classes), normal(n, num_classes)
    fns = [lambda: (x @ kernel, grad @ kernel.T, x.T @ grad)]
  else:
    return {}
  seconds = []
  with torch.no_grad():
    for fn in fns:
      best = float("inf")
      for threads in sorted({1, core_count()}):
        torch.set_num_threads(threads)
        best = min(best, _median_seconds(fn, repeats))
      seconds.append(best)
  return {"torch_cl": seconds[0] if len(seconds) == 1 else tuple(seconds)}


def profile(batch_size: int, image_size: int, num_classes: int, steps: int, repeats: int,
            with_torch: bool = True, kind: str = "teacher_ce") -> dict:
  """Where the CE step `kind`'s time goes (PROFILE_KINDS): each op compiled and timed alone at the step's
  shapes, times its count in the step, against the whole step timed in the same run; GFLOP/s per op."""

  load_before = load_average()
  options_now, options_default = xla.compiler_options(True), None
  onednn = config_nets.conv_engine(config_lib.default_config(), PROFILE_KINDS[kind])[0] != "xla"
  batch = random_batch(batch_size, image_size, num_classes)
  step = kdjax_step(kind, batch, num_classes)
  step_seconds = time_alternating({"step": step}, steps, repeats)["step"]["step_s"]
  rows = []
  op_repeats = max(7, 2 * repeats)  # ops alone take milliseconds: more repeats for a steadier median
  # PyTorch's ops run in a child process (its allocator "tuned"), whose OpenMP workers spin there after each op
  # rather than beside kdjax's ops in this process.
  from kdjax.tools import torch_peer

  peer = torch_peer.Peer("tuned") if with_torch else None
  try:
    for op in _step_ops(kind, batch_size, image_size, num_classes):
      count = len(op["layers"])
      timings = _op_timers(op, num_classes, options_now, options_default, op_repeats, onednn)
      torch_timings = peer.op_timers(op, num_classes, op_repeats) if peer else {}
      if op["op"] == "pool":
        timings += [(label, *values) for label, values in torch_timings.items()]
        rows.append(_profile_row("pool forward", op, count, {label: fwd for label, fwd, _ in timings}, None))
        rows.append(_profile_row("pool backward", op, count, {label: bwd for label, _, bwd in timings}, None))
        continue
      rows.append(_profile_row(op["op"], op, count, dict(timings, **torch_timings), op.get("flops")))
  finally:
    if peer:
      peer.close()
  accounted = sum(row["total_ms"] for row in rows)
  rows.sort(key=lambda row: -row["total_ms"])
  return {"mode": "profile", "kind": kind, **_shapes(batch_size, image_size, num_classes, steps, repeats),
          "method": "each op jitted and timed alone (median of repeats) at the step's shapes, times its count in "
                    "the step; 'other' is the whole step minus their sum (elementwise fusions: normalisation, "
                    "bias adds and their gradients, copies; dispatch). Beside each: XLA's default / nn.max_pool, "
                    "and PyTorch channels_last (oneDNN) on the same op at its faster thread count, in a child process "
                    "(tuned glibc); where kdjax's "
                    "convs run in oneDNN (kdjax.nets.onednn_conv) and their pools too (kdjax.nets.onednn_pool), "
                    "kdjax's way is that and xla_path / xla:* are XLA's ways",
          "step_ms": 1e3 * step_seconds, "accounted_ms": accounted, "other_ms": 1e3 * step_seconds - accounted,
          "step_gflops": step.flops_per_image * batch_size / step_seconds / 1e9, "ops": rows,
          "xla_options": options_now, "load_average_before": load_before, "load_average_after": load_average(),
          "environment": _environment()}


def _profile_row(name: str, op: dict, count: int, seconds: dict, flops) -> dict:
  now = seconds["kdjax"]
  row = {"op": name, "shape": list(op["shape"]) if op["shape"] else None, "cout": op.get("cout"),
         "layers": op["layers"], "count": count, "ms": 1e3 * now, "total_ms": 1e3 * now * count,
         "gflops": flops / now / 1e9 if flops else None}
  for label, value in seconds.items():
    if label != "kdjax":
      row[f"{label}_ms"] = 1e3 * value
  return row


def study(config, torch_threads: int = 0, allocators=("tuned", "plain")) -> dict:
  """One run of `config` (every phase, config.epochs epochs) in kdjax.study.experiment and in parity/reference.py's
  seed loops (channels_last), on the same batches: wall times and their ratio. PyTorch runs in a child process
  per allocator (kdjax.tools.torch_peer.ALLOCATORS), one after the other, and the faster is compared: its
  allocator is a stated choice, never this process's (whose glibc kdjax's speed.host_malloc may have tuned)."""
  from kdjax.study import experiment
  from kdjax.tools import torch_peer

  config_validation.validate(config)
  if config.teacher.checkpoint:
    raise errors.ConfigError("teacher.checkpoint must be empty for --study: both sides train their teacher")
  if config.num_seeds != 1:
    raise errors.ConfigError(f"num_seeds must be 1 for --study, got {config.num_seeds}")
  names = experiment.phases_to_run(config, None)  # kdjax's order, EMA-sweep variants included
  load_before = load_average()
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
      runs[allocator] = peer.study(config, names, torch_threads)
    finally:
      peer.close()
  totals = {name: sum(run["train_seconds"].values()) for name, run in runs.items()}
  allocator = min(totals, key=totals.get)
  torch_side = dict(runs[allocator], allocator=allocator, allocators=totals)
  kdjax_total, torch_total = sum(kdjax_train.values()), sum(torch_side["train_seconds"].values())
  phases = {phase: {"kdjax_train_s": kdjax_train[phase], "torch_train_s": torch_side["train_seconds"][phase],
                    "speedup": torch_side["train_seconds"][phase] / kdjax_train[phase]}
            for phase in names}
  return {"mode": "study", "data": config.data.name, "train_examples": kdjax_report["dataset"]["train_examples"],
          "batch_size": config.batch_size, "epochs": config.epochs, "phases": phases,
          "train": {"kdjax_s": kdjax_total, "torch_s": torch_total, "speedup": torch_total / kdjax_total},
          "wall": {"kdjax_s": kdjax_wall, "torch_s": torch_side["wall_seconds"],
                   "speedup": torch_side["wall_seconds"] / kdjax_wall},
          "torch": {key: value for key, value in torch_side.items() if key != "train_seconds"},
          "speed_config": config.speed.to_dict(), "load_average_before": load_before,
          "load_average_after": load_average(), "environment": _environment()}


def reference_study(config, names, threads: int = 0) -> dict:
  """The original's loops (parity/reference.py) over the phases `names`, channels_last, on kdjax's batches
  (data.epoch_order) and inputs (data.normalize): {"train_seconds": {phase: s}, "eval_seconds",
  "wall_seconds", "threads", "thread_probe"}. Each phase's model is validated once per epoch, as in kdjax."""
  import torch
  from parity import harness
  from parity import reference

  wall_start = time.perf_counter()
  dataset = data_lib.load(config.data)
  mean, std = data_lib.normalization_constants(dataset, config.data.normalization)
  to_torch = lambda images: torch.from_numpy(np.ascontiguousarray(
      harness.model_inputs(images, mean, std).transpose(0, 3, 1, 2))).contiguous(memory_format=torch.channels_last)
  train_x, val_x = to_torch(dataset.train_images), to_torch(dataset.val_images)
  train_y = torch.from_numpy(dataset.train_labels.astype(np.int64))
  val_y = torch.from_numpy(dataset.val_labels.astype(np.int64))
  probe = {}
  if not threads:
    batch = random_batch(min(config.batch_size, len(train_y)), dataset.image_shape[0], dataset.num_classes)
    runners = {count: torch_step("teacher_ce", batch, dataset.num_classes, count, True)
               for count in sorted({1, core_count()})}
    timings = time_alternating(runners, 2, 3, warmup=1)
    probe = {f"{count} thread(s)": round(_rate(timing, len(batch["label"])), 1) for count, timing in timings.items()}
    threads = min(timings, key=lambda count: timings[count]["step_s"])
  torch.set_num_threads(threads)
  torch.manual_seed(config.seed)
  size, classes = dataset.image_shape[0], dataset.num_classes
  batches = [data_lib.batch_indices(data_lib.epoch_order(len(train_y), config.seed, epoch), config.batch_size,
                                    config.data.drop_remainder) for epoch in range(1, config.epochs + 1)]
  steps = sum(len(epoch) for epoch in batches)

  def epochs():  # gathered lazily, step by step, as a DataLoader would
    return [((train_x[torch.from_numpy(indices)], train_y[torch.from_numpy(indices)]) for indices in epoch)
            for epoch in batches]

  train_seconds, eval_seconds = {}, 0.0
  trained_teacher = None
  student_init = channels_last(reference.StudentNet(classes, size, config.model.activation))
  for phase in names:
    spec = phases.phase(phase)
    net, kind = spec.net, spec.step_kind
    options = reference.LoopOptions(
        temperature=float(config.kd.temperature), kd_weight=float(config.kd.kd_weight),
        ce_weight=float(config.kd.ce_weight),
        teacher_decay=float(config.ema.decay if spec.teacher_decay is None else spec.teacher_decay),
        warmup=bool(config.ema.warmup if spec.warmup is None else spec.warmup))
    model = (channels_last(reference.TeacherNet(classes, size, config.model.activation)) if net == "teacher"
             else copy.deepcopy(student_init))
    optimizer, scheduler = reference.make_optimizer(model.parameters(), config.optimizer, steps)
    start = time.perf_counter()
    if kind == "ce":
      reference.train_ce(model, optimizer, epochs(), scheduler=scheduler, options=options)
    else:
      teacher = copy.deepcopy(trained_teacher)
      loop = reference.train_kd if kind == "kd" else reference.train_kd_ema
      loop(model, teacher, optimizer, epochs(), scheduler=scheduler, options=options)
    train_seconds[phase] = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(config.epochs):  # kdjax validates every tracked model after every epoch
      reference.validate(model, val_x, val_y)
      if kind == "kd_ema":
        reference.validate(teacher, val_x, val_y)
    eval_seconds += time.perf_counter() - start
    if phase == "teacher":
      trained_teacher = model
  return {"train_seconds": train_seconds, "eval_seconds": eval_seconds,
          "wall_seconds": time.perf_counter() - wall_start, "threads": threads, "thread_probe": probe,
          "layout": "channels_last"}


def _shapes(batch_size, image_size, num_classes, steps, repeats) -> dict:
  return {"batch_size": batch_size, "image_shape": [image_size, image_size, 3], "num_classes": num_classes,
          "steps_per_round": steps, "rounds": repeats}


def _environment() -> dict:
  return dict(run_environment.environment(), cores=core_count(), xla_cpu_options=xla.compiler_options(True),
              host_malloc=host_memory.describe())


# ---------------------------------------------------------------------------------------------- printing

def _print_plain(figures: dict) -> None:
  env = figures["environment"]
  print(f"kdjax steps as training runs them: batch {figures['batch_size']}, input {figures['image_shape']}, "
        f"{figures['num_classes']} classes, median of {figures['rounds']} rounds of {figures['steps_per_round']} "
        f"steps; backend {env['backend']} ({env['cores']} cores), jax {env['jax']}; host memory: "
        f"{env['host_malloc']}")
  print(f"{'kind':<16}{'images/s':>10}{'ms/step':>10}{'compile s':>11}")
  for name, row in figures["results"].items():
    step_ms = f"{row['step_ms']:.1f}" if "step_ms" in row else ""
    compile_s = f"{row['compile_s']:.2f}" if row.get("compile_s") is not None else ""
    print(f"{name:<16}{row['images_per_second']:>10.0f}{step_ms:>10}{compile_s:>11}")


def _print_compare(figures: dict) -> None:
  env, peak, threads = figures["environment"], figures["peak"], figures["threads"]
  print(f"kdjax vs PyTorch (parity/reference.py, the original's loops): batch {figures['batch_size']}, input "
        f"{figures['image_shape']}, {figures['num_classes']} classes, Adam; median of {figures['rounds']} "
        f"alternating rounds of {figures['steps_per_round']} steps")
  print(f"jax {env['jax']} on {env['backend']} with {threads['jax']} threads (XLA:CPU, one per core); torch "
        f"{env['torch']} at {threads['torch']} threads: ratios use the faster count. Load average "
        f"{figures['load_average_before']} -> {figures['load_average_after']}")
  print(f"fp32 peak {peak['peak_gflops']:.1f} GFLOP/s ({peak['source']})")
  print(f"kdjax now: fast pool, XLA options {env['xla_cpu_options']}, cached teacher logits (student_kd); "
        f"before: nn.max_pool, XLA defaults, inline teacher; every kdjax row's host memory: {env['host_malloc']}")
  for net, conv in figures.get("conv", {}).items():
    print(f"kdjax {net} convs: {conv['path']} ({conv['why']})")
  if isinstance(figures.get("torch_allocators"), dict):
    allocators = ", ".join(f"{name} ({info['malloc'] or 'glibc defaults'})"
                           for name, info in figures["torch_allocators"].items())
    print(f"PyTorch in child processes, one per allocator (kdjax/tools/torch_peer.py): {allocators}; NCHW with the "
          f"first; channels_last ratios use the fastest thread count and allocator")
  header = (f"{'kind':<16}{'kdjax img/s':>12}{'before':>9}{'x before':>9}{'torch NCHW':>12}{'x NCHW':>8}"
            f"{'torch CL':>10}{'x CL':>7}{'% peak':>8}{'compile s':>10}")
  print(header)
  for kind, entry in figures["kinds"].items():
    row, summary = entry["variants"], entry["summary"]
    nchw = row[f"torch_nchw_{summary['torch_nchw_threads']}t"]
    cl = row[f"torch_channels_last_{summary['torch_channels_last_threads']}t"]
    print(f"{kind:<16}{row['kdjax']['images_per_second']:>12.0f}{row['kdjax_before']['images_per_second']:>9.0f}"
          f"{summary['vs_kdjax_before']:>9.2f}"
          f"{nchw['images_per_second']:>8.0f} ({summary['torch_nchw_threads']}t){summary['vs_torch_nchw']:>8.2f}"
          f"{cl['images_per_second']:>6.0f} ({summary['torch_channels_last_threads']}t)"
          f"{summary['vs_torch_channels_last']:>7.2f}{100 * row['kdjax']['peak_fraction']:>8.1f}"
          f"{row['kdjax']['compile_s']:>10.2f}")
    if "kdjax_xla" in row:
      print(f"{'  (XLA convs)':<16}{row['kdjax_xla']['images_per_second']:>12.0f}{'':>44}"
            f"{summary['xla_vs_torch_channels_last']:>7.2f}"
            f"{100 * row['kdjax_xla']['peak_fraction']:>8.1f}{row['kdjax_xla']['compile_s']:>10.2f}")
    if "torch_channels_last_variant" in summary:
      print(f"{'':<16}fastest PyTorch channels_last: {summary['torch_channels_last_variant']} "
            f"({row[summary['torch_channels_last_variant']]['images_per_second']:.0f} img/s, "
            f"allocator {summary['torch_channels_last_allocator']})")
  print("PyTorch at each thread count, images/s (NCHW / channels_last):")
  for kind, entry in figures["kinds"].items():
    row = entry["variants"]
    cells = "  ".join(f"{count}t {row[f'torch_nchw_{count}t']['images_per_second']:.0f} / "
                      f"{row[f'torch_channels_last_{count}t']['images_per_second']:.0f}" for count in threads["torch"])
    extra = row["kdjax"].get("cache_images_per_second")
    cache = f"   (kdjax's logit cache: {extra:.0f} img/s, once per phase)" if extra else ""
    print(f"  {kind:<16}{cells}{cache}")


def _print_profile(figures: dict) -> None:
  print(f"{figures['kind']} step, batch {figures['batch_size']}, input {figures['image_shape']}: "
        f"{figures['step_ms']:.1f} ms ({figures['step_gflops']:.1f} GFLOP/s); load average "
        f"{figures['load_average_before']} -> {figures['load_average_after']}")
  print(f"method: {figures['method']}")
  print(f"{'op':<30}{'input':>20}{'x':>3}{'ms each':>9}{'ms total':>10}{'% step':>8}{'GFLOP/s':>9}  "
        f"other ways, ms each")
  for row in figures["ops"]:
    shape = "x".join(map(str, row["shape"][1:])) + (f"->{row['cout']}" if row.get("cout") else "") \
        if row["shape"] else ""
    gflops = f"{row['gflops']:.1f}" if row["gflops"] else ""
    others = ", ".join(f"{key[:-3]} {value:.2f}" for key, value in row.items()
                       if key.endswith("_ms") and key not in ("total_ms",))
    print(f"{row['op']:<30}{shape:>20}{row['count']:>3}{row['ms']:>9.2f}{row['total_ms']:>10.1f}"
          f"{100 * row['total_ms'] / figures['step_ms']:>8.1f}{gflops:>9}  {others}")
  print(f"{'other (elementwise, dispatch)':<30}{'':>32}{figures['other_ms']:>10.1f}"
        f"{100 * figures['other_ms'] / figures['step_ms']:>8.1f}")


def _print_data_parallel(figures: dict) -> None:
  print(f"{figures['devices']} device(s), global batch {figures['batch_size']}, "
        f"{'x'.join(map(str, figures['image_shape']))}, {figures['num_classes']} classes; img/s (step ms); "
        f"load average {figures['load_average']}")
  for kind, feeds in figures["results"].items():
    print(f"  {kind:16s} " + "  ".join(f"{feed} {entry['images_per_second']:.0f} ({entry['step_ms']:.0f} ms)"
                                        for feed, entry in feeds.items()))


def _print_study(figures: dict) -> None:
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


# -------------------------------------------------------------------------------------------------- CLI

FLAG_NAMES = ("compare-torch", "profile", "profile_kind", "study", "data_parallel", "batch_size", "image_size",
              "num_classes", "steps", "repeats", "eval_batch_size", "peak_gflops", "torch_threads", "host_malloc",
              "json", "config")
EXAMPLES = [
    "python -m kdjax.tools.benchmark --steps 2 --repeats 3                  # kdjax's steps, fewer rounds",
    "python -m kdjax.tools.benchmark --compare-torch --json > speed.json",
    "python -m kdjax.tools.benchmark --study --config.data.manual_dir=DIR   # DIR holds tiny-imagenet-200.zip",
]


def _parse(argv: list[str]) -> list[str]:
  """--help and --helpfull first (kdjax.cli.help, exit 0); then absl's parser, but a bad flag is one line on
  stderr and exit status 2."""
  help_lib.answer(argv, __doc__, FLAG_NAMES, EXAMPLES)
  return cli.parse_flags(PROG, argv, config_required=False)


def main(argv):
  if len(argv) > 1:
    cli.usage_error(PROG, f"unexpected arguments: {' '.join(argv[1:])}")
  modes = [name for name, flag in (("--compare-torch", _COMPARE), ("--profile", _PROFILE), ("--study", _STUDY),
                                   ("--data_parallel", _MESH)) if flag.value]
  if len(modes) > 1:
    cli.usage_error(PROG, f"choose one of {', '.join(modes)}")
  if _IMAGE.value % 16:
    cli.usage_error(PROG, f"--image_size must be a multiple of 16, got {_IMAGE.value}")
  logging.set_verbosity(logging.WARNING)  # no INFO line about absent TPU backends
  if _HOST_MALLOC.value == "tuned":
    host_memory.tune()
  shapes = (_BATCH.value, _IMAGE.value, _CLASSES.value, _STEPS.value, _REPEATS.value)
  try:   # a bad setting (e.g. KDJAX_ONEDNN_THREADS=abc, a study's config value): one line, exit 2
    if _COMPARE.value:
      figures, show = compare_torch(*shapes, peak_gflops=_PEAK.value, xla_beside=True,
                                    allocators=("tuned", "plain")), _print_compare
    elif _PROFILE.value:
      figures, show = profile(*shapes, kind=_PROFILE_KIND.value), _print_profile
    elif _MESH.value:
      figures, show = data_parallel(*shapes), _print_data_parallel
    elif _STUDY.value:
      figures, show = study(_CONFIG.value, _TORCH_THREADS.value), _print_study
    else:
      figures, show = plain(*shapes, _EVAL_BATCH.value), _print_plain
  except (errors.ConfigError, data_lib.DataError) as error:
    cli.usage_error(PROG, error)
  if _JSON.value:
    print(json.dumps(figures, indent=2, default=float))
  else:
    show(figures)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse)
