"""TensorBoard event files (kdjax/store/tensorboard.py): written, read back equal to metrics.jsonl, once per step
across a resume, without torch."""

import json
import os
import subprocess
import sys

import pytest

from kdjax.errors import ConfigError
from kdjax.store import tensorboard
from kdjax.study import experiment

from tests.conftest import tiny_config
from tests.support import ROOT
from tests.support.runs import ema_run  # noqa: F401 (a fixture)


def test_writing_tensorboard_events_loads_no_torch_and_leaves_it_importable(tmp_path):
  # tensorboardX's package import tries torch; a run's event writer does not need it (kdjax.store.tensorboard).
  code = ("import sys; from kdjax.store import tensorboard; tensorboard._protos(); "
          "loaded = 'torch' in sys.modules; import torch, tensorboardX; "
          "print(loaded, hasattr(torch, 'Tensor'), hasattr(tensorboardX, 'SummaryWriter'))")
  result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == "False True True"


def test_tensorboard_events_read_back_equal_metrics_jsonl(ema_run):
  workdir, _ = ema_run
  events = tensorboard.read(workdir)
  assert set(events) == {"teacher", "student_kd_ema", "teacher_ema"}
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  for row in rows:
    series = events[row["model"]]
    for key, tag in {**tensorboard.TRAIN_TAGS, **tensorboard.VAL_TAGS}.items():
      if row[key] is None:
        assert tag not in series
        continue
      values = dict(series[tag])
      assert values[row["step"]] == pytest.approx(row[key], rel=1e-6), (row["model"], tag)
  for model in ("teacher", "student_kd_ema"):
    steps = [step for step, _ in events[model]["train/step_loss"]]
    assert steps == [3, 6, 9, 12, 15]  # 2 epochs of 8 steps, every 3rd
    assert [step for step, _ in events[model]["val/top1"]] == [8, 16]
  assert "train/step_loss" not in events["teacher_ema"]


def test_resuming_rewrites_the_phase_events_once_per_step(tmp_path):
  """A teacher run of 1 epoch, then the same workdir continued to 2 epochs: each step once in the events."""
  workdir = tmp_path / "w"
  experiment.train_and_evaluate(tiny_config(phases=("teacher",), epochs=1, log_every_steps=2), workdir)
  continued = tiny_config(phases=("teacher",), epochs=2, log_every_steps=2,
                          **{"checkpoint.allow_config_change": True})
  experiment.train_and_evaluate(continued, workdir)
  events = tensorboard.read(workdir)["teacher"]
  assert [step for step, _ in events["val/top1"]] == [8, 16]
  assert [step for step, _ in events["train/step_loss"]] == [2, 4, 6, 8, 10, 12, 14, 16]
  assert len(tensorboard.event_files(workdir / "tensorboard" / "teacher")) == 1


def test_events_of_an_interrupted_attempt_are_dropped(tmp_path):
  events = tensorboard.Events(tmp_path, every_steps=1)
  events.start_phase(["m"], 0)
  events.step_losses("m", 1, [float(step) for step in range(1, 11)])  # an attempt that reached step 10
  events.flush()
  events.step_losses("m", 11, [11.0])  # not flushed: its epoch did not finish
  events.close()
  events.start_phase(["m"], 4)  # resumed after the save at step 4
  events.step_losses("m", 5, [50.0, 60.0])
  events.flush()
  events.close()
  series = {scalar.step: scalar.value for scalar in tensorboard.read_scalars(tmp_path / "m")}
  assert series == {1: 1.0, 2: 2.0, 3: 3.0, 4: 4.0, 5: 50.0, 6: 60.0}


def test_log_every_steps_must_be_a_count(tmp_path):
  with pytest.raises(ConfigError, match=r"^log_every_steps must be an integer >= 0"):
    tensorboard.Events(tmp_path, every_steps=-1)
