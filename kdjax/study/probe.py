"""The collapse diagnostics' measuring: a kd_ema phase's EMA-updated teacher and its student run on a fixed probe
of the validation split at the steps report/collapse.py schedules (its docstring defines each quantity and the
probe's size; report/collapse.findings turns the points into sentences)."""

import time

import numpy as np

from kdjax.report import collapse
from kdjax.training import evaluate


class Probe:
  """The probe's images and labels (host arrays) and the batch its forwards run in: one batch (rounded up to a
  multiple of the data-parallel device count) up to eval_batch_size, in eval_batch_size batches beyond it (the
  evaluation's compiled forward and the evaluation's buffer sizes: a forward's buffers grow with its batch, ~0.4 GB
  for the teacher at the full data's 1,000 probe images, and the tuned heap keeps them); `warm`: the nets whose probe
  forward has run (compiled) here."""

  def __init__(self, setup, num_points: int):
    num_val = len(setup.dataset.val_labels)
    size = collapse.probe_size(num_val, setup.config.epochs * setup.num_train, num_points)
    keep = collapse.probe_indices(num_val, size)
    self.images, self.labels = setup.dataset.val_images[keep], setup.dataset.val_labels[keep]
    devices = setup.parallel.size
    self.batch_size = min(-(-size // devices) * devices, setup.config.eval_batch_size)
    self.warm: set[str] = set()

  @property
  def size(self) -> int:
    return len(self.labels)


def measure(setup, probe: Probe, teacher_params, student_net: str, student_params, trained_teacher, *,
            epoch: int, step: int, kd_loss: float | None,
            full_top1: tuple[float, float] | None = None) -> dict:
  """One point of the diagnostics (report/collapse.py's docstring). full_top1: (teacher, student) top-1 on the
  whole validation split when the caller has it (the start, an epoch's end)."""
  start = time.perf_counter()
  compile_seconds = 0.0

  def probe_logits(net, params):
    nonlocal compile_seconds
    forward = lambda: evaluate.predict(setup.nets[net], params, probe.images, setup.mean, setup.std,
                                       probe.batch_size, setup.parallel)
    if net in probe.warm:
      return forward()
    first = time.perf_counter()
    forward()   # compiles the forward at the probe's batch when this process has not yet
    first = time.perf_counter() - first
    probe.warm.add(net)
    again = time.perf_counter()
    logits = forward()
    compile_seconds += max(first - (time.perf_counter() - again), 0.0)   # the first call less a forward's time
    return logits

  teacher_logits = probe_logits("teacher", teacher_params)
  student_logits = probe_logits(student_net, student_params)
  top1 = lambda logits: float(100.0 * np.mean(logits.argmax(axis=-1) == probe.labels))
  point = {"epoch": epoch, "step": step,
           "distance": collapse.relative_distance(teacher_params, trained_teacher, setup.ema_pairs()),
           "entropy": collapse.soft_target_entropy(teacher_logits, float(setup.config.kd.temperature)),
           "kd_loss": kd_loss, "probe_size": probe.size,
           "probe_teacher_top1": top1(teacher_logits), "probe_student_top1": top1(student_logits),
           "teacher_top1": None if full_top1 is None else full_top1[0],
           "student_top1": None if full_top1 is None else full_top1[1]}
  point["seconds"] = time.perf_counter() - start
  point["compile_seconds"] = compile_seconds
  return point
