"""Usability of a run: the Python API (the README's snippet), TensorBoard event files read back, train_top1,
the progress meter (a bar on a terminal, lines without carriage returns elsewhere), curves.png."""

import io
import json
import os
import pathlib
import re
import subprocess
import sys

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import pytest

import kdjax
from kdjax.config import lookup as configs
from kdjax.study import experiment
from kdjax import progress
from kdjax.report import build as report_lib
from kdjax.store import tensorboard
from kdjax.training import train
from kdjax.errors import ConfigError
from tests.conftest import tiny_config

ROOT = pathlib.Path(__file__).resolve().parents[1]


# The Python API ---------------------------------------------------------------------------------------------------

def test_configs_get_overrides_and_one_line_errors():
  config = configs.get("ema", epochs=3, kd={"temperature": 2.0}, **{"data.image_size": 32})
  assert (config.epochs, config.kd.temperature, config.data.image_size) == (3, 2.0, 32)
  with pytest.raises(kdjax.ConfigError, match=r"^config\.kd\.temprature: no such config field; did you mean "
                                              r"kd\.temperature\?"):
    configs.get("ema", kd={"temprature": 2.0})
  with pytest.raises(kdjax.ConfigError, match=r"^config\.epochs must be of type int, got 'two'$"):
    configs.get("ema", epochs="two")
  with pytest.raises(AttributeError):  # locked: a typo cannot add a field
    config.kd.temprature = 3.0


def test_import_kdjax_loads_no_jax(tmp_path):
  code = ("import sys, kdjax; kdjax.configs.get('ema'); kdjax.ConfigError; "
          "print(sorted(m for m in ('jax', 'tensorflow_datasets', 'tensorboardX') if m in sys.modules))")
  result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == "[]"


def test_writing_tensorboard_events_loads_no_torch_and_leaves_it_importable(tmp_path):
  # tensorboardX's package import tries torch; a run's event writer does not need it (kdjax.store.tensorboard).
  code = ("import sys; from kdjax.store import tensorboard; tensorboard._protos(); "
          "loaded = 'torch' in sys.modules; import torch, tensorboardX; "
          "print(loaded, hasattr(torch, 'Tensor'), hasattr(tensorboardX, 'SummaryWriter'))")
  result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == "False True True"


def readme_block(marker: str) -> str:
  text = (ROOT / "README.md").read_text()
  match = re.search(rf"<!-- {marker} -->\n```python\n(.*?)```", text, re.DOTALL)
  assert match, f"README.md has no python block after <!-- {marker} -->"
  return match[1]


def test_readme_api_snippet_runs_and_prints_nothing_else(tmp_path, monkeypatch, capfd):
  """The README's snippet, verbatim, with kdjax.configs.get shrunk to the tiny test data and two phases."""
  real_get = configs.get

  def tiny_get(name, **overrides):
    config = real_get(name, **overrides)
    for field, value in {"data.image_size": 16, "data.max_train_examples": 96, "data.max_val_examples": 48,
                         "batch_size": 32, "epochs": 1, "phases": ("teacher", "student_kd_ema")}.items():
      configs.override(config, field, value)
    return config

  monkeypatch.setattr(configs, "get", tiny_get)
  monkeypatch.chdir(tmp_path)
  namespace = {}
  exec(compile(readme_block("test:api"), "README.md (test:api)", "exec"), namespace)
  out, err = capfd.readouterr()
  report = namespace["report"]
  assert json.loads(json.dumps(report)) == json.loads((tmp_path / "runs/notebook/report.json").read_text())
  assert out.splitlines() == [f"{name:28} {model['val_top1']:6.2f} %" for name, model in report["models"].items()]
  assert list(report["models"]) == ["teacher", "student_kd_ema", "teacher_ema", "student_kd_ema (EMA weights)"]
  assert "\r" not in err and "epoch" not in err  # no bar, no lines: the run itself said nothing


def test_run_verbose_prints_the_lines_and_raises_one_line_errors(tmp_path, capfd):
  config = tiny_config(phases=("teacher",), epochs=1)
  config.log_every_epoch = True
  kdjax.run(config, tmp_path / "w", verbose=True)
  out, _ = capfd.readouterr()
  assert "[teacher] epoch 1/1  train_loss" in out and "| teacher |" in out
  with pytest.raises(kdjax.ConfigError, match=r"^kd\.temperature must be > 0"):
    kdjax.run(tiny_config(**{"kd.temperature": -1.0}), tmp_path / "bad")
  assert not (tmp_path / "bad").exists()
  missing = tmp_path / "no_images"
  with pytest.raises(kdjax.DataError, match=rf"^data\.manual_dir: {re.escape(str(missing))} does not exist$"):
    kdjax.run(tiny_config(**{"data.name": "image_folder", "data.manual_dir": str(missing)}), tmp_path / "w2")


