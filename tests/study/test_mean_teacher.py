"""The mean teacher (issue 30): the phase student_mean_teacher distils the student from an EMA of its own weights,
updated after each step; its rows appear in the report; validation refuses it without labels."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kdjax
from kdjax import data as data_lib
from kdjax import phases
from kdjax.config import validation
from kdjax.errors import ConfigError
from kdjax.study.builder import Setup
from kdjax.training import train

from tests.conftest import tiny_config

PHASE = "student_mean_teacher"


def _config(**overrides):
  return tiny_config(phases=("student_ce", PHASE), **{"kd.ce_weight": 1.0, **overrides})


def test_the_teacher_after_k_steps_is_the_ema_of_the_students_weights():
  """t_0 = s_0 (the student's initial weights), t_i = a_i*t_(i-1) + (1 - a_i)*s_i with s_i the student after
  step i and a_i = min(1 - 1/(i + 1), alpha) (the mean teacher's warm-up, whatever ema.warmup says), computed here
  in float64 from the students the steps return: equal to the step's teacher to float32 rounding, and far from the
  original's order (the EMA from the pre-step student, s_(i-1))."""
  alpha = 0.6   # far from 1, so that the one-step lag of the original's order is visible
  setup = Setup.build(_config(**{"ema.decay": alpha}))
  optimizer = setup.optimizer()
  step = jax.jit(setup.step_function(PHASE, optimizer))
  state = setup.fresh_state(PHASE, optimizer)
  as64 = lambda tree: jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), tree)
  students = [as64(state.params)]
  for leaf, start in zip(jax.tree_util.tree_leaves(state.teacher_params), jax.tree_util.tree_leaves(students[0])):
    np.testing.assert_array_equal(np.asarray(leaf, np.float64), start)   # the teacher starts as the student
  order = data_lib.epoch_order(setup.num_train, 0, 1)
  for indices in data_lib.batch_indices(order, 32, False)[:5]:
    batch = train.gather_batch({"image": setup.train_images, "label": setup.train_labels}, jnp.asarray(indices))
    state, _ = step(state, batch)
    students.append(as64(state.params))
  mean_teacher = students[0]
  lagged = students[0]
  for i, (before, after) in enumerate(zip(students[:-1], students[1:]), start=1):
    a = min(1 - 1 / (i + 1), alpha)
    mean_teacher = jax.tree_util.tree_map(lambda t, s: a * t + (1 - a) * s, mean_teacher, after)
    lagged = jax.tree_util.tree_map(lambda t, s: a * t + (1 - a) * s, lagged, before)
  got = as64(state.teacher_params)
  for leaf, expected, other in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(mean_teacher),
                                   jax.tree_util.tree_leaves(lagged)):
    np.testing.assert_allclose(leaf, expected, rtol=0, atol=1e-6)
  gap = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree_util.tree_leaves(got),
                                                         jax.tree_util.tree_leaves(lagged)))
  assert gap > 1e-4   # the original's kd_ema order would not pass the check above


def test_the_phase_is_a_row_of_the_table_and_of_the_report(tmp_path):
  spec = phases.phase(PHASE)
  assert (spec.net, spec.step_kind, spec.teacher_net, spec.needs_trained_teacher, spec.warmup) == (
      "student", "mean_teacher", "student", False, True)
  assert [m.name for m in phases.models_of(PHASE, 0.5)] == [PHASE, "mean_teacher", f"{PHASE} (EMA weights)"]
  assert PHASE not in phases.PHASE_NAMES   # the original's study (ema.py) is unchanged
  report = kdjax.run(_config(epochs=1, **{"ema.student_decay": 0.5}), tmp_path / "run")
  assert list(report["models"]) == ["student_ce", "student_ce (EMA weights)", PHASE, "mean_teacher",
                                    f"{PHASE} (EMA weights)"]
  written = json.loads((tmp_path / "run" / "report.json").read_text())
  for name in (PHASE, "mean_teacher"):
    entry = written["models"][name]
    assert entry["phase"] == PHASE and 0 <= entry["val_top1"] <= 100 and len(entry["epochs"]) == 1
    assert entry["params"] == written["models"]["student_ce"]["params"]   # the student's architecture
  text = (tmp_path / "run" / "report.md").read_text()
  assert f"| {PHASE} " in text and "| mean_teacher " in text
  assert (tmp_path / "run" / "checkpoints" / "mean_teacher").is_dir()


def test_the_shipped_config_starts_from_ema_py():
  config, ema_config = kdjax.configs.get("mean_teacher"), kdjax.configs.get("ema")
  assert tuple(config.phases) == tuple(ema_config.phases) + (PHASE,)
  assert config.kd.ce_weight > 0 and config.ema.decay == ema_config.ema.decay
  assert config.ema.student_decay == ema_config.ema.student_decay
  validation.validate(config)


def test_validation_refuses_the_mean_teacher_without_labels():
  with pytest.raises(ConfigError, match=r"^kd\.ce_weight must be > 0 with the phase student_mean_teacher") as error:
    validation.validate(_config(**{"kd.ce_weight": 0.0}))
  assert "\n" not in str(error.value)
  validation.validate(tiny_config(phases=("student_ce",), **{"kd.ce_weight": 0.0}))   # the others as before
