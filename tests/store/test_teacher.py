"""A teacher from elsewhere (`teacher.checkpoint`; read by kdjax/store/teacher.py, checked against the run by
kdjax/study/teacher.py): refused in one line when it is a student's or was trained on other data."""

import pytest

from kdjax.errors import ConfigError
from kdjax.store import checkpoints as ckpt_lib
from kdjax.config import defaults as config_lib
from kdjax.study import teacher as teacher_check
from kdjax.study import experiment
from kdjax.study.builder import Setup

from tests.support import ckpt as support
from tests.support.runs import _other_labels


def test_a_teacher_trained_on_other_data_is_refused_unless_allowed(tmp_path_factory, monkeypatch, capsys):
  source = support.finished_run(tmp_path_factory)
  _other_labels(monkeypatch)
  config = support.study_config(phases=("student_kd",), **{"teacher.checkpoint": str(source)})
  setup = Setup.build(config)
  with pytest.raises(ConfigError) as error:
    teacher_check.read_teacher(str(source), setup, config_lib.as_json(config))
  assert str(error.value).startswith(f"teacher.checkpoint {source / 'checkpoints' / 'teacher' / '3'} was "
                                     f"trained on other data") and "train labels" in str(error.value)
  config.checkpoint.allow_config_change = True
  teacher = teacher_check.read_teacher(str(source), Setup.build(config), config_lib.as_json(config))
  assert teacher.provenance["data_differences"] == ["data: train labels"]
  assert "kdjax: warning: the teacher from" in capsys.readouterr().err


def test_a_student_checkpoint_given_as_teacher_is_named(tmp_path, tmp_path_factory):
  step = support.finished_run(tmp_path_factory) / "checkpoints" / "student_kd_ema" / "3"
  config = support.study_config(phases=("student_kd",), **{"teacher.checkpoint": str(step)})
  with pytest.raises(ckpt_lib.CheckpointError) as error:
    experiment.train_and_evaluate(config, tmp_path / "run")
  assert str(error.value).startswith(f"{step}: a checkpoint of student_kd_ema (phase student_kd_ema, the student "
                                     f"net), not of a teacher")
