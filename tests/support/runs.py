"""Helpers of the tests that run a tiny study in process or as `python -m kdjax.main` and stop,
break or resume it: tiny configs, a finished tiny EMA run (ema_run), the 'wait before a save' script."""

import collections
import subprocess

import numpy as np
import pytest

from kdjax import data as data_lib
from kdjax.study import experiment
from kdjax.study.builder import Setup

from tests.conftest import tiny_config
from tests.support import ckpt as support


def _teacher_only(**overrides):
  return tiny_config(**{"phases": ("teacher",), "epochs": 1, **overrides})


def _nan_validation_loss(monkeypatch):
  """Setup.evaluate as a diverged net's: finite logits in, val_loss NaN (weights ~1e23 give exactly that while
  the training loss, read before the last update, is still finite)."""
  original = Setup.evaluate

  def diverged(self, net, params):
    metrics, logits = original(self, net, params)
    return dict(metrics, val_loss=float("nan")), logits

  monkeypatch.setattr(Setup, "evaluate", diverged)


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("tb")
  config = tiny_config(phases=("teacher", "student_kd_ema"), log_every_steps=3)
  return workdir, experiment.train_and_evaluate(config, workdir)


# kdjax.main, but waits (to be killed or interrupted) when about to save MODEL's epoch EPOCH (argv 1 and 2).
WAIT_BEFORE_SAVE = """
import sys, time
from kdjax.store import checkpoints
model, epoch = sys.argv.pop(1), int(sys.argv.pop(1))
original = checkpoints.ModelCheckpoints.save
def save(self, saved_epoch, tree, meta):
  if self.directory.name == model and saved_epoch == epoch:
    print("WAITING BEFORE SAVE", flush=True)
    time.sleep(300)
  return original(self, saved_epoch, tree, meta)
checkpoints.ModelCheckpoints.save = save
from absl import app
from kdjax.cli import main
sys.argv[0] = "kdjax.main"
app.run(main.main)
"""


def _one_line(text: str) -> str:
  """The one line of `text`, besides report.md's caution that a tiny run's teacher is at chance (kdjax/report/build.py),
  which is about the tiny run, not the failure under test."""
  lines = [line for line in text.strip().splitlines() if support.CHANCE_CAUTION not in line]
  assert len(lines) == 1, text[-3000:]
  return lines[0]


def _stop(process: subprocess.Popen) -> None:
  if process.poll() is None:
    process.kill()
    process.wait(timeout=30)


def _other_labels(monkeypatch):
  """data.load returns the same images with two training labels swapped: other data, the same config."""
  original = data_lib.load

  def load(data_config):
    dataset = original(data_config)
    labels = dataset.train_labels.copy()
    first = int(np.flatnonzero(labels != labels[0])[0])
    labels[[0, first]] = labels[[first, 0]]
    return data_lib.Dataset(dataset.name, dataset.train_images, labels, dataset.val_images,
                            dataset.val_labels, dataset.class_names)

  monkeypatch.setattr(data_lib, "load", load)


def _assert_resumed_equals_uninterrupted(workdir, reference, resumed_output):
  assert "[teacher] finished earlier: loaded epoch 3" in resumed_output
  assert "[student_kd_ema] resuming after epoch 1" in resumed_output
  assert "[teacher] epoch" not in resumed_output          # the finished phase was not retrained
  assert "[student_kd_ema] epoch 1/3" not in resumed_output
  report, expected = support.read_report(workdir), support.read_report(reference)
  assert report["checkpoints"]["loaded"] == {"teacher": 3}
  assert report["checkpoints"]["resumed"] == {"student_kd_ema": 1}
  assert support.without_timing(report) == support.without_timing(expected)  # val_top1s, losses, KL, ...
  for model in expected["models"]:
    assert report["models"][model]["epochs"] == expected["models"][model]["epochs"]
    assert report["models"][model]["val_loss"] == expected["models"][model]["val_loss"]
  rows = support.read_metrics(workdir)
  assert support.without_timing(rows) == support.without_timing(support.read_metrics(reference))
  counts = collections.Counter((row["model"], row["epoch"]) for row in rows)
  assert max(counts.values()) == 1, "an epoch trained twice is logged twice"
