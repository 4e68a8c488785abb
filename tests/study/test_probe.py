"""kdjax/study/probe.py: the collapse diagnostics' probe and its forwards."""

import types

import numpy as np
import pytest

from kdjax.config import defaults as config_lib
from kdjax.report import collapse
from kdjax.store import tensorboard
from kdjax.store.rundir import RunDir
from kdjax.study import experiment
from kdjax.study import probe as probe_lib
from kdjax.study.builder import Setup
from kdjax.training import host_memory
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def setup():
  """The tiny digits study of one epoch, evaluated in batches of 16: its 32-image probe runs in two."""
  return Setup.build(tiny_config(**{"eval_batch_size": 16, "epochs": 1}))


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


def test_the_probe_in_evaluation_batches_measures_what_one_batch_measured(setup):
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


def test_each_diagnostics_point_runs_in_a_trimmed_heap_and_leaves_it_trimmed(setup, tmp_path, monkeypatch):
  # The probe's forwards between two training steps: in the tuned heap (one arena, nothing given back) their buffers
  # landed beside the steps' freed ones, and the steps' beside theirs (the full data's kd_ema phase grew by ~40 MB
  # at a point); trimmed before and after, neither stacks on the other.
  calls = []
  monkeypatch.setattr(host_memory, "release", lambda: calls.append("release"))
  measure = probe_lib.measure
  monkeypatch.setattr(probe_lib, "measure", lambda *args, **kwargs: calls.append("point") or measure(*args, **kwargs))
  config_dict = config_lib.as_json(setup.config)
  run = RunDir(tmp_path)
  outcome = experiment.run_phase(setup, run, "student_kd_ema", setup.initial_params["teacher"], None,
                                 experiment.run_facts(setup, config_dict),
                                 tensorboard.Events(tmp_path / "tensorboard", 0, enabled=False))
  points = outcome.results["teacher_ema"].diagnostics
  assert len(points) == calls.count("point") > 2   # the start, the steps between, the epoch's end
  for index, call in enumerate(calls):
    if call == "point":
      assert calls[index - 1] == calls[index + 1] == "release", calls
