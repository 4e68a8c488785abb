"""When an epoch is a result (kdjax/study/acceptance.py): at least one step, finite training and validation
metrics, a distillation student that moved; otherwise one line naming the phase, epoch and metric, exit 1."""

import json

import numpy as np
import pytest

from kdjax.cli import exits
from kdjax.cli import exits as cli
from kdjax.errors import ConfigError
from kdjax.errors import DivergenceError
from kdjax.study import acceptance
from kdjax.study import experiment
from kdjax.training import train

from tests.conftest import tiny_config
from tests.support import ckpt as support
from tests.support.runs import _teacher_only
from tests.support.runs import _nan_validation_loss


def _exit_code(error: BaseException) -> int:
  return next(code for kinds, code in exits.EXIT_CODES if isinstance(error, kinds))


def test_a_non_finite_validation_loss_stops_the_run_and_nothing_is_kept(tmp_path, monkeypatch):
  _nan_validation_loss(monkeypatch)
  with pytest.raises(DivergenceError) as error:
    experiment.train_and_evaluate(_teacher_only(), tmp_path)
  message = str(error.value)
  assert message.startswith("phase teacher, epoch 1: teacher's val_loss is nan") and "\n" not in message
  assert "optimizer.learning_rate=" in message and _exit_code(error.value) == 1
  assert not (tmp_path / "checkpoints" / "teacher").exists() or not any((tmp_path / "checkpoints" / "teacher").iterdir())
  metrics = tmp_path / "metrics.jsonl"
  assert not metrics.exists() or metrics.read_text() == ""
  assert not (tmp_path / "report.json").exists() and not (tmp_path / "report.md").exists()


def test_a_split_that_makes_no_full_batch_is_refused_before_anything_is_written(tmp_path):
  config = _teacher_only(**{"batch_size": 1000, "data.drop_remainder": True})
  with pytest.raises(ConfigError) as error:
    experiment.train_and_evaluate(config, tmp_path / "w")
  assert "batch_size=1000" in str(error.value) and "data.drop_remainder=True" in str(error.value)
  assert "256 training examples" in str(error.value) and _exit_code(error.value) == 2
  assert not (tmp_path / "w" / "config.json").exists()


@pytest.mark.parametrize("result, evaluated, named", [
    (train.EpochResult(train_loss=float("nan"), steps=0, seconds=0.0, train_top1=0.0), {}, "no training step"),
    (train.EpochResult(train_loss=float("inf"), steps=3, seconds=0.0, train_top1=0.0), {}, "train_loss (inf)"),
    (train.EpochResult(train_loss=1.5e28, steps=3, seconds=0.0, train_top1=0.0),
     {"student_ce": {"val_loss": float("nan"), "val_top1": 10.0, "val_top5": 50.0}}, "student_ce's val_loss"),
    (train.EpochResult(train_loss=0.5, steps=3, seconds=0.0, train_top1=0.0),
     {"student_kd": {"val_loss": 0.5, "val_top1": 90.0, "val_top5": 99.0},
      "student_kd_avg": {"val_loss": 0.4, "val_top1": float("nan"), "val_top5": 99.0}}, "student_kd_avg's val_top1"),
])
def test_each_unaccepted_epoch_is_one_line_naming_phase_epoch_and_metric(result, evaluated, named):
  config = tiny_config(**{"phases": ("teacher", "student_kd")})
  with pytest.raises(DivergenceError) as error:
    acceptance.check_epoch(config, "student_kd", 2, result, evaluated)
  assert str(error.value).startswith("phase student_kd, epoch 2: ") and named in str(error.value)
  assert "\n" not in str(error.value)


def test_a_finite_trained_epoch_is_accepted():
  result = train.EpochResult(train_loss=0.5, steps=1, seconds=0.0, train_top1=0.0)
  acceptance.check_epoch(tiny_config(), "teacher", 1, result,
                         {"teacher": {"val_loss": 0.5, "val_top1": 90.0, "val_top5": 99.0}})


def _epoch(steps=4, moved=True, step_losses=(0.5, 0.4, 0.3, 0.2)):
  from kdjax.training import train
  return train.EpochResult(train_loss=float(np.mean(step_losses)) if step_losses else 0.0, steps=steps,
                           seconds=1.0, step_losses=list(step_losses), params_moved=moved)


def test_a_kd_epoch_whose_student_did_not_move_stops_with_one_line_exit_1():
  from kdjax.errors import DivergenceError, StalledTrainingError
  from kdjax.study import acceptance
  config = support.study_config(**{"kd.temperature": 1000.0})
  for phase in ("student_kd", "student_kd_ema", "student_kd_ema@0.99"):
    with pytest.raises(StalledTrainingError) as error:
      acceptance.check_epoch(config, phase, 2, _epoch(moved=False), {})
    message = str(error.value)
    assert message.startswith(f"phase {phase}, epoch 2: the student's parameters did not change in 4 training step")
    assert "kd.temperature=1000.0" in message and "optimizer.learning_rate=0.001" in message and "\n" not in message
    assert next(code for kinds, code in cli.EXIT_CODES if isinstance(error.value, kinds)) == 1
    assert isinstance(error.value, DivergenceError)
  with pytest.raises(StalledTrainingError, match=r"the training loss was 0 on every one of its 3 step"):
    acceptance.check_epoch(config, "student_kd", 1, _epoch(steps=3, step_losses=(0.0, 0.0, 0.0)), {})
  # a teacher or label-trained student may reach a loss of exactly 0 (a learned training set): not refused here
  for phase in ("teacher", "student_ce"):
    acceptance.check_epoch(config, phase, 1, _epoch(moved=False, step_losses=(0.0, 0.0, 0.0, 0.0)), {})
  acceptance.check_epoch(config, "student_kd", 1, _epoch(step_losses=(0.0, 0.1, 0.0, 0.0)), {})


def test_a_study_whose_kd_updates_round_away_stops_naming_the_phase(tmp_path):
  """Adam at learning rate 1e-30: no update changes a weight. The teacher phase passes (a CE phase is not
  checked), student_kd stops at its first epoch with the one line, before anything of it is recorded."""
  from kdjax.errors import StalledTrainingError
  config = support.study_config(phases=("teacher", "student_kd"), epochs=1,
                                **{"optimizer.learning_rate": 1e-30, "ema.student_decay": 0.0})
  with pytest.raises(StalledTrainingError, match=r"^phase student_kd, epoch 1: the student's parameters did not "
                                                 r"change in \d+ training step"):
    experiment.train_and_evaluate(config, tmp_path / "run")
  rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  assert {row["phase"] for row in rows} == {"teacher"}
