"""kdjax/study/probe.py: the collapse diagnostics' probe and its forwards."""

import types

import numpy as np
import pytest

from kdjax.report import collapse
from kdjax.study import probe as probe_lib
from kdjax.study.builder import Setup
from tests.conftest import tiny_config


def _setup_of(num_val: int, num_train: int, epochs: int, eval_batch_size: int, devices: int = 1):
  """What Probe reads of a Setup, without building one."""
  dataset = types.SimpleNamespace(val_images=np.zeros((num_val, 1, 1, 3), np.uint8),
                                  val_labels=np.zeros(num_val, np.int32))
  config = types.SimpleNamespace(epochs=epochs, eval_batch_size=eval_batch_size)
  return types.SimpleNamespace(dataset=dataset, config=config, num_train=num_train,
                               parallel=types.SimpleNamespace(size=devices))


def test_a_probe_larger_than_an_evaluation_batch_runs_in_evaluation_batches():
  # full Tiny ImageNet: 1,000 probe images (the cap). In one batch its teacher forward held ~0.4 GB of buffers,
  # which the tuned heap kept beside the steps' (the kd_ema phase's peak RSS); eval_batch_size 100 holds ~40 MB.
  probe = probe_lib.Probe(_setup_of(10_000, 100_000, 10, 100), 43)
  assert (probe.size, probe.batch_size) == (1000, 100)
  # a probe up to one evaluation batch: one batch of the whole probe, as before (digits: 32 of 360)
  assert probe_lib.Probe(_setup_of(360, 1437, 10, 100), 28).batch_size == 32
  assert probe_lib.Probe(_setup_of(360, 1437, 10, 32), 28).batch_size == 32
  # several devices: the one batch rounded up to a multiple of them; beyond, eval_batch_size (which they divide)
  assert probe_lib.Probe(_setup_of(360, 1437, 10, 102, devices=3), 28).batch_size == 33
  assert probe_lib.Probe(_setup_of(10_000, 100_000, 10, 102, devices=3), 43).batch_size == 102


def test_the_probe_in_evaluation_batches_measures_what_one_batch_measured():
  config = tiny_config(**{"eval_batch_size": 16})   # the tiny probe (32 images) in two batches
  setup = Setup.build(config)
  probe = probe_lib.Probe(setup, 5)
  assert (probe.size, probe.batch_size) == (32, 16)
  teacher, student = setup.initial_params["teacher"], setup.initial_params["student"]
  measure = lambda: probe_lib.measure(setup, probe, teacher, "student", student, teacher, epoch=0, step=0,
                                      kd_loss=None)
  in_batches = measure()
  probe.batch_size, probe.warm = collapse.PROBE_MIN, set()   # one batch of the whole probe
  in_one = measure()
  for key in ("distance", "entropy", "probe_size", "probe_teacher_top1", "probe_student_top1"):
    assert in_batches[key] == pytest.approx(in_one[key], rel=1e-6, abs=1e-9), key
