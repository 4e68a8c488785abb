"""The benchmark's PyTorch side: parity/reference.py's loops (the seed as written: its DistillKL, its EMA, loss.item()
every step) timed on kdjax's own inputs, eager, NCHW or channels_last.

kdjax.tools.benchmark runs these in a child process (parity/torch_child.py, started by
kdjax/tools/benchmark/torch_peer.py) so that PyTorch's allocator is a stated choice; the parent times what it
alternates, the child what it runs alone (an op, the whole study).
"""

import copy
import statistics
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from kdjax import data as data_lib
from kdjax import phases
from kdjax.config import defaults as config_lib
from parity import harness
from parity import reference


def channels_last(net):
  """`net` (a parity.reference net) in channels_last. The original's forward flattens with x.view(-1, 12*s*s), which
  needs a contiguous NCHW tensor: the last pool's output is made so (a forward hook), the one change a
  channels_last port of the seed needs; every conv and pool before it runs channels_last."""

  def contiguous_at_the_end(module, inputs, output):
    return output.contiguous() if output.shape[-1] == net.side else output

  net = net.to(memory_format=torch.channels_last)
  net.pool.register_forward_hook(contiguous_at_the_end)
  return net


def torch_step(phase: str, images: np.ndarray, labels: np.ndarray, mean, std, num_classes: int, threads: int,
               to_channels_last: bool) -> Callable[[int], None]:
  """run(steps): the original's loop for `phase` on one batch (uint8 NHWC `images`, made kdjax's model inputs
  with `mean`, `std`), `steps` steps at a time, at `threads` threads."""
  spec = phases.phase(phase)
  image_size = images.shape[1]
  torch.manual_seed(0)
  model = reference.NETS[spec.net](num_classes, image_size)
  teacher = reference.TeacherNet(num_classes, image_size) if spec.step_kind != "ce" else None
  inputs = harness.model_inputs(images, mean, std)
  x = torch.from_numpy(np.ascontiguousarray(inputs.transpose(0, 3, 1, 2)))
  y = torch.from_numpy(labels.astype(np.int64))
  if to_channels_last:
    model = channels_last(model)
    teacher = channels_last(teacher) if teacher is not None else None
    x = x.contiguous(memory_format=torch.channels_last)
  optimizer, _ = reference.make_optimizer(model.parameters(), config_lib.default_config().optimizer, 1000)
  loop = {"ce": reference.train_ce, "kd": reference.train_kd, "kd_ema": reference.train_kd_ema}[spec.step_kind]
  nets = (model,) if teacher is None else (model, teacher)

  def run(steps: int) -> None:
    torch.set_num_threads(threads)
    loop(*nets, optimizer, [[(x, y)] * steps])
  return run


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
  """Median wall seconds of `fn()` over `repeats` calls after a warm one (PyTorch's CPU ops return when done)."""
  fn()
  values = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    values.append(time.perf_counter() - start)
  return statistics.median(values)


def op_seconds(op: dict, num_classes: int, repeats: int, thread_counts) -> dict:
  """PyTorch channels_last (oneDNN) on one op of the benchmark's profile, at the fastest of `thread_counts`:
  {"torch_cl": seconds} (pools: {"torch_cl": (forward, backward)}); {} for the ops it is not shown for."""
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
      for threads in sorted(set(thread_counts)):
        torch.set_num_threads(threads)
        best = min(best, _median_seconds(fn, repeats))
      seconds.append(best)
  return {"torch_cl": seconds[0] if len(seconds) == 1 else tuple(seconds)}


def reference_study(config, names, threads: int) -> dict:
  """The original's loops over the phases `names`, channels_last at `threads` threads, on kdjax's batches
  (data.epoch_order) and inputs (data.normalize): {"train_seconds": {phase: s}, "eval_seconds", "wall_seconds",
  "threads", "layout"}. Each phase's model is validated once per epoch, as in kdjax."""
  wall_start = time.perf_counter()
  dataset = data_lib.load(config.data)
  mean, std = data_lib.normalization_constants(dataset, config.data.normalization)

  def to_torch(images: np.ndarray) -> torch.Tensor:
    """The model inputs as one channels_last tensor (its storage is NHWC), filled a chunk at a time: the full data
    as float32 once (4.9 GB), not three full-size copies on the way (which a 24 GB machine could not hold)."""
    count, height, width, channels = images.shape
    tensor = torch.empty((count, channels, height, width), dtype=torch.float32, memory_format=torch.channels_last)
    nhwc = tensor.permute(0, 2, 3, 1)   # the same storage, in its own order
    for start in range(0, count, 4096):
      nhwc[start:start + 4096] = torch.from_numpy(harness.model_inputs(images[start:start + 4096], mean, std))
    return tensor

  train_x, val_x = to_torch(dataset.train_images), to_torch(dataset.val_images)
  train_y = torch.from_numpy(dataset.train_labels.astype(np.int64))
  val_y = torch.from_numpy(dataset.val_labels.astype(np.int64))
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
          "wall_seconds": time.perf_counter() - wall_start, "threads": threads, "layout": "channels_last"}