# TensorBoard, train_top1 ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("tb")
  config = tiny_config(phases=("teacher", "student_kd_ema"), log_every_steps=3)
  return workdir, experiment.train_and_evaluate(config, workdir)


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


def test_train_top1_is_logged(ema_run):
  workdir, _ = ema_run
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  for row in rows:
    if row["model"] == row["phase"]:
      assert 0 <= row["train_top1"] <= 100
    else:
      assert row["train_top1"] is None


def test_run_epoch_train_top1_counts_images_not_batches():
  """10 images in batches of 4, 4, 2; the step reports each batch's mean accuracy (here: label == 0)."""
  labels = jnp.asarray(np.array([0, 0, 0, 0, 1, 1, 1, 1, 0, 0], np.int32))
  images = jnp.zeros((10, 2, 2, 1), jnp.uint8)

  def step(state, batch):
    return state.replace(step=state.step + 1), {"loss": jnp.float32(1.0),
                                                "accuracy": jnp.mean(batch["label"] == 0)}

  state = train.TrainState(step=jnp.zeros((), jnp.int32), params={}, opt_state=())
  _, result = train.run_epoch(step, state, images, labels, np.arange(10), 4, False, "test", progress=False)
  assert result.train_top1 == pytest.approx(60.0)  # 6 of 10 images; the mean of batch means would be 66.7
  assert result.step_losses == [1.0, 1.0, 1.0]


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

# Progress: a bar on a terminal, lines in a log ------------------------------------------------------------------

class _Terminal(io.StringIO):
  def isatty(self):
    return True


def test_progress_is_a_bar_with_images_per_second_on_a_terminal():
  stream = _Terminal()
  with progress.printing(io.StringIO()):
    meter = progress.EpochProgress("teacher epoch 1/2", steps=3, images=80, stream=stream)
    for images in (32, 32, 16):
      meter.update(images, 0.5)
    meter.close()
  assert meter.mode == "bar" and "img/s" in stream.getvalue()


def test_progress_off_a_terminal_is_a_line_every_interval_without_carriage_returns():
  now = [0.0]
  lines, stderr = io.StringIO(), io.StringIO()
  with progress.printing(lines):
    meter = progress.EpochProgress("teacher epoch 1/2", steps=4, images=128, stream=stderr,
                                   clock=lambda: now[0], line_seconds=30)
    for _ in range(4):
      now[0] += 20
      meter.update(32, 0.25)
    meter.close()
  assert meter.mode == "lines" and stderr.getvalue() == ""
  assert lines.getvalue().splitlines() == [
      "[teacher epoch 1/2] step 2/4 (50 %), 2 images/s, loss 0.2500, 0:40 elapsed, about 0:40 left"]


def test_progress_is_silent_unless_someone_listens_or_when_off():
  stream = _Terminal()
  assert progress.EpochProgress("x", 1, 1, stream=stream).mode is None  # nobody printing
  with progress.printing(io.StringIO()):
    assert progress.EpochProgress("x", 1, 1, enabled=False, stream=stream).mode is None
  assert stream.getvalue() == ""


# curves.png -------------------------------------------------------------------------------------------------------

def _result(name, phase, net, epochs, train_loss=True):
  rows = [{"epoch": epoch, "train_loss": (1.0 / epoch if train_loss else None), "val_loss": 1.0,
           "val_top1": 50.0 + epoch} for epoch in range(1, epochs + 1)]
  return report_lib.ModelResult(name=name, net=net, phase=phase, params=1, flops_per_image=1, epochs=rows,
                                final=dict(rows[-1]))


def test_curves_single_epoch_panels_and_integer_ticks():
  results = {"teacher": _result("teacher", "teacher", "teacher", 1),
             "student_kd": _result("student_kd", "student_kd", "student", 1),
             "student_kd_ema": _result("student_kd_ema", "student_kd_ema", "student", 1),
             "teacher_ema": _result("teacher_ema", "student_kd_ema", "teacher", 1, train_loss=False)}
  figure = report_lib.curves_figure(results)
  panels = {axis.get_title(): axis for axis in figure.axes if axis.get_visible()}
  assert list(panels) == ["train loss: cross-entropy on labels", "train loss: KD objective",
                          "validation top-1", "the original's EMA loop: validation top-1"]
  legend = lambda title: [text.get_text() for text in panels[title].get_legend().get_texts()]
  assert legend("train loss: cross-entropy on labels") == ["teacher"]
  assert legend("train loss: KD objective") == ["student_kd", "student_kd_ema"]
  assert legend("the original's EMA loop: validation top-1")[:2] == ["student_kd_ema", "teacher_ema"]
  for axis in panels.values():
    ticks = [tick for tick in axis.get_xticks() if axis.get_xlim()[0] <= tick <= axis.get_xlim()[1]]
    assert ticks == [1.0], axis.get_title()
  plt.close(figure)
