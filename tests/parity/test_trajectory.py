"""20-step trajectories of every kind of step, in kdjax and in the original's PyTorch loops, from the same weights on
the same batches, decided in float64 (parity/tolerances.py FLOAT64): every step's loss, the final params of every
tracked model and their validation logits, where rounding is ~1e-16 and only semantics can differ."""

import pytest

from configs import ema as ema_config
from parity import compare
from parity import harness

pytestmark = [pytest.mark.usefixtures("one_torch_thread", "highest_matmul_precision"), pytest.mark.optimized,  # float64
              pytest.mark.slow]   # 100-step trajectories in both frameworks

STEPS = 20

VARIANTS = {
    # The two: SGD-momentum with weight decay, and Adam (here with L2 weight decay too).
    "sgd": {"optimizer.name": "sgd", "optimizer.learning_rate": 0.01, "optimizer.momentum": 0.9,
            "optimizer.weight_decay": 5e-4},
    "adam": {"optimizer.name": "adam", "optimizer.learning_rate": 1e-3, "optimizer.weight_decay": 1e-4},
    # The other options a step depends on: AdamW + cosine, CE in the student objective, ReLU, another T; and
    # Nesterov SGD from LeCun init with a fast seed EMA. (The EMAs' warm-up: test_warmup_trajectory.)
    "adamw_cosine_relu": {"optimizer.name": "adamw", "optimizer.weight_decay": 1e-2,
                          "optimizer.schedule": "cosine", "kd.ce_weight": 0.5, "kd.temperature": 2.0,
                          "model.activation": "relu"},
    "nesterov_lecun": {"optimizer.name": "sgd", "optimizer.nesterov": True, "optimizer.learning_rate": 0.02,
                       "model.init": "lecun_normal", "ema.decay": 0.9},
}
# Each step kind with both of the issue's optimizers, once: Adam + L2 on the KD steps is test_parity_semantics'
# baseline (32x32), Adam on every phase over two epochs test_parity_study's. The extra variants on the EMA step,
# against the initial teacher.
PHASES = {"sgd": ("teacher", "student_kd", "student_kd_ema"), "adam": ("teacher",),
          "adamw_cosine_relu": ("student_kd_ema",), "nesterov_lecun": ("student_kd_ema",)}


def small_config(overrides: dict):
  config = ema_config.get_config()
  config.data.image_size = 16
  config.data.max_train_examples = 160  # 10 batches of 16: the 20 steps cross an epoch boundary
  config.data.max_val_examples = 120
  config.batch_size = 16
  for path, value in overrides.items():
    section, field = path.split(".")
    config[section][field] = value
  return config


@pytest.fixture(scope="module")
def digits():
  """The variants differ in optimizer, model and EMA fields only: one data set for all."""
  from kdjax import data as data_lib
  return data_lib.load(small_config({}).data)


def _check(setup, phase, teacher):
  run = harness.run_phase(setup, phase, harness.first_steps(setup, STEPS), teacher_params=teacher,
                          student_decay=0.9)
  rows = compare.rows(run, setup.dataset.val_labels)
  assert all(row.ok for row in rows), compare.table(rows) + "\n" + "\n".join(
      f"{row.model}: {failure}" for row in rows for failure in row.failures)
  return run, rows


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_trajectories(variant, digits):
  """Each phase from the shared init; the KD phases distil from the teacher the teacher phase trained (in kdjax,
  given to both frameworks), the student-weights EMA (decay 0.9) kept in the student phases. float64 bounds."""
  setup = harness.make_setup(small_config(VARIANTS[variant]), "float64", dataset=digits)
  teacher = setup.initial_params["teacher"]
  for phase in PHASES[variant]:
    run, rows = _check(setup, phase, teacher)
    assert all(row.dtype == "float64" for row in rows)
    assert rows[0].params_moved > 1e-3  # the steps did move the weights
    if phase == "student_kd_ema":
      assert rows[1].model == harness.TEACHER_EMA and rows[1].params_moved > 1e-5
    if phase == "teacher":
      teacher = run.jax.params["teacher"]


def test_warmup_trajectory(digits):
  """The mean-teacher warm-up of both EMAs (ema.warmup) on the original's EMA step, decided in float64 (kdjax takes
  the update count in the params' dtype, so the decay min(1 - 1/(t + 1), alpha) carries no float32 rounding)."""
  setup = harness.make_setup(small_config({"ema.warmup": True, "ema.decay": 0.99}), "float64", dataset=digits)
  _, rows = _check(setup, "student_kd_ema", setup.initial_params["teacher"])
  assert rows[1].params_moved > 1e-5
