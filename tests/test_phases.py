"""The one table of phases and models."""

import pytest

from kdjax.nets import models
from kdjax import phases
from kdjax.training import train


def test_every_phase_names_a_net_and_a_step_kind():
  for name, phase in phases.PHASES.items():
    assert phase.name == name and phase.net in models.MODEL_FACTORIES and phase.step_kind in train.STEP_KINDS


def test_models_of_each_phase():
  assert [m.name for m in phases.models_of("student_kd_ema", 0.0)] == ["student_kd_ema", "teacher_ema"]
  assert [(m.name, m.state_field, m.own_checkpoint) for m in phases.models_of("student_ce", 0.99)] == [
      ("student_ce", "params", True), ("student_ce (EMA weights)", "ema_params", False)]
  assert [m.name for m in phases.models_of("teacher", 0.99)] == ["teacher"]   # no EMA weights of a teacher
  assert phases.MODEL_ORDER == ("teacher", "student_ce", "student_kd", "student_kd_ema", "teacher_ema",
                                "student_mean_teacher", "mean_teacher")
  assert [m.name for m in phases.models_of("student_mean_teacher", 0.0)] == ["student_mean_teacher", "mean_teacher"]
  assert phases.PHASE_NAMES == ("teacher", "student_ce", "student_kd", "student_kd_ema")   # the original's study
  assert phases.ALL_PHASE_NAMES == phases.PHASE_NAMES + ("student_mean_teacher",)


@pytest.mark.parametrize("name, phase, net, field", [
    ("teacher", "teacher", "teacher", "params"),
    ("teacher_ema", "student_kd_ema", "teacher", "teacher_params"),
    ("student_kd (EMA weights)", "student_kd", "student", "ema_params"),
    ("mean_teacher", "student_mean_teacher", "student", "teacher_params"),
])
def test_a_report_row_resolves_to_its_model(name, phase, net, field):
  model = phases.model(name)
  assert (model.phase, model.net, model.state_field) == (phase, net, field)


@pytest.mark.parametrize("name", ["teacher (EMA weights)", "student", "teacher_ema (EMA weights)", "",
                                  "mean_teacher (EMA weights)"])
def test_unknown_rows_raise(name):
  with pytest.raises(KeyError):
    phases.model(name)
