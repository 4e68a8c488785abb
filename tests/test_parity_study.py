"""A 2-epoch study on the embedded data set in both frameworks (every phase, the study's batches, per-epoch
validation), and parity.check end to end."""

import io
import subprocess
import sys
import pathlib

import numpy as np
import pytest

from configs import ema as ema_config
from parity import check
from parity import compare
from parity import harness
from parity import tolerances

pytestmark = pytest.mark.usefixtures("one_torch_thread", "highest_matmul_precision")

ROOT = pathlib.Path(__file__).resolve().parents[1]


def small_config():
  config = ema_config.get_config()
  config.data.image_size = 16
  config.data.max_train_examples = 192  # 6 batches of 32 per epoch
  config.data.max_val_examples = 120
  config.batch_size = 32
  return config


def test_two_epoch_study_agrees_per_epoch():
  """Per-epoch mean train loss within 1e-4 relative (LOSS_ATOL near 0); per-epoch validation counts equal, bar
  examples whose top-1 margin is within the final logits' difference (FLOAT32 in parity/tolerances.py)."""
  config = small_config()
  setup = harness.make_setup(config)
  batches = harness.epoch_batches(setup, 2)
  tol = tolerances.FLOAT32
  teacher = None
  for phase in config.phases:
    run = harness.run_phase(setup, phase, batches, teacher_params=teacher)
    rows = compare.rows(run, setup.dataset.val_labels)
    assert all(row.ok for row in rows), compare.table(rows)
    jax_losses, torch_losses = np.array(run.jax.train_losses), np.array(run.torch.train_losses)
    assert len(jax_losses) == 2
    assert np.all(np.abs(jax_losses - torch_losses) <= tol.loss_atol + tol.loss_rtol * np.abs(torch_losses)), (
        phase, jax_losses, torch_losses)
    allowed = max(row.ambiguous for row in rows)
    assert np.all(np.abs(np.subtract(run.jax.val_correct, run.torch.val_correct)) <= allowed), (
        phase, run.jax.val_correct, run.torch.val_correct)
    if phase == "teacher":
      teacher = run.jax.params["teacher"]


def test_check_prints_one_table_and_passes():
  out = io.StringIO()
  config = small_config()
  config.phases = ("teacher", "student_kd_ema")
  rows = check.check(config, steps=3, student_decay=0.9, twin=False, out=out)
  text = out.getvalue()
  assert all(row.ok for row in rows), text
  assert [row.model for row in rows] == ["teacher", "student_kd_ema", "teacher_ema", "student_kd_ema (EMA weights)"]
  assert text.count("| model |") == 1 and "all within tolerances" in text


def test_check_fails_past_the_tolerances(monkeypatch):
  """With zero tolerances (and no twin) nothing can pass: the rows carry failures, main exits 1."""
  zero = tolerances.Tolerances(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
  monkeypatch.setattr(tolerances, "FLOAT32", zero)
  config = small_config()
  config.phases = ("teacher",)
  out = io.StringIO()
  rows = check.check(config, steps=2, student_decay=0.9, twin=False, out=out)
  assert not rows[0].ok and "FAIL teacher" in out.getvalue()


def test_check_command_line_errors():
  done = subprocess.run([sys.executable, "-m", "parity.check", "--config", "configs/ema.py", "--steps", "2",
                         "--config.kd.temperature=-1"], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert done.returncode == 2
  assert done.stderr.strip().splitlines()[-1].startswith("parity.check: error: kd.temperature")
